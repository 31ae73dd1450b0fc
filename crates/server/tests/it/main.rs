//! Integration tests of the `hodei` binary.

mod cli_run;
mod cli_server;
mod docker;
mod e2e;
mod kubernetes;
mod manifests;
mod pipeline;
mod restart;
mod security;
mod static_workers;
mod support;
mod templates;
