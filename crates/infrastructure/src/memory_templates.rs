//! An in-memory [`WorkerTemplateRepository`], preloaded with the built-ins.

use std::collections::BTreeSet;

use async_trait::async_trait;
use hodei_application::templates::{TemplateRepositoryError, WorkerTemplateRepository};
use hodei_domain::{TemplateId, WorkerTemplate};
use tokio::sync::RwLock;

/// Keeps templates in memory, in the order they were first saved.
///
/// Used by the server when templates come from the built-ins or from a
/// file, and by tests as a real implementation of the port.
#[derive(Debug)]
pub struct InMemoryWorkerTemplateRepository {
    templates: RwLock<Vec<WorkerTemplate>>,
}

impl InMemoryWorkerTemplateRepository {
    /// A repository holding the five built-in templates.
    pub fn with_builtins() -> Self {
        Self::from_templates(WorkerTemplate::builtins())
    }

    /// A repository holding `templates`; a later template replaces an
    /// earlier one with the same id, in the earlier one's place.
    pub fn from_templates(templates: impl IntoIterator<Item = WorkerTemplate>) -> Self {
        let mut list: Vec<WorkerTemplate> = Vec::new();
        for t in templates {
            upsert(&mut list, t);
        }
        InMemoryWorkerTemplateRepository {
            templates: RwLock::new(list),
        }
    }

    /// An empty repository.
    pub fn empty() -> Self {
        Self::from_templates([])
    }
}

impl Default for InMemoryWorkerTemplateRepository {
    /// The built-ins, as [`InMemoryWorkerTemplateRepository::with_builtins`].
    fn default() -> Self {
        Self::with_builtins()
    }
}

fn upsert(list: &mut Vec<WorkerTemplate>, template: WorkerTemplate) {
    match list.iter_mut().find(|t| t.id() == template.id()) {
        Some(slot) => *slot = template,
        None => list.push(template),
    }
}

#[async_trait]
impl WorkerTemplateRepository for InMemoryWorkerTemplateRepository {
    async fn find_by_id(
        &self,
        id: &TemplateId,
    ) -> Result<Option<WorkerTemplate>, TemplateRepositoryError> {
        Ok(self
            .templates
            .read()
            .await
            .iter()
            .find(|t| t.id() == id)
            .cloned())
    }

    async fn find_by_capabilities(
        &self,
        capabilities: &BTreeSet<String>,
    ) -> Result<Vec<WorkerTemplate>, TemplateRepositoryError> {
        Ok(self
            .templates
            .read()
            .await
            .iter()
            .filter(|t| capabilities.is_subset(t.capabilities()))
            .cloned()
            .collect())
    }

    async fn find_all(&self) -> Result<Vec<WorkerTemplate>, TemplateRepositoryError> {
        Ok(self.templates.read().await.clone())
    }

    async fn save(
        &self,
        template: WorkerTemplate,
    ) -> Result<WorkerTemplate, TemplateRepositoryError> {
        upsert(&mut *self.templates.write().await, template.clone());
        Ok(template)
    }

    async fn delete(&self, id: &TemplateId) -> Result<(), TemplateRepositoryError> {
        let mut list = self.templates.write().await;
        let before = list.len();
        list.retain(|t| t.id() != id);
        if list.len() == before {
            return Err(TemplateRepositoryError::NotFound(id.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TemplateId {
        TemplateId::new(s).unwrap()
    }

    fn ids(list: &[WorkerTemplate]) -> Vec<&str> {
        list.iter().map(|t| t.id().as_str()).collect()
    }

    #[tokio::test]
    async fn preloaded_with_builtins() {
        let repo = InMemoryWorkerTemplateRepository::default();
        let all = repo.find_all().await.unwrap();
        assert_eq!(
            ids(&all),
            [
                "java-maven",
                "node-npm",
                "docker-dind",
                "python-pip",
                "go-build"
            ]
        );
        let java = repo.find_by_id(&id("java-maven")).await.unwrap();
        assert_eq!(
            java.map(|t| t.image().to_owned()).as_deref(),
            Some("hodei/worker:java-maven-latest")
        );
        assert!(repo.find_by_id(&id("nope")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn find_by_capabilities_needs_all_of_them() {
        let repo = InMemoryWorkerTemplateRepository::default();
        let want = |caps: &[&str]| {
            caps.iter()
                .map(|c| (*c).to_owned())
                .collect::<BTreeSet<_>>()
        };
        let found = repo
            .find_by_capabilities(&want(&["docker", "git"]))
            .await
            .unwrap();
        assert_eq!(ids(&found), ["docker-dind", "go-build"]);
        let found = repo
            .find_by_capabilities(&want(&["docker", "npm"]))
            .await
            .unwrap();
        assert!(found.is_empty());
        let found = repo.find_by_capabilities(&want(&[])).await.unwrap();
        assert_eq!(found.len(), 5);
    }

    #[tokio::test]
    async fn save_replaces_in_place_and_delete_removes() {
        let repo = InMemoryWorkerTemplateRepository::default();
        let node = repo.find_by_id(&id("node-npm")).await.unwrap().unwrap();
        let renamed = node.with_name("Node 18");
        repo.save(renamed).await.unwrap();
        let all = repo.find_all().await.unwrap();
        assert_eq!(all[1].name(), "Node 18");
        assert_eq!(all.len(), 5);

        repo.delete(&id("node-npm")).await.unwrap();
        let err = repo.delete(&id("node-npm")).await.unwrap_err();
        assert_eq!(err.to_string(), "no template with id \"node-npm\"");
        assert_eq!(repo.find_all().await.unwrap().len(), 4);
    }
}
