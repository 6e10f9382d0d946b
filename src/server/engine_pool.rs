//! Where the engine runs: on tokio's blocking threads, a bounded number at once, behind a
//! bounded queue, within a deadline.
//!
//! The engine is pure and synchronous. Run inline on the async workers, one slow review (a pod
//! built to be expensive, a heavy template) would stall every connection served by that worker.
//! Here it runs on a thread of its own, and:
//! - at most `workers` reviews run at once, so engine work never takes more threads than that;
//! - at most `queue` more wait for one; a review over that is answered at once with
//!   [`PoolError::Busy`], so that under overload the API server gets a quick error (and its
//!   `failurePolicy` applies) instead of a timeout;
//! - a review not answered within `deadline` (waiting included) gets [`PoolError::Deadline`],
//!   set below the API server's webhook timeout so the error reaches it.
//!
//! A review past its deadline cannot be stopped (the engine has no cancellation points); it keeps
//! its thread and its worker slot until it finishes, so overrunning work never exceeds
//! `workers` threads. What makes each review finish is the engine's own bounds: the pre-scan of
//! parsed annotation values (`inject::prescan`) and the body size limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Reviews waiting for a worker at most, by default. A waiting review holds only its body, which
/// the body budget bounds; what the queue is for is a quick refusal when the wait would run past
/// the deadline, and 1,024 reviews are about a second of work for one worker. A queue of 32 per
/// worker refused the bursts a ReplicaSet scale-up sends (64 reviews at once on a one-core pod).
pub const DEFAULT_QUEUE: usize = 1024;

/// The default deadline: below the 10 s `timeoutSeconds` of the webhook configuration, with
/// room for the answer to travel.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(8);

/// The pool's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Reviews the engine works on at once.
    pub workers: usize,
    /// Reviews waiting for a worker at most.
    pub queue: usize,
    /// Longest time from a review's arrival at the pool to its answer.
    pub deadline: Duration,
}

impl Default for EngineLimits {
    /// One worker per CPU.
    fn default() -> EngineLimits {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        EngineLimits {
            workers,
            queue: DEFAULT_QUEUE,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// Why the pool did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "the injector is busy: {workers} reviews are being answered and {queue} are waiting, the most it takes; retry, or add replicas"
    )]
    Busy { workers: usize, queue: usize },
    #[error("the review was not answered within the injector's deadline of {0:?}")]
    Deadline(Duration),
    #[error("the review failed inside the injector: {0}")]
    Failed(String),
}

/// The engine's threads and queue, shared by every connection.
#[derive(Debug)]
pub struct EnginePool {
    limits: EngineLimits,
    /// One per review that runs or waits: `workers + queue`.
    admitted: Arc<Semaphore>,
    /// One per review that runs.
    workers: Arc<Semaphore>,
    capacity: usize,
}

impl EnginePool {
    pub fn new(limits: EngineLimits) -> EnginePool {
        let workers = limits.workers.clamp(1, Semaphore::MAX_PERMITS / 2);
        let queue = limits.queue.min(Semaphore::MAX_PERMITS / 2);
        let limits = EngineLimits {
            workers,
            queue,
            ..limits
        };
        EnginePool {
            limits,
            admitted: Arc::new(Semaphore::new(workers + queue)),
            workers: Arc::new(Semaphore::new(workers)),
            capacity: workers + queue,
        }
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Reviews running or waiting now, those past their deadline and still running included.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }

    /// Runs `work` on a blocking thread once a worker is free; see the module comment for the
    /// errors.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(PoolError::Busy {
                workers: self.limits.workers,
                queue: self.limits.queue,
            });
        };
        let workers = self.workers.clone();
        let answer = async move {
            // Never closed, so this only waits.
            let worker = workers
                .acquire_owned()
                .await
                .map_err(|e| PoolError::Failed(e.to_string()))?;
            // Both slots go with the work: released when it ends, not when its caller stops
            // waiting.
            tokio::task::spawn_blocking(move || {
                let held = (admitted, worker);
                let out = work();
                drop(held);
                out
            })
            .await
            .map_err(|e| PoolError::Failed(e.to_string()))
        };
        match tokio::time::timeout(self.limits.deadline, answer).await {
            Ok(result) => result,
            Err(_) => Err(PoolError::Deadline(self.limits.deadline)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn pool(workers: usize, queue: usize, deadline: Duration) -> Arc<EnginePool> {
        Arc::new(EnginePool::new(EngineLimits {
            workers,
            queue,
            deadline,
        }))
    }

    /// Work that runs until the test lets it go.
    fn gated() -> (mpsc::Sender<()>, impl FnOnce() -> u32 + Send + 'static) {
        let (tx, rx) = mpsc::channel::<()>();
        (tx, move || {
            let _ = rx.recv();
            7
        })
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        for _ in 0..2_000 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("gave up waiting for {what}");
    }

    #[tokio::test]
    async fn over_the_queue_a_review_is_refused_at_once() {
        let pool = pool(1, 1, Duration::from_secs(600));
        let (release_a, a) = gated();
        let (release_b, b) = gated();
        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(a).await }
        });
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(b).await }
        });
        until("two reviews in the pool", || pool.in_flight() == 2).await;
        let refused = pool.run(|| 1).await;
        assert_eq!(
            refused,
            Err(PoolError::Busy {
                workers: 1,
                queue: 1
            })
        );
        assert!(!running.is_finished() && !waiting.is_finished());
        release_a.send(()).unwrap();
        release_b.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(7));
        assert_eq!(waiting.await.unwrap(), Ok(7));
        assert_eq!(pool.in_flight(), 0);
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }

    #[tokio::test]
    async fn work_past_its_deadline_keeps_its_worker_until_it_ends() {
        let pool = pool(1, 4, Duration::from_millis(50));
        let (release, slow) = gated();
        assert_eq!(
            pool.run(slow).await,
            Err(PoolError::Deadline(Duration::from_millis(50)))
        );
        // Still running: the next review waits for the worker and misses its deadline too.
        assert_eq!(pool.in_flight(), 1);
        assert_eq!(
            pool.run(|| 1).await,
            Err(PoolError::Deadline(Duration::from_millis(50)))
        );
        release.send(()).unwrap();
        until("the slow work to end", || pool.in_flight() == 0).await;
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_frees_its_slots() {
        let pool = pool(1, 0, Duration::from_secs(600));
        let failed = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(failed, Err(PoolError::Failed(_))), "{failed:?}");
        assert_eq!(pool.in_flight(), 0);
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
