//! The HTTP API: one dispatcher over the paths of core/v1 pods and
//! secrets, so every request (also an unknown path or a bad body) gets a
//! `Status` answer and nothing panics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::docker::DockerRuntime;
use crate::patch::{self, PatchType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, FieldError, json_response, success};
use crate::store::{Kind, Store};
use crate::{RequestRecord, Shared, lock, pods, validation, watch};

/// Largest request body accepted.
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The router: every path goes to [`dispatch`].
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(dispatch).with_state(shared)
}

/// The query parameters (the last of a repeated one wins).
pub(crate) type Query = HashMap<String, String>;

fn parse_query(query: Option<&str>) -> Query {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    lock(&shared.requests).push(RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        at: std::time::Instant::now(),
    });
    if shared.unavailable.load(Ordering::SeqCst) {
        return ApiError::unavailable().into_response();
    }
    let query = parse_query(parts.uri.query());
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return ApiError::too_large().into_response();
    };
    let call = Call {
        shared: &shared,
        method: &parts.method,
        query: &query,
        headers: &parts.headers,
        body: &body,
    };
    match call.route(parts.uri.path()).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// One request being answered.
struct Call<'a> {
    shared: &'a Arc<Shared>,
    method: &'a Method,
    query: &'a Query,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

/// Sets `kind` and `apiVersion` of a stored object.
pub(crate) fn stamp_kind(object: &mut Value, kind: Kind) {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!("v1"));
        map.insert("kind".to_owned(), json!(kind.kind()));
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// Refuses a body (or patch result) that is not a JSON object.
fn require_object(value: Value, kind: Kind) -> Result<Value, ApiError> {
    if value.is_object() {
        return Ok(value);
    }
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    Err(ApiError::bad_request(format!(
        "{0} in version \"v1\" cannot be handled as a {0}: expected a JSON object, found {found}",
        kind.kind()
    )))
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn rv_of(object: &Value) -> &str {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Checks the `kind` and `apiVersion` a body states, if any.
fn check_type(object: &Value, kind: Kind) -> Result<(), ApiError> {
    if let Some(api_version) = object.get("apiVersion").and_then(Value::as_str)
        && api_version != "v1"
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version (v1)"
        )));
    }
    if let Some(stated) = object.get("kind").and_then(Value::as_str)
        && stated != kind.kind()
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({stated}) does not match the expected kind ({})",
            kind.kind()
        )));
    }
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(object: &Value, kind: Kind) -> Result<T, ApiError> {
    serde_json::from_value(object.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{0} in version \"v1\" cannot be handled as a {0}: {e}",
            kind.kind()
        ))
    })
}

fn to_stored<T: serde::Serialize>(object: &T, kind: Kind) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(object)
        .map_err(|e| ApiError::bad_request(format!("cannot encode the {}: {e}", kind.kind())))?;
    stamp_kind(&mut value, kind);
    Ok(value)
}

