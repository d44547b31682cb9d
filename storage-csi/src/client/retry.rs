//! Timeouts and retries for CSI calls.
//!
//! Every attempt has a deadline. ABORTED (an operation is pending for the volume),
//! UNAVAILABLE (the driver is restarting or busy) and a missed deadline are retried with
//! exponential backoff, which the spec allows because every CSI call is idempotent; any
//! other status is returned at once with the driver's message.

use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

use crate::error::CsiError;

/// How long calls may take and how they are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deadline of one attempt.
    pub call_timeout: Duration,
    /// Attempts in all (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            call_timeout: Duration::from_secs(30),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `call` until it succeeds, fails for good, or attempts run out.
    pub async fn run<T, F, Fut>(
        &self,
        method: &'static str,
        object: &str,
        mut call: F,
    ) -> Result<T, CsiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let attempts = self.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match tokio::time::timeout(self.call_timeout, call()).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => {
                    let error = CsiError::Rpc {
                        method,
                        object: object.to_string(),
                        code: status.code(),
                        message: status.message().to_string(),
                    };
                    if !matches!(status.code(), Code::Aborted | Code::Unavailable) {
                        return Err(error);
                    }
                    error
                }
                Err(_) => CsiError::Timeout {
                    method,
                    object: object.to_string(),
                    after: self.call_timeout,
                },
            };
            if attempt >= attempts {
                return Err(error);
            }
            let wait = self.backoff(attempt);
            tracing::debug!(method, object, attempt, ?wait, %error, "retrying CSI call");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(10), Duration::from_secs(5));
        assert_eq!(policy.backoff(100), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn aborted_and_unavailable_are_retried_with_backoff() {
        let policy = RetryPolicy::default();
        let calls = Arc::new(AtomicU32::new(0));
        let start = tokio::time::Instant::now();
        let c = calls.clone();
        let value = policy
            .run("CreateVolume", "pvc-1", move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Err(Status::aborted("pending")),
                        1 => Err(Status::unavailable("restarting")),
                        _ => Ok(tonic::Response::new(7u32)),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(value, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn other_codes_fail_at_once_with_the_driver_message() {
        let policy = RetryPolicy::default();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let err = policy
            .run("CreateVolume", "pvc-1", move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { Err::<tonic::Response<()>, _>(Status::already_exists("other size")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.code(), Some(Code::AlreadyExists));
        assert!(err.to_string().contains("other size"));
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_has_a_deadline() {
        let policy = RetryPolicy {
            call_timeout: Duration::from_secs(1),
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let start = tokio::time::Instant::now();
        let err = policy
            .run("NodeStageVolume", "vol", || async {
                std::future::pending::<Result<tonic::Response<()>, Status>>().await
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CsiError::Timeout { .. }));
        assert_eq!(start.elapsed(), Duration::from_millis(2100));
    }
}
