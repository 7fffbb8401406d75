//! The gateway recipe end to end on this machine: two livy-proxy replicas
//! with the drain timing of deploy/kubernetes/overlays/gateway (read from
//! its rendered manifests), HAProxy in front as the load balancer checking
//! `/readyz` on the admin port, a client looping through HAProxy, and one
//! replica drained with SIGTERM as Kubernetes would: no request may fail.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, Proxy, SimCluster, free_port, http_request, wait_until};

/// `--key=value` flags of the gateway's livy-proxy container, as rendered.
fn gateway_flag(rendered: &str, key: &str) -> String {
    let prefix = format!("- --{key}=");
    rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("the gateway overlay sets --{key}"))
}

fn render_gateway() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/overlays/gateway");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_one_gateway_replica_behind_haproxy_fails_no_request() {
    let rendered = render_gateway();
    let delay = gateway_flag(&rendered, "shutdown-delay");
    let grace = gateway_flag(&rendered, "shutdown-grace-period");

    let plan = SimCluster::plan(1);
    let node = plan.node_arg(0);
    let _livy = plan.start_static(0);
    let replica = || {
        Proxy::start(&[
            "--node",
            &node,
            "--shutdown-delay",
            &delay,
            "--shutdown-grace-period",
            &grace,
        ])
    };
    let mut a = replica();
    let b = replica();

    // HAProxy as the cloud load balancer: health checks on /readyz, taken
    // out after one failed check, as a load balancer's target group does.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let server = |name: &str, p: &Proxy| {
        let admin = p.admin_url();
        let admin_port = admin.rsplit(':').next().unwrap().to_string();
        format!(
            "  server {name} {} check port {admin_port} inter 300ms fall 1 rise 1\n",
            p.addr()
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "global\n  no strict-limits\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  option httpchk GET /readyz\n  http-check expect status 200\n  retry-on conn-failure empty-response\n{}{}",
            server("a", &a),
            server("b", &b)
        ),
    )
    .unwrap();
    let _haproxy = Proc::spawn(
        "haproxy",
        Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let lb = format!("http://127.0.0.1:{port}/version");
    assert!(
        wait_until(Duration::from_secs(30), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "HAProxy listens"
    );
    // Both replicas in rotation before the drain.
    let mut served = 0;
    for _ in 0..200 {
        if http_request("GET", &lb, &[], vec![]).await.0 == 200 {
            served += 1;
            if served >= 20 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 20, "served through HAProxy before the drain");

    // The client loop runs across the whole drain of replica a.
    let client = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let (status, _, body) = http_request("GET", &lb, &[], vec![]).await;
            if status == 200 {
                ok += 1;
            } else {
                failed.push(format!("{status}: {body}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if DONE.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal(libc::SIGTERM);
    let code = tokio::task::spawn_blocking(move || {
        let code = a.wait_exit(Duration::from_secs(90));
        (a, code)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    DONE.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = client.await.unwrap();
    assert_eq!(code.1, Some(0), "the drained replica exits 0");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 50, "the loop ran through the drain ({ok} requests)");
    drop(b);
}

static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
