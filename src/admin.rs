//! The admin listener: what load balancers, Kubernetes and Prometheus ask.
//!
//! Separate from the traffic listeners (`admin-listen`, default
//! `127.0.0.1:9998`) so probes and scrapes never queue behind client
//! traffic or its limits, and so it can stay private when traffic is public.
//! - `/healthz`: 200 while the process serves, a drain included: liveness
//!   must never kill a proxy that is finishing its requests.
//! - `/readyz`: 200 only while a leader is known (and, with
//!   `ready-requires-fresh`, while discovery's view is fresh); 503 with a
//!   JSON reason otherwise, and from the first moment of a drain, so a load
//!   balancer stops sending before the proxy stops serving.
//! - `/status`: the leader and since when, the participants, the source
//!   and session, recent leader changes and request counters, as JSON.
//! - `/metrics`: Prometheus text exposition ([`crate::metrics`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::discovery::{LeaderRx, LeaderView, Status, status::rfc3339_string};
use crate::metrics::{Listener, Metrics};

/// Set once a drain begins; read by `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// Marks the proxy as draining (readiness goes 503 at once).
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a drain has begun.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The admin listener's settings: configuration section `admin`, built by
/// [`crate::config`].
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// Its address (`admin-listen`); `None` when `off`.
    pub listen: Option<std::net::SocketAddr>,
    /// Readiness also requires a fresh view (`ready-requires-fresh`).
    pub ready_requires_fresh: bool,
    /// Its TLS files (`admin-tls-*`), read by the listener.
    pub tls: Option<crate::tls::TlsSpec>,
}

/// Everything the admin endpoints read.
pub struct AdminState {
    /// Discovery's view.
    pub leader: LeaderRx,
    /// Discovery's record of changes, participants and session.
    pub discovery: Arc<Status>,
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether a drain has begun.
    pub draining: Arc<Draining>,
    /// Readiness also requires a fresh (not stale) view.
    pub ready_requires_fresh: bool,
    /// The Livy service's name (the `service` label; `default` today).
    pub service: String,
}

impl AdminState {
    /// `None` when ready, else why not.
    pub fn not_ready(&self, view: &LeaderView) -> Option<String> {
        if self.draining.is_set() {
            return Some("draining: the proxy is shutting down".to_string());
        }
        if view.leader.is_none() {
            return Some(
                view.problem
                    .clone()
                    .unwrap_or_else(|| "no active Livy server is known".to_string()),
            );
        }
        if self.ready_requires_fresh && view.stale {
            return Some(format!(
                "the view is stale (ready-requires-fresh): {}",
                view.problem
                    .as_deref()
                    .unwrap_or("discovery lost its source")
            ));
        }
        None
    }

    fn status(&self, view: &LeaderView) -> serde_json::Value {
        let leader = view.leader.as_ref().map(|l| {
            json!({
                "id": l.node.id,
                "url": l.node.origin.to_string(),
                "since": rfc3339_string(l.since),
            })
        });
        let not_ready = self.not_ready(view);
        json!({
            "service": self.service,
            "version": env!("CARGO_PKG_VERSION"),
            "leader": leader,
            "ready": not_ready.is_none(),
            "not_ready_reason": not_ready,
            "draining": self.draining.is_set(),
            "source": view.source.as_str(),
            "stale": view.stale,
            "problem": view.problem,
            "zookeeper_session": self.discovery.zookeeper(),
            "participants": self.discovery.participants(),
            "leader_changes": self.discovery.changes(),
            "leader_changes_total": self.discovery.changes_total(),
            "requests": self.metrics.totals(),
        })
    }

