//! Integration tests of the infrastructure adapters, with real processes.

mod docker;
mod local;
mod manager;
