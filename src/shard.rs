//! One event loop per core: `worker-threads` threads, each running its own
//! current-thread tokio runtime, the shape of HAProxy's and nginx's
//! workers.
//!
//! Why not tokio's multi-thread runtime: with the clients and Livy sharing
//! the cores (a sidecar, a gateway), its work stealing moved connections'
//! tasks between the workers and the kernel moved the workers, two to
//! three times as many CPU migrations per request as HAProxy, and up to a
//! quarter fewer requests per second (docs/benchmarks.md, "A runtime per
//! core").
//! Here a connection lives on one shard from accept to close: its
//! requests, its upstream connections (the pool keeps one idle list per
//! shard) and its timers stay on one thread's caches and epoll.
//!
//! The accept loops stay where they are (the main runtime, with discovery
//! and the admin listener) and hand each new connection to the shard with
//! the fewest open ones, as HAProxy's listener queues do: a burst of
//! connects spreads evenly, where shards accepting for themselves would
//! let the first one awake take the burst.

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's shard number; 0 off the shards.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The shard the calling thread runs (0 on any other thread): the
/// upstream pool's idle list for this thread.
pub fn index() -> usize {
    INDEX.with(|i| i.get())
}

/// The serving threads. Dropping it stops them (each runtime then drops
/// the tasks it still had).
pub struct Shards {
    shards: Vec<Shard>,
    /// Each thread's stop signal (dropping it is the signal) and handle.
    threads: std::sync::Mutex<Vec<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>>,
}

struct Shard {
    handle: Handle,
    /// Connections placed here and still open.
    open: Arc<AtomicUsize>,
}

impl Shards {
    /// Starts `n` serving threads (at least one).
    pub fn start(n: usize) -> io::Result<Shards> {
        let mut shards = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("livy-proxy-w{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    // Runs the tasks spawned onto `handle` until told to
                    // stop (or the sender is dropped).
                    let _ = runtime.block_on(stopped);
                    // Drops its tasks without waiting for a blocking one
                    // (a DNS lookup), which would hold the proxy's exit.
                    runtime.shutdown_background();
                })?;
            shards.push(Shard {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
            });
            threads.push((stop, thread));
        }
        Ok(Shards {
            shards,
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// Shard `i`'s runtime, to spawn onto (tests, and callers that
    /// choose the shard themselves).
    pub fn handle(&self, i: usize) -> &Handle {
        &self.shards[i % self.shards.len()].handle
    }

    /// Hands `stream` (just accepted, on the caller's runtime) to the
    /// shard with the fewest open connections. Spawn the connection's task
    /// on the returned handle and call [`Arrival::into_stream`] first
    /// thing inside it.
    pub fn place(&self, stream: TcpStream) -> io::Result<(Arrival, Handle)> {
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| s.open.load(Ordering::Relaxed))
            .unwrap_or(&self.shards[0]);
        // Off this runtime's epoll: the shard registers it with its own.
        let std = stream.into_std()?;
        shard.open.fetch_add(1, Ordering::Relaxed);
        Ok((
            Arrival {
                stream: Stream::Moved(std),
                load: Some(Load(shard.open.clone())),
            },
            shard.handle.clone(),
        ))
    }

    /// Stops the threads and waits for them to end (off the async
    /// threads); the tasks they still ran are dropped.
    pub async fn stop(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for (stop, thread) in threads {
                drop(stop);
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        // Dropping the senders ends the threads' `block_on`.
        self.threads
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// A connection on its way to the task that serves it.
pub struct Arrival {
    stream: Stream,
    load: Option<Load>,
}

enum Stream {
    Here(TcpStream),
    Moved(std::net::TcpStream),
}

impl Arrival {
    /// A connection served on the runtime that accepted it (no shards).
    pub fn here(stream: TcpStream) -> Arrival {
        Arrival {
            stream: Stream::Here(stream),
            load: None,
        }
    }

    /// The stream, registered with the runtime this is called on, and
    /// what counts it against its shard: hold that for the connection's
    /// life.
    pub fn into_stream(self) -> io::Result<(TcpStream, Option<Load>)> {
        let stream = match self.stream {
            Stream::Here(s) => s,
            Stream::Moved(s) => TcpStream::from_std(s)?,
        };
        Ok((stream, self.load))
    }
}

/// One open connection counted against its shard, until dropped.
pub struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a connection just accepted is served: on the least loaded shard
/// (spawn its task on the handle), or, without shards, on this runtime.
pub fn place(shards: Option<&Shards>, stream: TcpStream) -> io::Result<(Arrival, Option<Handle>)> {
    match shards {
        Some(s) => s.place(stream).map(|(a, h)| (a, Some(h))),
        None => Ok((Arrival::here(stream), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` connected loopback streams, accepted on this runtime.
    async fn accepted(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            theirs.push(TcpStream::connect(addr).await.unwrap());
            ours.push(listener.accept().await.unwrap().0);
        }
        (ours, theirs)
    }

    /// Places `stream` and reports the name of the thread that serves it;
    /// the connection stays counted until `release` fires.
    fn serve(
        shards: &Shards,
        stream: TcpStream,
        release: oneshot::Receiver<()>,
    ) -> oneshot::Receiver<String> {
        let (arrival, on) = shards.place(stream).unwrap();
        let (tx, rx) = oneshot::channel();
        on.spawn(async move {
            let (_stream, _load) = arrival.into_stream().unwrap();
            let name = std::thread::current().name().unwrap_or("").to_string();
            let _ = tx.send(format!("{name} {}", index()));
            let _ = release.await;
        });
        rx
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_shard_with_the_fewest_open() {
        let shards = Shards::start(2).unwrap();
        let (ours, _theirs) = accepted(5).await;
        let mut ours = ours.into_iter();
        let mut releases = Vec::new();
        let mut on = Vec::new();
        for _ in 0..4 {
            let (release, wait) = oneshot::channel();
            releases.push(release);
            on.push(serve(&shards, ours.next().unwrap(), wait).await.unwrap());
        }
        on.sort();
        assert_eq!(
            on,
            [
                "livy-proxy-w0 0",
                "livy-proxy-w0 0",
                "livy-proxy-w1 1",
                "livy-proxy-w1 1"
            ],
            "four connections, two per shard, each served on its shard's thread"
        );
        // Ties go to the first shard, so placement alternated w0, w1, w0,
        // w1: the first and third close, and w0 then has the fewest.
        let mut releases = releases.into_iter();
        drop(releases.next());
        let _second = releases.next();
        drop(releases.next());
        // The counts drop on the shard's thread, as its tasks end.
        let mut next = String::new();
        for _ in 0..500 {
            if shards.shards[0].open.load(Ordering::Relaxed) == 0 {
                let (_r, wait) = oneshot::channel();
                next = serve(&shards, ours.next().unwrap(), wait).await.unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            next, "livy-proxy-w0 0",
            "the emptier shard takes the next one"
        );
        shards.stop().await;
    }

    #[tokio::test]
    async fn stopping_ends_the_threads_and_drops_their_tasks() {
        struct Flag(Option<oneshot::Sender<()>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let shards = Shards::start(2).unwrap();
        let (dropped, was_dropped) = oneshot::channel();
        let (started, has_started) = oneshot::channel();
        shards.shards[1].handle.spawn(async move {
            let _flag = Flag(Some(dropped));
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        has_started.await.unwrap();
        shards.stop().await;
        was_dropped.await.expect("the task was dropped, not leaked");
        assert!(
            shards.threads.lock().unwrap().is_empty(),
            "every thread joined"
        );
    }
}
