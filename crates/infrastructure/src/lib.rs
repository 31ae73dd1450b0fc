//! Hodei's adapters: implementations of the ports declared in
//! `hodei-application` (template files, repositories, orchestrators).

pub mod local;
pub mod memory_templates;
pub mod template_file;

pub use memory_templates::InMemoryWorkerTemplateRepository;
pub use template_file::{TemplateFileError, load_template_file, parse_templates};
