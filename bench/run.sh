#!/usr/bin/env bash
# `make bench`: edgeplane vs nginx (see bench/README.md). Installs nginx-light and wrk when
# missing, raises the open-file limit, runs bench/bench.py and, whatever happens, stops
# every process it started. Everything listens on 127.0.0.1, on free high ports.
#
# Knobs (environment): BENCH_DURATION=10 BENCH_WARMUP=2 BENCH_ROUNDS=3 BENCH_CONNECTIONS=50
# BENCH_IDLE_CONNECTIONS=10000 BENCH_SCENARIOS=abc BENCH_TIMEOUT=600 (seconds, whole run).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="$ROOT/.venv/bin/python"

# --- tools ------------------------------------------------------------------------------
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
missing=()
[ -n "$(find_nginx)" ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing or stale: update only when the install needs it.
    if ! timeout 300 $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        timeout 300 $SUDO apt-get update >&2
        timeout 300 $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi
NGINX="$(find_nginx)"
[ -n "$NGINX" ] || { echo "nginx not found after installing nginx-light" >&2; exit 1; }
[ -x "$PYTHON" ] || { echo "no virtualenv at $ROOT/.venv: run 'make bench' (it installs one)" >&2; exit 1; }

# --- limits -------------------------------------------------------------------------------
# 10,000 idle connections need ~10k descriptors in the proxy and in the client.
hard="$(ulimit -Hn)"
if [ "$hard" = "unlimited" ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 10500 ]; then
    echo "warning: open-file limit is $(ulimit -n); scenario (c) needs ~10,500 (raise 'ulimit -Hn')" >&2
fi

# --- run, and clean up whatever happens ---------------------------------------------------
WORK="$(mktemp -d /tmp/edgeplane-bench.XXXXXX)"
BENCH_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$BENCH_PID" 2>/dev/null || true
    fi
    # Every pid bench.py started (nginx masters and workers, nodes and their workers, wrk,
    # idle clients) is listed here; kill those still alive that are what we started.
    if [ -f "$WORK/pids" ]; then
        while read -r pid; do
            [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || continue
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -Eq "nginx|edgeplane|wrk|idle_clients"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$WORK/pids"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$ROOT"
# In the background so the traps run at once on a signal; bench.py stops its own processes
# on SIGTERM, and cleanup() above catches anything it could not.
"$PYTHON" "$HERE/bench.py" --workdir "$WORK" --results "$HERE/results" --nginx "$NGINX" &
BENCH_PID=$!
set +e
wait "$BENCH_PID"
status=$?
set -e
BENCH_PID=""
exit "$status"
