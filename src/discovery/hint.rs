//! The feedback path from the proxies to discovery.
//!
//! A proxy sometimes learns before discovery does that the view is out of
//! date: the node the view names as active answers a request with a
//! passive's redirect to another known node. That answer is evidence, but
//! not proof (a confused or lying passive can name anyone), so the proxy
//! never changes the view itself. It reports a [`Hint`]; discovery decides:
//! in static mode it probes the named node at once (then every node), in
//! ZooKeeper mode it re-reads the latch after a `sync`. Data still flows one
//! way: only discovery writes the [`super::LeaderView`].
//!
//! The reporting request can wait (briefly) for discovery's answer, so that
//! it and every request after it go to the confirmed leader: each hint gets
//! a sequence number, and discovery publishes the highest one it has
//! answered. `watch` channels carry both ways rather than a queue: only the
//! latest hint matters (a burst of requests meeting the same redirect is
//! one check), reporting never blocks, and the probe loop and the ZooKeeper
//! loop can each hold a receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::LeaderView;
use crate::node::LivyNode;

/// "The node the view calls active redirected a request to `named`."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The node that redirected: the view's leader when the request left.
    pub from: Arc<LivyNode>,
    /// The known node its `Location` named: a claim to check, not a fact.
    pub named: LivyNode,
    /// Set by [`Hints::report`]; discovery answers it with [`HintListener::answered`].
    pub seq: u64,
}

impl Hint {
    /// Whether the hint still concerns `view`: its leader is the node that
    /// redirected. Otherwise the view has already moved on and there is
    /// nothing to check.
    pub fn concerns(&self, view: &LeaderView) -> bool {
        view.leader
            .as_ref()
            .is_some_and(|l| l.node.origin == self.from.origin)
    }
}

/// Least time between two hints acted on: a server that keeps redirecting
/// while it still probes (or is latched) as active must not turn every
/// request into a probe round or a ZooKeeper read. The first hint after a
/// quiet spell is acted on at once.
pub const HINT_COOLDOWN: Duration = Duration::from_millis(250);

/// The proxies' end: cheap to clone, reporting never blocks.
#[derive(Clone, Debug)]
pub struct Hints {
    inner: Option<Arc<Channel>>,
}

#[derive(Debug)]
struct Channel {
    tx: watch::Sender<Option<Hint>>,
    seq: AtomicU64,
    answered: watch::Receiver<u64>,
}

/// Discovery's end of the channel, rate-limited by [`HINT_COOLDOWN`]; a
/// clone per discovery loop (the probe fallback beside the ZooKeeper loop).
#[derive(Clone, Debug)]
pub struct HintListener {
    rx: Option<watch::Receiver<Option<Hint>>>,
    answered: Arc<watch::Sender<u64>>,
    /// When the last hint was returned: tokio's clock, so the cooldown
    /// follows a paused clock in tests.
    last: Option<tokio::time::Instant>,
}

impl Hints {
    /// A new channel: the proxies' end and discovery's end.
    pub fn channel() -> (Hints, HintListener) {
        let (tx, rx) = watch::channel(None);
        let (answered_tx, answered_rx) = watch::channel(0);
        (
            Hints {
                inner: Some(Arc::new(Channel {
                    tx,
                    seq: AtomicU64::new(0),
                    answered: answered_rx,
                })),
            },
            HintListener {
                rx: Some(rx),
                answered: Arc::new(answered_tx),
                last: None,
            },
        )
    }

    /// Hints going nowhere: for proxies driven by a view no discovery task
    /// owns (tests, embedders with a fixed leader).
    pub fn none() -> Hints {
        Hints { inner: None }
    }

    /// Reports that `from` redirected to `named`, replacing any hint not yet
    /// looked at. Returns the ticket to wait for discovery's answer with, or
    /// `None` when nobody listens.
    pub fn report(&self, from: Arc<LivyNode>, named: LivyNode) -> Option<u64> {
        let channel = self.inner.as_ref()?;
        let seq = channel.seq.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(from = %from, named = %named, seq, "reporting a passive's redirect to discovery");
        channel
            .tx
            .send(Some(Hint { from, named, seq }))
            .ok()
            .map(|()| seq)
    }

