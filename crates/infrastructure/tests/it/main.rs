//! Integration tests of the infrastructure adapters, with real processes.

mod local;
mod manager;
