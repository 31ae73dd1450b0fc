//! `meta/v1` `Status` answers, shaped exactly as the real API server
//! shapes them (`kind`, `apiVersion`, `metadata`, `status`, `message`,
//! `reason`, `details`, `code`).

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::Kind;

/// A failed API call: what the server answers instead of an object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `404 NotFound`: `pods "x" not found`.
    pub fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural()),
        )
        .with_details(json!({"name": name, "kind": kind.plural()}))
    }

    /// `409 AlreadyExists`: `pods "x" already exists`.
    pub fn already_exists(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.plural()),
        )
        .with_details(json!({"name": name, "kind": kind.plural()}))
    }

    /// `409 Conflict` of an update against a stale `resourceVersion`.
    pub fn conflict(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.plural()
            ),
        )
        .with_details(json!({"name": name, "kind": kind.plural()}))
    }

    /// `422 Invalid` with one cause per field error, as the API server's
    /// validation reports them (`Pod "x" is invalid: [a, b]`).
    pub fn invalid(kind: Kind, name: &str, causes: &[FieldError]) -> Self {
        let list: Vec<String> = causes.iter().map(FieldError::to_string).collect();
        let summary = match list.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason(), "message": c.detail(), "field": c.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", kind.kind()),
        )
        .with_details(json!({"name": name, "kind": kind.kind(), "causes": causes}))
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `404 NotFound` for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({
            "causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]
        }))
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// `415 UnsupportedMediaType` of a PATCH with an unknown content type.
    pub fn unsupported_patch(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    /// `413 RequestEntityTooLarge`.
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "the request body is larger than the fake API server accepts",
        )
    }

    /// `503 ServiceUnavailable`, answered while the server is made
    /// unavailable.
    pub fn unavailable() -> Self {
        Self::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
    }

    /// `410 Expired`: a watch from a `resourceVersion` older than the kept
    /// history (`too old resource version: 3 (10)`).
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object.
    pub fn to_value(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.to_value())
    }
}

/// A JSON answer with `code`.
pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(value.to_string()))
        .unwrap_or_else(|_| code.into_response())
}

/// A `Status` of success about one deleted object (what DELETE of a secret
/// answers).
pub(crate) fn success(kind: Kind, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": kind.plural(), "uid": uid},
    })
}

/// One validation failure of one field, printed as the API server prints
/// it (`spec.containers[0].image: Required value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    Required(String),
    Invalid {
        value: String,
        why: String,
    },
    Duplicate(String),
    NotFound(String),
    NotSupported {
        value: String,
        supported: Vec<String>,
    },
    Forbidden(String),
}

impl FieldError {
    pub fn required(field: impl Into<String>, why: &str) -> Self {
        Self {
            field: field.into(),
            problem: Problem::Required(why.to_owned()),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &str, why: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: Problem::Invalid {
                value: value.to_owned(),
                why: why.into(),
            },
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            field: field.into(),
            problem: Problem::Duplicate(value.to_owned()),
        }
    }

    pub fn not_found(field: impl Into<String>, value: &str) -> Self {
        Self {
            field: field.into(),
            problem: Problem::NotFound(value.to_owned()),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        Self {
            field: field.into(),
            problem: Problem::NotSupported {
                value: value.to_owned(),
                supported: supported.iter().map(|s| (*s).to_owned()).collect(),
            },
        }
    }

    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: Problem::Forbidden(why.into()),
        }
    }

    fn reason(&self) -> &'static str {
        match self.problem {
            Problem::Required(_) => "FieldValueRequired",
            Problem::Invalid { .. } => "FieldValueInvalid",
            Problem::Duplicate(_) => "FieldValueDuplicate",
            Problem::NotFound(_) => "FieldValueNotFound",
            Problem::NotSupported { .. } => "FieldValueNotSupported",
            Problem::Forbidden(_) => "FieldValueForbidden",
        }
    }

    /// The message without the field (a cause's `message`).
    fn detail(&self) -> String {
        match &self.problem {
            Problem::Required(why) if why.is_empty() => "Required value".to_owned(),
            Problem::Required(why) => format!("Required value: {why}"),
            Problem::Invalid { value, why } => format!("Invalid value: {value:?}: {why}"),
            Problem::Duplicate(value) => format!("Duplicate value: {value:?}"),
            Problem::NotFound(value) => format!("Not found: {value:?}"),
            Problem::NotSupported { value, supported } => {
                let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!(
                    "Unsupported value: {value:?}: supported values: {}",
                    quoted.join(", ")
                )
            }
            Problem::Forbidden(why) => format!("Forbidden: {why}"),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_has_the_real_servers_shape() {
        let status = ApiError::not_found(Kind::Pod, "x").to_value();
        assert_eq!(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "pods \"x\" not found", "reason": "NotFound",
                "details": {"name": "x", "kind": "pods"}, "code": 404
            })
        );
    }

    #[test]
    fn invalid_lists_every_cause() {
        let one = ApiError::invalid(
            Kind::Pod,
            "p",
            &[FieldError::required("spec.containers", "")],
        );
        assert_eq!(
            one.message,
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        let two = ApiError::invalid(
            Kind::Pod,
            "p",
            &[
                FieldError::required("spec.containers[0].image", ""),
                FieldError::duplicate("spec.containers[1].name", "a"),
            ],
        );
        assert_eq!(
            two.message,
            "Pod \"p\" is invalid: [spec.containers[0].image: Required value, \
             spec.containers[1].name: Duplicate value: \"a\"]"
        );
        let causes = &two.to_value()["details"]["causes"];
        assert_eq!(causes[1]["reason"], "FieldValueDuplicate");
        assert_eq!(causes[1]["field"], "spec.containers[1].name");
    }
}
