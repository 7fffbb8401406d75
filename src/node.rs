//! The Livy servers the proxy knows about.
//!
//! A Livy HA deployment names its servers twice: by the opaque participant id
//! each one joins the leader latch with (`livy.server.ha.server-ids`) and by
//! its address (`livy.server.ha.server-hostnames`). [`LivyNode`] keeps both,
//! so discovery can map a latch id to an address and the HTTP proxy can tell
//! a redirect to a known Livy server (followed) from one to anywhere else
//! (passed through untouched: never an open proxy).

use std::fmt;

/// Problems with a `[ID=]URL` node specification or a participant id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    /// The text is not a URL, `host:port` or host name.
    #[error("invalid Livy address {0:?}: {1}")]
    BadAddress(String, String),
    /// Only plain HTTP and HTTPS reach Livy's REST API.
    #[error("unsupported scheme {0:?} (expected http or https)")]
    BadScheme(String),
}

/// `http` or `https`: how the proxy talks to a Livy server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme as it appears in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn parse(s: &str) -> Result<Self, NodeError> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(Scheme::Http),
            "https" => Ok(Scheme::Https),
            _ => Err(NodeError::BadScheme(s.to_string())),
        }
    }
}

/// Scheme and port assumed for a Livy address that leaves them out
/// (a bare host name in `--node`, or a participant id read as an address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressDefaults {
    /// Scheme for addresses without one.
    pub scheme: Scheme,
    /// Port for addresses without one (Livy's default is 8998).
    pub port: u16,
}

impl Default for AddressDefaults {
    fn default() -> Self {
        AddressDefaults {
            scheme: Scheme::Http,
            port: 8998,
        }
    }
}

