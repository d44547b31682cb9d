//! Wall-clock time that follows tokio's clock, so that timestamps written into objects
//! (creationTimestamp, startedAt, lastTransitionTime) move with virtual time in tests.
//!
//! [`Clock::now`] is the wall time at which the clock was made plus the tokio time elapsed
//! since: under `tokio::time::pause()` it advances only when the test advances time.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A wall clock driven by tokio's clock. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_base: SystemTime,
    tokio_base: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads the wall time now and advances with tokio's clock.
    pub fn new() -> Clock {
        Clock {
            wall_base: SystemTime::now(),
            tokio_base: tokio::time::Instant::now(),
        }
    }

    /// A clock that starts at `wall` (deterministic tests).
    pub fn starting_at(wall: SystemTime) -> Clock {
        Clock {
            wall_base: wall,
            tokio_base: tokio::time::Instant::now(),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> SystemTime {
        self.wall_base + self.tokio_base.elapsed()
    }

    /// The current time as a Kubernetes timestamp (second precision, as the API server keeps).
    pub fn now_k8s(&self) -> Time {
        to_k8s_time(self.now())
    }

    /// The wall time `d` from now.
    pub fn after(&self, d: Duration) -> SystemTime {
        self.now() + d
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A `SystemTime` as a Kubernetes timestamp, truncated to whole seconds.
pub fn to_k8s_time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// A Kubernetes timestamp as a `SystemTime`.
pub fn from_k8s_time(t: &Time) -> SystemTime {
    let secs = t.0.as_second();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Clock::starting_at(start);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        assert_eq!(
            from_k8s_time(&clock.now_k8s()),
            start + Duration::from_secs(90)
        );
    }
}
