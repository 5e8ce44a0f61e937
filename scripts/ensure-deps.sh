#!/usr/bin/env bash
# Makes sure the machine has what `make test` and `make run` need beyond Go: the
# PostgreSQL server binaries (initdb, pg_ctl), kcat (interop checks), Node.js with
# npm (the saga worker example, examples/node-worker) and promtool (Debian's prometheus
# package: the alert rules' checks and unit tests, deploy/prometheus). As root it
# installs missing Debian packages; otherwise it says what to install and stops.
set -euo pipefail

have_pg() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
have_pg || missing+=(postgresql)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "eventgw needs these Debian packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
others=()
for p in "${missing[@]}"; do [ "$p" = prometheus ] || others+=("$p"); done
[ ${#others[@]} -eq 0 ] || apt-get install -y -qq "${others[@]}" >/dev/null
if [ ${#others[@]} -ne ${#missing[@]} ]; then
  # Wanted for promtool only: without the recommended node exporter, and with its
  # server stopped if the package started it (it would take 9090, the sidecar's port).
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if command -v invoke-rc.d >/dev/null 2>&1; then invoke-rc.d prometheus stop >/dev/null 2>&1 || true; fi
fi
# The postgresql package starts a cluster of its own; eventgw runs private ones.
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
fi
