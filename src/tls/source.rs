//! One listener's TLS configuration as it is now, and how it is renewed.
//!
//! The rustls `ServerConfig` is swapped whole ([`arc_swap`]) and loaded
//! once per accepted connection: a reload applies to the next handshake,
//! and a connection already established keeps the configuration (and
//! certificate) it was made with, so nothing is dropped. Swapping the whole
//! configuration, rather than only the certificate behind a
//! `ResolvesServerCert`, renews the client CA bundle by the same step.
//!
//! Renewal comes from SIGHUP ([`TlsSource::reload`], called by the app's
//! reload) and from the files changing on disk ([`watch`], which renews
//! the TLS clients to Livy, [`super::client::UpstreamTls`], the same way:
//! any [`Renewable`]): the directories
//! holding them are watched (notify; inotify on Linux), because Kubernetes
//! renews a mounted Secret by pointing its `..data` symlink at a new
//! directory, an event in the directory, not in the file. After a change
//! the files are read again and, if their bytes differ from the last ones
//! tried, loaded. A file that does not load keeps the configuration in
//! force; the reason is logged and `livy_proxy_tls_reloads_total` counts
//! the failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use super::{Handshakes, TlsFileError, TlsSpec, load};
use crate::metrics::{Listener, Metrics};

/// A listener's TLS configuration, renewable while it serves.
pub struct TlsSource {
    spec: TlsSpec,
    alpn: &'static [&'static [u8]],
    listener: Listener,
    current: ArcSwap<ServerConfig>,
    /// The files' bytes last tried (`None`: one could not be read), so a
    /// burst of events for one change loads it once, and a bad file is not
    /// counted again until it changes.
    tried: Mutex<Option<Vec<u8>>>,
    not_after: AtomicI64,
    metrics: OnceLock<Arc<Metrics>>,
    handshakes: Arc<Handshakes>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("listener", &self.listener.as_str())
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl TlsSource {
    /// Reads `spec`'s files for `listener`, offering `alpn`; handshakes are
    /// bounded by `handshakes`.
    pub fn load(
        spec: TlsSpec,
        listener: Listener,
        alpn: &'static [&'static [u8]],
        handshakes: Arc<Handshakes>,
    ) -> Result<Arc<TlsSource>, TlsFileError> {
        let loaded = load(&spec, alpn)?;
        warn_if_expired(listener, loaded.not_after);
        Ok(Arc::new(TlsSource {
            spec,
            alpn,
            listener,
            current: ArcSwap::new(loaded.config),
            tried: Mutex::new(Some(loaded.contents)),
            not_after: AtomicI64::new(loaded.not_after),
            metrics: OnceLock::new(),
            handshakes,
        }))
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// The handshake bounds.
    pub fn handshakes(&self) -> &Handshakes {
        &self.handshakes
    }

    /// Which listener this is.
    pub fn listener(&self) -> Listener {
        self.listener
    }

    /// Whether client certificates are verified on this listener.
    pub fn verifies_clients(&self) -> bool {
        self.spec.client_ca.is_some()
    }

    /// The server certificate's notAfter, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Joins the source to the process's metrics: the expiry gauge and the
    /// reload counters (at 0) appear.
    pub fn attach(&self, metrics: Arc<Metrics>) {
        metrics.tls_listener(self.listener, self.not_after());
        let _ = self.metrics.set(metrics);
    }

    /// Reads the files again and, if they load, serves them from the next
    /// handshake on; else keeps the configuration in force. `trigger` says
    /// why, for the log. True if the new files are in force.
    pub fn reload(&self, trigger: &str) -> bool {
        let listener = self.listener.as_str();
        // What a failed load is recorded as having tried: the bytes as they
        // were before it, so that files rewritten while it ran still count
        // as new and are loaded at the next check.
        let before = read_all(&self.spec.files());
        let ok = match load(&self.spec, self.alpn) {
            Ok(l) => {
                *self.tried.lock().unwrap_or_else(|e| e.into_inner()) = Some(l.contents);
                self.current.store(l.config);
                self.not_after.store(l.not_after, Ordering::Relaxed);
                warn_if_expired(self.listener, l.not_after);
                if let Some(m) = self.metrics.get() {
                    m.tls_certificate(self.listener, l.not_after);
                }
                tracing::info!(
                    listener,
                    trigger,
                    not_after = l.not_after,
                    "TLS certificate and key reloaded"
                );
                true
            }
            Err(e) => {
                *self.tried.lock().unwrap_or_else(|e| e.into_inner()) = before;
                tracing::warn!(listener, trigger, error = %e, "TLS reload failed: the certificate in use is kept");
                false
            }
        };
        if let Some(m) = self.metrics.get() {
            m.tls_reload(self.listener.as_str(), ok);
        }
        ok
    }
}

