//! The client API's bearer token: with `client_token` configured, every
//! `JobService` and `AdminService` call must carry
//! `authorization: Bearer <token>`. `WorkerService` is not covered: workers
//! prove who they are with their own tokens in `Hello`.
//!
//! The token is compared in constant time, and no refusal (nor log line)
//! repeats what the client sent.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::worker_service::constant_time_eq;
use crate::config::Secret;

/// The metadata key carrying the token.
const AUTHORIZATION: &str = "authorization";

/// A tonic interceptor refusing calls without the configured bearer token;
/// with no token configured it lets every call through.
#[derive(Debug, Clone)]
pub struct RequireBearer {
    token: Option<Arc<Secret>>,
}

impl RequireBearer {
    /// Requires `token` when it is `Some`.
    pub fn new(token: Option<Secret>) -> Self {
        RequireBearer {
            token: token.map(Arc::new),
        }
    }

    /// Checks one call's metadata.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when the token is missing, malformed or wrong.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(value) = metadata.get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this server requires a bearer token (authorization: Bearer <token>); \
                 hodei clients send it from --token or HODEI_TOKEN",
            ));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "));
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "the authorization header is not of the form \"Bearer <token>\"",
            ));
        };
        if constant_time_eq(expected.expose().as_bytes(), presented) {
            Ok(())
        } else {
            tracing::warn!("client call refused: wrong bearer token");
            Err(Status::unauthenticated(
                "wrong bearer token (expected the server's client_token)",
            ))
        }
    }
}

impl Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::{MetadataMap, MetadataValue};

    use super::*;

    fn with(value: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = value {
            map.insert(AUTHORIZATION, MetadataValue::try_from(value).unwrap());
        }
        map
    }

    #[test]
    fn the_bearer_token_is_required_only_when_configured() {
        let open = RequireBearer::new(None);
        assert!(open.check(&with(None)).is_ok());
        assert!(open.check(&with(Some("Bearer anything"))).is_ok());

        let guarded = RequireBearer::new(Secret::new("t0ken-s3cret"));
        let refused = |value: Option<&str>, expected: &str| {
            let status = guarded.check(&with(value)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(
                status.message().contains(expected),
                "{} should contain {expected:?}",
                status.message()
            );
            assert!(!status.message().contains("t0ken"), "{}", status.message());
        };
        refused(None, "requires a bearer token");
        refused(Some("t0ken-s3cret"), "not of the form");
        refused(Some("Basic t0ken-s3cret"), "not of the form");
        refused(Some("Bearer t0ken-s3creT"), "wrong bearer token");
        refused(Some("Bearer t0ken-s3cret "), "wrong bearer token");
        refused(Some("Bearer "), "wrong bearer token");
        assert!(guarded.check(&with(Some("Bearer t0ken-s3cret"))).is_ok());
        assert!(guarded.check(&with(Some("bearer t0ken-s3cret"))).is_ok());
    }
}
