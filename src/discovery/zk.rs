//! Following Livy's leader latch in ZooKeeper.
//!
//! The loop, per ZooKeeper session:
//! 1. list the latch's children with a **one-shot** watch (or, while the
//!    latch path does not exist, watch for its creation);
//! 2. read the lowest-sequence child's data (the participant id), map it to
//!    a node and publish it; a child that vanished in between means "read
//!    again";
//! 3. wait for the watch, a session state change, a reload that changed
//!    the node list (the id-to-address table), a hint, or shutdown, and go
//!    to 1.
//!
//! Why one-shot watches: `zookeeper-client` 0.11 forgets persistent watches
//! when a session reconnects (its `resend_watches` drops them), the same
//! class of bug as HIVE-24713. A one-shot watch is re-armed at every step
//! anyway, and the latch is read again after every reconnect, since changes
//! made while disconnected may never fire. The test
//! `zookeeper_restart_then_leader_change_is_seen` in `tests/discovery.rs`
//! guards this: with a persistent watch on the latch it fails (checked).
//!
//! Faults: a lost connection marks the view stale but keeps the last leader;
//! an expired session is replaced by a new one with everything re-armed; an
//! unreachable ensemble is retried with capped backoff. Only while ZooKeeper
//! has never been reached since start, and nodes are configured, the static
//! list is probed meanwhile so the proxy can serve at all. Once ZooKeeper has
//! answered, it stays the only source of truth: a later outage keeps the
//! last leader (stale) rather than mixing in probe results that could
//! disagree with the latch.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::{DiscoveryConfig, HintListener, Publisher, Source, latch, probe};

/// How a session's loop ended.
enum End {
    Shutdown,
    SessionLost(String),
}

