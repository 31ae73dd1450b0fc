//! `AdminService`: list workers; list, put and delete templates.

use std::collections::HashMap;
use std::sync::Arc;

use hodei_application::templates::{TemplateRepositoryError, WorkerTemplateRepository};
use hodei_application::workers::WorkerRepository;
use hodei_domain::{TemplateId, WorkerKind};
use hodei_proto::v1 as pb;
use hodei_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use tonic::{Request, Response, Status};

use super::convert;
use super::worker_service::WorkerHub;

/// The tonic implementation of `AdminService`.
#[derive(Clone)]
pub struct AdminServiceImpl {
    workers: Arc<dyn WorkerRepository>,
    templates: Arc<dyn WorkerTemplateRepository>,
    hub: WorkerHub,
    backend: &'static str,
}

impl std::fmt::Debug for AdminServiceImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServiceImpl")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl AdminServiceImpl {
    /// The service over the worker records and templates; `backend` names
    /// where ephemeral workers run.
    pub fn new(
        workers: Arc<dyn WorkerRepository>,
        templates: Arc<dyn WorkerTemplateRepository>,
        hub: WorkerHub,
        backend: &'static str,
    ) -> Self {
        AdminServiceImpl {
            workers,
            templates,
            hub,
            backend,
        }
    }

    /// As a tonic service.
    pub fn into_service(self) -> AdminServiceServer<Self> {
        AdminServiceServer::new(self)
    }
}

fn store_error(error: impl std::fmt::Display) -> Status {
    tracing::error!(error = %error, "store failed");
    Status::internal(error.to_string())
}

#[tonic::async_trait]
impl AdminService for AdminServiceImpl {
    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self.workers.list().await.map_err(store_error)?;
        let templates = self.templates.find_all().await.map_err(store_error)?;
        let heard: HashMap<_, _> = self.hub.connected().into_iter().collect();
        let workers = workers
            .iter()
            .map(|w| {
                let capabilities = match w.kind() {
                    WorkerKind::Ephemeral { template, .. } => templates
                        .iter()
                        .find(|t| t.id() == template)
                        .map(|t| t.capabilities().iter().cloned().collect())
                        .unwrap_or_default(),
                    WorkerKind::Static { .. } => Vec::new(),
                };
                let last = heard.get(w.id()).copied().unwrap_or(0);
                convert::worker_to_proto(w, capabilities, self.backend, last)
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn list_templates(
        &self,
        _request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let templates = self.templates.find_all().await.map_err(store_error)?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: templates.iter().map(convert::template_to_proto).collect(),
        }))
    }

    async fn put_template(
        &self,
        request: Request<pb::PutTemplateRequest>,
    ) -> Result<Response<pb::PutTemplateResponse>, Status> {
        let template = request
            .into_inner()
            .template
            .ok_or_else(|| Status::invalid_argument("template: expected a template"))?;
        let template = convert::template_from_proto(template).map_err(Status::invalid_argument)?;
        let replaced = self
            .templates
            .find_by_id(template.id())
            .await
            .map_err(store_error)?
            .is_some();
        let saved = self.templates.save(template).await.map_err(store_error)?;
        Ok(Response::new(pb::PutTemplateResponse {
            template: Some(convert::template_to_proto(&saved)),
            replaced,
        }))
    }

    async fn delete_template(
        &self,
        request: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<pb::DeleteTemplateResponse>, Status> {
        let id = request.into_inner().id;
        let id = TemplateId::new(id.as_str())
            .map_err(|e| Status::invalid_argument(format!("id: {e}")))?;
        match self.templates.delete(&id).await {
            Ok(()) => Ok(Response::new(pb::DeleteTemplateResponse {})),
            Err(e @ TemplateRepositoryError::NotFound(_)) => Err(Status::not_found(e.to_string())),
            Err(e) => Err(store_error(e)),
        }
    }
}
