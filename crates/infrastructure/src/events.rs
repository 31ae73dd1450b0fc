//! [`BroadcastEventPublisher`]: domain events fanned out to every
//! subscriber over a tokio broadcast channel.

use async_trait::async_trait;
use hodei_application::events::EventPublisher;
use hodei_domain::DomainEvent;
use tokio::sync::broadcast;

/// Publishes each event to every current subscriber. A subscriber that
/// falls more than `capacity` events behind loses the oldest ones (its next
/// `recv` reports how many); publishing never waits.
#[derive(Debug, Clone)]
pub struct BroadcastEventPublisher {
    sender: broadcast::Sender<DomainEvent>,
}

impl BroadcastEventPublisher {
    /// Default number of events a slow subscriber may lag behind.
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// A publisher whose subscribers may lag `capacity` events behind
    /// (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        BroadcastEventPublisher { sender }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DomainEvent> {
        self.sender.subscribe()
    }

    /// How many subscribers are listening.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Default for BroadcastEventPublisher {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[async_trait]
impl EventPublisher for BroadcastEventPublisher {
    async fn publish(&self, event: DomainEvent) {
        tracing::debug!(event = event.name(), "domain event");
        // An error only means nobody listens right now.
        let _ = self.sender.send(event);
    }
}

#[cfg(test)]
mod tests {
    use hodei_domain::JobId;
    use tokio::sync::broadcast::error::RecvError;

    use super::*;

    fn started(job: &str) -> DomainEvent {
        DomainEvent::JobStarted {
            job: JobId::new(job).unwrap(),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event() {
        let publisher = BroadcastEventPublisher::default();
        publisher.publish(started("before")).await;
        let mut a = publisher.subscribe();
        let mut b = publisher.subscribe();
        assert_eq!(publisher.subscribers(), 2);
        publisher.publish(started("j-1")).await;
        publisher.publish(started("j-2")).await;
        for rx in [&mut a, &mut b] {
            assert_eq!(rx.recv().await.unwrap(), started("j-1"));
            assert_eq!(rx.recv().await.unwrap(), started("j-2"));
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_without_blocking_the_publisher() {
        let publisher = BroadcastEventPublisher::new(2);
        let mut rx = publisher.subscribe();
        for job in ["j-1", "j-2", "j-3"] {
            publisher.publish(started(job)).await;
        }
        assert_eq!(rx.recv().await, Err(RecvError::Lagged(1)));
        assert_eq!(rx.recv().await.unwrap(), started("j-2"));
    }
}