/// First wait before reconnecting; doubled per failed attempt up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Longest wait between two attempts to reach ZooKeeper.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Watches the latch until `shutdown`; see the module docs.
pub async fn run(
    connect: String,
    config: DiscoveryConfig,
    publisher: Publisher,
    mut hints: HintListener,
    shutdown: CancellationToken,
) {
    let mut ever_connected = false;
    let mut backoff = MIN_BACKOFF;
    let mut fallback: Option<(CancellationToken, JoinHandle<()>)> = None;
    let mut refusing: Option<String> = None;
    tracing::info!(zookeeper = %connect, path = %config.leader_path, security = %config.zk_security.describe(), "connecting to ZooKeeper");
    publisher.status.set_zookeeper("connecting");
    loop {
        // `fail_eagerly`: give up after one pass over the hosts instead of
        // cycling until the session timeout, so an unreachable ensemble is
        // reported (and probing started) at once; this loop does the
        // retrying, with backoff. Once a session exists the client cycles
        // the hosts on its own again. The chroot in the connect string
        // (`host:port/chroot`) is applied by the crate.
        let connector = zk::Client::connector()
            .with_session_timeout(config.zk_session_timeout)
            .with_connection_timeout(config.zk_session_timeout.min(MAX_BACKOFF))
            .with_fail_eagerly();
        // The security files are read for every new session, so a rotated
        // certificate or password needs no restart.
        let connector = match config.zk_security.apply(connector) {
            Ok(c) => c,
            Err(e) => {
                publisher.status.set_zookeeper("misconfigured");
                tracing::error!(key = e.key, problem = %e, "cannot secure the ZooKeeper session: retrying");
                publisher.mark_stale(format!("ZooKeeper security key {}: {e}", e.key));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(MAX_BACKOFF) => {}
                }
                continue;
            }
        };
        // With Kerberos, the tickets first: a login that fails is a
        // refusal like a rejected password, never an outage to probe past.
        let login = tokio::select! {
            _ = shutdown.cancelled() => break,
            l = config.zk_security.kerberos_login() => l,
        };
        let (connected, refused) = match login {
            Err(problem) => (
                Err(zk::Error::AuthFailed),
                Some(("kerberos-failed", kerberos_problem(&problem))),
            ),
            Ok(principal) => {
                if let Some(principal) = principal {
                    tracing::debug!(%principal, "Kerberos tickets ready for ZooKeeper");
                }
                let tls = config.zk_security.tls();
                let connecting = async {
                    // With TLS, every host of the connect string is reached over TLS.
                    if tls {
                        connector.secure_connect(&connect).await
                    } else {
                        connector.connect(&connect).await
                    }
                };
                let connected = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = connecting => c,
                };
                let refused = match &connected {
                    Ok(_) => None,
                    Err(e) => tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = refusal(e, &connect, &config) => r,
                    },
                };
                (connected, refused)
            }
        };
        match connected {
            Err(_) if let Some((state, problem)) = refused => {
                // ZooKeeper answered and refused the credentials: a
                // configuration fault, not an outage. The node list is not
                // probed instead: the operator secured the latch, and
                // probing would route around it.
                if let Some((token, task)) = fallback.take() {
                    token.cancel();
                    let _ = task.await;
                }
                publisher.status.set_zookeeper(state);
                // Once per cause: the retries say nothing new.
                if refusing.as_deref() != Some(problem.as_str()) {
                    tracing::error!(%problem, "ZooKeeper refused the proxy: not routing until it lets the proxy in");
                    refusing = Some(problem.clone());
                } else {
                    tracing::debug!(%problem, "ZooKeeper refused the proxy again");
                }
                publisher.mark_stale(problem);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(MAX_BACKOFF) => {}
                }
            }
            Err(e) => {
                publisher.status.set_zookeeper("unreachable");
                let problem = format!("ZooKeeper {connect} unreachable: {e}");
                if !ever_connected && !config.nodes.load().is_empty() {
                    if fallback.is_none() {
                        tracing::warn!(%problem, "probing the node list until ZooKeeper answers");
                        let token = shutdown.child_token();
                        let task = tokio::spawn(probe::run(
                            config.clone(),
                            publisher.clone(),
                            hints.clone(),
                            token.clone(),
                        ));
                        fallback = Some((token, task));
                    } else {
                        tracing::debug!(%problem, "ZooKeeper still unreachable; probing");
                    }
                } else {
                    publisher.mark_stale(problem);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(client) => {
                refusing = None;
                if let Some((token, task)) = fallback.take() {
                    token.cancel();
                    let _ = task.await;
                    tracing::info!("ZooKeeper answered: stopped probing the node list");
                }
                ever_connected = true;
                publisher.status.set_zookeeper("connected");
                tracing::info!(
                    session = %client.session_id(),
                    timeout = ?client.session_timeout(),
                    path = %config.leader_path,
                    "ZooKeeper session established"
                );
                let started = tokio::time::Instant::now();
                let end = follow(&client, &config, &publisher, &mut hints, &shutdown).await;
                drop(client);
                match end {
                    End::Shutdown => break,
                    End::SessionLost(why) => {
                        publisher.status.set_zookeeper("expired");
                        tracing::warn!(reason = %why, "ZooKeeper session ended: opening a new one");
                        publisher.mark_stale(format!("ZooKeeper session ended: {why}"));
                    }
                }
                // A session that lived a while gets a quick new one; one
                // lost right after it was made (auth trouble, a flapping
                // server) must not turn this loop into a busy one.
                if started.elapsed() >= config.zk_session_timeout {
                    backoff = MIN_BACKOFF;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if let Some((token, task)) = fallback {
        token.cancel();
        let _ = task.await;
    }
}

/// Whether a failed connect was ZooKeeper refusing the proxy (its SASL
/// login, or the TLS handshake) rather than an outage: the status to show
/// and the problem, naming the cause.
async fn refusal(
    e: &zk::Error,
    connect: &str,
    config: &DiscoveryConfig,
) -> Option<(&'static str, String)> {
    if matches!(e, zk::Error::AuthFailed) {
        return Some(("auth-failed", auth_problem(connect, config)));
    }
    // The crate drops a connection whose GSSAPI step failed and reports
    // only that no host could be reached.
    if let Some(problem) = config.zk_security.diagnose_kerberos(connect).await {
        return Some(("kerberos-failed", kerberos_problem(&problem)));
    }
    if !config.zk_security.tls() {
        return None;
    }
    let problem = config
        .zk_security
        .diagnose_tls(connect, config.zk_session_timeout.min(MAX_BACKOFF))
        .await?;
    Some((
        "tls-failed",
        format!(
            "{problem}; check zk-tls-ca, zk-tls-cert and zk-tls-key against the server's ssl.* settings"
        ),
    ))
}

/// A Kerberos failure on the proxy's side, with the keys to check.
fn kerberos_problem(problem: &str) -> String {
    format!(
        "{problem}: authentication failed; check zk-kerberos-principal, zk-kerberos-keytab, zk-kerberos-service and zk-kerberos-server-host, krb5.conf and the KDC"
    )
}

/// What a refused SASL login means, for the log and readiness.
fn auth_problem(connect: &str, config: &DiscoveryConfig) -> String {
    if config.zk_security.kerberos.is_some() {
        format!(
            "ZooKeeper {connect} refused the proxy's Kerberos login ({}): authentication failed; check the server's JAAS Server section and keytab, and that zk-kerberos-service and zk-kerberos-server-host name its principal",
            config.zk_security.describe()
        )
    } else if config.zk_security.sasl.is_some() {
        format!(
            "ZooKeeper {connect} refused the proxy's credentials ({}): authentication failed; check zk-sasl-user and zk-sasl-password-file against the server's JAAS file",
            config.zk_security.describe()
        )
    } else {
        format!(
            "ZooKeeper {connect} requires authentication (the proxy sent none): authentication failed; set zk-sasl-user and zk-sasl-password-file, or zk-kerberos-principal and zk-kerberos-keytab"
        )
    }
}

fn is_terminal(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::SessionExpired
            | zk::Error::ClientClosed
            | zk::Error::AuthFailed
            | zk::Error::NoHosts
    )
}

/// Follows the latch for the life of one session. A hint from the proxy (the
/// leader redirected elsewhere) makes it `sync` and read the latch at once:
/// ZooKeeper stays the authority, so the hint only hurries the read, and a
/// latch that still names the same leader keeps it.
async fn follow(
    client: &zk::Client,
    config: &DiscoveryConfig,
    publisher: &Publisher,
    hints: &mut HintListener,
    shutdown: &CancellationToken,
) -> End {
    let mut state = client.state_watcher();
    // A reload's new node list maps the latch's ids anew, but the latch
    // itself does not change, so no watch would fire: the reload must
    // cause the read.
    let mut reloaded = config.nodes.changes();
    // The hint the coming read answers, if a hint caused it.
    let mut checking: Option<super::Hint> = None;
    loop {
        let watcher = match read_latch(client, config, publisher).await {
            Ok(w) => {
                if let Some(hint) = checking.take() {
                    if hint.concerns(&publisher.current()) {
                        tracing::info!(leader = %hint.from, named = %hint.named, "ZooKeeper still names the same leader: the view stays (a redirect never overrides the latch)");
                    }
                    hints.answered(&hint);
                }
                w
            }
            Err(e) if is_terminal(&e) => return End::SessionLost(e.to_string()),
            Err(e) => {
                // Connection trouble: keep the last leader, wait for the
                // session to come back (or a moment), then read again.
                publisher.mark_stale(format!("reading the latch from ZooKeeper failed: {e}"));
                tokio::select! {
                    _ = shutdown.cancelled() => return End::Shutdown,
                    s = state.changed() => if s.is_terminated() {
                        return End::SessionLost(format!("{s:?}"));
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let mut fired = Box::pin(watcher.changed());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                event = &mut fired => {
                    if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                        return End::SessionLost(format!("{:?}", event.session_state));
                    }
                    break; // a child came or went: read again
                }
                hint = hints.next() => {
                    if !hint.concerns(&publisher.current()) {
                        hints.answered(&hint);
                        continue;
                    }
                    tracing::info!(from = %hint.from, named = %hint.named, "the leader redirected to another node: syncing with ZooKeeper and reading the latch again");
                    // `sync` makes the next read see everything the quorum
                    // has committed, not just what this server has applied.
                    if let Err(e) = client.sync(&config.leader_path).await {
                        tracing::debug!(error = %e, "ZooKeeper sync failed; reading the latch anyway");
                    }
                    checking = Some(hint);
                    break;
                }
                _ = reloaded.changed() => {
                    tracing::info!("the node list was reloaded: reading the latch and mapping its leader again");
                    break;
                }
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => {
                        publisher.status.set_zookeeper("disconnected");
                        publisher.mark_stale("ZooKeeper connection lost; reconnecting".to_string());
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        publisher.status.set_zookeeper("connected");
                        tracing::info!("ZooKeeper connection restored: reading the latch again");
                        break;
                    }
                    other if other.is_terminated() => return End::SessionLost(format!("{other:?}")),
                    _ => {}
                },
            }
        }
    }
}

/// Records the latch's participants for `/status`: the leader's id is
/// already read; the others' ids are read here (a handful of small reads,
/// only when the latch changed). A participant that left in between is
/// skipped.
async fn record_participants(
    client: &zk::Client,
    path: &str,
    children: &[String],
    leader_child: &str,
    leader_id: &str,
    publisher: &Publisher,
) {
    let mut participants = Vec::new();
    for child in latch::in_order(children) {
        let id = if child == leader_child {
            leader_id.to_string()
        } else {
            match client
                .get_data(&format!("{}/{child}", path.trim_end_matches('/')))
                .await
            {
                Ok((data, _)) => String::from_utf8_lossy(&data).trim().to_string(),
                Err(_) => continue,
            }
        };
        let role = if child == leader_child {
            "leader"
        } else {
            "follower"
        };
        participants.push(super::Participant {
            id,
            at: child.to_string(),
            role: role.to_string(),
        });
    }
    publisher.status.set_participants(participants);
}

/// Reads the latch once, publishes what it found, and returns the armed
/// one-shot watch (on the children, or on the path's creation).
async fn read_latch(
    client: &zk::Client,
    config: &DiscoveryConfig,
    publisher: &Publisher,
) -> Result<zk::OneshotWatcher, zk::Error> {
    let path = config.leader_path.as_str();
    loop {
        match client.list_and_watch_children(path).await {
            Ok((children, watcher)) => {
                let Some(child) = latch::leader_child(&children) else {
                    publisher.status.set_participants(Vec::new());
                    publisher.set_leader(
                        None,
                        Source::ZooKeeper,
                        Some(format!("no Livy server holds the latch {path}")),
                    );
                    return Ok(watcher);
                };
                let child_path = format!("{}/{child}", path.trim_end_matches('/'));
                let data = match client.get_data(&child_path).await {
                    Ok((data, _)) => data,
                    // The leader left between the two reads: recompute.
                    Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(e),
                };
                let id = String::from_utf8_lossy(&data).trim().to_string();
                // The leader first: requests held for it must not wait for
                // one ZooKeeper round trip per other participant, which
                // only `/status` needs.
                match latch::resolve(&id, &config.nodes.snapshot(), config.defaults) {
                    Ok(node) => publisher.set_leader(Some(node), Source::ZooKeeper, None),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot route to the latch leader");
                        publisher.set_leader(None, Source::ZooKeeper, Some(e.to_string()));
                    }
                }
                record_participants(client, path, &children, child, &id, publisher).await;
                return Ok(watcher);
            }
            Err(zk::Error::NoNode) => {
                let (stat, watcher) = client.check_and_watch_stat(path).await?;
                if stat.is_some() {
                    continue; // created in between
                }
                publisher.set_leader(
                    None,
                    Source::ZooKeeper,
                    Some(format!(
                        "latch path {path} does not exist yet (no Livy server has joined the election)"
                    )),
                );
                return Ok(watcher);
            }
            Err(e) => return Err(e),
        }
    }
}
