"""The training run of a profile-guided build (scripts/pgo-build).

Drives a livy-proxy built with `-Cprofile-generate` through the loads it
carries in production, so that the optimized build lays out and inlines for
them: HTTP/1.1 keep-alive GETs at 16 and 128 connections, POSTs with a JSON
body (statements, batches), HTTPS, a JDBC stream both ways and JDBC
connections opened and closed. The upstreams are the benchmark's (an nginx
answering Livy's JSON, iperf3, a TCP banner), from bench.py, on loopback.
Each proxy is stopped with SIGTERM so that it exits through its drain and
writes its profile. Fails (exit 1) when a load got no answers: a profile of
error paths would optimize the wrong code.

    python3 bench/pgo_train.py BINARY [--seconds N]
"""

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

# A Livy statement, as clients POST it.
STATEMENT = '{"code": "spark.range(10).count()", "kind": "pyspark"}'


def answered(port, conns, seconds, scheme="http", body=None):
    """Requests answered with a status below 400 in one wrk run: wrk
    counts every answer, and those of 400 and above and socket errors
    among its errors."""
    r = bench.wrk(port, conns, seconds, scheme=scheme, body=body)
    return max(r["requests"] - r["errors"], 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    binary, s = Path(a.binary), a.seconds
    # As users run it: no pinning, the default worker count.
    bench.PIN = False
    admin = ["--admin-listen", "127.0.0.1:0"]
    done = {}
    try:
        up = bench.start_upstream()
        port, http = bench.start_livy_proxy("train-http", up, binary=binary, extra=admin)
        done["GET, 16 connections"] = answered(port, 16, s)
        done["GET, 128 connections"] = answered(port, 128, s)
        done["POST with a body, 16 connections"] = answered(port, 16, s, body=STATEMENT)
        tport, https = bench.start_livy_proxy("train-https", up, binary=binary, tls=True, extra=admin)
        done["HTTPS GET, 16 connections"] = answered(tport, 16, s, scheme="https")

        iperf_port = bench.free_port()
        bench.start("train-iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)])
        bench.wait_port(iperf_port)
        banner_port = bench.start_banner("train-banner")
        stream_port, rate_port = bench.free_port(), bench.free_port()
        _, jdbc = bench.start_livy_proxy("train-jdbc", up, binary=binary, extra=admin + [
            "--thrift-listen", f"127.0.0.1:{stream_port}", "--thrift-port", str(iperf_port)])
        _, jdbc_rate = bench.start_livy_proxy("train-jdbc-rate", up, binary=binary, extra=admin + [
            "--thrift-listen", f"127.0.0.1:{rate_port}", "--thrift-port", str(banner_port)])
        bench.wait_port(stream_port)
        bench.wait_port(rate_port)
        for reverse in (False, True):
            gbit, _ = bench.iperf(stream_port, s, reverse=reverse)
            done[f"JDBC stream, {'down' if reverse else 'up'}"] = int(gbit * 1000)
        done["JDBC connections"] = int(asyncio.run(bench.conn_rate(rate_port, s)) * s)
        for p in (http, https, jdbc, jdbc_rate):
            bench.stop(p)
            if p.returncode != 0:
                raise SystemExit(f"pgo_train: livy-proxy exited with {p.returncode}: no profile written")
    finally:
        bench.cleanup()
    for load, n in done.items():
        print(f"  {load}: {n}")
    empty = [load for load, n in done.items() if n == 0]
    if empty:
        raise SystemExit(f"pgo_train: no answers to: {', '.join(empty)}")


if __name__ == "__main__":
    main()
