//! Hodei's domain: the values every other crate speaks in.
//!
//! This crate is pure. It knows nothing of tokio, tonic, kube, bollard or the
//! file system: every type here is built from strings and numbers, validates
//! itself in its constructor, and can be tested without a runtime.
