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
    last: Option<Instant>,
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
    pub async fn next(&mut self) -> Hint {
        loop {
            let Some(rx) = &mut self.rx else {
                return std::future::pending().await;
            };
            if rx.changed().await.is_err() {
                self.rx = None;
                continue;
            }
            if let Some(last) = self.last {
                tokio::time::sleep_until((last + HINT_COOLDOWN).into()).await;
            }
            let latest = rx.borrow_and_update().clone();
            if let Some(hint) = latest {
                self.last = Some(Instant::now());
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
