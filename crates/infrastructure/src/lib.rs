//! Hodei's adapters: implementations of the ports declared in
//! `hodei-application` (template files, repositories in memory and in
//! SQLite, orchestrators).

pub mod clock;
pub mod docker;
pub mod events;
pub mod ids;
pub mod kubernetes;
pub mod local;
pub mod memory_jobs;
pub mod memory_templates;
pub mod memory_workers;
pub mod source;
pub mod sqlite;
pub mod template_file;

pub use clock::SystemClock;
pub use docker::{DockerConfig, DockerOrchestrator};
pub use events::BroadcastEventPublisher;
pub use ids::RandomIdGenerator;
pub use kubernetes::{KubernetesConfig, KubernetesOrchestrator};
pub use memory_jobs::InMemoryJobRepository;
pub use memory_templates::InMemoryWorkerTemplateRepository;
pub use memory_workers::InMemoryWorkerRepository;
pub use sqlite::SqliteStore;
pub use template_file::{TemplateFileError, load_template_file, parse_templates};
