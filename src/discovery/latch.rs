//! Reading Curator's LeaderLatch znodes: pure functions, no I/O.
//!
//! Livy's servers join a Curator `LeaderLatch` at `/<key-prefix>/leader`.
//! Each participant is an ephemeral sequential child named
//! `_c_<uuid>-latch-<10-digit sequence>` whose data is the participant id;
//! the leader is the child with the lowest sequence number. The uuid prefix
//! differs per participant, so children must be ordered by the sequence
//! suffix, never by the whole name. Other children (Cloudera may keep state
//! under the same prefix) are ignored.

use std::sync::Arc;

use crate::node::{AddressDefaults, LivyNode, Origin};

/// Why a participant id could not be turned into an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LatchError {
    /// Neither a configured node's id, nor a configured host name, nor an
    /// address: the proxy never guesses.
    #[error(
        "the latch leader's participant id {id:?} maps to no known Livy node (known ids: {known}); \
         add --node {id}=http://HOST:PORT"
    )]
    UnmappedId {
        /// The participant id read from the leader's znode.
        id: String,
        /// The configured ids, for the message.
        known: String,
    },
    /// The id is the host name of more than one configured node (same host,
    /// different ports): picking one would be a guess.
    #[error(
        "the latch leader's participant id {id:?} is the host of several configured nodes ({nodes}); \
         give each node its participant id: --node ID=URL"
    )]
    AmbiguousHost {
        /// The participant id read from the leader's znode.
        id: String,
        /// The ids of the nodes on that host.
        nodes: String,
    },
}

