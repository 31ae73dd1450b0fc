//! The [`Clock`] port: the time and timers, so use cases never read the
//! system clock themselves and their timers can be driven by tests (tokio's
//! paused time, or a mock).

use std::time::Duration;

use async_trait::async_trait;
use hodei_domain::Timestamp;

/// Tells the time and sleeps. Used as `Arc<dyn Clock>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Returns after `duration`.
    async fn sleep(&self, duration: Duration);
}
