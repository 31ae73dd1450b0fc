//! Integration tests of the fake Kubernetes API server through the real
//! `kube` client and kube-runtime's `watcher`.

mod docker;
mod outage;
mod pods;
mod secrets;
mod support;
mod watch;
