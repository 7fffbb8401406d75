//! The integration-test harness: real parts at every seam.
//!
//! - [`ZooKeeper`] / [`Ensemble`]: Debian's ZooKeeper server as child
//!   processes, each with its own temp dir and free loopback port.
//! - [`latch_classpath`] compiles tests/support/LatchMember.java once: a
//!   participant of the real Curator `LeaderLatch`, the recipe Livy runs.
//! - [`LatchMember`]: one such participant, for discovery tests.
//! - [`SimCluster`]: livy-sim servers deployed as Livy HA is: each on its own
//!   loopback address (127.0.0.11, .12, ...), all on one port, electing
//!   through the latch.
//! - [`Proxy`]: the livy-proxy binary under test.
//! - [`pki`]: test certificates (rcgen).
//!
//! Every child is killed and reaped on drop (so a panicking test leaves
//! nothing behind) and gets `PR_SET_PDEATHSIG` in case the test process
//! itself dies. Waits are bounded by generous deadlines.
#![allow(dead_code)]

pub mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a ZooKeeper client or server loads from Debian's jars.
const ZK_CLIENT_JARS: &[&str] = &[
    "zookeeper",
    "zookeeper-jute",
    "slf4j-api",
    "slf4j-nop",
    "netty-handler",
    "netty-transport",
    "netty-common",
    "netty-buffer",
    "netty-resolver",
    "netty-codec",
    "netty-transport-native-epoll",
    "netty-transport-native-unix-common",
];

/// Jars of Debian's ZooKeeper server: the client's plus these.
const ZK_SERVER_EXTRA_JARS: &[&str] = &["metrics-core", "commons-io"];

/// Jars of Debian's Curator (libcurator-*-java): the client's plus these.
const CURATOR_EXTRA_JARS: &[&str] = &[
    "curator-recipes",
    "curator-framework",
    "curator-client",
    "guava",
];

