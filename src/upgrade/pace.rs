//! The cluster-wide pace of a rollout: at most N pods restarted per minute, so the API server,
//! the scheduler and the control plane (every new proxy connects to istiod and fetches its
//! configuration) are never flooded.
//!
//! A workload is charged with all its pods when its restart starts. It may start when the pods
//! charged in the last 60 s plus its own are at most N; a workload with more than N pods starts
//! only when nothing else was charged in the last 60 s. So no 60 s window ever holds more than
//! N pods, except one oversized workload alone. (A token bucket holding a minute's worth would
//! let a window hold up to 2N: a full bucket spent, then a minute of refill.)
//!
//! Pure: the caller passes the time (since any fixed origin) and sleeps. Memory: one entry per
//! workload started in the last minute.

use std::collections::VecDeque;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// The pod budget.
#[derive(Debug, Clone)]
pub struct Budget {
    per_minute: u64,
    /// (start, pods) of the workloads started in the last minute, oldest first.
    started: VecDeque<(Duration, u64)>,
}

impl Budget {
    /// A budget of `per_minute` pods (at least 1) in any minute.
    pub fn new(per_minute: u32) -> Budget {
        Budget {
            per_minute: u64::from(per_minute.max(1)),
            started: VecDeque::new(),
        }
    }

    /// The pods per minute.
    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    fn in_window(&self, now: Duration) -> impl Iterator<Item = &(Duration, u64)> {
        self.started.iter().filter(move |(t, _)| *t + MINUTE > now)
    }

    /// How long from `now` until `pods` may start (zero: now).
    pub fn wait(&self, pods: u64, now: Duration) -> Duration {
        let mut used: u64 = self.in_window(now).map(|(_, n)| n).sum();
        let fits = |used: u64| used == 0 || used.saturating_add(pods) <= self.per_minute;
        if fits(used) {
            return Duration::ZERO;
        }
        // Wait until enough of the window's workloads have left it.
        for (t, n) in self.in_window(now) {
            used -= n;
            if fits(used) {
                return (*t + MINUTE).saturating_sub(now);
            }
        }
        Duration::ZERO
    }

    /// Charges `pods` started at `now` (call once [`Budget::wait`] says zero).
    pub fn take(&mut self, pods: u64, now: Duration) {
        while self
            .started
            .front()
            .is_some_and(|(t, _)| *t + MINUTE <= now)
        {
            self.started.pop_front();
        }
        if pods > 0 {
            self.started.push_back((now, pods));
        }
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

    /// The most pods started in any 60 s window.
    fn busiest_minute(sizes: &[u64], starts: &[Duration]) -> u64 {
        starts
            .iter()
            .map(|&from| {
                starts
                    .iter()
                    .zip(sizes)
                    .filter(|(t, _)| **t >= from && **t < from + MINUTE)
                    .map(|(_, n)| n)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_minute_holds_the_budget_and_no_more() {
        assert_eq!(
            schedule(30, &[10, 10, 10, 10, 10, 10]),
            [S(0), S(0), S(0), S(60), S(60), S(60)]
        );
        assert_eq!(schedule(30, &[20, 20, 5]), [S(0), S(60), S(60)]);
    }

    #[test]
    fn a_workload_bigger_than_the_budget_runs_alone_in_its_minute() {
        assert_eq!(schedule(30, &[50, 10]), [S(0), S(60)]);
        assert_eq!(schedule(30, &[10, 50, 10]), [S(0), S(60), S(120)]);
    }

    #[test]
    fn no_window_exceeds_the_budget_and_the_budget_is_used() {
        let sizes: Vec<u64> = (0..300).map(|i| (i * 7 % 13) + 1).collect();
        let starts = schedule(30, &sizes);
        assert!(busiest_minute(&sizes, &starts) <= 30);
        // Not slower than it must be: every start came when the window had no room.
        let total: u64 = sizes.iter().sum();
        let minutes = starts.last().unwrap().as_secs() / 60 + 1;
        assert!(
            total > (minutes - 1) * 30 * 2 / 3,
            "{total} pods in {minutes} minutes"
        );
    }

    #[test]
    fn idle_time_does_not_bank_more_than_a_minute() {
        let mut b = Budget::new(60);
        b.take(60, S(0));
        assert_eq!(b.wait(1, S(30)), S(30));
        let later = S(3600);
        assert_eq!(b.wait(60, later), Duration::ZERO);
        b.take(60, later);
        assert_eq!(b.wait(1, later), S(60));
    }
}
