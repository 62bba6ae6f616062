//! Byte-rate limits (shared by every torrent of a session) and smoothed
//! rate estimates.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Bytes a limiter cell stands for. Cells of 1 KiB keep the counts in u32
/// for any realistic rate.
const CELL: u64 = 1024;

/// Smallest limit we accept, in bytes per second: one 16 KiB block per
/// second. Below that a single block could not pass in a second, and the
/// ±10 % promise could not hold.
pub const MIN_LIMIT: u64 = 16 * 1024;

/// A byte-rate limit; `None` inside means unlimited.
#[derive(Clone, Debug, Default)]
pub struct Limit(Option<Arc<DefaultDirectRateLimiter>>);

impl Limit {
    /// A limit of `bytes_per_sec`, or no limit for 0. Rejects positive
    /// values under [`MIN_LIMIT`].
    pub fn new(bytes_per_sec: u64) -> Result<Self, String> {
        if bytes_per_sec == 0 {
            return Ok(Self(None));
        }
        if bytes_per_sec < MIN_LIMIT {
            return Err(format!(
                "{bytes_per_sec} B/s is below the smallest limit the engine honours ({MIN_LIMIT} B/s, one 16 KiB block a second)"
            ));
        }
        let cells =
            u32::try_from(bytes_per_sec / CELL).map_err(|_| "limit too large".to_string())?;
        let rate = NonZeroU32::new(cells).expect("at least 16 cells");
        // A burst of a quarter second (at least one block) keeps the
        // average within a few percent over 10 s without starving a block.
        let burst = NonZeroU32::new((cells / 4).max(16)).expect("non-zero");
        Ok(Self(Some(Arc::new(RateLimiter::direct(
            Quota::per_second(rate).allow_burst(burst),
        )))))
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: usize) {
        let Some(limiter) = &self.0 else { return };
        let mut cells = (bytes as u64).div_ceil(CELL) as u32;
        while cells > 0 {
            // Never ask for more than the burst in one go (governor refuses).
            let step = cells.min(16);
            let n = NonZeroU32::new(step).expect("non-zero");
            let _ = limiter.until_n_ready(n).await;
            cells -= step;
        }
    }
}

/// An exponentially smoothed rate, fed once per tick.
#[derive(Clone, Debug, Default)]
pub struct RateEstimate {
    rate: f64,
    pending: u64,
}

impl RateEstimate {
    /// Counts `bytes` toward the current tick.
    pub fn add(&mut self, bytes: u64) {
        self.pending += bytes;
    }

    /// Closes a tick of `secs` seconds.
    pub fn tick(&mut self, secs: f64) {
        let now = self.pending as f64 / secs.max(1e-3);
        self.rate = if self.rate == 0.0 {
            now
        } else {
            0.6 * self.rate + 0.4 * now
        };
        self.pending = 0;
    }

    /// Bytes per second.
    pub fn get(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_bounds() {
        assert!(Limit::new(0).unwrap().0.is_none());
        assert!(Limit::new(MIN_LIMIT - 1).is_err());
        assert!(Limit::new(MIN_LIMIT).unwrap().0.is_some());
    }

    #[tokio::test]
    async fn limit_paces_bytes() {
        let limit = Limit::new(256 * 1024).unwrap();
        let start = std::time::Instant::now();
        // burst is 64 KiB, so 64 KiB more needs about a quarter second
        limit.take(128 * 1024).await;
        assert!(start.elapsed() >= std::time::Duration::from_millis(150));
    }

    #[test]
    fn estimate_smooths() {
        let mut r = RateEstimate::default();
        r.add(1000);
        r.tick(1.0);
        assert_eq!(r.get(), 1000.0);
        r.tick(1.0);
        assert_eq!(r.get(), 600.0);
    }
}
