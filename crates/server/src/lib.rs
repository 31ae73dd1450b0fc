//! The `hodei` binary's library half: the composition root (settings →
//! adapters → use cases → gRPC and HTTP services), kept in a library so
//! integration tests can start a whole server in-process on port 0.
//!
//! Only this crate and `hodei-worker` know protobuf; everything below speaks
//! domain types.

pub mod app;
pub mod config;
pub mod grpc;
pub mod http;
