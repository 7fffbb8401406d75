#!/usr/bin/env python3
"""livy-proxy against HAProxy and nginx, side by side, in one run.

Run through bench/run (which installs the tools and builds the release
binaries). Everything listens on 127.0.0.1 and is stopped at exit.

Parts:
  http      wrk through: direct, livy-proxy (1 worker, and default), HAProxy
            (mode http, nbthread 1), nginx (proxy_pass + upstream keepalive,
            1 worker); connections 1, 16, 128. Rounds interleave the
            targets (--rounds, default 3); each statistic is the median of
            its rounds.
  tcp       iperf3 throughput (with how busy each CPU was) and a
            connection-rate test through livy-proxy's JDBC listener, HAProxy
            mode tcp (default, option splice-auto, and splice-request +
            splice-response), a minimal C relay (bench/relay.c), and
            direct; interleaved rounds, medians.
  tls       livy-proxy and HAProxy terminating TLS (ECDSA P-256 certificate
            made at bench time), one thread each pinned (--tls-modes for the
            others of --modes): full and resumed handshakes per second,
            TLS 1.3 and 1.2 (bench/tlspump.c, 4 clients); HTTPS req/s, p99
            and CPU per request with wrk at 16 and 128 connections; JDBC TLS
            throughput, passthrough and reencrypt, against OpenSSL end to
            end (direct, the ceiling). Interleaved rounds, medians.
  modes     livy-proxy, HAProxy and nginx in each mode of --modes: pinned
            (one thread each, proxies on CPU 0, wrk and upstream on CPU 1),
            unpinned (one thread each, no taskset anywhere), unpinned-2 (two
            threads each), defaults (nothing pinned, each proxy's default
            thread count: livy-proxy one worker per core, HAProxy nbthread
            unset, nginx worker_processes auto); ratios to HAProxy per mode,
            and to haproxy-fwd, HAProxy set to add the headers livy-proxy
            adds (X-Forwarded-For/-Proto/-Host, Via, X-Request-ID), and
            nginx-fwd, nginx doing the same.
            Where scripts/pgo-build's binary exists (bench/run makes it),
            livy-proxy-pgo beside livy-proxy here and in tls.
  memory    RSS idle and with 10,000 idle keep-alive connections, plain and
            TLS (livy-proxy one worker, HAProxy).
  failover  three livy-sim nodes, real ZooKeeper and Curator: time from the
            leader's exit to the proxy's first answer from the new leader, set
            against when the new leader learned it leads; failed requests
            under steady load.
  ab        (only when asked: --parts ab --ab-binary OTHER) this build against
            another livy-proxy binary and HAProxy, in interleaved rounds
            (--rounds, e.g. 10): for a change to the hot path, paired rounds
            take the VM's drift out of the comparison. --ab-mode (a mode of
            --modes, default pinned: one worker each) sets the threads and
            pinning. Besides the proxy's CPU per request it reports the
            upstream's and wrk's: a proxy that writes its answers one by
            one costs its peers wake-ups.
Writes bench/results/latest.json and docs/benchmarks-*.png, prints a table.
"""
import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# cargo's target directory (CARGO_TARGET_DIR when set, as bench/run's
# build used it): the release binaries, and bench/run's builds of
# bench/relay.c and bench/tlspump.c under bench/.
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
REL = TARGET / "release"
# scripts/pgo-build's binary (profile-guided, what deploy/Dockerfile ships):
# measured beside the plain build wherever it exists.
PGO_BIN = TARGET / "pgo" / "release" / "livy-proxy"
TOOLS = TARGET / "bench"
_WORK = None


def work():
    """The run's scratch directory, made on first use, so that --help and
    importing this file as a module leave nothing behind."""
    global _WORK
    if _WORK is None:
        _WORK = Path(tempfile.mkdtemp(prefix="livy-proxy-bench."))
    return _WORK


PROCS = []
JSON_BODY = '{"from":0,"total":0,"sessions":[]}'


def free_port(ip="127.0.0.1"):
    s = socket.socket()
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


# Whether processes are pinned to CPUs (taskset): the pinned mode puts the
# proxy on CPU 0 and the load generator and upstream on CPU 1; the unpinned
# and defaults modes pin nothing, as users run it (bench_http_modes).
PIN = True


def taskset(cmd, cpu):
    if PIN and cpu is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)] + cmd
    return cmd


def start(name, cmd, cpu=None, **kw):
    if PIN and cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    log = open(work() / f"{name}.log", "w")
    # stdout may be asked for (a PIPE); the log then has stderr alone.
    kw.setdefault("stdout", log)
    kw.setdefault("stderr", subprocess.STDOUT if kw["stdout"] is log else log)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cleanup():
    # SIGTERM first: nginx's master then stops its workers (a SIGKILLed
    # master leaves them running), then SIGKILL what is left.
    for p in PROCS:
        stop(p)
    if _WORK is not None:
        shutil.rmtree(_WORK, ignore_errors=True)


def wait_port(port, ip="127.0.0.1", deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection((ip, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(work().glob("*.log")))
    raise SystemExit(f"nothing listens on {ip}:{port}\n{logs}")


def wait_200(url, deadline=30, context=None):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if urllib.request.urlopen(url, timeout=1, context=context).status == 200:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} never answered 200")


def pid_of(p):
    # taskset execs the program: same pid.
    return p.pid


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def cpu_us(pid):
    """User and system CPU time (us) of a process and its direct children
    (nginx's worker under its master), from /proc: what a request costs the
    proxy itself, whatever the load generator and upstream spend."""
    user = system = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) * TICK_US
        system += int(fields[12]) * TICK_US
    return user, system


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- certificates ----------------------------------------------------------

CERTS = None


