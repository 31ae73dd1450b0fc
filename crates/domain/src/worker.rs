//! Workers as the server records them, and the state machine of their life.
//!
//! ```text
//! Requested ─▶ Provisioning ─▶ Connected ⇄ Busy
//!     │             │              │        │
//!     │             │              ▼        ▼
//!     └─────────────┴────────▶ Stopping ─▶ Terminated
//!
//! any state but Terminated ─▶ Failed{reason}
//! Connected, Busy, Stopping ─▶ Lost{reason}
//! Failed, Lost ─▶ Terminated   (once the backend object is deleted)
//! ```
//!
//! An **ephemeral** worker is created for one segment of one job and starts
//! `Requested`; a **static** worker is started by hand, registers itself and
//! starts `Connected`. Only a static worker goes back from `Busy` to
//! `Connected` (idle) after its segment; an ephemeral one is stopped.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, TemplateId, WorkerId};
use crate::job::Timestamp;
use crate::label::LabelExpr;

/// What a worker is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerKind {
    /// Created for one job segment from a template, destroyed after it.
    Ephemeral {
        /// The template it was created from.
        template: TemplateId,
        /// The job it is bound to; no other job can use it.
        job: JobId,
        /// The job segment it runs (the plan's segment number).
        segment: String,
    },
    /// Started by hand; takes any matching job, one after another.
    Static {
        /// The labels it offers.
        labels: BTreeSet<String>,
    },
}

/// Where a worker stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkerState {
    /// Recorded; the backend has not been asked yet.
    Requested,
    /// The backend accepted it; waiting for it to connect.
    Provisioning,
    /// Connected and idle.
    Connected,
    /// Running a job segment.
    Busy,
    /// Told to stop; its backend object is being deleted.
    Stopping,
    /// Gone, backend object deleted.
    Terminated,
    /// Could not be provisioned, or its backend object could not be
    /// deleted.
    Failed {
        /// The backend's reason.
        reason: String,
    },
    /// Lost its connection or stopped answering heartbeats.
    Lost {
        /// Why it is considered lost.
        reason: String,
    },
}

/// A [`WorkerState`] without its data, for filters and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStateKind {
    /// [`WorkerState::Requested`].
    Requested,
    /// [`WorkerState::Provisioning`].
    Provisioning,
    /// [`WorkerState::Connected`].
    Connected,
    /// [`WorkerState::Busy`].
    Busy,
    /// [`WorkerState::Stopping`].
    Stopping,
    /// [`WorkerState::Terminated`].
    Terminated,
    /// [`WorkerState::Failed`].
    Failed,
    /// [`WorkerState::Lost`].
    Lost,
}

impl WorkerStateKind {
    /// The lower-case name used in messages and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStateKind::Requested => "requested",
            WorkerStateKind::Provisioning => "provisioning",
            WorkerStateKind::Connected => "connected",
            WorkerStateKind::Busy => "busy",
            WorkerStateKind::Stopping => "stopping",
            WorkerStateKind::Terminated => "terminated",
            WorkerStateKind::Failed => "failed",
            WorkerStateKind::Lost => "lost",
        }
    }
}

impl fmt::Display for WorkerStateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WorkerState {
    /// The state without its data.
    pub fn kind(&self) -> WorkerStateKind {
        match self {
            WorkerState::Requested => WorkerStateKind::Requested,
            WorkerState::Provisioning => WorkerStateKind::Provisioning,
            WorkerState::Connected => WorkerStateKind::Connected,
            WorkerState::Busy => WorkerStateKind::Busy,
            WorkerState::Stopping => WorkerStateKind::Stopping,
            WorkerState::Terminated => WorkerStateKind::Terminated,
            WorkerState::Failed { .. } => WorkerStateKind::Failed,
            WorkerState::Lost { .. } => WorkerStateKind::Lost,
        }
    }

    /// Whether a worker may go from `self` to `next` (see the module docs).
    pub fn can_become(&self, next: &WorkerState) -> bool {
        use WorkerStateKind as K;
        match (self.kind(), next.kind()) {
            (K::Terminated, _) => false,
            (_, K::Failed) => true,
            (K::Connected | K::Busy | K::Stopping, K::Lost) => true,
            (K::Requested, K::Provisioning | K::Stopping)
            | (K::Provisioning, K::Connected | K::Stopping)
            | (K::Connected, K::Busy | K::Stopping)
            | (K::Busy, K::Connected | K::Stopping)
            | (K::Stopping | K::Failed | K::Lost, K::Terminated) => true,
            _ => false,
        }
    }