/// Where a Livy server's HTTP endpoint is: scheme, host and port, no path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP literal, lower-cased, without IPv6 brackets.
    pub host: String,
    /// TCP port (explicit or the default for the scheme).
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port][/]`, `host:port` or `host`, filling what
    /// is missing from `defaults`. A path other than `/` is refused: Livy
    /// serves its API at the root and a path here is a typo.
    pub fn parse(text: &str, defaults: AddressDefaults) -> Result<Self, NodeError> {
        let bad = |why: &str| NodeError::BadAddress(text.to_string(), why.to_string());
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(bad("empty"));
        }
        let (scheme, with_scheme) = match trimmed.split_once("://") {
            Some((s, _)) => (Scheme::parse(s)?, trimmed.to_string()),
            None => (
                defaults.scheme,
                format!("{}://{}", defaults.scheme.as_str(), trimmed),
            ),
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        if url.path() != "/" && !url.path().is_empty() {
            return Err(bad("a Livy address has no path"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("a Livy address has no query, fragment or user"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string().to_ascii_lowercase(),
            None => return Err(bad("no host")),
        };
        let explicit_port = has_explicit_port(trimmed);
        let port = match url.port() {
            Some(p) => p,
            // `url` hides a port equal to the scheme's default; keep it.
            None if explicit_port => scheme.default_port(),
            None if trimmed.contains("://") => scheme.default_port(),
            None => defaults.port,
        };
        Ok(Origin { scheme, host, port })
    }

    /// `host:port`, with brackets around an IPv6 literal: what goes in a
    /// `Host` header and what a TCP connect needs.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Whether `text` (a URL or `host:port`) spells out a port after its host.
fn has_explicit_port(text: &str) -> bool {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    match host_port.rfind(']') {
        Some(i) => host_port[i..].contains(':'),
        None => host_port.contains(':'),
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// One Livy server: the id it joins the leader latch with, and its HTTP origin.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LivyNode {
    /// Participant id in the latch (Livy's `server-ids` entry); defaults to
    /// the host name, which is what Livy's id-to-host-name mapping yields.
    pub id: String,
    /// Where its REST API (and HTTP-mode Thrift servlet) listens.
    pub origin: Origin,
    /// Its Thrift (JDBC) address when it is not the origin's host with the
    /// configured Thrift port.
    pub thrift: Option<String>,
}

impl LivyNode {
    /// Parses `--node` syntax: `[ID=]URL`, where URL may be `host[:port]`.
    pub fn parse(spec: &str, defaults: AddressDefaults) -> Result<Self, NodeError> {
        let (id, addr) = match spec.split_once('=') {
            Some((id, addr)) if !id.contains("://") && !id.trim().is_empty() => {
                (Some(id.trim().to_string()), addr)
            }
            _ => (None, spec),
        };
        let origin = Origin::parse(addr, defaults)?;
        let id = id.unwrap_or_else(|| origin.host.clone());
        Ok(LivyNode {
            id,
            origin,
            thrift: None,
        })
    }
}

impl LivyNode {
    /// Where this node's Thrift (JDBC) server listens: its explicit Thrift
    /// address, else its host with Livy's `livy.server.thrift.port`.
    pub fn thrift_addr(&self, thrift_port: u16) -> String {
        match &self.thrift {
            Some(addr) => addr.clone(),
            None => Origin {
                port: thrift_port,
                ..self.origin.clone()
            }
            .authority(),
        }
    }
}

impl fmt::Display for LivyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.origin)
    }
}

/// The known Livy servers, shared by discovery and both proxies and
/// replaced whole by a reload (the `node` key is live): each reader takes
/// the list as it is when it needs it (a probe round, a latch read, a
/// redirect to check, a JDBC fallback), without a lock. A reader that
/// must act on a new list at once, rather than at its next read, waits on
/// [`NodeList::changes`]: the ZooKeeper loop, whose latch read is the only
/// one no timer repeats.
#[derive(Clone, Debug)]
pub struct NodeList {
    nodes: std::sync::Arc<arc_swap::ArcSwap<Vec<LivyNode>>>,
    /// Counts the stores that changed the list.
    version: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl NodeList {
    /// The list now.
    pub fn load(&self) -> arc_swap::Guard<std::sync::Arc<Vec<LivyNode>>> {
        self.nodes.load()
    }

    /// The list now, to hold across an `.await`.
    pub fn snapshot(&self) -> std::sync::Arc<Vec<LivyNode>> {
        self.nodes.load_full()
    }

    /// Replaces the list for every reader, and wakes [`NodeChanges`] if it
    /// differs from the old one (a reload that leaves `node` alone wakes
    /// nobody). The list is in place before anyone is woken.
    pub fn store(&self, nodes: std::sync::Arc<Vec<LivyNode>>) {
        let old = self.nodes.swap(nodes.clone());
        if *old != *nodes {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Whoever must hear of the list's next replacement.
    pub fn changes(&self) -> NodeChanges {
        NodeChanges(self.version.subscribe())
    }
}

impl From<std::sync::Arc<Vec<LivyNode>>> for NodeList {
    fn from(nodes: std::sync::Arc<Vec<LivyNode>>) -> Self {
        NodeList {
            nodes: std::sync::Arc::new(arc_swap::ArcSwap::new(nodes)),
            version: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

/// Tells one reader that the [`NodeList`] was replaced by a different
/// list, so it can resolve again what it resolved against the old one.
#[derive(Debug)]
pub struct NodeChanges(tokio::sync::watch::Receiver<u64>);

impl NodeChanges {
    /// Resolves once the list has changed since this was made or last
    /// resolved (several changes in between count as one). Cancel-safe, so
    /// it can be a `select!` arm; pends for ever once no `NodeList` is left.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> AddressDefaults {
        AddressDefaults::default()
    }

    #[tokio::test]
    async fn a_different_list_wakes_the_readers_and_the_same_one_does_not() {
        let list = NodeList::from(std::sync::Arc::new(vec![
            LivyNode::parse("a=http://h1:1", d()).unwrap(),
        ]));
        let mut changes = list.changes();
        list.store(list.snapshot());
        let woken =
            |c: &mut NodeChanges| futures_util::FutureExt::now_or_never(c.changed()).is_some();
        assert!(!woken(&mut changes), "the same list again wakes nobody");
        list.store(std::sync::Arc::new(vec![
            LivyNode::parse("a=http://h1:2", d()).unwrap(),
        ]));
        assert!(woken(&mut changes), "a changed address wakes the reader");
        assert_eq!(list.load()[0].origin.port, 2, "the new list is in place");
        assert!(!woken(&mut changes), "one wake-up per change");
    }

    #[test]
    fn parses_id_and_url() {
        let n = LivyNode::parse("livy-1=http://Host1:9000", d()).unwrap();
        assert_eq!(n.id, "livy-1");
        assert_eq!(n.origin.host, "host1");
        assert_eq!(n.origin.port, 9000);
        assert_eq!(n.origin.scheme, Scheme::Http);
    }

    #[test]
    fn bare_host_gets_defaults_and_host_as_id() {
        let n = LivyNode::parse("livy2.example.com", d()).unwrap();
        assert_eq!(n.id, "livy2.example.com");
        assert_eq!(n.origin.port, 8998);
        assert_eq!(n.origin.to_string(), "http://livy2.example.com:8998");
    }

    #[test]
    fn url_without_port_uses_scheme_default_and_explicit_default_port_is_kept() {
        assert_eq!(Origin::parse("https://h", d()).unwrap().port, 443);
        assert_eq!(Origin::parse("http://h:80", d()).unwrap().port, 80);
        assert_eq!(Origin::parse("h:80", d()).unwrap().port, 80);
    }

    #[test]
    fn ipv6_authority_is_bracketed() {
        let o = Origin::parse("http://[::1]:8998", d()).unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.authority(), "[::1]:8998");
    }

    #[test]
    fn rejects_paths_and_schemes() {
        assert!(Origin::parse("http://h:1/livy", d()).is_err());
        assert!(matches!(
            Origin::parse("ftp://h", d()),
            Err(NodeError::BadScheme(_))
        ));
        assert!(Origin::parse("", d()).is_err());
    }
}
