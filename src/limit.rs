//! A counting limit whose maximum a reload can change: the HTTP listener's
//! `max-client-connections` and `max-requests-in-flight`.
//!
//! Why not tokio's `Semaphore`: its permits are fixed at creation, and
//! shrinking one means forgetting permits that may all be held, so a lower
//! limit would only take effect once that many were released. Here the
//! maximum is an atomic compared at each acquire: raising it admits waiters
//! at once, lowering it admits nobody new until the count is below it,
//! and nothing held is ever taken back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// At most `max` holders at once; `max` is live.
#[derive(Debug)]
pub struct LiveLimit {
    in_use: AtomicUsize,
    max: AtomicUsize,
    freed: Notify,
}

/// One unit of a [`LiveLimit`], given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<LiveLimit>);

impl LiveLimit {
    /// A limit of `max` (at least 1).
    pub fn new(max: usize) -> Arc<LiveLimit> {
        Arc::new(LiveLimit {
            in_use: AtomicUsize::new(0),
            max: AtomicUsize::new(max.max(1)),
            freed: Notify::new(),
        })
    }

    /// The maximum now.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// How many are held now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Changes the maximum (a reload); waiters re-check at once.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// A permit if one is free now, else `None`.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max.load(Ordering::Relaxed);
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    /// Waits for a permit.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            // Registered before the check, so a release between the check
            // and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_acquire() {
                return p;
            }
            freed.await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_at_most_max_and_gives_back_on_drop() {
        let l = LiveLimit::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn lowering_takes_nothing_back_and_admits_nobody_until_below() {
        let l = LiveLimit::new(3);
        let mut held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        l.set_max(1);
        assert_eq!(l.in_use(), 3, "nothing held is taken back");
        held.truncate(1);
        assert_eq!(l.in_use(), 1);
        assert!(l.try_acquire().is_none(), "one held, max 1: full");
        held.clear();
        assert!(l.try_acquire().is_some(), "none held: one admitted");
    }

    #[tokio::test]
    async fn raising_admits_a_waiter_at_once() {
        let l = LiveLimit::new(1);
        let _held = l.try_acquire().unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "full: waits");
        l.set_max(2);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert!(matches!(got, Ok(Ok(_))), "admitted after the raise");
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiter() {
        let l = LiveLimit::new(1);
        let held = l.try_acquire().unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert!(matches!(got, Ok(Ok(_))));
    }
}
