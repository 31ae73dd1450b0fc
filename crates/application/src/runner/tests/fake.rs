//! An in-memory `WorkerProvider` and `WorkerLink` whose steps behave as
//! their script says, recording every call.
//!
//! Scripts:
//! - `exit N`: ends with exit code N (so does any script ending in `exit N`);
//! - `hang`: runs until cancelled;
//! - `await X`: waits until a step with script `X` has started, then passes;
//! - `after X exit N`: waits until a step with script `X` has started, then
//!   ends with exit code N;
//! - `gate G`: waits until the test opens gate `G` (or a cancel);
//! - `lose`: the worker is lost; `lose-once K`: lost the first time only;
//! - `fail-once K`: exit code 1 the first time, then passes;
//! - `say TEXT`: prints TEXT on stdout, then passes;
//! - anything else passes.
//!
//! Agents: one whose description contains `broken` cannot be provisioned;
//! one containing `slow` waits for gate `provision` first (and counts as
//! provisioning until then or until its `acquire` future is dropped).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hodei_domain::WorkerId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::provider::{ProvisionError, SegmentRequest, WorkerProvider};
use crate::worker_link::{
    Assignment, LinkError, LogSink, LogStream, StepAction, StepOutcome, StepRequest, WorkerLink,
};

/// One call the runner made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Acquire {
        worker: String,
        segment: usize,
        agent: String,
        skip_checkout: bool,
    },
    Release {
        worker: String,
    },
    Step {
        worker: String,
        request: StepRequest,
    },
    Cancel {
        worker: String,
        step_id: String,
    },
}

#[derive(Debug, Default)]
struct State {
    calls: Mutex<Vec<Call>>,
    counters: Mutex<HashMap<String, u32>>,
    cancels: Mutex<HashMap<String, CancellationToken>>,
    next_worker: AtomicU32,
    provisioning: AtomicI32,
    started: watch::Sender<Vec<String>>,
    gates: watch::Sender<BTreeSet<String>>,
}

/// The fake provider; clones share their state.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    state: Arc<State>,
}

impl Fake {
    pub fn new() -> Self {
        Fake::default()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    fn push(&self, call: Call) {
        if let Ok(mut calls) = self.state.calls.lock() {
            calls.push(call);
        }
    }

    /// Opens a gate for `gate G` steps (and `slow` agents' `provision`).
    pub fn open(&self, gate: &str) {
        self.state.gates.send_modify(|gates| {
            gates.insert(gate.to_string());
        });
    }

    /// Waits until a step with this script has started.
    pub async fn started(&self, script: &str) {
        let mut rx = self.state.started.subscribe();
        let _ = rx.wait_for(|s| s.iter().any(|x| x == script)).await;
    }

    /// How many `slow` provisionings are in progress (dropping an `acquire`
    /// future ends one).
    pub fn provisioning(&self) -> i32 {
        self.state.provisioning.load(Ordering::SeqCst)
    }

    /// Steps as (worker, script or `write PATH`, dir), in call order.
    pub fn steps(&self) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Step { worker, request } => Some((worker, describe(&request.action))),
                _ => None,
            })
            .collect()
    }

    /// The requests of every step, in call order.
    pub fn requests(&self) -> Vec<StepRequest> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Step { request, .. } => Some(request),
                _ => None,
            })
            .collect()
    }

    /// Calls as short strings (`acquire w1`, `step w1 make`, `release w1`,
    /// `cancel w1`), for ordering checks.
    pub fn log(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|c| match c {
                Call::Acquire { worker, .. } => format!("acquire {worker}"),
                Call::Release { worker } => format!("release {worker}"),
                Call::Step { worker, request } => {
                    format!("step {worker} {}", describe(&request.action))
                }
                Call::Cancel { worker, .. } => format!("cancel {worker}"),
            })
            .collect()
    }

    /// Fails unless every acquired worker was released exactly once (and
    /// nothing else was released).
    pub fn assert_released_once(&self) {
        let mut acquired = BTreeMap::new();
        let mut released = BTreeMap::new();
        for call in self.calls() {
            match call {
                Call::Acquire { worker, .. } => *acquired.entry(worker).or_insert(0) += 1,
                Call::Release { worker } => *released.entry(worker).or_insert(0) += 1,
                _ => {}
            }
        }
        assert!(
            acquired.values().all(|n| *n == 1),
            "a worker acquired twice: {acquired:?}"
        );
        assert_eq!(acquired, released, "acquired vs released: {:?}", self.log());
    }

    fn bump(&self, key: &str) -> u32 {
        let Ok(mut counters) = self.state.counters.lock() else {
            return 0;
        };
        let n = counters.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    async fn gate(&self, gate: &str, cancel: &CancellationToken) -> bool {
        let mut rx = self.state.gates.subscribe();
        tokio::select! {
            _ = rx.wait_for(|g| g.contains(gate)) => true,
            () = cancel.cancelled() => false,
        }
    }
}

/// Counts a provisioning as ended when dropped.
struct Pending(Arc<State>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.provisioning.fetch_sub(1, Ordering::SeqCst);
    }
}

fn describe(action: &StepAction) -> String {
    match action {
        StepAction::Sh { script } => script.clone(),
        StepAction::WriteFile { path, text } => format!("write {path}: {text}"),
    }
}