    /// Answers one admin request.
    pub fn handle(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"msg": "the admin endpoints answer GET"}),
            );
        }
        let view = self.leader.borrow().clone();
        match path {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => match self.not_ready(&view) {
                None => json_response(StatusCode::OK, &json!({"ready": true})),
                Some(reason) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"ready": false, "reason": reason}),
                ),
            },
            "/status" => json_response(StatusCode::OK, &self.status(&view)),
            "/metrics" => {
                let ready = self.not_ready(&view).is_none();
                let text =
                    self.metrics
                        .encode(&view, &self.discovery, ready, self.draining.is_set());
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                resp
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"msg": "admin endpoints: /healthz /readyz /status /metrics"}),
            ),
        }
    }

    /// Serves the admin endpoints on `listener` until `shutdown`. It is
    /// the last listener to stop: probes keep their answers through a drain.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.serve_tls(listener, None, shutdown).await
    }

    /// [`AdminState::serve`], over TLS (HTTP/1.1) when `tls` is given
    /// (`admin-tls-*`).
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<crate::tls::TlsSource>>,
        shutdown: CancellationToken,
    ) {
        let graceful = GracefulShutdown::new();
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10));
        let http1 = Arc::new(http1);
        loop {
            let handshake = match &tls {
                Some(t) => match t.handshakes().permit(&shutdown).await {
                    Some(p) => Some(p),
                    None => break,
                },
                None => None,
            };
            let Some((stream, peer)) = crate::listener::accept(&listener, &shutdown, "admin").await
            else {
                break;
            };
            let state = self.clone();
            let http1 = http1.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _open = state.metrics.connection(Listener::Admin);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| {
                    let resp = state.handle(req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                match (tls, handshake) {
                    (Some(tls), Some(handshake)) => {
                        let stream = match tls
                            .handshakes()
                            .accept(tls.acceptor(), stream, handshake)
                            .await
                        {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(%peer, listener = "admin", error = %e, "TLS handshake did not complete");
                                return;
                            }
                        };
                        let _ = watcher
                            .watch(http1.serve_connection(TokioIo::new(stream), svc))
                            .await;
                    }
                    _ => {
                        let _ = watcher
                            .watch(http1.serve_connection(TokioIo::new(stream), svc))
                            .await;
                    }
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{AddressDefaults, LivyNode};
    use http_body_util::BodyExt;
    use tokio::sync::watch;

    fn state(view: LeaderView) -> (AdminState, watch::Sender<LeaderView>) {
        let (tx, rx) = watch::channel(view);
        let state = AdminState {
            leader: rx,
            discovery: Arc::default(),
            metrics: Arc::new(Metrics::new("default", false)),
            draining: Arc::default(),
            ready_requires_fresh: false,
            service: "default".to_string(),
        };
        (state, tx)
    }

    async fn get(state: &AdminState, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = state.handle(&Method::GET, path);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    fn node() -> LivyNode {
        LivyNode::parse("livy-1=http://h1:8998", AddressDefaults::default()).unwrap()
    }

    #[tokio::test]
    async fn readiness_follows_the_leader_and_the_drain_but_liveness_does_not() {
        let (state, tx) = state(LeaderView::unknown());
        assert_eq!(get(&state, "/readyz").await.0, 503);
        assert_eq!(get(&state, "/healthz").await.0, 200);
        tx.send_replace(LeaderView::fixed(Some(node()), 1));
        assert_eq!(get(&state, "/readyz").await.0, 200);
        state.draining.start();
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, 503);
        assert!(
            body["reason"].as_str().unwrap().contains("draining"),
            "{body}"
        );
        assert_eq!(get(&state, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn a_stale_view_is_ready_unless_freshness_is_required() {
        let mut view = LeaderView::fixed(Some(node()), 1);
        view.stale = true;
        let (mut state, _tx) = state(view);
        assert_eq!(get(&state, "/readyz").await.0, 200);
        state.ready_requires_fresh = true;
        assert_eq!(get(&state, "/readyz").await.0, 503);
    }

    #[tokio::test]
    async fn status_names_the_leader() {
        let (state, _tx) = state(LeaderView::fixed(Some(node()), 1));
        let (status, body) = get(&state, "/status").await;
        assert_eq!(status, 200);
        assert_eq!(body["leader"]["id"], "livy-1");
        assert_eq!(body["leader"]["url"], "http://h1:8998");
        assert_eq!(body["service"], "default");
        assert!(body["leader"]["since"].as_str().unwrap().ends_with('Z'));
    }
}
