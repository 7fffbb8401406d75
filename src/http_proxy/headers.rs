//! Header surgery a reverse proxy owes both sides.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
//!   message: they are removed in both directions, together with every
//!   header a `Connection` header names.
//! - Livy learns who the client is from `X-Forwarded-For/-Proto/-Host` and
//!   that a proxy sits in between from `Via`.
//! - `Authorization`, cookies and the body are never touched: Livy does the
//!   authentication, end to end.
//! - A `Location` that names a Livy server is rewritten to the address the
//!   client used, so clients never learn (or bypass) a backend address.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::node::{LivyNode, Origin};

/// Headers that never cross a proxy, besides those named by `Connection`
/// (which must stay first: [`strip_hop_by_hop`] reads it by index).
/// `Proxy-*` is handled by prefix in [`strip_hop_by_hop`].
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The header that says which proxy forwarded a message.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers: the fixed list, anything `Connection` names,
/// and every `Proxy-*` header (`Proxy-Authorization` is for this hop only).
///
/// Runs twice per request, so it first scans the names once (no hashing,
/// no allocation) and then removes only what it found: the common
/// `Connection: keep-alive` costs one removal.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found = [false; 6];
    let mut proxy_prefixed = false;
    // Whether `Connection` names a header beyond `keep-alive` (in the fixed
    // list) and `close` (names none): the usual values cost nothing more.
    let mut names_others = false;
    for (name, value) in headers.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found[i] = true;
            if i == 0 {
                names_others |= connection_tokens(value).any(|t| {
                    !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close")
                });
            }
        } else if name.as_str().starts_with("proxy-") {
            proxy_prefixed = true;
        }
    }
    if names_others {
        // Read before Connection itself goes.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(connection_tokens)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(name);
    }
    if proxy_prefixed {
        let proxies: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxies {
            headers.remove(name);
        }
    }
}

