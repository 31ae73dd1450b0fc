//! Hodei's domain: the values every other crate speaks in.
//!
//! This crate is pure. It knows nothing of tokio, tonic, kube, bollard or the
//! file system: every type here is built from strings and numbers, validates
//! itself in its constructor, and can be tested without a runtime.

pub mod docker_args;
pub mod event;
pub mod ids;
pub mod job;
pub mod label;
pub mod pipeline;
pub mod quantity;
pub mod resources;
pub mod selection;
pub mod template;
pub mod worker;

pub use docker_args::{DockerArgs, DockerArgsError, VolumeMount};
pub use event::{DomainEvent, StageResult};
pub use ids::{IdError, JobId, PoolId, TemplateId, WorkerId};
pub use job::{Job, JobError, JobStatus, JobStatusKind, Timestamp};
pub use label::{LabelExpr, LabelExprError};
pub use quantity::{CpuQuantity, MemoryQuantity, QuantityError};
pub use resources::{ResourceError, ResourceRequirements, ResourcesSpec};
pub use selection::{TemplateSelection, WorkerRequirements, select};
pub use template::{TemplateError, WorkerTemplate, WorkerTemplateSpec};
pub use worker::{Worker, WorkerError, WorkerKind, WorkerState, WorkerStateKind};