/// Moves a secret's `stringData` into `data`, as the API server does.
fn fold_string_data(secret: &mut Secret) {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (k, v) in strings {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
}

impl Call<'_> {
    async fn route(&self, path: &str) -> Result<Response, ApiError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            ["version"] => self.only(&[Method::GET]).map(|()| version()),
            ["healthz" | "livez" | "readyz"] => {
                self.only(&[Method::GET]).map(|()| "ok".into_response())
            }
            ["api"] => self.only(&[Method::GET]).map(|()| {
                ok(&json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
                }))
            }),
            ["api", "v1"] => self.only(&[Method::GET]).map(|()| resources()),
            ["api", "v1", plural] => {
                let kind = Kind::from_plural(plural).ok_or_else(ApiError::no_route)?;
                self.only(&[Method::GET])?;
                self.list(kind, None)
            }
            ["api", "v1", "namespaces", ns, plural] => {
                let kind = Kind::from_plural(plural).ok_or_else(ApiError::no_route)?;
                match *self.method {
                    Method::GET => self.list(kind, Some(ns)),
                    Method::POST => self.create(kind, ns),
                    Method::DELETE => self.delete_collection(kind, ns),
                    _ => Err(ApiError::method_not_allowed()),
                }
            }
            ["api", "v1", "namespaces", ns, plural, name] => {
                let kind = Kind::from_plural(plural).ok_or_else(ApiError::no_route)?;
                match *self.method {
                    Method::GET => self.get(kind, ns, name),
                    Method::PUT | Method::PATCH => self.update(kind, ns, name, false),
                    Method::DELETE => self.delete(kind, ns, name),
                    _ => Err(ApiError::method_not_allowed()),
                }
            }
            ["api", "v1", "namespaces", ns, "pods", name, "status"] => match *self.method {
                Method::GET => self.get(Kind::Pod, ns, name),
                Method::PUT | Method::PATCH => self.update(Kind::Pod, ns, name, true),
                _ => Err(ApiError::method_not_allowed()),
            },
            ["api", "v1", "namespaces", ns, "pods", name, "log"] => {
                self.only(&[Method::GET])?;
                self.log(ns, name).await
            }
            _ => Err(ApiError::no_route()),
        }
    }

    fn only(&self, methods: &[Method]) -> Result<(), ApiError> {
        if methods.contains(self.method) {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
        }
    }

    fn store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        self.shared.mutate(f)
    }

    fn selectors(&self, kind: Kind) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels =
            LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(
            kind,
            self.query.get("fieldSelector").map_or("", String::as_str),
        )?;
        Ok((labels, fields))
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Response, ApiError> {
        let (labels, fields) = self.selectors(kind)?;
        if self
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
        {
            return watch::start(
                self.shared.clone(),
                watch::Request {
                    kind,
                    namespace: namespace.map(str::to_owned),
                    labels,
                    fields,
                },
                self.query,
            );
        }
        let (objects, rv) = self
            .shared
            .read(|s| (s.list(kind, namespace), s.resource_version()));
        let mut items: Vec<&Value> = objects
            .iter()
            .map(|o| &**o)
            .filter(|o| labels.matches_object(o) && fields.matches_object(o))
            .collect();
        // Paging: the continue token is the namespace/name of the last
        // object sent.
        if let Some(after) = self.query.get("continue").filter(|c| !c.is_empty()) {
            let key = |o: &Value| {
                format!(
                    "{}/{}",
                    o.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    name_of(o)
                )
            };
            items.retain(|o| key(o).as_str() > after.as_str());
        }
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(limit) = self
            .query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            && items.len() > limit
        {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                metadata["continue"] = json!(format!(
                    "{}/{}",
                    last.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    name_of(last)
                ));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(ok(&json!({
            "kind": kind.list_kind(),
            "apiVersion": "v1",
            "metadata": metadata,
            "items": items,
        })))
    }

    fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Response, ApiError> {
        let object = self
            .shared
            .read(|s| s.get(kind, ns, name))
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        Ok(ok(&object))
    }

    fn create(&self, kind: Kind, ns: &str) -> Result<Response, ApiError> {
        let body = require_object(parse_json(self.body)?, kind)?;
        check_type(&body, kind)?;
        let mut meta: ObjectMeta = match body.get("metadata") {
            Some(m) => typed(m, kind)?,
            None => ObjectMeta::default(),
        };
        if meta
            .namespace
            .as_deref()
            .is_some_and(|n| !n.is_empty() && n != ns)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let generate = meta.name.as_deref().is_none_or(str::is_empty)
            && meta.generate_name.as_deref().is_some_and(|g| !g.is_empty());
        let dry_run = self.query.contains_key("dryRun");
        self.store(|store| {
            if generate {
                let prefix = meta.generate_name.clone().unwrap_or_default();
                let mut name = format!("{prefix}{}", validation::generated_suffix());
                for _ in 0..8 {
                    if !store.contains(kind, ns, &name) {
                        break;
                    }
                    name = format!("{prefix}{}", validation::generated_suffix());
                }
                meta.name = Some(name);
            }
            let name = meta.name.clone().unwrap_or_default();
            meta.namespace = Some(ns.to_owned());
            meta.uid = Some(uuid::Uuid::new_v4().to_string());
            meta.creation_timestamp = Some(pods::now());
            meta.resource_version = None;
            meta.deletion_timestamp = None;
            meta.deletion_grace_period_seconds = None;
            meta.managed_fields = None;
            meta.self_link = None;
            let mut object = body.clone();
            object["metadata"] = serde_json::to_value(&meta).unwrap_or_default();
            let stored = match kind {
                Kind::Pod => {
                    let mut pod: Pod = typed(&object, kind)?;
                    let errors = validation::validate_pod(&pod);
                    if !errors.is_empty() {
                        return Err(ApiError::invalid(kind, &name, &errors));
                    }
                    pods::admit(&mut pod, &self.shared.options.node_name);
                    to_stored(&pod, kind)?
                }
                Kind::Secret => {
                    let mut secret: Secret = typed(&object, kind)?;
                    fold_string_data(&mut secret);
                    secret.type_.get_or_insert_with(|| "Opaque".to_owned());
                    let errors = validation::validate_secret(&secret);
                    if !errors.is_empty() {
                        return Err(ApiError::invalid(kind, &name, &errors));
                    }
                    to_stored(&secret, kind)?
                }
            };
            if store.contains(kind, ns, &name) {
                return Err(ApiError::already_exists(kind, &name));
            }
            let saved = if dry_run {
                std::sync::Arc::new(stored)
            } else {
                let saved = store.insert(kind, ns, &name, stored);
                if kind == Kind::Pod
                    && let Some(kubelet) = &self.shared.kubelet
                {
                    let uid = saved
                        .pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    kubelet.spawn(self.shared.clone(), ns, &name, uid);
                }
                saved
            };
            Ok(json_response(StatusCode::CREATED, &saved))
        })
    }

    /// PUT or PATCH of an object or of a pod's status.
    fn update(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        status_only: bool,
    ) -> Result<Response, ApiError> {
        let body = parse_json(self.body)?;
        let patch_type = if *self.method == Method::PATCH {
            let content_type = self
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Some(
                PatchType::from_content_type(content_type)
                    .ok_or_else(|| ApiError::unsupported_patch(content_type))?,
            )
        } else {
            None
        };
        if patch_type == Some(PatchType::Apply)
            && self.query.get("fieldManager").is_none_or(String::is_empty)
        {
            return Err(ApiError::invalid(
                kind,
                name,
                &[FieldError::required(
                    "fieldManager",
                    "is required for apply patch",
                )],
            ));
        }
        self.store(|store| {
            let Some(current) = store.get(kind, ns, name) else {
                return Err(ApiError::not_found(kind, name));
            };
            let new = match patch_type {
                None => {
                    check_type(&body, kind)?;
                    body.clone()
                }
                Some(p) => {
                    let mut target = (*current).clone();
                    match p {
                        PatchType::Merge => patch::merge(&mut target, &body),
                        PatchType::Strategic | PatchType::Apply => {
                            patch::strategic(&mut target, &body)
                        }
                        PatchType::Json => patch::json_patch(&mut target, &body).map_err(|e| {
                            ApiError::invalid(kind, name, &[FieldError::invalid("patch", "", e)])
                        })?,
                    }
                    target
                }
            };
            let mut new = require_object(new, kind)?;
            let stated = name_of(&new);
            if !stated.is_empty() && stated != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({stated}) does not match the name on the URL ({name})"
                )));
            }
            let wanted_rv = if patch_type.is_some() {
                // A patch states a version only if it carries one itself.
                body.pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            } else {
                rv_of(&new)
            };
            if !wanted_rv.is_empty() && wanted_rv != rv_of(&current) {
                return Err(ApiError::conflict(kind, name));
            }
            let mut merged = (*current).clone();
            if status_only {
                merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            } else {
                // The object's system fields and (on the main resource)
                // its status stay the server's.
                for field in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generateName",
                ] {
                    match current.pointer(&format!("/metadata/{field}")) {
                        Some(v) => {
                            if let Some(meta) =
                                new.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                meta.insert(field.to_owned(), v.clone());
                            }
                        }
                        None => {
                            if let Some(meta) =
                                new.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                meta.remove(field);
                            }
                        }
                    }
                }
                if kind == Kind::Pod {
                    if let Some(status) = current.get("status") {
                        new["status"] = status.clone();
                    }
                    check_pod_update(&current, &new, name)?;
                }
                merged = new;
            }
            let stored = match kind {
                Kind::Pod => to_stored(&typed::<Pod>(&merged, kind)?, kind)?,
                Kind::Secret => {
                    let mut secret: Secret = typed(&merged, kind)?;
                    fold_string_data(&mut secret);
                    let old: Secret = typed(&current, kind)?;
                    secret.type_.get_or_insert_with(|| "Opaque".to_owned());
                    let mut errors = validation::validate_secret(&secret);
                    if secret.type_ != old.type_ {
                        errors.push(FieldError::invalid(
                            "type",
                            secret.type_.as_deref().unwrap_or_default(),
                            "field is immutable",
                        ));
                    }
                    if old.immutable == Some(true)
                        && (secret.data != old.data || secret.immutable != old.immutable)
                    {
                        errors.push(FieldError::forbidden(
                            "data",
                            "field is immutable when `immutable` is set",
                        ));
                    }
                    if !errors.is_empty() {
                        return Err(ApiError::invalid(kind, name, &errors));
                    }
                    to_stored(&secret, kind)?
                }
            };
            let mut unchanged = stored.clone();
            if let Some(meta) = unchanged.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".to_owned(), json!(rv_of(&current)));
            }
            if unchanged == *current {
                return Ok(ok(&current));
            }
            let saved = store
                .replace(kind, ns, name, stored)
                .ok_or_else(|| ApiError::not_found(kind, name))?;
            Ok(ok(&saved))
        })
    }

    /// The `DeleteOptions` of the body and query.
    fn delete_options(&self) -> Result<DeleteOptions, ApiError> {
        let body = if self.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            parse_json(self.body)?
        };
        let grace = self
            .query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| body.get("gracePeriodSeconds").and_then(Value::as_i64));
        Ok(DeleteOptions {
            grace,
            uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            graceful_manual: self.shared.options.graceful_manual_deletion,
            dry_run: self.query.contains_key("dryRun")
                || body.get("dryRun").is_some_and(|d| !d.is_null()),
        })
    }

    fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<Response, ApiError> {
        let options = self.delete_options()?;
        let kubelet = self.shared.kubelet.as_deref();
        let deleted = self.store(|store| delete_one(store, kind, ns, name, &options, kubelet))?;
        Ok(match kind {
            // Pods answer with the object, other kinds with a Status.
            Kind::Pod => ok(&deleted),
            Kind::Secret => {
                let uid = deleted
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                ok(&success(kind, name, uid))
            }
        })
    }

    fn delete_collection(&self, kind: Kind, ns: &str) -> Result<Response, ApiError> {
        let (labels, fields) = self.selectors(kind)?;
        let options = self.delete_options()?;
        let kubelet = self.shared.kubelet.as_deref();
        let items = self.store(|store| {
            let names: Vec<String> = store
                .list(kind, Some(ns))
                .iter()
                .filter(|o| labels.matches_object(o) && fields.matches_object(o))
                .map(|o| name_of(o).to_owned())
                .collect();
            let mut items = Vec::new();
            for name in names {
                let mut one = options.clone();
                one.uid = None;
                one.resource_version = None;
                if let Ok(object) = delete_one(store, kind, ns, &name, &one, kubelet) {
                    items.push(object);
                }
            }
            items
        });
        let rv = self.shared.read(Store::resource_version);
        Ok(ok(&json!({
            "kind": kind.list_kind(),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        })))
    }

    async fn log(&self, ns: &str, name: &str) -> Result<Response, ApiError> {
        let pod = self
            .shared
            .read(|s| s.get(Kind::Pod, ns, name))
            .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
        let pod: Pod = typed(&pod, Kind::Pod)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let main: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let container = match self.query.get("container").filter(|c| !c.is_empty()) {
            Some(c) => c.clone(),
            None if main.len() == 1 => main[0].to_owned(),
            None => {
                let mut message = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                );
                if !init.is_empty() {
                    message.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                return Err(ApiError::bad_request(message));
            }
        };
        if !main.contains(&container.as_str()) && !init.contains(&container.as_str()) {
            return Err(ApiError::bad_request(format!(
                "container {container} is not valid for pod {name}"
            )));
        }
        let tail = self
            .query
            .get("tailLines")
            .and_then(|t| t.parse::<usize>().ok());
        if let Some(kubelet) = &self.shared.kubelet
            && let Some(docker_name) = kubelet.container_of(ns, name, &container)
        {
            let follow = self
                .query
                .get("follow")
                .is_some_and(|f| f == "true" || f == "1");
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from_stream(kubelet.logs(&docker_name, tail, follow)))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
        let text = self.shared.read(|s| {
            s.logs
                .get(&(ns.to_owned(), name.to_owned(), container.clone()))
                .cloned()
        });
        let text = match text {
            Some(text) => text,
            None => {
                let status = pod.status.unwrap_or_default();
                let waiting = status
                    .init_container_statuses
                    .iter()
                    .flatten()
                    .chain(status.container_statuses.iter().flatten())
                    .find(|s| s.name == container)
                    .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone());
                let waiting = waiting.or_else(|| {
                    // No status yet: the kubelet has not started it.
                    (status.phase.as_deref() == Some("Pending"))
                        .then(|| "ContainerCreating".to_owned())
                });
                if let Some(reason) = waiting {
                    return Err(ApiError::bad_request(format!(
                        "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
                    )));
                }
                String::new()
            }
        };
        let text = match self
            .query
            .get("tailLines")
            .and_then(|t| t.parse::<usize>().ok())
        {
            Some(n) => tail_lines(&text, n),
            None => text,
        };
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(text))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    lines[lines.len().saturating_sub(n)..].concat()
}

