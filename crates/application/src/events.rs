//! The [`EventPublisher`] port: where domain events go.
//!
//! Publishing never fails from the caller's point of view: an event nobody
//! listens to is dropped, and an adapter that cannot deliver logs it. How
//! watchers subscribe is the adapter's business.

use async_trait::async_trait;
use hodei_domain::DomainEvent;

/// Publishes domain events. Used as `Arc<dyn EventPublisher>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Hands `event` to every current subscriber.
    async fn publish(&self, event: DomainEvent);
}
