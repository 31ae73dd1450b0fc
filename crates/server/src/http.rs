//! The server's small HTTP side: `/healthz`, `/readyz` and Prometheus
//! `/metrics`.
//!
//! - `/healthz`: 200 while the process serves HTTP at all.
//! - `/readyz`: 200 when the gRPC server is serving and the worker backend
//!   answers (`list_workers` within two seconds); 503 with the reason
//!   otherwise.
//! - `/metrics` (Prometheus text format):
//!   `hodei_queue_depth` (agent segments waiting for a worker),
//!   `hodei_workers{state,template}` (worker records by state and template),
//!   `hodei_provisioning_seconds` (histogram: from worker requested to
//!   worker connected), `hodei_jobs_finished_total{result}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hodei_application::events::EventPublisher;
use hodei_application::orchestrator::WorkerOrchestrator;
use hodei_application::submit::CreateAndExecuteJob;
use hodei_application::workers::WorkerRepository;
use hodei_domain::{DomainEvent, WorkerId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The server's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    queue_depth: Gauge,
    workers: Family<Labels, Gauge>,
    provisioning: Histogram,
    jobs: Family<Labels, Counter>,
    requested_at: Mutex<HashMap<WorkerId, Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let queue_depth = Gauge::default();
        let workers = Family::<Labels, Gauge>::default();
        let provisioning = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let jobs = Family::<Labels, Counter>::default();
        registry.register(
            "hodei_queue_depth",
            "Agent segments waiting for a worker",
            queue_depth.clone(),
        );
        registry.register(
            "hodei_workers",
            "Worker records by state and template",
            workers.clone(),
        );
        registry.register(
            "hodei_provisioning_seconds",
            "Time from a worker being requested to it connecting",
            provisioning.clone(),
        );
        registry.register(
            "hodei_jobs_finished",
            "Jobs that ended, by result",
            jobs.clone(),
        );
        Metrics {
            registry,
            queue_depth,
            workers,
            provisioning,
            jobs,
            requested_at: Mutex::new(HashMap::new()),
        }
    }

    /// Updates the event-driven metrics.
    pub fn observe(&self, event: &DomainEvent) {
        match event {
            DomainEvent::WorkerRequested { worker, .. } => {
                lock(&self.requested_at).insert(worker.clone(), Instant::now());
            }
            DomainEvent::WorkerConnected { worker } => {
                if let Some(start) = lock(&self.requested_at).remove(worker) {
                    self.provisioning.observe(start.elapsed().as_secs_f64());
                }
            }
            DomainEvent::WorkerFailed { worker, .. }
            | DomainEvent::WorkerDestroyed { worker, .. } => {
                lock(&self.requested_at).remove(worker);
            }
            DomainEvent::JobFinished { status, .. } => {
                self.jobs
                    .get_or_create(&vec![(
                        "result".to_owned(),
                        status.kind().as_str().to_owned(),
                    )])
                    .inc();
            }
            _ => {}
        }
    }

    /// The metrics as Prometheus text, after refreshing the gauges from the
    /// current state.
    pub async fn render(
        &self,
        jobs: &CreateAndExecuteJob,
        workers: &dyn WorkerRepository,
    ) -> String {
        self.queue_depth
            .set(i64::try_from(jobs.waiting_segments()).unwrap_or(i64::MAX));
        match workers.list().await {
            Ok(list) => {
                let mut counts: HashMap<(String, String), i64> = HashMap::new();
                for worker in &list {
                    let template = worker
                        .template()
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "static".to_owned());
                    *counts
                        .entry((worker.state().kind().as_str().to_owned(), template))
                        .or_default() += 1;
                }
                self.workers.clear();
                for ((state, template), n) in counts {
                    self.workers
                        .get_or_create(&vec![
                            ("state".to_owned(), state),
                            ("template".to_owned(), template),
                        ])
                        .set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list workers for metrics"),
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}

/// An [`EventPublisher`] that feeds [`Metrics`] and then hands every event
/// on.
pub struct MetricsPublisher {
    metrics: Arc<Metrics>,
    next: Arc<dyn EventPublisher>,
}

impl std::fmt::Debug for MetricsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsPublisher").finish_non_exhaustive()
    }
}

impl MetricsPublisher {
    /// Observes events into `metrics`, then publishes them to `next`.
    pub fn new(metrics: Arc<Metrics>, next: Arc<dyn EventPublisher>) -> Self {
        MetricsPublisher { metrics, next }
    }
}

#[async_trait]
impl EventPublisher for MetricsPublisher {
    async fn publish(&self, event: DomainEvent) {
        self.metrics.observe(&event);
        self.next.publish(event).await;
    }
}

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The jobs use case (queue depth).
    pub jobs: CreateAndExecuteJob,
    /// Worker records.
    pub workers: Arc<dyn WorkerRepository>,
    /// The worker backend, asked by `/readyz`.
    pub orchestrator: Arc<dyn WorkerOrchestrator>,
    /// This server's id.
    pub server_id: String,
    /// Set once the gRPC server serves.
    pub grpc_serving: Arc<AtomicBool>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if !state.grpc_serving.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the gRPC server is not serving\n".to_owned(),
        );
    }
    let backend = state.orchestrator.backend();
    match tokio::time::timeout(
        Duration::from_secs(2),
        state.orchestrator.list_workers(&state.server_id),
    )
    .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the {backend} backend failed: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the {backend} backend did not answer within 2s\n"),
        ),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let text = state
        .metrics
        .render(&state.jobs, state.workers.as_ref())
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
