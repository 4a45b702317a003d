//! The tasks entries run in. An entry is handed to an idle runner, a tokio task that outlives
//! its entry and then waits for the next, rather than to a task of its own: tokio allocates
//! each task aligned to 128 bytes, and glibc serves such an allocation on its slow path, which
//! made a task per entry about a tenth of the worker's instructions (BENCHMARKS.md, "Runners
//! that outlive their entry").
//!
//! A runner is started only when no runner is idle, so there are never more than the entries
//! running or being settled at once, as with a task per entry (on a multi-threaded runtime,
//! runners on their way to wait or to end can briefly add a few). A runner done with its entry
//! waits for the next unless `keep` runners wait already (then it ends: a burst of entries
//! being settled leaves no more than that behind), and every waiting runner ends when the
//! pool is closed, at shutdown.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The idle runners, and the slot each waits on.
#[derive(Debug)]
pub(crate) struct Runners<J> {
    idle: Mutex<Idle<J>>,
    /// How many runners may wait at once.
    keep: usize,
}

#[derive(Debug)]
struct Idle<J> {
    waiting: Vec<Arc<Slot<J>>>,
    closed: bool,
}

/// Where one runner is handed its next job.
#[derive(Debug)]
pub(crate) struct Slot<J> {
    job: Mutex<Option<J>>,
    ready: Notify,
}

impl<J> Default for Slot<J> {
    fn default() -> Self {
        Self {
            job: Mutex::new(None),
            ready: Notify::new(),
        }
    }
}

impl<J> Runners<J> {
    /// At most `keep` runners wait for work at once.
    pub fn new(keep: usize) -> Self {
        Self {
            idle: Mutex::new(Idle {
                waiting: Vec::with_capacity(keep),
                closed: false,
            }),
            keep,
        }
    }

    /// Hands `job` to a waiting runner; gives it back when none waits (start one for it).
    pub fn hand(&self, job: J) -> Result<(), J> {
        let Some(slot) = self.idle().waiting.pop() else {
            return Err(job);
        };
        *lock(&slot.job) = Some(job);
        slot.ready.notify_one();
        Ok(())
    }

    /// Waits on `slot` for the runner's next job. `None`: the runner ends (the pool is closed,
    /// or `keep` runners wait already).
    pub async fn next(&self, slot: &Arc<Slot<J>>) -> Option<J> {
        {
            let mut idle = self.idle();
            if idle.closed || idle.waiting.len() >= self.keep {
                return None;
            }
            idle.waiting.push(Arc::clone(slot));
        }
        // A job handed before this wait began has stored its notification: nothing is missed.
        slot.ready.notified().await;
        lock(&slot.job).take()
    }

    /// No job comes after this: the waiting runners end, and so does each busy one when its
    /// entry is done. Returns how many were waiting.
    pub fn close(&self) -> usize {
        let waiting = {
            let mut idle = self.idle();
            idle.closed = true;
            std::mem::take(&mut idle.waiting)
        };
        for slot in &waiting {
            slot.ready.notify_one();
        }
        waiting.len()
    }

    fn idle(&self) -> MutexGuard<'_, Idle<J>> {
        lock(&self.idle)
    }
}

/// Closes the pool when dropped: idle runners end with the worker even when its future is
/// dropped before the end.
pub(crate) struct CloseOnDrop<'a, J>(pub &'a Runners<J>);

impl<J> Drop for CloseOnDrop<'_, J> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Nothing panics while these locks are held, so a poisoned one holds what it held.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::{sync::mpsc, task::JoinSet};

    use super::*;

    /// Runners that send each job with their task's id, as the dispatcher's would run it.
    fn start(
        runners: &Arc<Runners<u32>>,
        set: &mut JoinSet<()>,
        done: &mpsc::UnboundedSender<(u32, tokio::task::Id)>,
        job: u32,
    ) {
        if let Err(job) = runners.hand(job) {
            let runners = Arc::clone(runners);
            let done = done.clone();
            set.spawn(async move {
                let slot = Arc::new(Slot::default());
                let mut job = job;
                loop {
                    tokio::task::yield_now().await;
                    done.send((job, tokio::task::id())).expect("receiver kept");
                    match runners.next(&slot).await {
                        Some(next) => job = next,
                        None => return,
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn jobs_one_after_another_share_one_runner_and_none_is_lost() {
        let runners = Arc::new(Runners::new(4));
        let mut set = JoinSet::new();
        let (done, mut finished) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for job in 0..50 {
            start(&runners, &mut set, &done, job);
            let (ran, task) = finished.recv().await.expect("a runner");
            assert_eq!(ran, job);
            tasks.push(task);
            // Let the runner reach its wait before the next job comes.
            tokio::task::yield_now().await;
        }
        tasks.dedup();
        assert_eq!(tasks.len(), 1, "one runner ran them all: {tasks:?}");
        assert_eq!(set.len(), 1);

        assert_eq!(runners.close(), 1);
        while set.join_next().await.is_some() {}
        assert!(
            runners.hand(99).is_err(),
            "no runner waits in a closed pool: a job starts a new one"
        );
    }

    #[tokio::test]
    async fn a_burst_starts_runners_and_leaves_no_more_than_keep_waiting() {
        let runners = Arc::new(Runners::new(3));
        let mut set = JoinSet::new();
        let (done, mut finished) = mpsc::unbounded_channel();
        for job in 0..10 {
            start(&runners, &mut set, &done, job);
        }
        let mut ran: Vec<u32> = Vec::new();
        for _ in 0..10 {
            ran.push(finished.recv().await.expect("a runner").0);
        }
        ran.sort_unstable();
        assert_eq!(ran, (0..10).collect::<Vec<_>>(), "every job ran once");
        // Seven of the ten runners find three waiting and end.
        for _ in 0..7 {
            set.join_next()
                .await
                .expect("a runner ends")
                .expect("no panic");
        }
        assert_eq!(set.len(), 3);
        assert_eq!(runners.close(), 3);
        while set.join_next().await.is_some() {}
        assert!(finished.try_recv().is_err(), "no job ran twice");
    }
}