/// What a DELETE asks.
#[derive(Debug, Clone, Default)]
struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
    /// The manual kubelet leaves deleted pods terminating.
    graceful_manual: bool,
}

/// Deletes one object. A pod the Docker kubelet runs is only marked
/// (`deletionTimestamp`) unless the grace period is 0: the kubelet removes
/// it once its containers are gone.
fn delete_one(
    store: &mut Store,
    kind: Kind,
    ns: &str,
    name: &str,
    options: &DeleteOptions,
    kubelet: Option<&DockerRuntime>,
) -> Result<Value, ApiError> {
    let current = store
        .get(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    let uid = current
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(wanted) = &options.uid
        && wanted != uid
    {
        return Err(ApiError {
            message: format!(
                "Precondition failed: UID in precondition: {wanted}, UID in object meta: {uid}"
            ),
            ..ApiError::conflict(kind, name)
        });
    }
    if let Some(wanted) = &options.resource_version
        && wanted != rv_of(&current)
    {
        return Err(ApiError {
            message: format!(
                "Precondition failed: ResourceVersion in precondition: {wanted}, ResourceVersion in object meta: {}",
                rv_of(&current)
            ),
            ..ApiError::conflict(kind, name)
        });
    }
    if options.dry_run {
        return Ok((*current).clone());
    }
    if kind == Kind::Pod && (kubelet.is_some() || options.graceful_manual) {
        let grace = options
            .grace
            .or_else(|| {
                current
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0);
        if let Some(kubelet) = kubelet {
            kubelet.stop(uid, grace);
        }
        if grace > 0 {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((*current).clone());
            }
            let mut terminating = (*current).clone();
            if let Some(meta) = terminating
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
            {
                meta.insert(
                    "deletionTimestamp".to_owned(),
                    serde_json::to_value(pods::seconds_from_now(grace)).unwrap_or_default(),
                );
                meta.insert("deletionGracePeriodSeconds".to_owned(), json!(grace));
            }
            let saved = store
                .replace(kind, ns, name, terminating)
                .ok_or_else(|| ApiError::not_found(kind, name))?;
            return Ok((*saved).clone());
        }
    }
    let gone = store
        .remove(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    Ok((*gone).clone())
}

/// The API server's rule for pod updates: only container images,
/// `activeDeadlineSeconds` and tolerations may change in the spec.
fn check_pod_update(current: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let mut old_spec = current.get("spec").cloned().unwrap_or(Value::Null);
    let new_spec = new.get("spec").cloned().unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        if let (Some(Value::Array(old)), Some(Value::Array(new))) =
            (old_spec.get_mut(list), new_spec.get(list))
            && old.len() == new.len()
        {
            for (o, n) in old.iter_mut().zip(new) {
                if let Some(image) = n.get("image") {
                    o["image"] = image.clone();
                }
            }
        }
    }
    for field in ["activeDeadlineSeconds", "tolerations"] {
        if let Some(map) = old_spec.as_object_mut() {
            match new_spec.get(field) {
                Some(v) => {
                    map.insert(field.to_owned(), v.clone());
                }
                None => {
                    map.remove(field);
                }
            }
        }
    }
    // A body without the defaults the server filled in means no change of them.
    let mut filled = new_spec.clone();
    if let (Some(f), Some(o)) = (filled.as_object_mut(), old_spec.as_object()) {
        for (k, v) in o {
            f.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if filled != old_spec && new_spec != Value::Null {
        return Err(ApiError::invalid(
            Kind::Pod,
            name,
            &[FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,\
                 `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,\
                 `spec.tolerations` (only additions to existing tolerations),\
                 `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
                 previously negative)",
            )],
        ));
    }
    Ok(())
}

fn version() -> Response {
    ok(&json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-kube-fake",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64"
    }))
}

fn resources() -> Response {
    let resource = |name: &str, kind: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
    ok(&json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("pods", "Pod", &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
            resource("pods/log", "Pod", &["get"]),
            resource("pods/status", "Pod", &["get", "patch", "update"]),
            resource("secrets", "Secret", &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
        ]
    }))
}