    /// Waits until discovery has answered the hint `seq` (checked it, or
    /// found it moot), or `until`; true if it answered.
    pub async fn answered(&self, seq: u64, until: Instant) -> bool {
        let Some(channel) = &self.inner else {
            return false;
        };
        let mut rx = channel.answered.clone();
        let done = rx.wait_for(|&answered| answered >= seq);
        matches!(tokio::time::timeout_at(until.into(), done).await, Ok(Ok(_)))
    }
}

impl HintListener {
    /// Waits for the next hint (the latest one, if several arrived); pends
    /// for ever once every sender is gone, so a `select!` arm on it simply
    /// never fires. Every hint returned must be [`HintListener::answered`].
    ///
    /// Cancel-safe: the cooldown is waited out before a hint is looked at,
    /// and nothing awaits between taking a hint and returning it, so a
    /// `select!` arm that loses consumes nothing and the next call still
    /// returns the hint.
    pub async fn next(&mut self) -> Hint {
        loop {
            let Some(rx) = &mut self.rx else {
                return std::future::pending().await;
            };
            // Past the cooldown (a quiet spell) this returns at once, so
            // the first hint after it is acted on without delay.
            if let Some(last) = self.last {
                tokio::time::sleep_until(last + HINT_COOLDOWN).await;
            }
            if rx.changed().await.is_err() {
                self.rx = None;
                continue;
            }
            let latest = rx.borrow_and_update().clone();
            if let Some(hint) = latest {
                self.last = Some(tokio::time::Instant::now());
                return hint;
            }
        }
    }

    /// Tells the reporting requests that `hint` (and every earlier one) has
    /// been dealt with: the view now says what discovery concluded.
    pub fn answered(&self, hint: &Hint) {
        self.answered.send_if_modified(|a| {
            let newer = hint.seq > *a;
            if newer {
                *a = hint.seq;
            }
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::AddressDefaults;
    use tokio::time::Instant;

    fn node(spec: &str) -> LivyNode {
        LivyNode::parse(spec, AddressDefaults::default()).unwrap()
    }

    /// A discovery loop polls `next` in a `select!` whose other arms (a
    /// latch event, a probe round) may win while the cooldown runs: the
    /// hint that arrived meanwhile must still be there for the next call.
    #[tokio::test(start_paused = true)]
    async fn a_hint_in_the_cooldown_survives_a_cancelled_wait_and_a_quiet_one_is_at_once() {
        let (hints, mut listener) = Hints::channel();
        let from = Arc::new(node("a=http://h1:1"));
        let start = Instant::now();
        let first = hints.report(from.clone(), node("b=http://h2:1")).unwrap();
        let hint = listener.next().await;
        assert_eq!(hint.seq, first);
        assert_eq!(Instant::now(), start, "the first hint is acted on at once");
        listener.answered(&hint);

        let second = hints.report(from.clone(), node("c=http://h3:1")).unwrap();
        tokio::select! {
            biased;
            _ = listener.next() => panic!("a hint was returned within the cooldown"),
            _ = tokio::time::sleep(HINT_COOLDOWN / 2) => {}
        }
        let hint = tokio::time::timeout(HINT_COOLDOWN * 8, listener.next())
            .await
            .expect("the hint that arrived in the cooldown is returned later");
        assert_eq!(hint.seq, second);
        assert!(
            Instant::now() >= start + HINT_COOLDOWN,
            "not before the cooldown is over"
        );
        listener.answered(&hint);

        // After a quiet spell longer than the cooldown: at once again.
        tokio::time::sleep(HINT_COOLDOWN * 2).await;
        let quiet = Instant::now();
        let third = hints.report(from, node("b=http://h2:1")).unwrap();
        assert_eq!(listener.next().await.seq, third);
        assert_eq!(Instant::now(), quiet);
    }
}
