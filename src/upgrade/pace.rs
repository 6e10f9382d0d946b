//! The cluster-wide pace of a rollout: at most N pods restarted per minute, so the API server,
//! the scheduler and the control plane (every new proxy connects to istiod and fetches its
//! configuration) are never flooded.
//!
//! A token bucket holding one minute's worth of pods, charged with a workload's pods when its
//! restart starts, written as the generic cell rate algorithm: `due` is when the bucket would be
//! full again (each pod costs `60 s / N`). A workload may start when the bucket holds its pods,
//! or is full when it has more pods than a minute's worth (it then leaves the bucket in debt,
//! which later workloads wait out). So by any time `t` after the start, at most `N + N·t/60 s`
//! pods have been restarted. Integer nanoseconds: no drift, however long the rollout.
//!
//! Pure: the caller passes the time (since any fixed origin) and sleeps.

use std::time::Duration;

/// The pod budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// The time one pod's token takes to come back.
    per_pod: Duration,
    /// One minute's worth of pods.
    capacity: u64,
    /// When the bucket would be full again; at or before `now` means full.
    due: Duration,
}

impl Budget {
    /// A full bucket of `per_minute` pods (at least 1).
    pub fn new(per_minute: u32) -> Budget {
        let per_minute = u64::from(per_minute.max(1));
        Budget {
            per_pod: Duration::from_nanos(60_000_000_000 / per_minute),
            capacity: per_minute,
            due: Duration::ZERO,
        }
    }

    /// The pods per minute.
    pub fn per_minute(&self) -> u64 {
        self.capacity
    }

    fn cost(&self, pods: u64) -> Duration {
        let nanos = u128::from(pods) * self.per_pod.as_nanos();
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long from `now` until `pods` may start (zero: now).
    pub fn wait(&self, pods: u64, now: Duration) -> Duration {
        let window = self.cost(self.capacity);
        let need = self.cost(pods.min(self.capacity));
        // Start allowed when due <= now + window - need.
        let allowed_from = self.due.saturating_sub(window.saturating_sub(need));
        allowed_from.saturating_sub(now)
    }

    /// Charges `pods` started at `now` (call once [`Budget::wait`] says zero).
    pub fn take(&mut self, pods: u64, now: Duration) {
        self.due = self.due.max(now) + self.cost(pods);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Starts workloads of the given sizes as soon as the budget allows; returns start times.
    fn schedule(per_minute: u32, sizes: &[u64]) -> Vec<Duration> {
        let mut b = Budget::new(per_minute);
        let mut now = Duration::ZERO;
        sizes
            .iter()
            .map(|&n| {
                now += b.wait(n, now);
                assert_eq!(b.wait(n, now), Duration::ZERO);
                b.take(n, now);
                now
            })
            .collect()
    }

    #[test]
    fn a_full_minute_then_the_steady_rate() {
        assert_eq!(
            schedule(30, &[10, 10, 10, 10, 10, 10]),
            [S(0), S(0), S(0), S(20), S(40), S(60)]
        );
    }

    #[test]
    fn a_workload_bigger_than_a_minute_waits_for_a_full_bucket_and_leaves_a_debt() {
        // 30/min: 50 pods start at once when the bucket is full, leaving it 20 pods short;
        // the next 10 wait until 30 pods' tokens (60 s) have come back.
        assert_eq!(schedule(30, &[50, 10]), [S(0), S(60)]);
        assert_eq!(schedule(30, &[10, 50]), [S(0), S(20)]);
    }

    #[test]
    fn never_more_than_a_minute_plus_the_rate() {
        let sizes: Vec<u64> = (0..200).map(|i| (i * 7 % 13) + 1).collect();
        let starts = schedule(30, &sizes);
        for (i, &t) in starts.iter().enumerate() {
            let started: u64 = sizes[..=i].iter().sum();
            let allowed = 30 + 30 * t.as_secs() / 60 + 13;
            assert!(started <= allowed, "{started} pods by {t:?}");
        }
        // ...and not slower than the rate either: 200 workloads of 7 pods on average.
        let total: u64 = sizes.iter().sum();
        let last = starts.last().unwrap().as_secs();
        assert!(last <= total * 2, "{last} s for {total} pods");
    }

    #[test]
    fn idle_time_does_not_bank_more_than_a_minute() {
        let mut b = Budget::new(60);
        b.take(60, S(0));
        let later = S(3600);
        assert_eq!(b.wait(60, later), Duration::ZERO);
        b.take(60, later);
        assert_eq!(b.wait(1, later), S(1));
    }
}
