//! [`SystemClock`]: the real time and tokio timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hodei_application::clock::Clock;
use hodei_domain::Timestamp;

/// Reads the system time; sleeps with `tokio::time::sleep`, so tests that
/// pause tokio's time also control its timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The clock.
    pub fn new() -> Self {
        SystemClock
    }
}

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2024_and_does_not_go_back() {
        let clock = SystemClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(a > Timestamp(1_704_067_200_000), "{a}");
        assert!(b >= a);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_follows_tokio_time() {
        let start = tokio::time::Instant::now();
        SystemClock::new().sleep(Duration::from_secs(90)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(90));
    }
}
