//! A client-side rate limit for the Kubernetes API: a token bucket of
//! `burst` tokens refilled at `qps` per second, as a tower layer in front
//! of the `kube` client, so every request (creates, deletes, the watcher's
//! lists and watches, log reads) waits its turn and the API server never
//! sees more than `burst + qps × t` requests in any `t` seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// A token bucket: `burst` requests at once, then `qps` per second.
/// Requests reserve a token and wait until it exists, so they are served
/// in order and the rate holds however many arrive at once.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    /// Tokens available at the instant (negative: reserved ahead).
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket. A `qps` of zero or less (or not finite) counts as 1,
    /// a `burst` of zero as 1.
    pub fn new(qps: f64, burst: u32) -> Self {
        let qps = if qps.is_finite() && qps > 0.0 {
            qps
        } else {
            1.0
        };
        let burst = f64::from(burst.max(1));
        TokenBucket {
            qps,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token; returns how long to wait until it is due (zero when
    /// one was available).
    pub fn reserve(&self) -> Duration {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.qps).min(self.burst);
        let left = refilled - 1.0;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.qps)
        }
    }
}

/// The [`Layer`] putting a [`TokenBucket`] in front of a service.
#[derive(Debug, Clone)]
pub struct ThrottleLayer {
    bucket: Arc<TokenBucket>,
}

impl ThrottleLayer {
    /// A layer allowing `qps` requests per second with bursts of `burst`.
    pub fn new(qps: f64, burst: u32) -> Self {
        ThrottleLayer {
            bucket: Arc::new(TokenBucket::new(qps, burst)),
        }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            bucket: self.bucket.clone(),
            waiting: None,
            has_token: false,
        }
    }
}

/// A service that is ready only once it holds a token.
pub struct Throttle<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
    waiting: Option<Pin<Box<Sleep>>>,
    has_token: bool,
}

impl<S> std::fmt::Debug for Throttle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, Request> Service<Request> for Throttle<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.has_token {
            if self.waiting.is_none() {
                let wait = self.bucket.reserve();
                if wait.is_zero() {
                    self.has_token = true;
                } else {
                    self.waiting = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
            if let Some(sleep) = &mut self.waiting {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.waiting = None;
                self.has_token = true;
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.has_token = false;
        let future = self.inner.call(request);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let bucket = TokenBucket::new(10.0, 3);
        let waits: Vec<Duration> = (0..5).map(|_| bucket.reserve()).collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(200)
            ]
        );
        // After a second the reservations are paid and the bucket refilled
        // by at most its size.
        tokio::time::advance(Duration::from_secs(10)).await;
        let waits: Vec<Duration> = (0..4).map(|_| bucket.reserve()).collect();
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(100));
    }

    #[test]
    fn nonsense_rates_count_as_one() {
        let bucket = TokenBucket::new(f64::NAN, 0);
        assert_eq!(bucket.qps, 1.0);
        assert_eq!(bucket.burst, 1.0);
    }
}
