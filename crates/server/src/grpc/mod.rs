//! The gRPC services: `JobService` for clients, `WorkerService` for workers,
//! `AdminService` for operators; [`auth`] guards the client services. Generated types stop here: every service
//! converts to domain types in [`convert`] and calls the use cases.

pub mod admin_service;
pub mod auth;
pub mod convert;
pub mod job_service;
pub mod worker_service;

pub use admin_service::AdminServiceImpl;
pub use auth::RequireBearer;
pub use job_service::JobServiceImpl;
pub use worker_service::{
    HubConfig, RegisteringOrchestrator, StaticWorkers, WorkerHub, WorkerServiceImpl,
};
