//! Prometheus metrics, exposed on the admin listener's `/metrics`.
//!
//! Names follow Prometheus conventions: the `livy_proxy_` prefix, `_total`
//! on counters, base units (`_seconds`, bytes), and a `service` label on
//! every series (`default` today; several Livy services behind one proxy
//! will differ by it). docs/operations.md lists every metric, and
//! deploy/prometheus/metrics.txt is the list alerts and dashboards may use.
//!
//! On the request path a metric costs one atomic add: the counters a
//! request touches (by method and status class) are created up front and
//! kept in arrays, instead of being looked up in a label family (a lock and
//! a hash) per request. What only changes when someone looks (the leader,
//! readiness, seconds since the last change) is set when `/metrics` is
//! scraped, from the view and the discovery status.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::discovery::{LeaderView, Status};

/// The listeners whose connections and bytes are counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP (REST and Thrift-over-HTTP) listener.
    Http,
    /// The JDBC (binary Thrift) listener.
    Jdbc,
    /// The admin listener.
    Admin,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::Http, Listener::Jdbc, Listener::Admin];

    /// The `listener` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Jdbc => "jdbc",
            Listener::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which way bytes went, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the proxy.
    Received,
    /// From the proxy to the client.
    Sent,
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

fn class_index(s: StatusCode) -> usize {
    (s.as_u16() / 100).clamp(1, 5) as usize - 1
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerResultLabels {
    listener: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaderLabels {
    id: String,
    url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Every metric of the proxy, and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    requests: Vec<Counter>,
    duration: Histogram,
    held: Histogram,
    upstream_errors: Family<KindLabel, Counter>,
    redirects: Counter,
    retries: Counter,
    hold_timeouts: Counter,
    shed: Counter,
    connections_open: Vec<Gauge>,
    connections_total: Vec<Counter>,
    connections_at_limit: Counter,
    bytes: Vec<Counter>,
    jdbc_open: Gauge,
    jdbc_total: Counter,
    jdbc_closed_on_failover: Counter,
    reloads: Family<ResultLabel, Counter>,
    tls_reloads: Family<ListenerResultLabels, Counter>,
    tls_expiry: Family<ListenerLabel, Gauge>,
    // Set at scrape time.
    leader_changes: Counter,
    leader_known: Gauge,
    leader_info: Family<LeaderLabels, Gauge>,
    since_change: Gauge<f64, AtomicU64>,
    zookeeper_connected: Gauge,
    ready: Gauge,
    draining: Gauge,
    // For /status; not exported (the histograms' counts and the error
    // family say the same to Prometheus).
    held_total: Counter,
    failed_total: Counter,
    scrape: Mutex<()>,
}

/// Request counters as `/status` shows them.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Totals {
    /// Requests that waited for a leader.
    pub held: u64,
    /// Redirects followed inside the proxy.
    pub redirected: u64,
    /// Requests sent again after they may have reached Livy.
    pub retried: u64,
    /// Requests the proxy answered with an error of its own.
    pub failed: u64,
}

/// Buckets for request durations: 1 ms to 10 min (session creation and
/// uploads are slow; most REST calls take milliseconds).
fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 600.0,
    ]
    .into_iter()
}