/// TLS configuration read from files, renewed when they change: a
/// listener's ([`TlsSource`]) or a client's to Livy. An implementor
/// names its files, its last bytes tried and how it reloads; the watcher
/// uses the two provided methods.
pub trait Renewable: Send + Sync {
    /// The files it is read from.
    fn spec_files(&self) -> Vec<&Path>;
    /// The files' bytes at the last reload tried (`None`: unreadable).
    fn last_tried(&self) -> &Mutex<Option<Vec<u8>>>;
    /// Loads the files again; `trigger` names why, for the log.
    fn renew(&self, trigger: &str);

    /// The files it is read from, owned (their directories are watched).
    fn files(&self) -> Vec<PathBuf> {
        self.spec_files()
            .into_iter()
            .map(Path::to_path_buf)
            .collect()
    }

    /// Reads the files again and loads them if their bytes differ from the
    /// last ones tried.
    fn reload_if_changed(&self) {
        let now = read_all(&self.spec_files());
        if *self.last_tried().lock().unwrap_or_else(|e| e.into_inner()) == now {
            return;
        }
        self.renew("file change");
    }
}

impl Renewable for TlsSource {
    fn spec_files(&self) -> Vec<&Path> {
        self.spec.files()
    }

    fn last_tried(&self) -> &Mutex<Option<Vec<u8>>> {
        &self.tried
    }

    fn renew(&self, trigger: &str) {
        self.reload(trigger);
    }
}

fn warn_if_expired(listener: Listener, not_after: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after <= now {
        tracing::warn!(
            listener = listener.as_str(),
            not_after,
            "the TLS certificate has expired: clients will refuse it"
        );
    }
}

/// The bytes of `files`, one after the other, or `None` if one cannot be
/// read: what tells a change.
pub(crate) fn read_all(files: &[&Path]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(std::fs::read(f).ok()?);
    }
    Some(out)
}

/// The directory to watch for `file`.
fn directory(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// How long a burst of events is let settle before the files are read:
/// one change is several events (a Secret swap: a new directory, a
/// symlink, a rename, a removal; an editor: a temporary file and a rename).
const SETTLE: Duration = Duration::from_millis(250);

/// Watches the directories of `sources`' files until `stop`, reloading a
/// source whose files changed. A directory that cannot be watched is
/// logged; SIGHUP still reloads it.
pub fn watch(mut sources: Vec<Arc<dyn Renewable>>, stop: CancellationToken) {
    sources.retain(|s| !s.files().is_empty());
    if sources.is_empty() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) are not changes.
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the TLS files: only SIGHUP reloads them");
            return;
        }
    };
    let dirs: BTreeSet<PathBuf> = sources
        .iter()
        .flat_map(|s| s.files().into_iter().map(|f| directory(&f)))
        .collect();
    for dir in &dirs {
        use notify::Watcher;
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a TLS directory: only SIGHUP reloads its files");
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            for s in &sources {
                s.reload_if_changed();
            }
        }
    });
}