def certs():
    """A CA and a server certificate it signed (subjectAltName 127.0.0.1 and
    localhost), both ECDSA P-256, made with the openssl CLI at bench time;
    the same files for every TLS server in the run. Returns paths: ca (the
    CA certificate), chain (server certificate then CA), key (the server's
    key, PKCS#8), pem (chain and key in one file, for HAProxy's `crt`)."""
    global CERTS
    if CERTS:
        return CERTS
    d = work() / "tls"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*cmd):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "2",
        "-subj", "/CN=livy-proxy bench CA")
    run("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                           "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-days", "2", "-out", str(d / "server.crt"), "-extfile", str(d / "ext"))
    chain = (d / "server.crt").read_text() + (d / "ca.crt").read_text()
    (d / "chain.pem").write_text(chain)
    (d / "haproxy.pem").write_text(chain + (d / "server.key").read_text())
    CERTS = {"ca": d / "ca.crt", "chain": d / "chain.pem", "key": d / "server.key", "pem": d / "haproxy.pem"}
    return CERTS


def ca_context():
    import ssl
    return ssl.create_default_context(cafile=str(certs()["ca"]))


def tool(name):
    """bench/run's build of bench/NAME.c, or None when there was no C
    compiler (the parts that need it then skip those rows)."""
    path = TOOLS / name
    return path if path.exists() else None


# --- the servers -----------------------------------------------------------

def nginx_conf(body):
    d = work() / f"nginx-{free_port()}"
    d.mkdir()
    (d / "nginx.conf").write_text(body.replace("@DIR@", str(d)))
    return d / "nginx.conf"


def start_upstream(with_proc=False):
    """The nginx upstream's port (and, `with_proc`, its process)."""
    port = free_port()
    conf = nginx_conf(f"""
worker_processes 1;
daemon off;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path @DIR@; proxy_temp_path @DIR@; fastcgi_temp_path @DIR@; uwsgi_temp_path @DIR@; scgi_temp_path @DIR@;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    default_type application/json;
    location / {{ return 200 '{JSON_BODY}'; }}
  }}
}}""")
    p = start("upstream-nginx", ["nginx", "-c", str(conf), "-p", str(conf.parent)], cpu=1)
    wait_port(port)
    return (port, p) if with_proc else port


def start_livy_proxy(name, upstream, threads=None, extra=(), binary=REL / "livy-proxy", tls=False):
    """livy-proxy in front of `upstream`; with `tls`, its HTTP listener
    speaks TLS only (`--tls-cert`/`--tls-key`, the bench's certificate)."""
    port = free_port()
    cmd = [str(binary), "--listen", f"127.0.0.1:{port}",
           "--node", f"up=http://127.0.0.1:{upstream}", "--probe-path", "/sessions",
           "--log-level", "warn", *extra]
    if tls:
        cmd += ["--tls-cert", str(certs()["chain"]), "--tls-key", str(certs()["key"])]
    if binary in (REL / "livy-proxy", PGO_BIN):
        # Each instance its own admin port (the default one is shared); a
        # binary from before the admin listener has no such flag.
        cmd += ["--admin-listen", "127.0.0.1:0"]
    if threads:
        cmd += ["--worker-threads", str(threads)]
    p = start(name, cmd, cpu=0 if threads == 1 else None)
    wait_port(port)
    if tls:
        wait_200(f"https://127.0.0.1:{port}/sessions", context=ca_context())
    else:
        wait_200(f"http://127.0.0.1:{port}/sessions")
    return port, p


# What livy-proxy adds to every request and answer, as an operator would
# configure HAProxy to do it in front of Livy: the client's forwarding
# headers replaced by this hop's (`X-Forwarded-For/-Proto/-Host`), `Via`,
# and a request ID sent both ways. `start_haproxy(forwarding=True)`. The
# deletes match by prefix and by name, as livy-proxy's do (a regular
# expression would cost HAProxy more than the work asks).
HAPROXY_FORWARDING = """
  http-request del-header x-forwarded- -m beg
  http-request del-header forwarded
  http-request del-header x-real-ip
  http-request del-header x-proxied-https
  option forwardfor
  http-request set-header X-Forwarded-Proto {proto}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request add-header Via "1.1 haproxy"
  unique-id-format %{{+X}}o%ci%cp%fp%Ts%rt
  unique-id-header X-Request-ID
  http-response set-header X-Request-ID %[unique-id]
"""


def start_haproxy(upstream, mode="http", threads=1, name=None, tls=False, upstream_tls=False, options=(),
                  forwarding=False):
    """HAProxy; `threads` None leaves nbthread unset (its default: one
    thread per CPU it may run on). `tls`: the frontend terminates TLS with
    the bench's certificate (`bind ... ssl crt`); `upstream_tls`: the
    server is reached over TLS, its certificate verified against the
    bench's CA (`ssl verify required ca-file`). `options`: more lines for
    `defaults`, e.g. "option splice-auto"."""
    port = free_port()
    bind = f" ssl crt {certs()['pem']}" if tls else ""
    server = f" ssl verify required ca-file {certs()['ca']}" if upstream_tls else ""
    more = "\n  ".join(options)
    cfg = work() / f"haproxy-{mode}-{port}.cfg"
    nbthread = f"nbthread {threads}" if threads else ""
    cfg.write_text(f"""
global
  {nbthread}
  # HAProxy reserves two descriptors per connection and by default refuses
  # to start when the open-files hard limit (20,000 on this machine) is
  # below that; idle keep-alive clients share pooled server connections,
  # so 10,000 of them need only about 10,000 descriptors.
  maxconn 10100
  no strict-limits
defaults
  mode {mode}
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  {"http-reuse always" if mode == "http" else ""}
  {"option http-keep-alive" if mode == "http" else ""}
  {more}
frontend f
  bind 127.0.0.1:{port}{bind}
  {HAPROXY_FORWARDING.format(proto="https" if tls else "http") if forwarding else ""}
  default_backend b
backend b
  server s1 127.0.0.1:{upstream}{server}
""")
    p = start(name or f"haproxy-{mode}", ["haproxy", "-f", str(cfg), "-db"], cpu=0 if threads == 1 else None)
    wait_port(port)
    return port, p


# The same header work for nginx (`start_nginx_proxy(forwarding=True)`):
# this hop's forwarding fields replace the client's (nginx can clear only
# named fields, not a prefix), `Via`, and its `$request_id` both ways.
NGINX_FORWARDING = """
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Forwarded "";
      proxy_set_header X-Real-IP "";
      proxy_set_header Via "1.1 nginx";
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id always;"""


def start_nginx_proxy(upstream, workers=1, name="nginx-proxy", forwarding=False):
    """nginx as a reverse proxy; `workers` None is `worker_processes auto`
    (one per CPU, the packaged default); `forwarding`: with
    NGINX_FORWARDING."""
    port = free_port()
    conf = nginx_conf(f"""
worker_processes {workers or "auto"};
daemon off;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path @DIR@; proxy_temp_path @DIR@; fastcgi_temp_path @DIR@; uwsgi_temp_path @DIR@; scgi_temp_path @DIR@;
  keepalive_requests 1000000;
  upstream livy {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://livy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";{NGINX_FORWARDING if forwarding else ""}
    }}
  }}
}}""")
    p = start(name, ["nginx", "-c", str(conf), "-p", str(conf.parent)], cpu=0 if workers == 1 else None)
    wait_port(port)
    return port, p


# --- HTTP ------------------------------------------------------------------

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("JSON {\\"rps\\": %f, \\"p50\\": %d, \\"p99\\": %d, \\"p999\\": %d, \\"errors\\": %d, \\"requests\\": %d, "
    .. "\\"error_kinds\\": {\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}}\\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.status + e.timeout, summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# `--think-ms`: each connection pauses this long after an answer before
# its next request (wrk's `delay()`), so that every proxy gets the same
# offered load below its limit and the tails compare at equal throughput;
# 0 is the closed loop, as fast as the answers come.
THINK_MS = 0


# `body`: the request is a POST of this JSON instead of a GET.
POST_LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_cmd(port, conns, seconds, scheme="http", body=None):
    lua = work() / f"report-{THINK_MS}{f'-post{abs(hash(body))}' if body else ''}.lua"
    if not lua.exists():
        think = f"delay = function() return {THINK_MS} end\n" if THINK_MS else ""
        post = POST_LUA.format(body=body) if body else ""
        lua.write_text(think + post + WRK_LUA)
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(lua),
           f"{scheme}://127.0.0.1:{port}/sessions"]
    return taskset(cmd, 1)


def warm_up(port, conns, scheme="http"):
    subprocess.run(wrk_cmd(port, conns, 1, scheme), capture_output=True)


def wrk(port, conns, seconds, pid=None, scheme="http", upstream_pid=None, body=None):
    """One wrk run's JSON; with `pid` the proxy's user and system CPU per
    request, with `upstream_pid` the upstream's (and always wrk's own);
    with `body`, POSTs of it (`wrk_cmd`)."""
    before = cpu_us(pid) if pid else None
    up_before = cpu_us(upstream_pid) if upstream_pid else None
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(wrk_cmd(port, conns, seconds, scheme, body), capture_output=True, text=True).stdout
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = cpu_us(pid) if pid else None
    up_after = cpu_us(upstream_pid) if upstream_pid else None
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        raise SystemExit(f"wrk failed:\n{out}")
    r = json.loads(m.group(1))
    if before and r["requests"]:
        r["user_us_per_req"] = (after[0] - before[0]) / r["requests"]
        r["sys_us_per_req"] = (after[1] - before[1]) / r["requests"]
    if r["requests"]:
        # wrk is the only child waited for in between.
        spent = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
        r["wrk_us_per_req"] = spent * 1e6 / r["requests"]
        if up_before:
            r["upstream_us_per_req"] = (sum(up_after) - sum(up_before)) / r["requests"]
    return r


def summarize_wrk(rs):
    """One statistic per key, the median of its rounds; every round kept."""
    r = {k: median([x[k] for x in rs]) for k in rs[0] if k not in ("errors", "requests", "error_kinds")}
    r["errors"] = sum(x["errors"] for x in rs)
    # Which kind (wrk's: a status other than 2xx/3xx, a read or connect
    # error, an answer later than wrk's 2 s timeout) says whose fault it is.
    kinds = [x["error_kinds"] for x in rs if "error_kinds" in x]
    if kinds:
        r["error_kinds"] = {k: sum(x[k] for x in kinds) for k in kinds[0]}
    r["rounds"] = [{k: x[k] for k in ("rps", "p50", "p99", "p999")} for x in rs]
    return r


def errors(r):
    """"errors N", and by kind when there are any."""
    kinds = ", ".join(f"{k} {n}" for k, n in r.get("error_kinds", {}).items() if n)
    return f"errors {r['errors']}" + (f" ({kinds})" if kinds else "")


def interleaved_rounds(targets, procs, conns, seconds, rounds, scheme="http", upstream=None):
    """wrk against every target in turn, `rounds` times, after a warm-up of
    each: a slow minute on this VM then falls on all of them alike. The
    wrk results per target name, one per round. `scheme` https: wrk speaks
    TLS (OpenSSL; each connection's handshake is in the warm-up). Each
    round starts one target later than the one before, so that no target
    always follows the same one (the upstream's and the scheduler's state
    left by the run before) or always runs first in a round."""
    for port in targets.values():
        warm_up(port, conns, scheme)
    runs = {name: [] for name in targets}
    names = list(targets)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            port = targets[name]
            proc = procs.get(name)
            runs[name].append(wrk(port, conns, seconds, pid=pid_of(proc) if proc else None, scheme=scheme,
                                  upstream_pid=pid_of(upstream) if upstream else None))
    return runs


def bench_http(seconds, conns_list, rounds):
    up = start_upstream()
    targets = {"direct": up}
    procs = {}
    targets["livy-proxy-1t"], procs["livy-proxy-1t"] = start_livy_proxy("livy-proxy-1t", up, threads=1)
    targets["livy-proxy"], procs["livy-proxy"] = start_livy_proxy("livy-proxy-default", up)
    targets["haproxy"], procs["haproxy"] = start_haproxy(up)
    targets["nginx"], procs["nginx"] = start_nginx_proxy(up)
    results = {name: {} for name in targets}
    for c in conns_list:
        # Each statistic is the median of its rounds: a p99 taken from one
        # round (the one with the median req/s, as before) moved by more
        # than the gaps between proxies at 128 connections. Every round is
        # kept in the JSON.
        runs = interleaved_rounds(targets, procs, c, seconds, rounds)
        for name, rs in runs.items():
            r = summarize_wrk(rs)
            results[name][str(c)] = r
            cpu = (f"  cpu {r['user_us_per_req']:.2f}+{r['sys_us_per_req']:.2f} us/req"
                   if "user_us_per_req" in r else "")
            print(f"  http {name:14} c={c:<4} {r['rps']:>10.0f} req/s  p50 {r['p50']:>6} us  p99 {r['p99']:>6} us  p99.9 {r['p999']:>6} us  {errors(r)}{cpu}  rounds {[round(x['rps']) for x in r['rounds']]} p99 {[x['p99'] for x in r['rounds']]}", flush=True)
    for p in procs.values():
        stop(p)
    return results


# The settings users have, next to the pinned one: each as (pinned?,
# threads per proxy; None = each proxy's own default).
MODES = {
    "pinned": (True, 1),
    "unpinned": (False, 1),
    "unpinned-2": (False, 2),
    "defaults": (False, None),
}


def paired_ratios(rs, others):
    """The medians of the round-by-round ratios of req/s and p99 of one
    target's rounds to another's (same rounds, same order)."""
    return {"rps": median([a["rps"] / b["rps"] for a, b in zip(rs, others) if b["rps"]]),
            "p99": median([a["p99"] / b["p99"] for a, b in zip(rs, others) if b["p99"]])}


def bench_http_modes(seconds, conns_list, rounds, modes):
    """livy-proxy, HAProxy and nginx with the same thread count (or each
    with its default), pinned or not, in interleaved rounds: one table per
    mode, each read as ratios to HAProxy in the same mode. The upstream and
    wrk are pinned only in the pinned mode."""
    global PIN
    out = {}
    for mode in modes:
        pin, threads = MODES[mode]
        PIN = pin
        try:
            up = start_upstream()
            targets, procs = {}, {}
            targets["livy-proxy"], procs["livy-proxy"] = start_livy_proxy(f"lp-{mode}", up, threads=threads)
            if PGO_BIN.exists():
                targets["livy-proxy-pgo"], procs["livy-proxy-pgo"] = start_livy_proxy(
                    f"lp-{mode}-pgo", up, threads=threads, binary=PGO_BIN)
            targets["haproxy"], procs["haproxy"] = start_haproxy(up, threads=threads, name=f"haproxy-{mode}")
            # HAProxy doing the header work livy-proxy does on every request
            # and answer (HAPROXY_FORWARDING): the same work, side by side.
            targets["haproxy-fwd"], procs["haproxy-fwd"] = start_haproxy(
                up, threads=threads, name=f"haproxy-fwd-{mode}", forwarding=True)
            targets["nginx"], procs["nginx"] = start_nginx_proxy(up, workers=threads, name=f"nginx-{mode}")
            targets["nginx-fwd"], procs["nginx-fwd"] = start_nginx_proxy(
                up, workers=threads, name=f"nginx-fwd-{mode}", forwarding=True)
            if mode == "defaults":
                # The candidate default: one worker (a current-thread
                # runtime) against the others' defaults.
                targets["livy-proxy-1w"], procs["livy-proxy-1w"] = start_livy_proxy(f"lp-{mode}-1w", up, threads=1)
            res = {name: {} for name in targets}
            for c in conns_list:
                runs = interleaved_rounds(targets, procs, c, seconds, rounds)
                for name, rs in runs.items():
                    r = summarize_wrk(rs)
                    # Round by round against each HAProxy: the rounds are
                    # paired in time, so these take the VM's drift out.
                    r["paired"] = {h: paired_ratios(rs, runs[h]) for h in ("haproxy", "haproxy-fwd") if h != name}
                    res[name][str(c)] = r
                hap = res["haproxy"][str(c)]
                for name in targets:
                    r = res[name][str(c)]
                    pr = "  ".join(f"paired vs {h} x{v['rps']:4.2f} / x{v['p99']:4.2f}" for h, v in r["paired"].items())
                    print(f"  {mode:10} {name:13} c={c:<4} {r['rps']:>9.0f} req/s (x{r['rps'] / hap['rps']:4.2f} HAProxy)"
                          f"  p99 {r['p99']:>6} us (x{r['p99'] / max(hap['p99'], 1):4.2f})  {pr}  {errors(r)}", flush=True)
            for p in procs.values():
                stop(p)
            out[mode] = {"pinned": pin, "threads": threads or "default", "results": res}
        finally:
            PIN = True
    return out


def bench_ab(seconds, conns_list, rounds, other, mode="pinned"):
    """This build ("this") against another livy-proxy binary ("other") and
    HAProxy, with the threads and pinning of `mode` (one of MODES), in
    interleaved rounds. Besides each one's medians it reports the paired
    comparison of this and other round by round: in how many rounds this
    build's p99 was lower, and the median of the ratios (this / other) of
    p99, req/s and CPU per request of the proxy, the upstream and wrk."""
    global PIN
    pin, threads = MODES[mode]
    PIN = pin
    try:
        up, up_proc = start_upstream(with_proc=True)
        targets, procs = {}, {}
        targets["this"], procs["this"] = start_livy_proxy("ab-this", up, threads=threads)
        targets["other"], procs["other"] = start_livy_proxy("ab-other", up, threads=threads, binary=Path(other))
        targets["haproxy"], procs["haproxy"] = start_haproxy(up, threads=threads)
        results = {"mode": mode}
        for c in conns_list:
            runs = interleaved_rounds(targets, procs, c, seconds, rounds, upstream=up_proc)
            cpu = {n: [x["user_us_per_req"] + x["sys_us_per_req"] for x in rs] for n, rs in runs.items()}
            peers = {k: {n: [x.get(k, 0.0) for x in rs] for n, rs in runs.items()}
                     for k in ("upstream_us_per_req", "wrk_us_per_req")}

            def ratio(values):
                return median([a / b for a, b in zip(values["this"], values["other"]) if b])
            paired = list(zip(runs["this"], runs["other"]))
            ratios = paired_ratios(runs["this"], runs["other"])
            r = {
                "rounds": {n: [{k: x[k] for k in ("rps", "p50", "p99", "p999")} for x in rs] for n, rs in runs.items()},
                "p99_lower_than_other": sum(a["p99"] < b["p99"] for a, b in paired),
                "p99_ratio": ratios["p99"],
                "rps_ratio": ratios["rps"],
                "cpu_ratio": ratio(cpu),
                "upstream_cpu_ratio": ratio(peers["upstream_us_per_req"]),
                "wrk_cpu_ratio": ratio(peers["wrk_us_per_req"]),
            }
            results[str(c)] = r
            for n, rs in runs.items():
                print(f"  ab   {n:8} c={c:<4} {median([x['rps'] for x in rs]):>9.0f} req/s  p50 {median([x['p50'] for x in rs]):>6} us"
                      f"  p99 {median([x['p99'] for x in rs]):>6} us  p99.9 {median([x['p999'] for x in rs]):>6} us"
                      f"  cpu {median(cpu[n]):5.2f} us/req  upstream {median(peers['upstream_us_per_req'][n]):5.2f}"
                      f"  wrk {median(peers['wrk_us_per_req'][n]):5.2f}", flush=True)
            print(f"  ab   this/other c={c} ({mode}): p99 lower in {r['p99_lower_than_other']} of {rounds} rounds, median ratios"
                  f" p99 {r['p99_ratio']:.2f}, req/s {r['rps_ratio']:.3f}, cpu/req {r['cpu_ratio']:.3f},"
                  f" upstream cpu/req {r['upstream_cpu_ratio']:.3f}, wrk cpu/req {r['wrk_cpu_ratio']:.3f}", flush=True)
        for p in [*procs.values(), up_proc]:
            stop(p)
        return results
    finally:
        PIN = True


# --- TCP -------------------------------------------------------------------

def steal_jiffies():
    """Jiffies stolen by the hypervisor and all jiffies, over every CPU
    (/proc/stat's first line): time a busy host took from this VM, which
    no process here is charged for."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (v[7] if len(v) > 7 else 0), sum(v)


def cpu_ticks():
    """Busy and total jiffies of each CPU, from /proc/stat."""
    ticks = []
    for line in Path("/proc/stat").read_text().splitlines():
        f = line.split()
        if re.fullmatch(r"cpu\d+", f[0]):
            v = [int(x) for x in f[1:]]
            ticks.append((sum(v) - v[3] - v[4], sum(v)))
    return ticks


def iperf(port, seconds, reverse=False):
    """Gbit/s received, and how busy each CPU was (%) meanwhile: where the
    bottleneck is."""
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        cmd.append("-R")
    cmd = taskset(cmd, 1)
    # iperf3's server runs one test at a time. A connection that only checks
    # the port (wait_port, direct or through a proxy) is a test to it too,
    # and a test that starts before the server has given up on that one is
    # refused or reset ("busy", "unable to receive control message",
    # "control socket has closed unexpectedly"; seen under load). A test
    # that measured nothing is therefore asked again (bounded); an error
    # after a measured interval, or the last refusal, is named.
    for attempt in range(40):
        before = cpu_ticks()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
        after = cpu_ticks()
        data = json.loads(out)
        error = data.get("error")
        if error is None:
            break
        if data.get("intervals") or attempt == 39:
            raise RuntimeError(f"iperf3 via port {port}: {error}")
        time.sleep(0.25)
    busy = [round(100 * (b1 - b0) / max(t1 - t0, 1)) for (b0, t0), (b1, t1) in zip(before, after)]
    return data["end"]["sum_received"]["bits_per_second"] / 1e9, busy


async def conn_rate(port, seconds, concurrency=8):
    done = 0
    end = time.time() + seconds

    async def worker():
        nonlocal done
        while time.time() < end:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            await r.read()  # the upstream answers and closes
            w.close()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


def start_banner(name="banner"):
    """A tiny TCP service that answers and closes (nginx's stream module),
    for the connection rate; its port."""
    port = free_port()
    conf = nginx_conf(f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log;
events {{ worker_connections 20000; }}
stream {{ server {{ listen 127.0.0.1:{port} backlog=4096; return "ok\\n"; }} }}""")
    start(name, ["nginx", "-c", str(conf), "-p", str(conf.parent)], cpu=1)
    wait_port(port)
    return port


def bench_tcp(seconds, http_upstream, rounds):
    iperf_port = free_port()
    start("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], cpu=1)
    wait_port(iperf_port)
    banner_port = start_banner()
    jdbc_iperf, jdbc_rate = free_port(), free_port()
    _, lp_iperf = start_livy_proxy("livy-proxy-tcp-iperf", http_upstream, threads=1,
                                   extra=["--thrift-listen", f"127.0.0.1:{jdbc_iperf}", "--thrift-port", str(iperf_port)])
    _, lp_rate = start_livy_proxy("livy-proxy-tcp-rate", http_upstream, threads=1,
                                  extra=["--thrift-listen", f"127.0.0.1:{jdbc_rate}", "--thrift-port", str(banner_port)])
    wait_port(jdbc_iperf)
    wait_port(jdbc_rate)
    targets = {"direct": (iperf_port, banner_port), "livy-proxy-1t": (jdbc_iperf, jdbc_rate)}
    procs = [lp_iperf, lp_rate]
    # HAProxy by default, and at its best TCP settings: splice(2) when it
    # judges it worth it (splice-auto), and always, both ways.
    for name, options in (("haproxy", ()), ("haproxy-splice-auto", ("option splice-auto",)),
                          ("haproxy-splice", ("option splice-request", "option splice-response"))):
        hp_iperf, hproc_iperf = start_haproxy(iperf_port, mode="tcp", name=name, options=options)
        hp_rate, hproc_rate = start_haproxy(banner_port, mode="tcp", name=name, options=options)
        targets[name] = (hp_iperf, hp_rate)
        procs += [hproc_iperf, hproc_rate]
    # The floor of what a relay costs here: bench/relay.c, two blocking
    # threads per connection, 256 KiB copies, on CPU 0 like the proxies.
    if tool("relay"):
        ports = []
        for up in (iperf_port, banner_port):
            port = free_port()
            procs.append(start(f"relay-{port}", [str(tool("relay")), str(port), str(up)], cpu=0))
            wait_port(port)
            ports.append(port)
        targets["relay"] = tuple(ports)
    else:
        print(f"  tcp  (no {TOOLS}/relay: bench/run builds it with cc; the relay row is left out)", flush=True)
    # Rounds interleave the targets, like HTTP's; the median of each measure
    # is kept.
    runs = {name: {"up": [], "down": [], "rate": []} for name in targets}
    for _ in range(rounds):
        for name, (ip, rp) in targets.items():
            runs[name]["up"].append(iperf(ip, seconds))
            runs[name]["down"].append(iperf(ip, seconds, reverse=True))
            runs[name]["rate"].append(asyncio.run(conn_rate(rp, seconds)))
    results = {}
    for name, r in runs.items():
        up = sorted(r["up"])[len(r["up"]) // 2]
        down = sorted(r["down"])[len(r["down"]) // 2]
        rate = sorted(r["rate"])[len(r["rate"]) // 2]
        results[name] = {"gbit_s": up[0], "gbit_s_reverse": down[0], "conn_per_s": rate,
                         "cpu_busy_pct": up[1], "cpu_busy_pct_reverse": down[1],
                         "rounds_gbit_s": [round(x[0], 2) for x in r["up"]],
                         "rounds_gbit_s_reverse": [round(x[0], 2) for x in r["down"]]}
        print(f"  tcp  {name:20} {up[0]:.2f} Gbit/s up (CPU busy % {up[1]}), {down[0]:.2f} down (CPU busy % {down[1]}), "
              f"{rate:.0f} connections/s", flush=True)
    for p in procs:
        stop(p)
    return results


# --- TLS -------------------------------------------------------------------

# Handshake clients run at once (tlspump processes, on CPU 1 when pinned):
# while one computes its side of a handshake, the others' wait on the proxy.
HANDSHAKE_CLIENTS = 4
HANDSHAKE_KINDS = (("1.3", "new"), ("1.3", "resume"), ("1.2", "new"), ("1.2", "resume"))


def handshake_round(port, kind, seconds, pid):
    """HANDSHAKE_CLIENTS tlspump clients doing handshakes for `seconds`:
    handshakes per second (all clients), how many were resumed, the
    proxy's CPU per handshake, and how busy each CPU was."""
    version, how = kind
    cmd = [str(tool("tlspump")), "handshakes", str(port), how, str(seconds)] + (["-2"] if version == "1.2" else [])
    before, ticks = cpu_us(pid), cpu_ticks()
    clients = [start(f"hs-{port}-{i}", taskset(cmd, 1), stdout=subprocess.PIPE) for i in range(HANDSHAKE_CLIENTS)]
    outs = [c.communicate(timeout=seconds + 60)[0].decode() for c in clients]
    after, ticks_after = cpu_us(pid), cpu_ticks()
    r = {"handshakes": 0, "resumed": 0, "failed": 0, "seconds": 0.0}
    for out in outs:
        m = re.search(r"^JSON (.*)$", out, re.M)
        if not m:
            raise SystemExit(f"tlspump handshakes failed: {out!r} (see {work()}/hs-{port}-*.log)")
        x = json.loads(m.group(1))
        for k in ("handshakes", "resumed", "failed"):
            r[k] += x[k]
        r["seconds"] = max(r["seconds"], x["seconds"])
    r["per_s"] = r["handshakes"] / r["seconds"]
    cpu = (after[0] - before[0]) + (after[1] - before[1])
    r["cpu_us_per_handshake"] = cpu / max(r["handshakes"], 1)
    r["cpu_busy_pct"] = [round(100 * (b1 - b0) / max(t1 - t0, 1)) for (b0, t0), (b1, t1) in zip(ticks, ticks_after)]
    return r


def bench_tls_http(seconds, conns_list, rounds, mode):
    """livy-proxy and HAProxy terminating TLS in front of the same plain
    upstream as the HTTP part, in one of MODES: full and resumed handshakes
    per second (TLS 1.3 and 1.2), then HTTPS req/s, p99 and CPU per request
    with wrk; interleaved rounds, medians."""
    global PIN
    pin, threads = MODES[mode]
    PIN = pin
    try:
        up = start_upstream()
        up_proc = PROCS[-1]
        targets, procs = {}, {}
        targets["livy-proxy"], procs["livy-proxy"] = start_livy_proxy(f"lp-tls-{mode}", up, threads=threads, tls=True)
        if PGO_BIN.exists():
            targets["livy-proxy-pgo"], procs["livy-proxy-pgo"] = start_livy_proxy(
                f"lp-tls-{mode}-pgo", up, threads=threads, tls=True, binary=PGO_BIN)
        targets["haproxy"], procs["haproxy"] = start_haproxy(up, threads=threads, name=f"haproxy-tls-{mode}", tls=True)
        res = {"handshakes": {}, "https": {}}
        for kind in HANDSHAKE_KINDS:
            key = f"tls{kind[0]}-{kind[1]}"
            runs = {name: [] for name in targets}
            for _ in range(rounds):
                for name, port in targets.items():
                    runs[name].append(handshake_round(port, kind, seconds, pid_of(procs[name])))
            res["handshakes"][key] = {}
            for name, rs in runs.items():
                best = sorted(rs, key=lambda x: x["per_s"])[len(rs) // 2]
                r = {"per_s": median([x["per_s"] for x in rs]),
                     "cpu_us_per_handshake": median([x["cpu_us_per_handshake"] for x in rs]),
                     "resumed_pct": 100 * sum(x["resumed"] for x in rs) / max(sum(x["handshakes"] for x in rs), 1),
                     "failed": sum(x["failed"] for x in rs), "cpu_busy_pct": best["cpu_busy_pct"],
                     "rounds_per_s": [round(x["per_s"]) for x in rs]}
                res["handshakes"][key][name] = r
                print(f"  tls  {mode:10} {name:10} {key:12} {r['per_s']:>8.0f} handshakes/s  resumed {r['resumed_pct']:5.1f}%"
                      f"  cpu {r['cpu_us_per_handshake']:6.1f} us/handshake  CPUs busy % {r['cpu_busy_pct']}"
                      f"  failed {r['failed']}  rounds {r['rounds_per_s']}", flush=True)
        for c in conns_list:
            runs = interleaved_rounds(targets, procs, c, seconds, rounds, scheme="https")
            res["https"][str(c)] = {}
            for name, rs in runs.items():
                r = summarize_wrk(rs)
                res["https"][str(c)][name] = r
                cpu = (f"  cpu {r['user_us_per_req']:.2f}+{r['sys_us_per_req']:.2f} us/req"
                       if "user_us_per_req" in r else "")
                print(f"  https {mode:10} {name:10} c={c:<4} {r['rps']:>9.0f} req/s  p50 {r['p50']:>6} us  p99 {r['p99']:>6} us"
                      f"  {errors(r)}{cpu}  rounds {[round(x['rps']) for x in r['rounds']]}", flush=True)
        for p in list(procs.values()) + [up_proc]:
            stop(p)
        return {"pinned": pin, "threads": threads or "default", **res}
    finally:
        PIN = True


def tlspump_run(port, direction, seconds):
    """One tlspump client (CPU 1) writing (up) or reading (down) for
    `seconds`: Gbit/s, the cipher, how busy each CPU was."""
    cmd = taskset([str(tool("tlspump")), "client", str(port), str(certs()["ca"]), direction, str(seconds)], 1)
    ticks = cpu_ticks()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    ticks_after = cpu_ticks()
    m = re.search(r"^JSON (.*)$", out.stdout, re.M)
    if not m:
        raise SystemExit(f"tlspump client failed: {out.stdout}{out.stderr}")
    r = json.loads(m.group(1))
    r["cpu_busy_pct"] = [round(100 * (b1 - b0) / max(t1 - t0, 1)) for (b0, t0), (b1, t1) in zip(ticks, ticks_after)]
    return r


def bench_tls_jdbc(seconds, http_upstream, rounds):
    """TLS bytes through the JDBC path: a tlspump server (OpenSSL, CPU 1)
    as Livy's Thrift port and a tlspump client (CPU 1): direct (the
    ceiling), passthrough (livy-proxy `--thrift-tls-mode passthrough`,
    HAProxy `mode tcp`: bytes relayed, the TLS session is the endpoints'),
    and reencrypt (livy-proxy `--thrift-tls-mode reencrypt`, HAProxy `bind
    ssl` + `server ssl verify required`: TLS ends at the proxy and a second
    TLS connection goes on). One thread each, on CPU 0."""
    c = certs()
    sink = free_port()
    procs = [start("tlspump-server", [str(tool("tlspump")), "server", str(sink), str(c["chain"]), str(c["key"])], cpu=1)]
    wait_port(sink)
    targets = {"direct": sink}
    lp_pass, lp_re = free_port(), free_port()
    procs.append(start_livy_proxy("lp-jdbc-tls-pass", http_upstream, threads=1,
                                  extra=["--thrift-listen", f"127.0.0.1:{lp_pass}", "--thrift-port", str(sink),
                                         "--thrift-tls-mode", "passthrough"])[1])
    procs.append(start_livy_proxy("lp-jdbc-tls-re", http_upstream, threads=1,
                                  extra=["--thrift-listen", f"127.0.0.1:{lp_re}", "--thrift-port", str(sink),
                                         "--thrift-tls-mode", "reencrypt", "--thrift-tls-cert", str(c["chain"]),
                                         "--thrift-tls-key", str(c["key"]), "--thrift-upstream-ca", str(c["ca"])])[1])
    wait_port(lp_pass)
    wait_port(lp_re)
    targets["livy-proxy-passthrough"] = lp_pass
    targets["haproxy-passthrough"], p = start_haproxy(sink, mode="tcp", name="haproxy-tls-pass")
    procs.append(p)
    targets["livy-proxy-reencrypt"] = lp_re
    targets["haproxy-reencrypt"], p = start_haproxy(sink, mode="tcp", name="haproxy-tls-re", tls=True, upstream_tls=True)
    procs.append(p)
    runs = {name: {"up": [], "down": []} for name in targets}
    for _ in range(rounds):
        for name, port in targets.items():
            for d in ("up", "down"):
                runs[name][d].append(tlspump_run(port, d, seconds))
    results = {}
    for name, r in runs.items():
        up = sorted(r["up"], key=lambda x: x["gbit_s"])[len(r["up"]) // 2]
        down = sorted(r["down"], key=lambda x: x["gbit_s"])[len(r["down"]) // 2]
        results[name] = {"gbit_s": up["gbit_s"], "gbit_s_reverse": down["gbit_s"], "cipher": up["cipher"],
                         "cpu_busy_pct": up["cpu_busy_pct"], "cpu_busy_pct_reverse": down["cpu_busy_pct"],
                         "rounds_gbit_s": [round(x["gbit_s"], 2) for x in r["up"]],
                         "rounds_gbit_s_reverse": [round(x["gbit_s"], 2) for x in r["down"]]}
        print(f"  jdbc-tls {name:22} {up['gbit_s']:.2f} Gbit/s up (CPU busy % {up['cpu_busy_pct']}), {down['gbit_s']:.2f} down"
              f" (CPU busy % {down['cpu_busy_pct']})  {up['cipher']}", flush=True)
    for p in procs:
        stop(p)
    return results


def bench_tls(seconds, conns_list, rounds, modes):
    if not tool("tlspump"):
        raise SystemExit(f"--parts tls needs {TOOLS}/tlspump (bench/run builds it from bench/tlspump.c with cc)")
    out = {"certificate": "ECDSA P-256 (a CA and a server certificate, openssl CLI at bench time)",
           "handshake_clients": HANDSHAKE_CLIENTS, "modes": {}}
    for mode in modes:
        out["modes"][mode] = bench_tls_http(seconds, conns_list, rounds, mode)
    up = start_upstream()
    up_proc = PROCS[-1]
    out["jdbc"] = bench_tls_jdbc(seconds, up, rounds)
    stop(up_proc)
    return out


# --- memory ----------------------------------------------------------------

async def hold_connections(port, n):
    conns = []
    req = b"GET /sessions HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req)
        conns.append((r, w))
        if i % 500 == 499:
            await asyncio.gather(*(w.drain() for _, w in conns[-500:]))
    for r, _ in conns:
        await r.readuntil(JSON_BODY.encode())
    return conns


async def hold_tls_connections(port, n, batch=200):
    """`n` TLS connections, each after a full handshake (TLS 1.3, the
    bench's CA verified) and one keep-alive request with its answer read,
    then left open: `batch` connections at a time, below livy-proxy's
    max-tls-handshakes (256), so none waits in the backlog. Each request
    follows its handshake at once: a connection left without its first
    request past client-header-timeout is closed (that is the proxy's
    defence, not what is measured), and 10,000 handshakes take longer."""
    ctx = ca_context()
    req = b"GET /sessions HTTP/1.1\r\nHost: x\r\n\r\n"

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        w.write(req)
        await r.readuntil(JSON_BODY.encode())
        return r, w
    conns = []
    for i in range(0, n, batch):
        conns += await asyncio.gather(*(one() for _ in range(min(batch, n - i))))
    return conns


def bench_memory(n):
    up = start_upstream()
    out = {}
    # A kept-alive connection idle for client-header-timeout (30 s) is
    # closed; 10,000 TLS handshakes from one Python client take longer, so
    # the idle timeout is HAProxy's here (timeout client 600s).
    idle_args = ["--client-header-timeout", "600s"]
    for name, starter, tls in (("livy-proxy-1t", lambda: start_livy_proxy("livy-proxy-mem", up, threads=1, extra=idle_args),
                                False),
                               ("livy-proxy", lambda: start_livy_proxy("livy-proxy-mem-default", up, extra=idle_args), False),
                               ("haproxy", lambda: start_haproxy(up), False),
                               ("livy-proxy-1t-tls", lambda: start_livy_proxy("livy-proxy-mem-tls", up, threads=1,
                                                                              extra=idle_args, tls=True), True),
                               ("haproxy-tls", lambda: start_haproxy(up, name="haproxy-mem-tls", tls=True), True)):
        port, p = starter()
        time.sleep(0.5)
        idle = rss_kib(pid_of(p))

        async def loaded():
            conns = await (hold_tls_connections if tls else hold_connections)(port, n)
            # Settled: longer than livy-proxy's park delay (100 ms, after
            # which an idle HTTP/1.1 connection drops hyper's buffers) and
            # than HAProxy's and the allocators' own release delays.
            await asyncio.sleep(2)
            kib = rss_kib(pid_of(p))
            # Open descriptors: the client connections plus the pool of
            # upstream ones (part of what the RSS pays for).
            fds = len(os.listdir(f"/proc/{pid_of(p)}/fd"))
            for _, w in conns:
                w.close()
            return kib, fds

        try:
            busy, fds = asyncio.run(asyncio.wait_for(loaded(), 300 if tls else 120))
        except asyncio.TimeoutError:
            print(f"  mem  {name:18} could not hold {n} connections within {300 if tls else 120} s", flush=True)
            busy, fds = 0, 0
        out[name] = {"idle_mib": idle / 1024, "with_idle_connections_mib": busy / 1024, "idle_connections": n,
                     "tls": tls, "open_fds": fds}
        print(f"  mem  {name:18} idle {idle/1024:.1f} MiB, with {n} keep-alive {'TLS ' if tls else ''}connections"
              f" {busy/1024:.1f} MiB ({fds} descriptors open)", flush=True)
        stop(p)
    return out


# --- failover --------------------------------------------------------------

def jars(names):
    return ":".join(f"/usr/share/java/{n}.jar" for n in names)


def bench_failover(rounds):
    zk_cp = jars(["zookeeper", "zookeeper-jute", "slf4j-api", "slf4j-nop", "netty-handler", "netty-transport",
                  "netty-common", "netty-buffer", "netty-resolver", "netty-codec", "netty-transport-native-epoll",
                  "netty-transport-native-unix-common", "metrics-core", "commons-io"])
    cur_cp = jars(["curator-recipes", "curator-framework", "curator-client", "guava", "zookeeper", "zookeeper-jute",
                   "slf4j-api", "slf4j-nop", "netty-handler", "netty-transport", "netty-common", "netty-buffer",
                   "netty-resolver", "netty-codec", "netty-transport-native-epoll", "netty-transport-native-unix-common"])
    latch = work() / "latch"
    latch.mkdir()
    subprocess.run(["javac", "-nowarn", "-d", str(latch), "-cp", cur_cp, str(ROOT / "tests/support/LatchMember.java")], check=True)
    results = {}
    for kind in ("SIGTERM", "SIGKILL"):
        samples = []
        for _ in range(rounds):
            samples.append(failover_once(kind, zk_cp, f"{latch}:{cur_cp}"))
        results[kind] = samples
        added = sorted(s["added_ms"] for s in samples)
        print(f"  fail {kind:8} election {median([s['election_ms'] for s in samples]):7.0f} ms after exit; "
              f"proxy adds median {median(added):5.1f} ms (max {max(added):.1f}); failed requests {sum(s['failed'] for s in samples)}", flush=True)
    return results


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


def failover_once(kind, zk_cp, latch_cp):
    zk_port = free_port()
    zdir = work() / f"zk-{zk_port}"
    zdir.mkdir()
    (zdir / "zoo.cfg").write_text(f"tickTime=500\ndataDir={zdir}/data\nclientPort={zk_port}\nclientPortAddress=127.0.0.1\n"
                                  "admin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=10000\n")
    zk = start(f"zk-{zk_port}", ["java", "-cp", zk_cp, "org.apache.zookeeper.server.ZooKeeperServerMain", str(zdir / "zoo.cfg")])
    wait_port(zk_port)
    ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    port = None
    while port is None:
        cand = free_port(ips[0])
        try:
            for ip in ips[1:]:
                s = socket.socket()
                s.bind((ip, cand))
                s.close()
            port = cand
        except OSError:
            pass
    peers = sum((["--peer", f"livy-{i+1}={ip}"] for i, ip in enumerate(ips)), [])
    sims = []
    for i, ip in enumerate(ips):
        sims.append(start(f"sim-{zk_port}-{i}", [str(REL / "livy-sim"), "--id", f"livy-{i+1}", "--listen", f"{ip}:{port}",
                                                 "--zookeeper", f"127.0.0.1:{zk_port}", "--latch-classpath", latch_cp,
                                                 "--session-timeout-ms", "4000", *peers]))
        wait_port(port, ip)
        time.sleep(0.3)
    pport = free_port()
    proxy = start(f"proxy-{zk_port}", [str(REL / "livy-proxy"), "--listen", f"127.0.0.1:{pport}", "--zookeeper", f"127.0.0.1:{zk_port}",
                                       "--hold-timeout", "30s", "--log-level", os.environ.get("BENCH_PROXY_LOG", "warn"),
                                       *sum((["--node", f"livy-{i+1}=http://{ip}:{port}"] for i, ip in enumerate(ips)), [])])
    wait_port(pport)

    def state(i):
        try:
            return json.load(urllib.request.urlopen(f"http://{ips[i]}:{port}/_sim/state", timeout=1))
        except Exception:
            return None

    end = time.time() + 30
    leader = None
    while leader is None and time.time() < end:
        for i in range(3):
            s = state(i)
            if s and s["leader"]:
                leader = i
        time.sleep(0.05)
    wait_200(f"http://127.0.0.1:{pport}/version")

    # Steady load: one client, sequential keep-alive GETs, recording when
    # each answer arrived and which node gave it.
    import http.client
    stop_load = threading.Event()
    answers = []

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", pport, timeout=60)
        while not stop_load.is_set():
            try:
                conn.request("GET", "/version")
                r = conn.getresponse()
                r.read()
                answers.append((time.time(), r.status, r.getheader("x-livy-node")))
            except Exception:
                answers.append((time.time(), 0, None))
                conn = http.client.HTTPConnection("127.0.0.1", pport, timeout=60)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)
    old = f"livy-{leader+1}"
    t_exit = time.time()
    sims[leader].send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
    end = time.time() + 30
    while time.time() < end and not any(a[1] == 200 and a[2] not in (None, old) for a in answers):
        time.sleep(0.01)
    time.sleep(0.3)
    stop_load.set()
    t.join()
    first_new = next(a for a in answers if a[1] == 200 and a[2] not in (None, old))
    new_id = first_new[2]
    new_idx = int(new_id.split("-")[1]) - 1
    log = (work() / f"sim-{zk_port}-{new_idx}.log").read_text()
    learned = max(int(m) for m in re.findall(r"LEADER at (\d+)", log)) / 1000.0
    failed = sum(1 for a in answers if a[1] != 200)
    for p in sims + [proxy, zk]:
        stop(p, signal.SIGKILL)
    if os.environ.get("BENCH_KEEP_LOGS"):
        keep = Path(os.environ["BENCH_KEEP_LOGS"])
        keep.mkdir(parents=True, exist_ok=True)
        for f in work().glob(f"*{zk_port}*.log"):
            shutil.copy(f, keep / f"{kind}-{f.name}")
        print(f"  kept logs; learned at {learned:.3f}, first new answer at {first_new[0]:.3f}, exit at {t_exit:.3f}")
    return {"election_ms": (learned - t_exit) * 1000, "first_answer_ms": (first_new[0] - t_exit) * 1000,
            "added_ms": (first_new[0] - learned) * 1000, "failed": failed, "requests": len(answers)}


# --- report ----------------------------------------------------------------

def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "haproxy": ver(["haproxy", "-v"]), "nginx": ver(["nginx", "-v"]), "wrk": ver(["wrk", "-v"]),
            "iperf3": ver(["iperf3", "-v"]), "rustc": ver(["rustc", "-V"]), "openssl": ver(["openssl", "version"]),
            "livy-proxy": ver([str(REL / "livy-proxy"), "--version"]),
            "load_before": os.getloadavg()[0]}


def plot(results, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib not available: no plot)")
        return
    http = results.get("http")
    if not http:
        return
    names = list(http)
    conns = list(next(iter(http.values())))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + k * width for i in range(len(conns))]
        axes[0].bar(xs, [http[name][c]["rps"] for c in conns], width, label=name)
        axes[1].bar(xs, [http[name][c]["p99"] / 1000 for c in conns], width, label=name)
    for ax, title in ((axes[0], "requests/s (higher is better)"), (axes[1], "p99 latency, ms (lower is better)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(conns))])
        ax.set_xticklabels([f"{c} conn" for c in conns])
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"HTTP through each proxy, {m['cpus']} cores, {m['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"  plot: {out}")


def table(results):
    modes = results.get("modes")
    if modes:
        print("\nHTTP by mode (ratios to HAProxy in the same mode: req/s, p99; >1 req/s and <1 p99 are better)")
        for mode, m in modes.items():
            res = m["results"]
            for c in res["haproxy"]:
                hap = res["haproxy"][c]
                cells = "  ".join(f"{n} x{res[n][c]['rps'] / hap['rps']:4.2f} / x{res[n][c]['p99'] / max(hap['p99'], 1):4.2f}"
                                  for n in res if n != "haproxy")
                print(f"  {mode:10} threads {str(m['threads']):7} c={c:<4} {cells}")
                fwd = res.get("haproxy-fwd", {}).get(c)
                if fwd:
                    cells = "  ".join(f"{n} x{res[n][c]['rps'] / fwd['rps']:4.2f} / x{res[n][c]['p99'] / max(fwd['p99'], 1):4.2f}"
                                      for n in res if n.startswith("livy-proxy"))
                    print(f"  {'':10} against haproxy-fwd (the same header work)  {cells}")
    http = results.get("http")
    if http:
        print("\nHTTP (req/s; ratio to HAProxy, ratio to direct; p50/p99/p99.9 in us)")
        for c in next(iter(http.values())):
            hap = http["haproxy"][c]["rps"]
            direct = http["direct"][c]["rps"]
            for name, by_conns in http.items():
                r = by_conns[c]
                cpu = ""
                if "user_us_per_req" in r and "user_us_per_req" in http["haproxy"][c]:
                    mine = r["user_us_per_req"] + r["sys_us_per_req"]
                    h = http["haproxy"][c]
                    cpu = f"   cpu {mine:5.2f} us/req (x{mine / (h['user_us_per_req'] + h['sys_us_per_req']):4.2f} HAProxy)"
                print(f"  c={c:<4} {name:14} {r['rps']:>9.0f}  x{r['rps']/hap:5.2f} HAProxy  x{r['rps']/direct:5.2f} direct"
                      f"   {r['p50']:>6}/{r['p99']:>6}/{r['p999']:>6}{cpu}")
    tcp = results.get("tcp")
    if tcp:
        print("\nTCP (JDBC path)")
        d = tcp["direct"]
        for name, r in tcp.items():
            busy = ""
            if "cpu_busy_pct" in r:
                busy = f"  CPUs busy % {r['cpu_busy_pct']} / {r['cpu_busy_pct_reverse']}"
            print(f"  {name:20} {r['gbit_s']:6.2f} / {r['gbit_s_reverse']:6.2f} Gbit/s up / down"
                  f" ({r['gbit_s']/d['gbit_s']*100:5.1f}% / {r['gbit_s_reverse']/d['gbit_s_reverse']*100:5.1f}% of direct)"
                  f"  {r['conn_per_s']:8.0f} conn/s ({r['conn_per_s']/d['conn_per_s']*100:5.1f}% of direct){busy}")
    tls = results.get("tls")
    if tls:
        print(f"\nTLS ({tls['certificate']}; ratios to HAProxy in the same mode)")
        for mode, m in tls["modes"].items():
            for key, by_name in m["handshakes"].items():
                hap = by_name["haproxy"]
                for name, r in by_name.items():
                    print(f"  {mode:10} {key:12} {name:10} {r['per_s']:>8.0f} handshakes/s (x{r['per_s'] / max(hap['per_s'], 1e-9):4.2f})"
                          f"  resumed {r['resumed_pct']:5.1f}%  cpu {r['cpu_us_per_handshake']:6.1f} us/handshake"
                          f" (x{r['cpu_us_per_handshake'] / max(hap['cpu_us_per_handshake'], 1e-9):4.2f})  CPUs busy % {r['cpu_busy_pct']}")
            for c, by_name in m["https"].items():
                hap = by_name["haproxy"]
                for name, r in by_name.items():
                    cpu = ""
                    if "user_us_per_req" in r and "user_us_per_req" in hap:
                        mine = r["user_us_per_req"] + r["sys_us_per_req"]
                        cpu = f"  cpu {mine:5.2f} us/req (x{mine / (hap['user_us_per_req'] + hap['sys_us_per_req']):4.2f})"
                    print(f"  {mode:10} https c={c:<4} {name:10} {r['rps']:>9.0f} req/s (x{r['rps'] / hap['rps']:4.2f})"
                          f"  p50/p99 {r['p50']:>6}/{r['p99']:>6} us (p99 x{r['p99'] / max(hap['p99'], 1):4.2f}){cpu}")
        j = tls.get("jdbc")
        if j:
            d = j["direct"]
            print("  JDBC TLS (tlspump client and server on CPU 1; direct is the ceiling)")
            for name, r in j.items():
                print(f"  {name:24} {r['gbit_s']:6.2f} / {r['gbit_s_reverse']:6.2f} Gbit/s up / down"
                      f" ({r['gbit_s']/d['gbit_s']*100:5.1f}% / {r['gbit_s_reverse']/d['gbit_s_reverse']*100:5.1f}% of direct)"
                      f"  CPUs busy % {r['cpu_busy_pct']} / {r['cpu_busy_pct_reverse']}")
    mem = results.get("memory")
    if mem:
        print("\nMemory (VmRSS)")
        for name, r in mem.items():
            print(f"  {name:18} idle {r['idle_mib']:6.1f} MiB   with {r['idle_connections']} idle keep-alive"
                  f" {'TLS' if r.get('tls') else 'plain'} connections {r['with_idle_connections_mib']:6.1f} MiB"
                  f"   ({r.get('open_fds', '?')} descriptors open)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3,
                    help="HTTP and TCP: measured runs per target, interleaved; the median is kept")
    ap.add_argument("--parts", default="http,modes,tcp,tls,memory,failover")
    ap.add_argument("--conns", default="1,16,128")
    ap.add_argument("--tls-conns", default="16,128", help="with --parts tls: wrk connections for HTTPS")
    ap.add_argument("--idle-connections", type=int, default=10000)
    ap.add_argument("--failover-rounds", type=int, default=3)
    ap.add_argument("--modes", default="pinned,unpinned,defaults",
                    help="with --parts modes: which of " + ", ".join(MODES) + " to run")
    ap.add_argument("--tls-modes", default="pinned",
                    help="with --parts tls: handshakes and HTTPS in which of " + ", ".join(MODES))
    ap.add_argument("--ab-binary", help="with --parts ab: the livy-proxy binary to compare this build with")
    ap.add_argument("--ab-mode", default="pinned", choices=sorted(MODES),
                    help="with --parts ab: threads and pinning, as in --modes (default pinned, one worker each)")
    ap.add_argument("--think-ms", type=int, default=0,
                    help="a pause per connection between an answer and its next request (wrk's delay()): "
                         "the same offered load for every proxy, to compare tails below saturation")
    ap.add_argument("--out", help="results JSON; default bench/results/latest.json for a full run, "
                    "target/bench/<parts>.json for a subset (so a subset never replaces the published run)")
    a = ap.parse_args()
    global THINK_MS
    THINK_MS = a.think_ms
    parts = a.parts.split(",")
    full = set(parts) >= {"http", "modes", "tcp", "tls", "memory", "failover"}
    out_dir = ROOT / "bench" / "results" if full else ROOT / "target" / "bench"
    a.out = a.out or str(out_dir / ("latest.json" if full else "-".join(parts) + ".json"))
    try:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "think_ms": THINK_MS}
    try:
        steal = results["steal_pct"] = {}

        def part(name, label, run):
            """One part, and the share of CPU time the hypervisor stole
            meanwhile: numbers from a VM whose host was busy say so."""
            print(label, flush=True)
            s0, t0 = steal_jiffies()
            results[name] = run()
            s1, t1 = steal_jiffies()
            steal[name] = round(100 * (s1 - s0) / max(t1 - t0, 1), 1)
            print(f"  ({name}: {steal[name]} % of the CPU time stolen by the hypervisor)", flush=True)
        conns = [int(c) for c in a.conns.split(",")]
        if "http" in parts:
            part("http", "HTTP", lambda: bench_http(a.seconds, conns, a.rounds))
        if "modes" in parts:
            part("modes", "HTTP by mode (pinned or not, equal threads or defaults)",
                 lambda: bench_http_modes(a.seconds, conns, a.rounds, a.modes.split(",")))
        if "tcp" in parts:
            part("tcp", "TCP", lambda: bench_tcp(a.seconds, start_upstream(), a.rounds))
        if "tls" in parts:
            part("tls", "TLS", lambda: bench_tls(a.seconds, [int(c) for c in a.tls_conns.split(",")], a.rounds,
                                                 a.tls_modes.split(",")))
        if "memory" in parts:
            part("memory", "Memory", lambda: bench_memory(a.idle_connections))
        if "ab" in parts:
            if not a.ab_binary:
                raise SystemExit("--parts ab needs --ab-binary OTHER (a livy-proxy binary)")
            part("ab", "A/B", lambda: bench_ab(a.seconds, conns, a.rounds, a.ab_binary, a.ab_mode))
        if "failover" in parts:
            part("failover", "Failover", lambda: bench_failover(a.failover_rounds))
    finally:
        cleanup()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    table(results)
    plot(results, ROOT / "docs" / "benchmarks-http.png" if full else Path(a.out).with_suffix(".png"))
    print(f"\nresults: {a.out}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))
    main()