impl Metrics {
    /// All metrics, registered with the `service` label. The ZooKeeper
    /// gauge only with ZooKeeper: a proxy probing a static list has no
    /// session, and a 0 would fire the "ZooKeeper not connected" alert.
    pub fn new(service: &str, zookeeper: bool) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "livy_proxy",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Owned(service.to_string()),
            )]
            .into_iter(),
        );
        let requests_family = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status class",
            requests_family.clone(),
        );
        let mut requests = Vec::with_capacity(METHODS.len() * CLASSES.len());
        for method in METHODS {
            for status_class in CLASSES {
                requests.push(
                    requests_family
                        .get_or_create(&RequestLabels {
                            method,
                            status_class,
                        })
                        .clone(),
                );
            }
        }
        let duration = Histogram::new(duration_buckets());
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response head",
            Unit::Seconds,
            duration.clone(),
        );
        let held = Histogram::new(duration_buckets());
        registry.register_with_unit(
            "http_hold_duration",
            "Time requests waited for a leader (elections, refused connects, redirect checks)",
            Unit::Seconds,
            held.clone(),
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the proxy answered itself, by kind (docs/failover.md)",
            upstream_errors.clone(),
        );
        for kind in crate::http_proxy::error::KINDS {
            let _ = upstream_errors.get_or_create(&KindLabel { kind });
        }
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let redirects = counter(
            &mut registry,
            "redirects_followed",
            "Passive servers' redirects followed inside the proxy",
        );
        let retries = counter(
            &mut registry,
            "retries",
            "Requests sent again after they may have reached Livy",
        );
        let hold_timeouts = counter(
            &mut registry,
            "hold_timeouts",
            "Requests answered 503 because no usable leader appeared within hold-timeout",
        );
        let shed = counter(
            &mut registry,
            "requests_shed",
            "Requests refused with 503 overloaded (max-requests-in-flight)",
        );
        let open_family = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "client_connections_open",
            "Client connections open, by listener",
            open_family.clone(),
        );
        let total_family = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "client_connections",
            "Client connections accepted, by listener",
            total_family.clone(),
        );
        let connections_open = Listener::ALL
            .iter()
            .map(|l| {
                open_family
                    .get_or_create(&ListenerLabel {
                        listener: l.as_str(),
                    })
                    .clone()
            })
            .collect();
        let connections_total = Listener::ALL
            .iter()
            .map(|l| {
                total_family
                    .get_or_create(&ListenerLabel {
                        listener: l.as_str(),
                    })
                    .clone()
            })
            .collect();
        let connections_at_limit = counter(
            &mut registry,
            "client_connections_at_limit",
            "Times the HTTP listener paused accepting at max-client-connections",
        );
        let bytes_family = Family::<BytesLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes to and from clients, by listener and direction",
            bytes_family.clone(),
        );
        let mut bytes = Vec::new();
        for l in Listener::ALL {
            for direction in ["received", "sent"] {
                bytes.push(
                    bytes_family
                        .get_or_create(&BytesLabels {
                            listener: l.as_str(),
                            direction,
                        })
                        .clone(),
                );
            }
        }
        let jdbc_open = gauge(
            &mut registry,
            "jdbc_connections_open",
            "JDBC streams being relayed",
        );
        let jdbc_total = counter(
            &mut registry,
            "jdbc_connections",
            "JDBC streams relayed to a Livy Thrift server",
        );
        let jdbc_closed_on_failover = counter(
            &mut registry,
            "jdbc_connections_closed_on_failover",
            "JDBC streams closed because the leader changed",
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result",
            reloads.clone(),
        );
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabel { result });
        }
        let tls_reloads = Family::<ListenerResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "TLS certificate reloads (SIGHUP or a file change), by listener (upstream, jdbc_upstream: the TLS clients to Livy) and result",
            tls_reloads.clone(),
        );
        let tls_expiry = Family::<ListenerLabel, Gauge>::default();
        registry.register_with_unit(
            "tls_certificate_expiry",
            "notAfter of the certificate a TLS listener serves, or of the client certificate presented to Livy (listener upstream, jdbc_upstream), as Unix time",
            Unit::Seconds,
            tls_expiry.clone(),
        );
        let leader_changes = counter(
            &mut registry,
            "leader_changes",
            "Times the leader in the proxy's view changed",
        );
        let leader_known = gauge(
            &mut registry,
            "leader_known",
            "1 while an active Livy server is known",
        );
        let leader_info = Family::<LeaderLabels, Gauge>::default();
        registry.register(
            "leader_info",
            "The current leader (1), by participant id and URL",
            leader_info.clone(),
        );
        let since_change = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "seconds_since_leader_change",
            "Time since the leader in the view last changed",
            since_change.clone(),
        );
        let zookeeper_connected = Gauge::default();
        if zookeeper {
            registry.register(
                "zookeeper_connected",
                "1 while the ZooKeeper session is connected",
                zookeeper_connected.clone(),
            );
        }
        let ready = gauge(&mut registry, "ready", "1 while /readyz answers 200");
        let draining = gauge(
            &mut registry,
            "draining",
            "1 from the first moment of a drain",
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register("build_info", "The proxy's version", build_info.clone());
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Metrics {
            registry,
            requests,
            duration,
            held,
            upstream_errors,
            redirects,
            retries,
            hold_timeouts,
            shed,
            connections_open,
            connections_total,
            connections_at_limit,
            bytes,
            jdbc_open,
            jdbc_total,
            jdbc_closed_on_failover,
            reloads,
            tls_reloads,
            tls_expiry,
            leader_changes,
            leader_known,
            leader_info,
            since_change,
            zookeeper_connected,
            ready,
            draining,
            held_total: Counter::default(),
            failed_total: Counter::default(),
            scrape: Mutex::new(()),
        }
    }

    /// One HTTP request answered.
    pub fn http_request(&self, method: &Method, status: StatusCode, took: Duration) {
        self.requests[method_index(method) * CLASSES.len() + class_index(status)].inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A request waited `held` for a leader (only recorded when it did wait).
    pub fn held(&self, held: Duration) {
        self.held_total.inc();
        self.held.observe(held.as_secs_f64());
    }

    /// The counters `/status` lists.
    pub fn totals(&self) -> Totals {
        Totals {
            held: self.held_total.get(),
            redirected: self.redirects.get(),
            retried: self.retries.get(),
            failed: self.failed_total.get(),
        }
    }

    /// The proxy answered a request itself, with this failover.md `kind`.
    pub fn upstream_error(&self, kind: &'static str) {
        self.failed_total.inc();
        self.upstream_errors
            .get_or_create(&KindLabel { kind })
            .inc();
        if kind == "no_leader" || kind == "leader_unreachable" {
            self.hold_timeouts.inc();
        }
    }

    /// A passive's redirect was followed inside the proxy.
    pub fn redirect_followed(&self) {
        self.redirects.inc();
    }

    /// A request that may have reached Livy was sent again.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// A request was shed (too many in flight).
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// A client connection was accepted on `listener`; the guard counts it
    /// open until dropped.
    pub fn connection(&self, listener: Listener) -> ConnectionGuard {
        self.connections_total[listener.index()].inc();
        let open = self.connections_open[listener.index()].clone();
        open.inc();
        ConnectionGuard { open }
    }

    /// The HTTP listener reached `max-client-connections` and paused.
    pub fn connections_at_limit(&self) {
        self.connections_at_limit.inc();
    }

    /// `n` bytes moved on `listener`.
    pub fn bytes(&self, listener: Listener, direction: Direction, n: u64) {
        let i = listener.index() * 2 + usize::from(direction == Direction::Sent);
        self.bytes[i].inc_by(n);
    }

    /// A JDBC stream to Livy opened; the guard counts it open until dropped.
    pub fn jdbc_connection(&self) -> ConnectionGuard {
        self.jdbc_total.inc();
        self.jdbc_open.inc();
        ConnectionGuard {
            open: self.jdbc_open.clone(),
        }
    }

    /// A JDBC stream was closed because the leader changed.
    pub fn jdbc_closed_on_failover(&self) {
        self.jdbc_closed_on_failover.inc();
    }

    /// A configuration reload finished.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// `listener` serves TLS with a certificate valid until `not_after`
    /// (Unix seconds): its expiry gauge and its reload counters, at 0, so
    /// that a first failure shows in `increase()`.
    pub fn tls_listener(&self, listener: Listener, not_after: i64) {
        self.tls_reloads_at_zero(listener.as_str());
        self.tls_certificate(listener, not_after);
    }

    /// The reload counters of `listener` (a listener's label, or
    /// `upstream`/`jdbc_upstream` for the TLS clients to Livy), at 0.
    pub fn tls_reloads_at_zero(&self, listener: &'static str) {
        for result in ["success", "failure"] {
            let _ = self
                .tls_reloads
                .get_or_create(&ListenerResultLabels { listener, result });
        }
    }

    /// `listener` now serves a certificate valid until `not_after`.
    pub fn tls_certificate(&self, listener: Listener, not_after: i64) {
        self.tls_expiry(listener.as_str(), not_after);
    }

    /// The certificate of `listener` (a listener's label, or
    /// `upstream`/`jdbc_upstream` for the client certificates presented
    /// to Livy) is valid until `not_after` (Unix seconds).
    pub fn tls_expiry(&self, listener: &'static str, not_after: i64) {
        self.tls_expiry
            .get_or_create(&ListenerLabel { listener })
            .set(not_after);
    }

    /// A TLS reload of `listener` (as [`Metrics::tls_reloads_at_zero`])
    /// finished.
    pub fn tls_reload(&self, listener: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&ListenerResultLabels { listener, result })
            .inc();
    }

    /// The exposition text, with the scrape-time values taken from `view`,
    /// `status` and the proxy's readiness.
    pub fn encode(
        &self,
        view: &LeaderView,
        status: &Status,
        ready: bool,
        draining: bool,
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let total = status.changes_total();
        let seen = self.leader_changes.get();
        if total > seen {
            self.leader_changes.inc_by(total - seen);
        }
        self.leader_info.clear();
        match &view.leader {
            Some(l) => {
                self.leader_known.set(1);
                self.leader_info
                    .get_or_create(&LeaderLabels {
                        id: l.node.id.clone(),
                        url: l.node.origin.to_string(),
                    })
                    .set(1);
                let since = SystemTime::now()
                    .duration_since(l.since)
                    .unwrap_or_default();
                self.since_change.set(since.as_secs_f64());
            }
            None => {
                self.leader_known.set(0);
                self.since_change.set(0.0);
            }
        }
        let connected = status.zookeeper().as_deref() == Some("connected");
        self.zookeeper_connected.set(i64::from(connected));
        self.ready.set(i64::from(ready));
        self.draining.set(i64::from(draining));
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Counts a connection as open while it lives.
pub struct ConnectionGuard {
    open: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The exposition's content type (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn counters_move_and_carry_the_service_label() {
        let m = Metrics::new("default", true);
        m.http_request(&Method::GET, StatusCode::OK, Duration::from_millis(3));
        m.http_request(&Method::GET, StatusCode::OK, Duration::from_millis(3));
        m.http_request(
            &Method::POST,
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
        );
        m.upstream_error("no_leader");
        {
            let _c = m.connection(Listener::Http);
            m.bytes(Listener::Http, Direction::Sent, 10);
        }
        let text = m.encode(&LeaderView::unknown(), &Status::default(), false, false);
        let get_2xx =
            r#"livy_proxy_http_requests_total{service="default",method="GET",status_class="2xx"}"#;
        assert_eq!(value(&text, get_2xx), Some(2.0), "{text}");
        assert_eq!(
            value(
                &text,
                r#"livy_proxy_http_requests_total{service="default",method="POST",status_class="5xx"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"livy_proxy_upstream_errors_total{service="default",kind="no_leader"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"livy_proxy_hold_timeouts_total{service="default"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"livy_proxy_client_connections_open{service="default",listener="http"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"livy_proxy_bytes_total{service="default",listener="http",direction="sent"}"#
            ),
            Some(10.0)
        );
        assert_eq!(
            value(&text, r#"livy_proxy_leader_known{service="default"}"#),
            Some(0.0)
        );
        assert!(
            text.contains("livy_proxy_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("livy_proxy_seconds_since_leader_change{"),
            "{text}"
        );
    }

    #[test]
    fn the_leader_is_exposed_at_scrape_time() {
        let m = Metrics::new("default", true);
        let node = crate::node::LivyNode::parse(
            "livy-2=http://h2:8998",
            crate::node::AddressDefaults::default(),
        )
        .unwrap();
        let text = m.encode(
            &LeaderView::fixed(Some(node), 1),
            &Status::default(),
            true,
            false,
        );
        assert_eq!(
            value(&text, r#"livy_proxy_leader_known{service="default"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"livy_proxy_leader_info{service="default",id="livy-2",url="http://h2:8998"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"livy_proxy_ready{service="default"}"#),
            Some(1.0)
        );
    }
}
