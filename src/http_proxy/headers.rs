//! Header surgery a reverse proxy owes both sides.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
//!   message: they are removed in both directions, together with every
//!   header a `Connection` header names.
//! - Livy learns who the client is from `X-Forwarded-For/-Proto/-Host`
//!   (and RFC 7239 `Forwarded`, if asked for) and that a proxy sits in
//!   between from `Via`. What a client says about itself in such headers
//!   is removed unless the proxy is told to trust it (`trust-forwarded`).
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

/// The headers that tell Livy who the client is and how it came in.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Client-sent headers that claim where a request came from, besides
/// every `X-Forwarded-*` (matched by prefix): an untrusted client's are
/// removed, so it cannot pass for another address or for HTTPS.
static FORWARDING: [HeaderName; 3] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-proxied-https"),
];

/// The fields of a header list that the header rules act on, found in one
/// pass over the names, so that each rule runs (and hashes a name) only
/// when its field is there: the usual request has none of them.
#[derive(Debug, Default)]
pub struct Found {
    /// Which of [`HOP_BY_HOP`] are present.
    hop_by_hop: [bool; 6],
    /// Whether `Connection` names a header beyond `keep-alive` (in the
    /// fixed list) and `close` (names none).
    names_others: bool,
    /// Whether a `Proxy-*` field is present.
    proxy_prefixed: bool,
    /// How many `Cookie` fields there are.
    pub cookies: usize,
    /// Whether `Expect` is present.
    pub expect: bool,
    /// Whether `Content-Length` is present.
    pub content_length: bool,
    /// Whether a client-sent forwarding header (or one of `strip`) is.
    pub forwarding: bool,
    /// The first `Host` field's value.
    pub host: Option<HeaderValue>,
    /// How many `Host` fields there are (RFC 9112 §3.2 allows one).
    pub hosts: u8,
}

/// One pass over `headers`' names: what [`Found`] lists. `strip` are the
/// more forwarding headers to look for (`strip-headers`).
pub fn scan(headers: &HeaderMap, strip: &[HeaderName]) -> Found {
    let mut found = Found::default();
    for (name, value) in headers.iter() {
        let text = name.as_str();
        // Told apart by the first letter: most names match none of these.
        match text.as_bytes().first() {
            Some(b'c') => {
                if name == header::CONNECTION {
                    found.hop_by_hop[0] = true;
                    found.names_others |= names_others(value);
                } else if name == header::COOKIE {
                    found.cookies += 1;
                } else if name == header::CONTENT_LENGTH {
                    found.content_length = true;
                }
            }
            Some(b'k') if text == "keep-alive" => found.hop_by_hop[1] = true,
            Some(b't') if name == header::TE => found.hop_by_hop[2] = true,
            Some(b't') if name == header::TRAILER => found.hop_by_hop[3] = true,
            Some(b't') if name == header::TRANSFER_ENCODING => found.hop_by_hop[4] = true,
            Some(b'u') if name == header::UPGRADE => found.hop_by_hop[5] = true,
            Some(b'p') if text.starts_with("proxy-") => found.proxy_prefixed = true,
            Some(b'e') if name == header::EXPECT => found.expect = true,
            Some(b'h') if name == header::HOST => {
                if found.host.is_none() {
                    found.host = Some(value.clone());
                }
                found.hosts = found.hosts.saturating_add(1);
            }
            Some(b'x' | b'f') if is_forwarding(name, &[]) => found.forwarding = true,
            _ => {}
        }
        if !strip.is_empty() && strip.contains(name) {
            found.forwarding = true;
        }
    }
    found
}

/// Whether one `Connection` value names a header other than `keep-alive`
/// and `close`; the usual single token is told without splitting.
fn names_others(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
        return false;
    }
    connection_tokens(value)
        .any(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
}

/// Removes hop-by-hop headers: the fixed list, anything `Connection` names,
/// and every `Proxy-*` header (`Proxy-Authorization` is for this hop only).
///
/// Runs twice per request, so it first scans the names once (no hashing,
/// no allocation) and then removes only what it found: the common
/// `Connection: keep-alive` costs one removal.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = scan(headers, &[]);
    remove_hop_by_hop(headers, &found);
}

