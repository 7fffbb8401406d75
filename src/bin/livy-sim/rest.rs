//! livy-sim's HTTP side: the passive redirect filter, Livy's REST subset,
//! and the `/_sim/*` introspection endpoints tests read.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::Sim;

/// Livy's in-memory sessions and batches.
#[derive(Default)]
pub struct Store {
    next_id: u64,
    sessions: BTreeMap<u64, Value>,
    batches: BTreeMap<u64, Value>,
    statements: BTreeMap<u64, Vec<Value>>,
}

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, v: Value) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}

fn msg(status: StatusCode, text: &str) -> Resp {
    json_resp(status, json!({ "msg": text }))
}

/// Handles one request in the current role.
pub async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // Livy's redirect filter answers a passive's request without reading
    // its body, so a client that sent `Expect: 100-continue` gets the 307
    // and no 100 (Jetty's behaviour; hyper's too when the body is not read).
    let role = sim.role.borrow().clone();
    let redirects = !role.leader && !path.starts_with("/_sim/") && path != "/ha-status";
    let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut body = body;
    if let (Some(limit), false, true) = (sim.reject_body_after, redirects, has_body) {
        // Read up to the limit, then refuse what is left, unread.
        let mut read = 0u64;
        while read < limit {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
        return Ok(msg(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body refused after {read} bytes"),
        ));
    }
    let body = if redirects && !sim.passive_reads_body {
        drop(body);
        Bytes::new()
    } else {
        match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        }
    };
    let mut resp = if let Some(rest) = path.strip_prefix("/_sim/") {
        introspect(&sim, parts.method.as_str(), rest, parts.uri.query())
    } else {
        let headers: serde_json::Map<String, Value> = parts
            .headers
            .keys()
            .map(|k| {
                let joined = parts
                    .headers
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                (k.to_string(), Value::String(joined))
            })
            .collect();
        if let Ok(mut log) = sim.requests.lock() {
            log.push(json!({
                "method": parts.method.as_str(),
                "path": path,
                "query": parts.uri.query(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            }));
        }
        if path == "/ha-status" && sim.ha_status {
            if role.leader {
                json_resp(StatusCode::OK, json!({"status": "leader"}))
            } else {
                json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "follower"}),
                )
            }
        } else if !role.leader {
            passive(&sim, &parts, role.leader_id.as_deref())
        } else {
            active(&sim, &parts, &body).await
        }
    };
    if let Ok(v) = http::HeaderValue::from_str(&sim.id) {
        resp.headers_mut().insert("x-livy-node", v);
    }
    Ok(resp)
}

fn introspect(sim: &Sim, method: &str, what: &str, query: Option<&str>) -> Resp {
    match (method, what) {
        ("GET", "state") => {
            let role = sim.role.borrow().clone();
            json_resp(
                StatusCode::OK,
                json!({
                    "id": sim.id,
                    "leader": role.leader,
                    "leader_id": role.leader_id,
                    "thrift_connections": sim.thrift_connections.load(std::sync::atomic::Ordering::SeqCst),
                }),
            )
        }
        ("POST", "role") => {
            // A role chosen by the test (a step-down, or a confused passive
            // naming anyone): `?leader=ID`, this server's own id to lead.
            // `&taking-over=1` with its own id: the latch names it but its
            // role has not flipped yet, so it redirects to itself, as Livy
            // does a moment after winning an election.
            // A latch event later overrides it.
            let param = |name: &str| {
                query.and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_string)
                })
            };
            let Some(leader) = param("leader") else {
                return msg(StatusCode::BAD_REQUEST, "give ?leader=ID");
            };
            let taking_over = param("taking-over").as_deref() == Some("1");
            sim.set_role.send_replace(crate::Role {
                leader: leader == sim.id && !taking_over,
                leader_id: Some(leader),
            });
            msg(StatusCode::OK, "role set")
        }
        ("GET", "requests") => {
            let list = sim.requests.lock().map(|l| l.clone()).unwrap_or_default();
            json_resp(StatusCode::OK, Value::Array(list))
        }
        ("DELETE", "requests") => {
            if let Ok(mut l) = sim.requests.lock() {
                l.clear();
            }
            msg(StatusCode::OK, "cleared")
        }
        _ => msg(StatusCode::NOT_FOUND, "unknown /_sim endpoint"),
    }
}

/// Exactly what Livy's `DomainRedirectionFilter` answers on a passive
/// server: the request URL with only the host replaced by the leader's.
fn passive(sim: &Sim, parts: &http::request::Parts, leader_id: Option<&str>) -> Resp {
    let Some(leader_host) = leader_id.and_then(|id| sim.peers.get(id)) else {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Full::new(Bytes::from("No active Livy server is known.")))
            .unwrap_or_default();
    };
    let port = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(sim.port);
    let scheme = if parts.extensions.get::<crate::ViaTls>().is_some() {
        "https"
    } else {
        "http"
    };
    let mut url = format!("{scheme}://{leader_host}:{port}{}", parts.uri.path());
    if let Some(q) = parts.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, &url)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(format!(
            "This is a standby Livy Instance. The redirect url is: {url}"
        ))))
        .unwrap_or_default()
}