#[async_trait]
impl WorkerProvider for Fake {
    async fn acquire(
        &self,
        request: SegmentRequest,
    ) -> Result<Arc<dyn WorkerLink>, ProvisionError> {
        let agent = request.segment.agent.kind.to_string();
        if agent.contains("broken") {
            return Err(ProvisionError::Failed {
                worker: WorkerId::new("w-broken").map_err(|_| ProvisionError::Cancelled)?,
                reason: "image pull failed: no such image".into(),
            });
        }
        if agent.contains("slow") {
            self.state.provisioning.fetch_add(1, Ordering::SeqCst);
            let _pending = Pending(self.state.clone());
            self.gate("provision", &CancellationToken::new()).await;
        }
        let n = self.state.next_worker.fetch_add(1, Ordering::SeqCst) + 1;
        let worker = format!("w{n}");
        self.push(Call::Acquire {
            worker: worker.clone(),
            segment: request.segment.id.0,
            agent,
            skip_checkout: request.skip_checkout,
        });
        let id = WorkerId::new(worker).map_err(|_| ProvisionError::Cancelled)?;
        Ok(Arc::new(FakeLink {
            id,
            fake: self.clone(),
        }))
    }

    async fn release(&self, worker: &WorkerId, _reason: &str) {
        self.push(Call::Release {
            worker: worker.to_string(),
        });
    }
}

#[derive(Debug)]
struct FakeLink {
    id: WorkerId,
    fake: Fake,
}

#[async_trait]
impl WorkerLink for FakeLink {
    fn worker_id(&self) -> &WorkerId {
        &self.id
    }

    async fn assign(&self, _assignment: Assignment) -> Result<(), LinkError> {
        Ok(())
    }

    async fn run_step(
        &self,
        request: StepRequest,
        sink: Arc<dyn LogSink>,
    ) -> Result<StepOutcome, LinkError> {
        let fake = &self.fake;
        let cancel = CancellationToken::new();
        if let Ok(mut cancels) = fake.state.cancels.lock() {
            cancels.insert(request.step_id.clone(), cancel.clone());
        }
        fake.push(Call::Step {
            worker: self.id.to_string(),
            request: request.clone(),
        });
        let script = describe(&request.action);
        fake.state.started.send_modify(|s| s.push(script.clone()));
        let words: Vec<&str> = script.split_whitespace().collect();
        let lost = || LinkError::Lost {
            worker: self.id.clone(),
            reason: "no heartbeat for 30s".into(),
        };
        let wait_started = |what: String| {
            let mut rx = fake.state.started.subscribe();
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    _ = rx.wait_for(|s| s.contains(&what)) => true,
                    () = cancel.cancelled() => false,
                }
            }
        };
        match words.as_slice() {
            ["exit", code] => Ok(match code.parse::<i32>() {
                Ok(0) => StepOutcome::Success,
                Ok(exit_code) => StepOutcome::Failed { exit_code },
                Err(_) => StepOutcome::Error {
                    message: format!("bad exit code {code}"),
                },
            }),
            ["hang"] => {
                cancel.cancelled().await;
                Ok(StepOutcome::Cancelled)
            }
            ["await", what @ ..] => Ok(if wait_started(what.join(" ")).await {
                StepOutcome::Success
            } else {
                StepOutcome::Cancelled
            }),
            ["after", rest @ .., "exit", code] => {
                if wait_started(rest.join(" ")).await {
                    Ok(StepOutcome::Failed {
                        exit_code: code.parse().unwrap_or(1),
                    })
                } else {
                    Ok(StepOutcome::Cancelled)
                }
            }
            [.., "exit", code] => Ok(match code.parse::<i32>() {
                Ok(0) | Err(_) => StepOutcome::Success,
                Ok(exit_code) => StepOutcome::Failed { exit_code },
            }),
            ["gate", gate] => Ok(if fake.gate(gate, &cancel).await {
                StepOutcome::Success
            } else {
                StepOutcome::Cancelled
            }),
            ["lose"] => Err(lost()),
            ["lose-once", key] => {
                if fake.bump(key) == 1 {
                    Err(lost())
                } else {
                    Ok(StepOutcome::Success)
                }
            }
            ["fail-once", key] => Ok(if fake.bump(key) == 1 {
                StepOutcome::Failed { exit_code: 1 }
            } else {
                StepOutcome::Success
            }),
            ["say", text @ ..] => {
                let line = format!("{}\n", text.join(" "));
                sink.log(&request.step_id, LogStream::Stdout, line.as_bytes());
                Ok(StepOutcome::Success)
            }
            _ => Ok(StepOutcome::Success),
        }
    }

    async fn cancel_step(&self, step_id: &str, _reason: &str) -> Result<(), LinkError> {
        self.fake.push(Call::Cancel {
            worker: self.id.to_string(),
            step_id: step_id.to_string(),
        });
        if let Ok(cancels) = self.fake.state.cancels.lock()
            && let Some(token) = cancels.get(step_id)
        {
            token.cancel();
        }
        Ok(())
    }

    async fn shutdown(&self, _reason: &str) -> Result<(), LinkError> {
        Ok(())
    }
}
