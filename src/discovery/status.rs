//! What discovery knows beyond the current leader, for people: the recent
//! leader changes, the election's participants, the ZooKeeper session.
//!
//! Kept apart from [`super::LeaderView`] on purpose: the view is what every
//! request reads and waits on, so it changes only when routing changes. A
//! participant joining the latch or a session reconnecting is news for
//! `/status` and `/metrics`, not a reason to wake every held request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// How many leader changes `/status` lists.
pub const HISTORY: usize = 20;

/// One leader change, as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LeaderChange {
    /// When discovery saw it.
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// The leader before, as `id=url`, or `None`.
    pub from: Option<String>,
    /// The leader after, as `id=url`, or `None`.
    pub to: Option<String>,
    /// `zookeeper` or `probe`.
    pub source: &'static str,
}

/// A latch participant (ZooKeeper) or a probed node (static list), in the
/// order that decides: latch sequence, or configuration order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Participant {
    /// The participant id (latch data) or the node's id.
    pub id: String,
    /// The latch node's name, or the node's URL when probing.
    pub at: String,
    /// `leader`, `follower`, or a probe's `active`/`passive`/`down`.
    pub role: String,
}

/// Shared by discovery (writer) and the admin listener (reader).
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    changes: VecDeque<LeaderChange>,
    changes_total: u64,
    participants: Vec<Participant>,
    zookeeper: Option<String>,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a leader change (the publisher calls it on every change).
    pub fn leader_changed(&self, change: LeaderChange) {
        self.with(|i| {
            if i.changes.len() == HISTORY {
                i.changes.pop_front();
            }
            i.changes.push_back(change);
            i.changes_total += 1;
        });
    }

    /// Replaces the participant list.
    pub fn set_participants(&self, participants: Vec<Participant>) {
        self.with(|i| i.participants = participants);
    }

    /// Records the ZooKeeper session's state (`connected`, `disconnected`,
    /// `expired`, `connecting` ...).
    pub fn set_zookeeper(&self, state: &str) {
        self.with(|i| i.zookeeper = Some(state.to_string()));
    }

    /// The last changes, oldest first.
    pub fn changes(&self) -> Vec<LeaderChange> {
        self.with(|i| i.changes.iter().cloned().collect())
    }

    /// How many leader changes since start.
    pub fn changes_total(&self) -> u64 {
        self.with(|i| i.changes_total)
    }

    /// The participants, in deciding order.
    pub fn participants(&self) -> Vec<Participant> {
        self.with(|i| i.participants.clone())
    }

    /// The ZooKeeper session's state; `None` without ZooKeeper.
    pub fn zookeeper(&self) -> Option<String> {
        self.with(|i| i.zookeeper.clone())
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-12-01T10:12:39.123Z`):
/// written here rather than pulling in a date crate for one format;
/// humantime (already a dependency) does it.
pub fn rfc3339_string(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_string(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_twenty_changes_and_counts_all() {
        let s = Status::default();
        for n in 0..25 {
            s.leader_changed(LeaderChange {
                at: SystemTime::UNIX_EPOCH,
                from: None,
                to: Some(format!("n{n}")),
                source: "probe",
            });
        }
        let changes = s.changes();
        assert_eq!(changes.len(), HISTORY);
        assert_eq!(changes[0].to.as_deref(), Some("n5"));
        assert_eq!(s.changes_total(), 25);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            rfc3339_string(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