async fn active(sim: &Sim, parts: &http::request::Parts, body: &Bytes) -> Resp {
    let segs: Vec<&str> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = parts.method.as_str();
    let owner = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|_| Value::String("authenticated-user".into()))
        .unwrap_or(Value::Null);
    let parse = || serde_json::from_slice::<Value>(body);
    let Ok(mut store) = sim.store.lock() else {
        return msg(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
    };
    match (method, segs.as_slice()) {
        ("GET", ["version"]) => json_resp(
            StatusCode::OK,
            json!({"version": "0.8.0-sim", "node": sim.id}),
        ),
        ("GET", ["slow"]) => {
            let ms = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            drop(store);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            msg(StatusCode::OK, "slow")
        }
        ("POST", ["cliservice"]) => {
            let mut b = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/x-thrift");
            if parts.headers.get(header::COOKIE).is_none() {
                b = b.header(header::SET_COOKIE, format!("hive.server2.auth={}", sim.id));
            }
            b.body(Full::new(body.clone())).unwrap_or_default()
        }
        ("GET", [kind @ ("sessions" | "batches")]) => {
            let map = if *kind == "sessions" {
                &store.sessions
            } else {
                &store.batches
            };
            let list: Vec<Value> = map.values().cloned().collect();
            json_resp(
                StatusCode::OK,
                json!({"from": 0, "total": list.len(), kind.to_string(): list}),
            )
        }
        ("POST", [kind @ ("sessions" | "batches")]) => {
            let Ok(req) = parse() else {
                return msg(
                    StatusCode::BAD_REQUEST,
                    "Rejected, Reason: invalid JSON body",
                );
            };
            store.next_id += 1;
            let id = store.next_id;
            let obj = json!({
                "id": id, "name": req.get("name").cloned().unwrap_or(Value::Null),
                "appId": null, "owner": owner, "proxyUser": req.get("proxyUser").cloned().unwrap_or(Value::Null),
                "state": if *kind == "sessions" { "idle" } else { "running" },
                "kind": req.get("kind").cloned().unwrap_or(Value::String("spark".into())),
                "appInfo": {"driverLogUrl": null, "sparkUiUrl": null, "livyHost": sim.id},
                "log": [],
            });
            if *kind == "sessions" {
                store.sessions.insert(id, obj.clone());
            } else {
                store.batches.insert(id, obj.clone());
            }
            let mut r = json_resp(StatusCode::CREATED, obj);
            if let Ok(v) = http::HeaderValue::from_str(&format!("/{kind}/{id}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        (m, [kind @ ("sessions" | "batches"), id, rest @ ..]) => {
            let Ok(id) = id.parse::<u64>() else {
                return msg(StatusCode::NOT_FOUND, "not found");
            };
            let exists = if *kind == "sessions" {
                store.sessions.get(&id)
            } else {
                store.batches.get(&id)
            }
            .cloned();
            let Some(obj) = exists else {
                let what = if *kind == "sessions" {
                    "Session"
                } else {
                    "Batch"
                };
                return msg(StatusCode::NOT_FOUND, &format!("{what} '{id}' not found."));
            };
            match (m, rest) {
                ("GET", []) => json_resp(StatusCode::OK, obj),
                ("DELETE", []) => {
                    store.sessions.remove(&id);
                    store.batches.remove(&id);
                    msg(StatusCode::OK, "deleted")
                }
                ("GET", ["state"]) => {
                    json_resp(StatusCode::OK, json!({"id": id, "state": obj["state"]}))
                }
                ("GET", ["log"]) => {
                    // Empty, unless `?size=N` asks for N lines (at most
                    // 2,000,000): the large answer a test needs for a
                    // client that stops reading halfway through a log.
                    let size = parts
                        .uri
                        .query()
                        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("size=")))
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0)
                        .min(2_000_000);
                    let log: Vec<String> = (0..size)
                        .map(|i| format!("26/12/06 12:00:00 INFO SparkContext: simulated line {i}"))
                        .collect();
                    json_resp(
                        StatusCode::OK,
                        json!({"id": id, "from": 0, "total": size, "log": log}),
                    )
                }
                ("POST", ["statements"]) => {
                    let code = parse()
                        .ok()
                        .and_then(|v| v.get("code").cloned())
                        .unwrap_or(Value::Null);
                    let list = store.statements.entry(id).or_default();
                    let st = json!({
                        "id": list.len(), "code": code, "state": "available", "progress": 1.0,
                        "output": {"status": "ok", "execution_count": list.len(), "data": {"text/plain": format!("computed by {}", sim.id)}},
                    });
                    list.push(st.clone());
                    json_resp(StatusCode::CREATED, st)
                }
                ("GET", ["statements"]) => {
                    let list = store.statements.get(&id).cloned().unwrap_or_default();
                    json_resp(
                        StatusCode::OK,
                        json!({"total_statements": list.len(), "statements": list}),
                    )
                }
                ("GET", ["statements", sid]) => {
                    let found = sid
                        .parse::<usize>()
                        .ok()
                        .and_then(|s| store.statements.get(&id).and_then(|l| l.get(s)).cloned());
                    match found {
                        Some(st) => json_resp(StatusCode::OK, st),
                        None => msg(StatusCode::NOT_FOUND, "Statement not found"),
                    }
                }
                ("POST", ["statements", _, "cancel"]) => msg(StatusCode::OK, "canceled"),
                _ => msg(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => msg(
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {}", parts.uri.path()),
        ),
    }
}
