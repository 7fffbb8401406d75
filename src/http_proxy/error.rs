//! Every way a proxied request can fail, and the response the client gets.
//!
//! Clients of Livy parse `{"msg": "..."}` error bodies, so the proxy answers
//! in the same shape, plus a `kind` (the label the log line uses) that a
//! client or a runbook can match on without parsing prose. Failures that go
//! away by themselves (no leader yet, a leader that cannot be reached, a
//! redirect loop during an election) are 503 with `Retry-After`; a Livy
//! server that failed after it may have received the request is 502 (also
//! with `Retry-After`), never retried for non-idempotent methods.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Why the proxy answered a request itself instead of relaying Livy's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No active Livy server became known within the hold time.
    #[error("no active Livy server is known (waited {waited:?}){}", detail(.problem))]
    NoLeader {
        /// How long the request was held.
        waited: Duration,
        /// Discovery's reason, if it has one.
        problem: Option<String>,
    },
    /// The active server refused connections for the whole hold time.
    #[error("the active Livy server {node} cannot be reached: {reason}")]
    LeaderUnreachable {
        /// The node, as `id=url`.
        node: String,
        /// The last connect error.
        reason: String,
    },
    /// The connection failed after the request may have reached Livy, and
    /// the method is not safe to resend.
    #[error("Livy server {node} failed while handling the request: {reason}")]
    UpstreamFailed {
        /// The node, as `id=url`.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// TLS to the Livy server failed: its certificate was refused (unknown
    /// CA, a name it does not carry, expired), it refused the proxy's, or
    /// it does not speak TLS. A configuration fault, so not retried.
    #[error("TLS to Livy server {node} failed: {reason}")]
    UpstreamTls {
        /// The node, as `id=url`.
        node: String,
        /// The TLS reason, as rustls gives it.
        reason: String,
    },
    /// Livy did not answer within `upstream-timeout`.
    #[error("Livy server {node} did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// The node, as `id=url`.
        node: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// Livy servers kept redirecting to each other (an election in flux).
    #[error(
        "Livy servers redirected {hops} times without an answer; an election may be in progress"
    )]
    RedirectLoop {
        /// How many redirects were followed.
        hops: usize,
    },
    /// A passive server redirected a request whose body was already sent to
    /// it and is too large to resend, and discovery could not confirm
    /// another active server within the hold time. A redirect back through
    /// the proxy would only reach the same passive again.
    #[error(
        "Livy server {node} is no longer active and the request body (too large to resend) went to it; no new active server was confirmed in time"
    )]
    LeaderChanging {
        /// The node that redirected, as `id=url`.
        node: String,
    },
    /// The client's request cannot be forwarded at all.
    #[error("{0}")]
    BadRequest(String),
    /// The method is one a reverse proxy for Livy does not serve (CONNECT).
    #[error("method {0} is not supported by livy-proxy")]
    MethodNotAllowed(String),
    /// The client stopped sending its request body: whatever it held
    /// (memory, a connection to Livy) is let go instead of waiting for it.
    #[error("the client sent nothing of its request body for {timeout:?} (client-body-timeout)")]
    BodyTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// A limit the proxy keeps so that some clients cannot take everything
    /// was reached, and did not free up within the hold time.
    #[error("livy-proxy is busy: {0}")]
    Overloaded(String),
}

fn detail(problem: &Option<String>) -> String {
    problem
        .as_ref()
        .map(|p| format!(": {p}"))
        .unwrap_or_default()
}

/// Every `kind` the proxy answers with, so that each metric series exists
/// (at 0) from the start: an alert's `increase()` then sees the first one.
pub const KINDS: &[&str] = &[
    "no_leader",
    "leader_unreachable",
    "upstream_failed",
    "upstream_tls",
    "upstream_timeout",
    "redirect_loop",
    "leader_changing",
    "bad_request",
    "method_not_allowed",
    "body_timeout",
    "overloaded",
];

impl ProxyError {
    /// The HTTP status this failure is reported with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoLeader { .. }
            | ProxyError::LeaderUnreachable { .. }
            | ProxyError::RedirectLoop { .. }
            | ProxyError::LeaderChanging { .. }
            | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamFailed { .. } | ProxyError::UpstreamTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A short label for the log line and the error body's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoLeader { .. } => "no_leader",
            ProxyError::LeaderUnreachable { .. } => "leader_unreachable",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::RedirectLoop { .. } => "redirect_loop",
            ProxyError::LeaderChanging { .. } => "leader_changing",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::Overloaded(_) => "overloaded",
        }
    }

    /// The response: Livy's `{"msg": ...}` JSON (with `kind`), with `Retry-After` on
    /// 502/503 so clients and load balancers back off instead of hammering.
    pub fn into_response(self, retry_after: Duration) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = serde_json::json!({ "msg": self.to_string(), "kind": self.kind() }).to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
        ) {
            let secs = retry_after.as_secs().max(1);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn kinds_lists_every_kind() {
        let all = [
            ProxyError::NoLeader {
                waited: Duration::ZERO,
                problem: None,
            },
            ProxyError::LeaderChanging {
                node: String::new(),
            },
            ProxyError::BadRequest(String::new()),
            ProxyError::Overloaded(String::new()),
        ];
        for e in all {
            assert!(KINDS.contains(&e.kind()), "{}", e.kind());
        }
    }

    #[tokio::test]
    async fn no_leader_is_503_json_with_retry_after() {
        let resp = ProxyError::NoLeader {
            waited: Duration::from_secs(15),
            problem: Some("nobody holds the latch".into()),
        }
        .into_response(Duration::from_secs(5));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .contains("nobody holds the latch")
        );
        assert_eq!(v["kind"], "no_leader");
    }
}