/// The comma-separated tokens of one `Connection` header value.
fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Joins several `Cookie` fields into one, `; `-separated. An h2 client
/// sends each cookie as a field of its own, to be joined before the request
/// goes on in HTTP/1.1 (RFC 9113 §8.2.3), where a server expects one
/// `Cookie` line (RFC 6265 §5.4); the odd HTTP/1.1 client that sends
/// several gets the same.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return; // none or one: the usual case, nothing to do
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Valid values joined by "; " are a valid value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// What the proxy knows about the client side of a request, for the
/// `X-Forwarded-*` headers.
pub struct ClientSide<'a> {
    /// The peer address of the client connection, as a header value
    /// (formatted once per connection, not per request).
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`, as the client reached the proxy.
    pub proto: &'static str,
    /// The authority the client addressed (its `Host`), if any.
    pub host: Option<&'a HeaderValue>,
    /// Whether an incoming `X-Forwarded-*` chain is believed and extended
    /// (behind a trusted load balancer) or replaced.
    pub trust_forwarded: bool,
}

/// Sets `X-Forwarded-For/-Proto/-Host`. Untrusted incoming values are
/// dropped, so a client cannot forge its address in Livy's logs.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientSide<'_>) {
    let prior = headers
        .get(&X_FORWARDED_FOR)
        .filter(|_| client.trust_forwarded)
        .and_then(|v| v.to_str().ok())
        .zip(client.client_ip.to_str().ok())
        .and_then(|(prior, ip)| HeaderValue::from_str(&format!("{prior}, {ip}")).ok());
    headers.insert(
        X_FORWARDED_FOR.clone(),
        prior.unwrap_or_else(|| client.client_ip.clone()),
    );
    let keep_prior =
        |h: &HeaderMap, name: &HeaderName| client.trust_forwarded && h.contains_key(name);
    if !keep_prior(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(client.proto),
        );
    }
    if !keep_prior(headers, &X_FORWARDED_HOST) {
        match client.host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Appends this proxy to `Via` (RFC 9110 §7.6.3), keeping earlier hops.
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    let hop = match version {
        http::Version::HTTP_2 => "2 livy-proxy",
        http::Version::HTTP_10 => "1.0 livy-proxy",
        _ => "1.1 livy-proxy",
    };
    // One hash lookup: the entry is either empty (the usual case) or
    // extended.
    match headers.entry(header::VIA) {
        header::Entry::Vacant(slot) => {
            slot.insert(HeaderValue::from_static(hop));
        }
        header::Entry::Occupied(mut slot) => {
            let extended = slot
                .get()
                .to_str()
                .ok()
                .and_then(|prior| HeaderValue::from_str(&format!("{prior}, {hop}")).ok());
            if let Some(v) = extended {
                slot.insert(v);
            }
        }
    }
}

/// The known Livy node a URL points at, if any: the same host (case
/// insensitive) and port. Used for both redirect following (only to known
/// nodes: never an open proxy) and `Location` rewriting.
pub fn known_node<'a>(
    location: &str,
    nodes: impl IntoIterator<Item = &'a LivyNode>,
) -> Option<(&'a LivyNode, Origin)> {
    if !location.contains("://") {
        return None;
    }
    let url = url::Url::parse(location).ok()?;
    let host = match url.host()? {
        url::Host::Ipv6(ip) => ip.to_string(),
        h => h.to_string().to_ascii_lowercase(),
    };
    let port = url.port_or_known_default()?;
    let node = nodes
        .into_iter()
        .find(|n| n.origin.host == host && n.origin.port == port)?;
    let origin = node.origin.clone();
    Some((node, origin))
}

/// Rewrites an absolute `Location` that names a Livy node to the proxy's own
/// client-facing origin, keeping path, query and fragment.
pub fn rewrite_location(location: &str, client_origin: &str) -> Option<String> {
    let url = url::Url::parse(location).ok()?;
    let mut rest = url.path().to_string();
    if let Some(q) = url.query() {
        rest.push('?');
        rest.push_str(q);
    }
    if let Some(f) = url.fragment() {
        rest.push('#');
        rest.push_str(f);
    }
    Some(format!("{client_origin}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::AddressDefaults;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic keep"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key(header::AUTHORIZATION));
        assert!(h.contains_key(header::COOKIE));
    }

    #[test]
    fn usual_connection_values_remove_only_the_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));

        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-Trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert(header::SERVER, HeaderValue::from_static("jetty"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.len(),
            1,
            "a header named in a second Connection line goes too: {h:?}"
        );
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        h.append(header::COOKIE, HeaderValue::from_static("d=4"));
        join_cookies(&mut h);
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3; d=4"]);

        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        let mut h = HeaderMap::new();
        join_cookies(&mut h);
        assert!(h.is_empty());
    }

    static CLIENT_IP: HeaderValue = HeaderValue::from_static("10.0.0.9");

    fn client(trust: bool, host: Option<&HeaderValue>) -> ClientSide<'_> {
        ClientSide {
            client_ip: &CLIENT_IP,
            proto: "http",
            host,
            trust_forwarded: trust,
        }
    }

    #[test]
    fn forwarded_replaces_untrusted_and_appends_trusted() {
        let host = HeaderValue::from_static("proxy:8998");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        add_forwarded(&mut h, &client(false, Some(&host)));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "proxy:8998");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, &client(true, Some(&host)));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn via_appends() {
        let mut h = HeaderMap::new();
        add_via(&mut h, http::Version::HTTP_11);
        add_via(&mut h, http::Version::HTTP_2);
        assert_eq!(h[header::VIA], "1.1 livy-proxy, 2 livy-proxy");
    }

    #[test]
    fn known_node_matches_host_and_port_only() {
        let nodes = vec![
            LivyNode::parse("livy-1=http://127.0.0.11:8998", AddressDefaults::default()).unwrap(),
            LivyNode::parse(
                "livy-2=http://Livy2.example:8998",
                AddressDefaults::default(),
            )
            .unwrap(),
        ];
        let hit = known_node("http://127.0.0.11:8998/sessions?x=1", &nodes).unwrap();
        assert_eq!(hit.0.id, "livy-1");
        assert_eq!(
            known_node("http://LIVY2.example:8998/", &nodes)
                .unwrap()
                .0
                .id,
            "livy-2"
        );
        assert!(known_node("http://127.0.0.11:9999/", &nodes).is_none());
        assert!(known_node("http://evil.example:8998/", &nodes).is_none());
        assert!(known_node("/sessions", &nodes).is_none());
    }

    #[test]
    fn location_rewrite_keeps_path_and_query() {
        assert_eq!(
            rewrite_location("http://127.0.0.11:8998/sessions/1?a=b", "http://proxy:80").unwrap(),
            "http://proxy:80/sessions/1?a=b"
        );
    }
}
