//! The [`WorkerTemplateRepository`] port: where worker templates are kept.

use std::collections::BTreeSet;

use async_trait::async_trait;
use hodei_domain::{TemplateId, WorkerTemplate};

/// Why a template repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateRepositoryError {
    /// No template has this id.
    #[error("no template with id \"{0}\"")]
    NotFound(TemplateId),
    /// The store behind the repository failed.
    #[error("template store failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Stores worker templates: the built-ins, those loaded from files, those
/// added at run time.
///
/// Implementations keep a stable order: [`WorkerTemplateRepository::find_all`]
/// returns templates in the order they were first saved, so selection and
/// listings are reproducible.
///
/// With the `mock` feature (and in this crate's tests) mockall generates
/// `MockWorkerTemplateRepository`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait WorkerTemplateRepository: Send + Sync {
    /// The template with this id, if any.
    async fn find_by_id(
        &self,
        id: &TemplateId,
    ) -> Result<Option<WorkerTemplate>, TemplateRepositoryError>;

    /// Templates that have every one of `capabilities` (and possibly more).
    async fn find_by_capabilities(
        &self,
        capabilities: &BTreeSet<String>,
    ) -> Result<Vec<WorkerTemplate>, TemplateRepositoryError>;

    /// Every template.
    async fn find_all(&self) -> Result<Vec<WorkerTemplate>, TemplateRepositoryError>;

    /// Adds `template`, or replaces the one with the same id (keeping its
    /// place in the order). Returns the saved template.
    async fn save(
        &self,
        template: WorkerTemplate,
    ) -> Result<WorkerTemplate, TemplateRepositoryError>;

    /// Removes the template with this id.
    ///
    /// # Errors
    /// [`TemplateRepositoryError::NotFound`] if there is none.
    async fn delete(&self, id: &TemplateId) -> Result<(), TemplateRepositoryError>;
}
