# Sourced by scripts/test and scripts/demo: installs, from Debian, what the
# tests and the demo run for real (ZooKeeper, Curator, a JDK, curl, Python's
# venv, openssl for the TLS tests, MIT Kerberos to build with and a KDC for
# the Kerberos tests; for the tests also kubectl, promtool, systemd-analyze,
# haproxy, and nginx, wrk and iperf3 for the PGO training run) when it is
# missing. Safe to run again: it installs nothing that is
# already there.

need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in zookeeper libcurator-recipes-java libcurator-framework-java libcurator-client-java curl openssl; do
  have_pkg "$pkg" || need_pkgs+=("$pkg")
done
command -v javac >/dev/null 2>&1 || need_pkgs+=(default-jdk-headless)
# ss (iproute2): tests/operations.rs reads the listeners' backlog with it.
command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
# Kerberos to ZooKeeper (the default `kerberos` feature): MIT's GSSAPI
# headers and library to build against, clang and libclang for bindgen;
# for tests/zookeeper_kerberos.rs a throwaway KDC (krb5kdc, kdb5_util,
# kadmin.local) and the client tools.
for pkg in libkrb5-dev clang libclang-dev krb5-kdc krb5-admin-server krb5-user; do
  have_pkg "$pkg" || need_pkgs+=("$pkg")
done
# The JDBC test makes a Python venv (pyhive from PyPI); Debian's python3
# needs python3-venv for that, a pyenv or upstream build has it built in.
if ! command -v python3 >/dev/null 2>&1; then
  need_pkgs+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_pkgs+=(python3-venv)
fi
# The offline checks of deploy/ (tests/deploy.rs), for scripts/test only:
# kubectl renders the kustomize overlays (any kubectl already on the PATH
# will do; else Debian's, whose built-in kustomize is old but renders them),
# promtool checks and unit-tests the alerts, systemd-analyze verifies the
# unit. Debian's prometheus package is the one that ships promtool.
if [ "${deps_deploy_checks:-}" = 1 ]; then
  command -v kubectl >/dev/null 2>&1 || need_pkgs+=(kubernetes-client)
  command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
  # The gateway recipe's end-to-end drain (tests/gateway_drain.rs) puts
  # HAProxy in front as the load balancer.
  command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
  # The PGO build's training run (tests/pgo_train.rs runs it against this
  # build): nginx with its stream module, wrk and iperf3 as its upstreams
  # and load.
  command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_pkgs+=(libnginx-mod-stream)
  command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
  command -v iperf3 >/dev/null 2>&1 || need_pkgs+=(iperf3)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "installing from Debian: ${need_pkgs[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (rustup) first" >&2
  exit 1
fi