/// [`strip_hop_by_hop`] after the scan: removes what `found` says is there.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, found: &Found) {
    if found.names_others {
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
    for (name, _) in HOP_BY_HOP.iter().zip(found.hop_by_hop).filter(|(_, f)| *f) {
        headers.remove(name);
    }
    if found.proxy_prefixed {
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

/// What the proxy knows about the client side of a request, and how far
/// the client's own forwarding headers are believed.
pub struct ClientSide<'a> {
    /// The peer address of the client connection, as a header value
    /// (formatted once per connection, not per request).
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`, as the client reached the proxy.
    pub proto: &'static str,
    /// The authority the client addressed (its `Host`), if any.
    pub host: Option<&'a HeaderValue>,
    /// Whether incoming forwarding headers are believed and extended
    /// (behind a trusted load balancer) or removed.
    pub trust_forwarded: bool,
    /// Whether RFC 7239 `Forwarded` is sent as well as `X-Forwarded-*`.
    pub emit_forwarded: bool,
    /// More client-sent headers to remove when they are not trusted
    /// (`strip-headers`): those some deployments read, such as
    /// `X-Client-IP`.
    pub strip: &'a [HeaderName],
}

/// Sets this hop's `X-Forwarded-For/-Proto/-Host` (and `Forwarded`).
/// Untrusted, every client-sent forwarding header goes first, so a client
/// cannot forge its address in Livy's logs; trusted, each of them is
/// extended the same way: all incoming values, then this hop's.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientSide<'_>) {
    let present = headers.keys().any(|n| is_forwarding(n, client.strip));
    add_forwarded_scanned(headers, client, present);
}

/// [`add_forwarded`] after [`scan`]: `present` says whether a client-sent
/// forwarding header is there to strip.
pub fn add_forwarded_scanned(headers: &mut HeaderMap, client: &ClientSide<'_>, present: bool) {
    if !client.trust_forwarded && present {
        strip_forwarding(headers, client.strip);
    }
    append_hop(headers, &X_FORWARDED_FOR, client.client_ip.clone());
    append_hop(
        headers,
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(client.proto),
    );
    if let Some(host) = client.host {
        append_hop(headers, &X_FORWARDED_HOST, host.clone());
    }
    if client.emit_forwarded
        && let Some(element) = forwarded_element(client)
    {
        append_hop(headers, &header::FORWARDED, element);
    }
}

/// Whether `name` is a forwarding header a client may send: every
/// `X-Forwarded-*`, [`FORWARDING`], and the `extra` ones.
fn is_forwarding(name: &HeaderName, extra: &[HeaderName]) -> bool {
    name.as_str().starts_with("x-forwarded-") || FORWARDING.contains(name) || extra.contains(name)
}

/// Removes the forwarding headers a client sent, and the `extra` ones.
fn strip_forwarding(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_forwarding(n, extra))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// Adds this hop to a list-valued header: after every value already there
/// (in every field, joined into one), or as its only value.
fn append_hop(headers: &mut HeaderMap, name: &HeaderName, hop: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(slot) => {
            slot.insert(hop);
        }
        header::Entry::Occupied(mut slot) => {
            let mut joined = Vec::new();
            for value in slot.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(hop.as_bytes());
            // Valid values joined by ", " are a valid value.
            let value = HeaderValue::from_bytes(&joined).unwrap_or(hop);
            slot.insert(value);
        }
    }
}

/// This hop as an RFC 7239 `Forwarded` element:
/// `for=10.0.0.9;proto=http;host="proxy:8998"` (an IPv6 address in
/// brackets, quoted; the host always quoted, as its `:` needs).
fn forwarded_element(client: &ClientSide<'_>) -> Option<HeaderValue> {
    let ip = client.client_ip.to_str().ok()?;
    let mut element = String::with_capacity(64);
    if ip.contains(':') {
        element.push_str("for=\"[");
        element.push_str(ip);
        element.push_str("]\"");
    } else {
        element.push_str("for=");
        element.push_str(ip);
    }
    element.push_str(";proto=");
    element.push_str(client.proto);
    if let Some(host) = client.host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=\"");
        for c in host.chars() {
            if c == '"' || c == '\\' {
                element.push('\\');
            }
            element.push(c);
        }
        element.push('"');
    }
    HeaderValue::from_str(&element).ok()
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

/// The known Livy node a URL points at, if any: the same scheme, host
/// (case insensitive) and port. Used for both redirect following (only to known
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
    // The whole origin, scheme included: an `http://` Location does not
    // name an `https://` node on the same port, nor the other way round.
    let node = nodes.into_iter().find(|n| {
        n.origin.host == host
            && n.origin.port == port
            && url.scheme().eq_ignore_ascii_case(n.origin.scheme.as_str())
    })?;
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

    static STRIP: [HeaderName; 1] = [HeaderName::from_static("x-client-ip")];

    fn client(trust: bool, host: Option<&HeaderValue>) -> ClientSide<'_> {
        ClientSide {
            client_ip: &CLIENT_IP,
            proto: "http",
            host,
            trust_forwarded: trust,
            emit_forwarded: false,
            strip: &STRIP,
        }
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// Every forwarding header a client might send, plus one that is not.
    fn client_claims() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "lb.example"),
            ("x-forwarded-server", "lb"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
            ("x-proxied-https", "on"),
            ("x-client-ip", "1.2.3.4"),
            ("x-other", "kept"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced_by_this_hops() {
        let host = HeaderValue::from_static("proxy:8998");
        let mut h = client_claims();
        add_forwarded(&mut h, &client(false, Some(&host)));
        assert_eq!(all(&h, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["proxy:8998"]);
        assert_eq!(all(&h, "x-other"), ["kept"]);
        assert_eq!(h.len(), 4, "nothing else the client claimed is left: {h:?}");

        let mut h = client_claims();
        let mut side = client(false, None);
        side.emit_forwarded = true;
        add_forwarded(&mut h, &side);
        assert!(!h.contains_key("x-forwarded-host"), "no Host, none");
        assert_eq!(all(&h, "forwarded"), ["for=10.0.0.9;proto=http"]);
    }

    #[test]
    fn trusted_forwarding_headers_are_all_extended_alike() {
        let host = HeaderValue::from_static("proxy:8998");
        let mut h = client_claims();
        let mut side = client(true, Some(&host));
        side.emit_forwarded = true;
        add_forwarded(&mut h, &side);
        assert_eq!(all(&h, "x-forwarded-for"), ["1.2.3.4, 5.6.7.8, 10.0.0.9"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https, http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["lb.example, proxy:8998"]);
        assert_eq!(
            all(&h, "forwarded"),
            [r#"for=1.2.3.4;proto=https, for=10.0.0.9;proto=http;host="proxy:8998""#]
        );
        for kept in [
            "x-forwarded-server",
            "x-real-ip",
            "x-proxied-https",
            "x-client-ip",
        ] {
            assert_eq!(all(&h, kept).len(), 1, "{kept}");
        }

        // Without emit-forwarded a trusted Forwarded passes untouched.
        let mut h = client_claims();
        add_forwarded(&mut h, &client(true, None));
        assert_eq!(all(&h, "forwarded"), ["for=1.2.3.4;proto=https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["lb.example"]);
    }

    #[test]
    fn forwarded_quotes_what_is_not_a_token() {
        static V6: HeaderValue = HeaderValue::from_static("2001:db8::1");
        let host = HeaderValue::from_static("we\"ird:1");
        let side = ClientSide {
            client_ip: &V6,
            proto: "http",
            host: Some(&host),
            trust_forwarded: false,
            emit_forwarded: true,
            strip: &[],
        };
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &side);
        assert_eq!(
            h["forwarded"],
            r#"for="[2001:db8::1]";proto=http;host="we\"ird:1""#
        );
    }

    #[test]
    fn via_appends() {
        let mut h = HeaderMap::new();
        add_via(&mut h, http::Version::HTTP_11);
        add_via(&mut h, http::Version::HTTP_2);
        assert_eq!(h[header::VIA], "1.1 livy-proxy, 2 livy-proxy");
    }

    #[test]
    fn known_node_matches_the_origin() {
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
        assert!(
            known_node("https://127.0.0.11:8998/", &nodes).is_none(),
            "the scheme is part of the origin"
        );
        let tls = vec![
            LivyNode::parse("livy-3=https://livy3.example", AddressDefaults::default()).unwrap(),
        ];
        assert_eq!(
            known_node("https://livy3.example/sessions", &tls)
                .unwrap()
                .0
                .id,
            "livy-3"
        );
        assert!(known_node("http://livy3.example:443/", &tls).is_none());
    }

    #[test]
    fn location_rewrite_keeps_path_and_query() {
        assert_eq!(
            rewrite_location("http://127.0.0.11:8998/sessions/1?a=b", "http://proxy:80").unwrap(),
            "http://proxy:80/sessions/1?a=b"
        );
    }
}