/// The sequence number of a latch child (`..latch-0000000007` -> 7), or
/// `None` for a child that is not a latch participant.
pub fn sequence_of(child: &str) -> Option<u64> {
    let (_, seq) = child.rsplit_once("latch-")?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// The leader among the latch's children: the lowest sequence number.
pub fn leader_child(children: &[String]) -> Option<&str> {
    children
        .iter()
        .filter_map(|c| sequence_of(c).map(|seq| (seq, c.as_str())))
        .min()
        .map(|(_, c)| c)
}

/// The latch's participants in election order (lowest sequence first).
pub fn in_order(children: &[String]) -> Vec<&str> {
    let mut seqs: Vec<(u64, &str)> = children
        .iter()
        .filter_map(|c| sequence_of(c).map(|seq| (seq, c.as_str())))
        .collect();
    seqs.sort();
    seqs.into_iter().map(|(_, c)| c).collect()
}

/// Maps a participant id to the node traffic goes to, in order:
/// 1. the configured node with that id;
/// 2. the configured node whose host name is the id (case-insensitive), as
///    Livy's `server-ids`/`server-hostnames` lists map them; several nodes on
///    that host is an error, not a pick;
/// 3. the id itself read as an address, when it looks like one (see
///    [`looks_like_address`]); a configured node at that address keeps its
///    own id and Thrift address, any other address becomes an ad-hoc node
///    named by the id.
///
/// Anything else is [`LatchError::UnmappedId`]: the proxy never guesses.
pub fn resolve(
    id: &str,
    nodes: &Arc<Vec<LivyNode>>,
    defaults: AddressDefaults,
) -> Result<LivyNode, LatchError> {
    if let Some(n) = nodes.iter().find(|n| n.id == id) {
        return Ok(n.clone());
    }
    let same_host: Vec<&LivyNode> = nodes
        .iter()
        .filter(|n| n.origin.host.eq_ignore_ascii_case(id))
        .collect();
    match same_host.as_slice() {
        [one] => return Ok((*one).clone()),
        [] => {}
        many => {
            return Err(LatchError::AmbiguousHost {
                id: id.to_string(),
                nodes: many
                    .iter()
                    .map(|n| n.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    if looks_like_address(id) {
        // A bare IPv6 literal needs brackets to be read as a URL authority.
        let text = match id.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{id}]"),
            Err(_) => id.to_string(),
        };
        if let Ok(origin) = Origin::parse(&text, defaults) {
            if let Some(n) = nodes.iter().find(|n| n.origin == origin) {
                return Ok(n.clone());
            }
            return Ok(LivyNode {
                id: id.to_string(),
                origin,
                thrift: None,
            });
        }
    }
    Err(LatchError::UnmappedId {
        id: id.to_string(),
        known: if nodes.is_empty() {
            "none".to_string()
        } else {
            nodes
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// Whether an id that matched no configured node may be read as an address.
///
/// The rule: it has a scheme (`http://h:8998`), or is an IP literal, or ends
/// in `:<port>` after a non-empty host, or is a dotted host name
/// (`livy3.example.com`). A bare word such as `livy-3` or `localhost` is not
/// an address: it is far more likely an opaque participant id missing from
/// the configuration, and resolving it through DNS would route to whatever
/// that name happens to mean on the proxy's host.
pub fn looks_like_address(id: &str) -> bool {
    if id.contains("://") {
        return true;
    }
    if id.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    if let Some((host, port)) = id.rsplit_once(':')
        && !host.is_empty()
        && port.parse::<u16>().is_ok()
    {
        return true;
    }
    id.contains('.') && !id.starts_with('.') && !id.ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Arc<Vec<LivyNode>> {
        let d = AddressDefaults::default();
        Arc::new(vec![
            LivyNode::parse("livy-1=http://host1.example:8998", d).unwrap(),
            LivyNode::parse("livy-2=http://Host2.example:8998", d).unwrap(),
        ])
    }

    #[test]
    fn lowest_sequence_wins_not_lowest_name() {
        let children = vec![
            "_c_aaaa-latch-0000000012".to_string(),
            "_c_ffff-latch-0000000003".to_string(),
            "_c_0000-latch-0000000007".to_string(),
        ];
        assert_eq!(leader_child(&children), Some("_c_ffff-latch-0000000003"));
    }

    #[test]
    fn siblings_that_are_not_latch_nodes_are_ignored() {
        let children = vec![
            "sessions".to_string(),
            "latch-".to_string(),
            "latch-12x".to_string(),
            "_c_1-latch-0000000009".to_string(),
        ];
        assert_eq!(leader_child(&children), Some("_c_1-latch-0000000009"));
        assert_eq!(leader_child(&["state".to_string()]), None);
        assert_eq!(leader_child(&[]), None);
        assert_eq!(sequence_of("latch-0000000001"), Some(1));
        assert_eq!(sequence_of("_c_1-latch-0000000001-x"), None);
    }

    #[test]
    fn bare_and_other_prefixes_are_ordered_by_sequence_too() {
        let children = vec![
            "latch-0000000005".to_string(),
            "foo-latch-0000000002".to_string(),
            "_c_9-latch-0000000004".to_string(),
        ];
        assert_eq!(leader_child(&children), Some("foo-latch-0000000002"));
    }

    #[test]
    fn id_maps_through_configured_ids_first() {
        assert_eq!(
            resolve("livy-2", &nodes(), AddressDefaults::default())
                .unwrap()
                .id,
            "livy-2"
        );
    }

    #[test]
    fn id_maps_through_host_names() {
        let n = resolve("HOST1.example", &nodes(), AddressDefaults::default()).unwrap();
        assert_eq!(n.id, "livy-1");
    }

    #[test]
    fn id_read_as_an_address() {
        let d = AddressDefaults::default();
        let n = resolve("http://10.1.2.3:9999", &nodes(), d).unwrap();
        assert_eq!(n.origin.to_string(), "http://10.1.2.3:9999");
        let n = resolve("livy3.example", &nodes(), d).unwrap();
        assert_eq!(n.origin.to_string(), "http://livy3.example:8998");
        let n = resolve("somehost:8000", &nodes(), d).unwrap();
        assert_eq!(n.origin.port, 8000);
        // An address that is a configured node keeps the node's id.
        let n = resolve("http://host2.example:8998", &nodes(), d).unwrap();
        assert_eq!(n.id, "livy-2");
    }

    #[test]
    fn what_looks_like_an_address() {
        for yes in [
            "http://h:1",
            "https://h",
            "10.0.0.1",
            "::1",
            "h:8998",
            "livy.example",
        ] {
            assert!(looks_like_address(yes), "{yes}");
        }
        for no in [
            "livy-3",
            "localhost",
            "",
            ".example",
            "h:",
            ":8998",
            "h:99999",
        ] {
            assert!(!looks_like_address(no), "{no}");
        }
    }

    #[test]
    fn ipv6_id_is_read_with_brackets() {
        let n = resolve("::1", &nodes(), AddressDefaults::default()).unwrap();
        assert_eq!(n.origin.authority(), "[::1]:8998");
    }

    #[test]
    fn host_shared_by_two_nodes_is_ambiguous() {
        let d = AddressDefaults::default();
        let nodes = Arc::new(vec![
            LivyNode::parse("a=http://shared.example:8998", d).unwrap(),
            LivyNode::parse("b=http://shared.example:8999", d).unwrap(),
        ]);
        let e = resolve("shared.example", &nodes, d).unwrap_err();
        assert!(matches!(e, LatchError::AmbiguousHost { .. }), "{e}");
        // The full address is not ambiguous.
        assert_eq!(resolve("shared.example:8999", &nodes, d).unwrap().id, "b");
    }

    #[test]
    fn unmapped_id_is_an_error_not_a_guess() {
        let e = resolve("livy-9", &nodes(), AddressDefaults::default()).unwrap_err();
        assert!(e.to_string().contains("livy-9"));
        assert!(e.to_string().contains("livy-1, livy-2"));
        assert!(resolve("", &nodes(), AddressDefaults::default()).is_err());
        // A bare word is never looked up as a host name.
        assert!(matches!(
            resolve("localhost", &nodes(), AddressDefaults::default()),
            Err(LatchError::UnmappedId { .. })
        ));
        let none = Arc::new(Vec::new());
        let e = resolve("livy-1", &none, AddressDefaults::default()).unwrap_err();
        assert!(e.to_string().contains("known ids: none"), "{e}");
    }
}
