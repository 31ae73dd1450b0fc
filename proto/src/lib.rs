//! Hodei's gRPC protocol, generated from `proto/hodei/v1/*.proto`.
//!
//! This crate holds nothing but generated code: the prost messages and the
//! tonic clients and servers of the three services (`JobService` for
//! clients, `WorkerService` for workers, `AdminService` for operators). Only
//! the server and the worker depend on it; they convert to and from domain
//! types at their edge, by hand. The `.proto` files document every message
//! and field.

/// Version 1 of the protocol (`package hodei.v1`).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("hodei.v1");
}
