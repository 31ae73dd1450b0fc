//! Integration tests of the worker library against a small in-test
//! `WorkerService` on 127.0.0.1, with real `sh` processes.

mod binary;
mod support;
mod worker;