fn classpath(extra: &[&str]) -> String {
    extra
        .iter()
        .chain(ZK_CLIENT_JARS)
        .map(|j| {
            let p = format!("/usr/share/java/{j}.jar");
            assert!(
                Path::new(&p).exists(),
                "{p} is missing: run ./scripts/test, which installs zookeeper and libcurator-*-java"
            );
            p
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    /// Spawns `cmd`, tying its life to this test process.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.to_string(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// SIGTERM, then waits (bounded) for it to exit; SIGKILL if it does not.
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                eprintln!("{} ignored SIGTERM for 30 s: killing it", self.name);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
        }
    }

    /// Waits (up to `deadline`) for it to exit; its exit code, or `None` if
    /// it is still running (or was killed by a signal).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Its stdin, if piped.
    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it is true or `deadline` passes.
pub fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on `ip` right now.
pub fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A port free on every one of `ips` (servers deployed on one port).
pub fn free_port_on_all(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = free_port_on(ips[0]);
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn ready(addr: SocketAddr, deadline: Duration) -> bool {
    wait_until(deadline, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Sends a ZooKeeper four-letter word to the server on `port` and returns
/// its answer (empty if it does not answer).
pub fn four_letter_word(port: u16, word: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(word.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Whether the server on `port` answers `ruok`.
fn zk_ok(port: u16) -> bool {
    four_letter_word(port, "ruok") == "imok"
}

/// A standalone ZooKeeper server (Debian's) on a free loopback port.
pub struct ZooKeeper {
    dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
    options: ZkOptions,
}

/// How a server from [`ZooKeeper::start_with`] differs from the default one.
#[derive(Clone, Default)]
pub struct ZkOptions {
    /// More zoo.cfg lines (TLS stores, auth providers, ...).
    pub cfg: String,
    /// JVM flags for the server (`-Djava.security.auth.login.config=...`).
    pub jvm: Vec<String>,
    /// Serve only a `secureClientPort` (TLS, Netty) and no plain port: the
    /// port of [`ZooKeeper::connect_string`] is then the TLS one.
    pub tls_only: bool,
}

impl ZooKeeper {
    /// Starts a server and waits until it answers.
    pub fn start() -> ZooKeeper {
        ZooKeeper::start_with(ZkOptions::default())
    }

    /// Starts a server configured by `options` and waits until it listens.
    pub fn start_with(options: ZkOptions) -> ZooKeeper {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let listen = if options.tls_only {
            format!(
                "secureClientPort={port}\nsecureClientPortAddress=127.0.0.1\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
            )
        } else {
            format!("clientPort={port}\nclientPortAddress=127.0.0.1\n")
        };
        std::fs::write(
            dir.path().join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\n{listen}\
                 admin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=10000\n\
                 4lw.commands.whitelist=ruok,srvr\n{}\n",
                dir.path().join("data").display(),
                options.cfg
            ),
        )
        .expect("zoo.cfg");
        let mut zk = ZooKeeper {
            dir,
            port,
            proc: None,
            options,
        };
        zk.start_again();
        zk
    }

    /// The server's own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zk.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and data (after `stop`).
    pub fn start_again(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("zk.log")).expect("log file");
        let mut cmd = Command::new("java");
        cmd.args(&self.options.jvm)
            .arg("-cp")
            .arg(classpath(ZK_SERVER_EXTRA_JARS))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.proc = Some(Proc::spawn("zookeeper", &mut cmd));
        let port = self.port;
        // No plain port to ask `ruok` on: listening is the sign of life.
        let tls_only = self.options.tls_only;
        assert!(
            wait_until(Duration::from_secs(60), || if tls_only {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                zk_ok(port)
            }),
            "ZooKeeper did not start:\n{}",
            self.log()
        );
    }

    /// Stops it (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Freezes it (SIGSTOP): clients see no answers, sessions expire.
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal(libc::SIGSTOP);
        }
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        if let Some(p) = &self.proc {
            p.signal(libc::SIGCONT);
        }
    }
}

/// A ZooKeeper ensemble of `n` members on loopback.
pub struct Ensemble {
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    members: Vec<Option<Proc>>,
}

impl Ensemble {
    /// Starts `n` members and waits until a quorum serves.
    pub fn start(n: usize) -> Ensemble {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let servers: String = peers
            .iter()
            .enumerate()
            .map(|(i, (a, b))| format!("server.{}=127.0.0.1:{a}:{b}\n", i + 1))
            .collect();
        for (i, port) in client_ports.iter().enumerate() {
            let d = dir.path().join(format!("m{}", i + 1));
            std::fs::create_dir_all(d.join("data")).expect("dir");
            std::fs::write(d.join("data/myid"), format!("{}\n", i + 1)).expect("myid");
            std::fs::write(
                d.join("zoo.cfg"),
                format!(
                    "tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={port}\n\
                     clientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=1000\n\
                     maxSessionTimeout=10000\n4lw.commands.whitelist=ruok,srvr\n{servers}",
                    d.join("data").display()
                ),
            )
            .expect("zoo.cfg");
        }
        let mut e = Ensemble {
            dir,
            client_ports,
            members: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            e.start_member(i);
        }
        let ports = e.client_ports.clone();
        assert!(
            wait_until(Duration::from_secs(90), || ports
                .iter()
                .all(|p| serving(*p))),
            "the ensemble did not form a quorum"
        );
        e
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Stops member `i` (SIGTERM).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].take() {
            p.terminate();
        }
    }

    /// Starts member `i` (again).
    pub fn start_member(&mut self, i: usize) {
        let d = self.dir.path().join(format!("m{}", i + 1));
        let log = std::fs::File::create(d.join("zk.log")).expect("log");
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(classpath(ZK_SERVER_EXTRA_JARS))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(d.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.members[i] = Some(Proc::spawn("zookeeper-member", &mut cmd));
    }
}

/// Whether the server on `port` serves clients (standalone, or in a quorum).
pub fn serving(port: u16) -> bool {
    four_letter_word(port, "srvr").contains("Mode: ")
}

/// Compiles LatchMember.java once per source version (cached under
/// target/), safely when test binaries race, and returns the classpath.
pub fn latch_classpath() -> String {
    static CACHE: Mutex<Option<String>> = Mutex::new(None);
    let mut cached = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cp) = cached.as_ref() {
        return cp.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = root.join("tests/support/LatchMember.java");
    let text = std::fs::read(&source).expect("LatchMember.java");
    let hash = text.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    let out = root.join(format!("target/latch-java/{hash:016x}"));
    if !out.join("LatchMember.class").exists() {
        let tmp = root.join(format!("target/latch-java/tmp-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("dir");
        let status = Command::new("javac")
            .arg("-nowarn")
            .arg("-d")
            .arg(&tmp)
            .arg("-cp")
            .arg(classpath(CURATOR_EXTRA_JARS))
            .arg(&source)
            .status()
            .expect("javac runs (install a JDK: ./scripts/test does)");
        assert!(status.success(), "javac failed");
        // Another test binary may have won the race: either copy is good.
        if std::fs::rename(&tmp, &out).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    let cp = format!("{}:{}", out.display(), classpath(CURATOR_EXTRA_JARS));
    *cached = Some(cp.clone());
    cp
}

/// One participant of the real Curator LeaderLatch.
pub struct LatchMember {
    proc: Proc,
    stdin: Option<ChildStdin>,
    leader: Arc<Mutex<bool>>,
    ready: Arc<Mutex<bool>>,
}

impl LatchMember {
    /// Joins `path` on `zk` as `id`.
    pub fn join(zk: &str, path: &str, id: &str, session_timeout_ms: u64) -> LatchMember {
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(latch_classpath())
            .arg("LatchMember")
            .args([zk, path, id, &session_timeout_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn("latch-member", &mut cmd);
        let stdin = proc.stdin();
        let stdout = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout");
        let leader = Arc::new(Mutex::new(false));
        let ready = Arc::new(Mutex::new(false));
        let (l, r) = (leader.clone(), ready.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match line.trim() {
                    "LEADER" => *l.lock().unwrap_or_else(|e| e.into_inner()) = true,
                    "FOLLOWER" => *l.lock().unwrap_or_else(|e| e.into_inner()) = false,
                    "READY" => *r.lock().unwrap_or_else(|e| e.into_inner()) = true,
                    _ => {}
                }
            }
            *l.lock().unwrap_or_else(|e| e.into_inner()) = false;
        });
        LatchMember {
            proc,
            stdin,
            leader,
            ready,
        }
    }

    /// Waits until it joined.
    pub fn wait_ready(&self) -> bool {
        wait_until(Duration::from_secs(60), || {
            *self.ready.lock().unwrap_or_else(|e| e.into_inner())
        })
    }

    /// Whether it holds the latch.
    pub fn is_leader(&self) -> bool {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until it holds the latch.
    pub fn wait_leader(&self, deadline: Duration) -> bool {
        wait_until(deadline, || self.is_leader())
    }

    /// Clean exit (SIGTERM): the latch node is deleted at once.
    pub fn terminate(&mut self) {
        self.proc.terminate();
    }

    /// Crash (SIGKILL): the node stays until the session expires.
    pub fn kill(&mut self) {
        drop(self.stdin.take());
        self.proc.kill();
    }
}

/// Where a SimCluster will run, chosen before it starts (so a proxy can be
/// configured first).
pub struct SimPlan {
    n: usize,
    port: u16,
    thrift_port: u16,
    /// Extra livy-sim flags for every node.
    pub extra: Vec<String>,
    /// Session timeout of each node's latch client.
    pub session_timeout_ms: u64,
    /// Latch path.
    pub leader_path: String,
    /// Environment of every node, so of its latch JVM too (e.g.
    /// `JAVA_TOOL_OPTIONS` with the ZooKeeper client's TLS or JAAS
    /// properties, as a Livy server is started).
    pub env: Vec<(String, String)>,
}

fn sim_ip(i: usize) -> String {
    format!("127.0.0.{}", 11 + i)
}

impl SimPlan {
    /// `livy-{i+1}=http://127.0.0.{11+i}:PORT`.
    pub fn node_arg(&self, i: usize) -> String {
        format!("livy-{}=http://{}:{}", i + 1, sim_ip(i), self.port)
    }

    /// The Thrift port all nodes use.
    pub fn thrift_port(&self) -> u16 {
        self.thrift_port
    }

    /// Starts the nodes, one after the other (livy-1 joins first).
    pub fn start(self, zk: &ZooKeeper) -> SimCluster {
        self.start_on(&zk.connect_string())
    }

    /// Starts the nodes against any connect string (an ensemble too).
    pub fn start_on(self, zk: &str) -> SimCluster {
        let zk = zk.to_string();
        self.spawn(move |_| {
            vec![
                "--zookeeper".to_string(),
                zk.clone(),
                "--latch-classpath".to_string(),
                latch_classpath(),
            ]
        })
    }

    /// Starts the nodes without ZooKeeper, node `leader` active and the
    /// others passive naming it; roles then change only through
    /// [`SimCluster::set_role`].
    pub fn start_static(self, leader: usize) -> SimCluster {
        self.spawn(move |i| {
            let role = if i == leader { "active" } else { "passive" };
            vec![
                "--static-role".to_string(),
                role.to_string(),
                "--static-leader".to_string(),
                sim_ip(leader),
            ]
        })
    }

    fn spawn(self, role_args: impl Fn(usize) -> Vec<String>) -> SimCluster {
        let bin = env!("CARGO_BIN_EXE_livy-sim");
        let peers: Vec<String> = (0..self.n)
            .flat_map(|i| {
                [
                    "--peer".to_string(),
                    format!("livy-{}={}", i + 1, sim_ip(i)),
                ]
            })
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sims = Vec::new();
        for i in 0..self.n {
            let log =
                std::fs::File::create(dir.path().join(format!("livy-{}.log", i + 1))).expect("log");
            let mut cmd = Command::new(bin);
            cmd.args(["--id", &format!("livy-{}", i + 1)])
                .args(["--listen", &format!("{}:{}", sim_ip(i), self.port)])
                .args([
                    "--thrift-listen",
                    &format!("{}:{}", sim_ip(i), self.thrift_port),
                ])
                .args(["--leader-path", &self.leader_path])
                .args(role_args(i))
                .args(["--session-timeout-ms", &self.session_timeout_ms.to_string()])
                .args(&peers)
                .args(&self.extra)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            sims.push(Some(Proc::spawn("livy-sim", &mut cmd)));
            let addr: SocketAddr = format!("{}:{}", sim_ip(i), self.port)
                .parse()
                .expect("addr");
            assert!(
                ready(addr, Duration::from_secs(30)),
                "livy-sim {} did not listen",
                i + 1
            );
            // Join in order, so livy-1 usually leads first.
            wait_until(Duration::from_secs(20), || {
                sim_state(&format!("{}:{}", sim_ip(i), self.port))
                    .map(|s| s["leader_id"].is_string())
                    .unwrap_or(false)
            });
        }
        SimCluster {
            plan: self,
            sims,
            frozen: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// The pids whose parent is `pid` (from /proc: no procps needed).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may hold spaces.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// livy-sim servers electing through the real Curator latch.
pub struct SimCluster {
    plan: SimPlan,
    sims: Vec<Option<Proc>>,
    /// Processes stopped by [`SimCluster::freeze`], continued on drop: a
    /// stopped JVM would not see its parent's end and would stay behind.
    frozen: Mutex<Vec<i32>>,
    _dir: tempfile::TempDir,
}

fn sim_get(addr: &str, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn sim_state(addr: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&sim_get(addr, "GET", "/_sim/state")?).ok()
}

impl SimCluster {
    /// Plans `n` nodes on 127.0.0.11.. sharing one free port.
    pub fn plan(n: usize) -> SimPlan {
        let ips: Vec<String> = (0..n).map(sim_ip).collect();
        let ip_refs: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
        SimPlan {
            n,
            port: free_port_on_all(&ip_refs),
            thrift_port: free_port_on_all(&ip_refs),
            extra: Vec::new(),
            session_timeout_ms: 4000,
            leader_path: "/livy_ha/leader".to_string(),
            env: Vec::new(),
        }
    }

    /// Starts `n` nodes with default settings.
    pub fn start(zk: &ZooKeeper, n: usize) -> SimCluster {
        SimCluster::plan(n).start(zk)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{}", sim_ip(i), self.plan.port)
    }

    /// `http://127.0.0.{11+i}:PORT`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addr(i))
    }

    /// `--node` value for node `i`.
    pub fn node_arg(&self, i: usize) -> String {
        self.plan.node_arg(i)
    }

    /// The Thrift port all nodes use.
    pub fn thrift_port(&self) -> u16 {
        self.plan.thrift_port
    }

    /// Node `i`'s `/_sim/state`, if it answers.
    pub fn state(&self, i: usize) -> Option<serde_json::Value> {
        sim_state(&self.addr(i))
    }

    /// Waits until exactly one live node leads and all live nodes agree.
    pub fn wait_for_leader(&self, deadline: Duration) -> usize {
        let mut found = None;
        let ok = wait_until(deadline, || {
            let states: Vec<(usize, serde_json::Value)> = (0..self.sims.len())
                .filter(|i| self.sims[*i].is_some())
                .filter_map(|i| self.state(i).map(|s| (i, s)))
                .collect();
            let leaders: Vec<usize> = states
                .iter()
                .filter(|(_, s)| s["leader"] == true)
                .map(|(i, _)| *i)
                .collect();
            if leaders.len() != 1 {
                return false;
            }
            let id = format!("livy-{}", leaders[0] + 1);
            if states.iter().all(|(_, s)| s["leader_id"] == id.as_str()) {
                found = Some(leaders[0]);
                true
            } else {
                false
            }
        });
        assert!(ok, "no single agreed leader within {deadline:?}");
        found.unwrap_or(0)
    }

    /// SIGTERM node `i` (clean close of its latch) and wait for it.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut p) = self.sims[i].take() {
            p.terminate();
        }
    }

    /// SIGKILL node `i` (its latch node stays until the session expires).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.sims[i].take() {
            p.kill();
        }
    }

    /// Freezes node `i` and its latch's JVM (SIGSTOP), as a JVM stopped in
    /// a long GC or a host lost from the network: connections stay open and
    /// unanswered, no FIN, and its ZooKeeper session expires.
    pub fn freeze(&self, i: usize) {
        let Some(pid) = self.sims[i].as_ref().map(|p| p.pid()) else {
            return;
        };
        let mut family = vec![pid];
        family.extend(children_of(pid));
        for p in &family {
            // SAFETY: kill(2) on our own child and its children.
            unsafe {
                libc::kill(*p, libc::SIGSTOP);
            }
        }
        self.frozen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(family);
    }

    /// Continues every process [`SimCluster::freeze`] stopped.
    pub fn thaw(&self) {
        for p in self
            .frozen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // SAFETY: kill(2) on a process this cluster stopped.
            unsafe {
                libc::kill(p, libc::SIGCONT);
            }
        }
    }

    /// Requests node `i` recorded (method, path, query, headers, body).
    pub fn requests(&self, i: usize) -> Vec<serde_json::Value> {
        sim_get(&self.addr(i), "GET", "/_sim/requests")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }

    /// The requests node `i` recorded that curl sent (not the proxy's
    /// probes).
    pub fn curl_requests(&self, i: usize) -> Vec<serde_json::Value> {
        self.requests(i)
            .into_iter()
            .filter(|r| {
                r["headers"]["user-agent"]
                    .as_str()
                    .is_some_and(|ua| ua.starts_with("curl/"))
            })
            .collect()
    }

    /// Sets node `i`'s role by hand (`POST /_sim/role`): it leads if
    /// `leader` is its own index, else it is passive and redirects to
    /// node `leader` (which need not be active: a confused passive).
    pub fn set_role(&self, i: usize, leader: usize) {
        let body = sim_get(
            &self.addr(i),
            "POST",
            &format!("/_sim/role?leader=livy-{}", leader + 1),
        );
        assert!(body.is_some(), "livy-sim {} took no role change", i + 1);
    }

    /// Makes node `i` a leader whose role has not flipped yet: its latch
    /// names it, and it still redirects every request, to itself.
    pub fn set_taking_over(&self, i: usize) {
        let body = sim_get(
            &self.addr(i),
            "POST",
            &format!("/_sim/role?leader=livy-{}&taking-over=1", i + 1),
        );
        assert!(body.is_some(), "livy-sim {} took no role change", i + 1);
    }

    /// Forgets node `i`'s recorded requests.
    pub fn clear_requests(&self, i: usize) {
        let _ = sim_get(&self.addr(i), "DELETE", "/_sim/requests");
    }
}

/// The livy-proxy binary, listening on a free loopback port.
pub struct Proxy {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts it with `args` plus `--listen 127.0.0.1:<free>`, and waits
    /// until it accepts connections.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Proxy {
        Proxy::start_with_env(args, &[])
    }

    /// [`Proxy::start`] with more environment variables (`KRB5_CONFIG`).
    ///
    /// A free port can be taken by a concurrent test between `free_port`
    /// and the proxy's bind: a start that fails with "Address already in
    /// use" is tried again on new ports (a few times).
    pub fn start_with_env<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Proxy {
        let mut retries = 4;
        loop {
            match Proxy::try_start(args, env) {
                Ok(p) => return p,
                Err(log) if retries > 0 && log.contains("Address already in use") => retries -= 1,
                Err(log) => panic!("livy-proxy did not start:\n{log}"),
            }
        }
    }

    /// One start on fresh ports: the proxy, or its log.
    fn try_start<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Result<Proxy, String> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("proxy.log");
        let file = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_livy-proxy"));
        cmd.args(args.iter().map(|a| a.as_ref()))
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .env("RUST_LOG", "info,livy_proxy=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let mut proc = Proc::spawn("livy-proxy", &mut cmd);
        let up = wait_until(Duration::from_secs(30), || {
            proc.exited() || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up || proc.exited() {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        Ok(Proxy {
            proc,
            addr,
            admin,
            log,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:ADMINPORT`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait.
    pub fn terminate(&mut self) {
        self.proc.terminate();
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        self.proc.signal(signal);
    }

    /// Waits for the proxy to exit; its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        self.proc.wait_exit(deadline)
    }
}

/// The `x-livy-node` header livy-sim puts on every answer.
pub fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-livy-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// GETs `/version` through `proxy` until it answers 200 from `expected`,
/// within `deadline`.
pub async fn wait_served_by(proxy: &Proxy, expected: &str, deadline: Duration) {
    let start = std::time::Instant::now();
    loop {
        let (status, headers, _) =
            http_request("GET", &format!("{}/version", proxy.url()), &[], Vec::new()).await;
        if status == http::StatusCode::OK && served_by(&headers) == expected {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "proxy never served by {expected}; last: {status}\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request on a fresh connection, redirects NOT followed.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("an answer within 120 s")
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).to_string(),
    )
}

/// A Python venv under target/`name` with `packages` from PyPI, made once
/// (by whichever test binary gets there first); returns its interpreter.
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    // One at a time within a test binary: its tests share a process id, so
    // they would share the temporary directory below.
    static MAKING: Mutex<()> = Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(name);
    let py = venv.join("bin/python");
    if py.exists() {
        return py;
    }
    let tmp = root.join(format!("target/{name}-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .expect("python3 runs");
    assert!(
        status.success(),
        "python3 -m venv failed (Debian: apt-get install python3-venv)"
    );
    let status = Command::new(tmp.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("pip runs");
    assert!(status.success(), "pip install {packages:?} failed");
    // A concurrent test binary may have finished first: either is good.
    if std::fs::rename(&tmp, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    // The venv's scripts carry the path they were made at: use the
    // interpreter directly (it finds its site-packages relative to itself).
    py
}

/// The value of one series (`name{labels}`, exactly) in a Prometheus
/// exposition text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