    /// True for `Terminated`, `Failed` and `Lost`: the worker will run
    /// nothing more (its backend object may still need deleting).
    pub fn is_ended(&self) -> bool {
        matches!(
            self,
            WorkerState::Terminated | WorkerState::Failed { .. } | WorkerState::Lost { .. }
        )
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerState::Failed { reason } | WorkerState::Lost { reason } => {
                write!(f, "{}: {reason}", self.kind())
            }
            _ => f.write_str(self.kind().as_str()),
        }
    }
}

/// A refused worker transition or assignment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The state machine does not allow going from `from` to `to`.
    #[error("worker {worker} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The worker.
        worker: WorkerId,
        /// Its current state.
        from: WorkerStateKind,
        /// The refused next state.
        to: WorkerStateKind,
    },
    /// An ephemeral worker was asked to run a job other than its own.
    #[error("worker {worker} is bound to job {bound}, not {requested}")]
    BoundToOtherJob {
        /// The worker.
        worker: WorkerId,
        /// The job it was created for.
        bound: JobId,
        /// The job that asked for it.
        requested: JobId,
    },
}

/// A worker, ephemeral or static, as the server records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    id: WorkerId,
    name: String,
    kind: WorkerKind,
    state: WorkerState,
    current_job: Option<JobId>,
    backend_id: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl Worker {
    /// A `Requested` ephemeral worker bound to `job`, created from
    /// `template` for the job segment `segment`.
    pub fn ephemeral(
        id: WorkerId,
        name: impl Into<String>,
        template: TemplateId,
        job: JobId,
        segment: impl Into<String>,
        now: Timestamp,
    ) -> Self {
        Worker {
            id,
            name: name.into(),
            kind: WorkerKind::Ephemeral {
                template,
                job,
                segment: segment.into(),
            },
            state: WorkerState::Requested,
            current_job: None,
            backend_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// A static worker that has just registered: `Connected` and idle.
    pub fn registered_static<I, S>(
        id: WorkerId,
        name: impl Into<String>,
        labels: I,
        now: Timestamp,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Worker {
            id,
            name: name.into(),
            kind: WorkerKind::Static {
                labels: labels.into_iter().map(Into::into).collect(),
            },
            state: WorkerState::Connected,
            current_job: None,
            backend_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Its id.
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// Its display name (`WORKER_NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ephemeral or static, with what that implies.
    pub fn kind(&self) -> &WorkerKind {
        &self.kind
    }

    /// Its current state.
    pub fn state(&self) -> &WorkerState {
        &self.state
    }

    /// The job it is running, while `Busy`.
    pub fn current_job(&self) -> Option<&JobId> {
        self.current_job.as_ref()
    }

    /// The backend's own name for it (process id, container id, pod name),
    /// once the backend accepted it.
    pub fn backend_id(&self) -> Option<&str> {
        self.backend_id.as_deref()
    }

    /// When it was recorded.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// When its state last changed.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// Whether it is ephemeral.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self.kind, WorkerKind::Ephemeral { .. })
    }

    /// The template an ephemeral worker was created from.
    pub fn template(&self) -> Option<&TemplateId> {
        match &self.kind {
            WorkerKind::Ephemeral { template, .. } => Some(template),
            WorkerKind::Static { .. } => None,
        }
    }

    /// The job an ephemeral worker is bound to.
    pub fn bound_job(&self) -> Option<&JobId> {
        match &self.kind {
            WorkerKind::Ephemeral { job, .. } => Some(job),
            WorkerKind::Static { .. } => None,
        }
    }

    /// A static worker that is connected and runs nothing.
    pub fn is_idle_static(&self) -> bool {
        !self.is_ephemeral() && self.state == WorkerState::Connected
    }

    /// Whether a static worker's labels satisfy `expr` (`None`: any
    /// worker). Ephemeral workers never match: they are bound to their job.
    pub fn offers(&self, expr: Option<&LabelExpr>) -> bool {
        match &self.kind {
            WorkerKind::Static { labels } => expr.is_none_or(|e| e.matches(labels)),
            WorkerKind::Ephemeral { .. } => false,
        }
    }

    /// Records the backend's name for the worker.
    pub fn set_backend_id(&mut self, backend_id: impl Into<String>, now: Timestamp) {
        self.backend_id = Some(backend_id.into());
        self.updated_at = now;
    }

    /// Moves to `next` at `now`. Leaving `Busy` clears the current job.
    ///
    /// # Errors
    /// [`WorkerError::InvalidTransition`] when the state machine (see the
    /// module docs) does not allow it, including `Busy → Connected` for an
    /// ephemeral worker; the worker is left unchanged.
    pub fn transition(&mut self, next: WorkerState, now: Timestamp) -> Result<(), WorkerError> {
        let back_to_idle = self.state == WorkerState::Busy && next == WorkerState::Connected;
        if !self.state.can_become(&next) || (back_to_idle && self.is_ephemeral()) {
            return Err(self.refused(&next));
        }
        if self.state == WorkerState::Busy && next != WorkerState::Busy {
            self.current_job = None;
        }
        self.state = next;
        self.updated_at = now;
        Ok(())
    }

    /// `Connected → Busy` running `job`.
    ///
    /// # Errors
    /// [`WorkerError::BoundToOtherJob`] when an ephemeral worker is asked to
    /// run another job than its own; [`WorkerError::InvalidTransition`]
    /// unless the worker is connected and idle.
    pub fn assign(&mut self, job: JobId, now: Timestamp) -> Result<(), WorkerError> {
        if let WorkerKind::Ephemeral { job: bound, .. } = &self.kind
            && *bound != job
        {
            return Err(WorkerError::BoundToOtherJob {
                worker: self.id.clone(),
                bound: bound.clone(),
                requested: job,
            });
        }
        self.transition(WorkerState::Busy, now)?;
        self.current_job = Some(job);
        Ok(())
    }

    fn refused(&self, next: &WorkerState) -> WorkerError {
        WorkerError::InvalidTransition {
            worker: self.id.clone(),
            from: self.state.kind(),
            to: next.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> WorkerState {
        WorkerState::Failed {
            reason: "ErrImagePull".into(),
        }
    }

    fn lost() -> WorkerState {
        WorkerState::Lost {
            reason: "no heartbeat for 30s".into(),
        }
    }

    fn ephemeral() -> Worker {
        Worker::ephemeral(
            WorkerId::new("w-1").unwrap(),
            "hodei-java-1",
            TemplateId::new("java-maven").unwrap(),
            JobId::new("j-1").unwrap(),
            "1",
            Timestamp(1),
        )
    }

    fn fixed() -> Worker {
        Worker::registered_static(
            WorkerId::new("s-1").unwrap(),
            "builder",
            ["linux", "java-17"],
            Timestamp(1),
        )
    }

    /// Walks `worker` through `path`, then applies `next`; `expected` is
    /// the error message, if any.
    fn check(
        mut worker: Worker,
        path: &[WorkerState],
        next: WorkerState,
        expected: Result<(), &str>,
    ) {
        for (i, state) in path.iter().enumerate() {
            worker
                .transition(state.clone(), Timestamp(10 + i as u64))
                .unwrap_or_else(|e| panic!("path {path:?}: {e}"));
        }
        let before = worker.clone();
        let got = worker.transition(next.clone(), Timestamp(100));
        let refused = got.is_err();
        assert_eq!(
            got.map_err(|e| e.to_string()),
            expected.map_err(str::to_owned),
            "{path:?} then {next:?}"
        );
        if refused {
            assert_eq!(worker, before);
        } else {
            assert_eq!(worker.state(), &next);
            assert_eq!(worker.updated_at(), Timestamp(100));
        }
    }

    #[test]
    fn ephemeral_lifecycle() {
        use WorkerState::*;
        let e = ephemeral;
        check(e(), &[], Provisioning, Ok(()));
        check(e(), &[], failed(), Ok(()));
        check(e(), &[], Stopping, Ok(()));
        check(
            e(),
            &[],
            Connected,
            Err("worker w-1 cannot go from requested to connected"),
        );
        check(
            e(),
            &[],
            lost(),
            Err("worker w-1 cannot go from requested to lost"),
        );
        check(e(), &[Provisioning], Connected, Ok(()));
        check(e(), &[Provisioning], failed(), Ok(()));
        check(
            e(),
            &[Provisioning],
            Busy,
            Err("worker w-1 cannot go from provisioning to busy"),
        );
        check(e(), &[Provisioning, Connected], Busy, Ok(()));
        check(e(), &[Provisioning, Connected], lost(), Ok(()));
        check(e(), &[Provisioning, Connected, Busy], Stopping, Ok(()));
        check(e(), &[Provisioning, Connected, Busy], lost(), Ok(()));
        check(
            e(),
            &[Provisioning, Connected, Busy],
            Connected,
            Err("worker w-1 cannot go from busy to connected"),
        );
        check(
            e(),
            &[Provisioning, Connected, Busy, Stopping],
            Terminated,
            Ok(()),
        );
        check(
            e(),
            &[Provisioning, Connected, Busy, Stopping],
            failed(),
            Ok(()),
        );
        check(
            e(),
            &[Provisioning, Connected, Busy, Stopping],
            Busy,
            Err("worker w-1 cannot go from stopping to busy"),
        );
        check(e(), &[Provisioning, failed()], Terminated, Ok(()));
        check(e(), &[Provisioning, Connected, lost()], Terminated, Ok(()));
        check(
            e(),
            &[Provisioning, Connected, lost()],
            Busy,
            Err("worker w-1 cannot go from lost to busy"),
        );
        let terminated = [Provisioning, Connected, Busy, Stopping, Terminated];
        for next in [
            Requested,
            Provisioning,
            Connected,
            Busy,
            Stopping,
            Terminated,
            failed(),
            lost(),
        ] {
            let msg = format!("worker w-1 cannot go from terminated to {}", next.kind());
            check(e(), &terminated, next, Err(&msg));
        }
    }

    #[test]
    fn static_lifecycle() {
        use WorkerState::*;
        check(fixed(), &[], Busy, Ok(()));
        check(fixed(), &[Busy], Connected, Ok(()));
        check(fixed(), &[Busy, Connected], Stopping, Ok(()));
        check(fixed(), &[], lost(), Ok(()));
        check(
            fixed(),
            &[],
            Provisioning,
            Err("worker s-1 cannot go from connected to provisioning"),
        );
    }

    #[test]
    fn assignment() {
        let mut w = fixed();
        assert!(w.is_idle_static());
        w.assign(JobId::new("j-7").unwrap(), Timestamp(5)).unwrap();
        assert!(!w.is_idle_static());
        assert_eq!(w.current_job().map(JobId::as_str), Some("j-7"));
        w.transition(WorkerState::Connected, Timestamp(6)).unwrap();
        assert_eq!(w.current_job(), None);
        assert!(w.is_idle_static());

        let mut e = ephemeral();
        e.transition(WorkerState::Provisioning, Timestamp(2))
            .unwrap();
        e.transition(WorkerState::Connected, Timestamp(3)).unwrap();
        assert_eq!(
            e.assign(JobId::new("j-2").unwrap(), Timestamp(4))
                .unwrap_err()
                .to_string(),
            "worker w-1 is bound to job j-1, not j-2"
        );
        e.assign(JobId::new("j-1").unwrap(), Timestamp(4)).unwrap();
        assert_eq!(e.state(), &WorkerState::Busy);
        assert!(!e.is_idle_static());
    }

    #[test]
    fn labels() {
        let expr = |s: &str| LabelExpr::parse(s).unwrap();
        assert!(fixed().offers(None));
        assert!(fixed().offers(Some(&expr("linux && java-17"))));
        assert!(!fixed().offers(Some(&expr("windows"))));
        assert!(!ephemeral().offers(None));
        assert_eq!(
            ephemeral().template().map(TemplateId::as_str),
            Some("java-maven")
        );
        assert_eq!(fixed().template(), None);
    }

    #[test]
    fn display() {
        assert_eq!(failed().to_string(), "failed: ErrImagePull");
        assert_eq!(WorkerState::Busy.to_string(), "busy");
        assert!(lost().is_ended());
        assert!(!WorkerState::Stopping.is_ended());
    }
}
