//! Hodei's application layer: the ports (traits) that adapters implement and
//! the use cases that drive them.
//!
//! It names no adapter: nothing here knows whether a worker is a process, a
//! container or a pod, nor where jobs and templates are stored.

pub mod clock;
pub mod events;
pub mod id_generator;
pub mod jobs;
pub mod manager;
pub mod mask;
pub mod orchestrator;
pub mod provider;
pub mod runner;
pub mod submit;
pub mod templates;
pub mod worker_link;
pub mod workers;
