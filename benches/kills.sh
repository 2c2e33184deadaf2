#!/usr/bin/env bash
# Backends SIGKILLed under load, behind unstick, HAProxy and nginx in one run:
# errors per 100,000 requests for GET and for POST with an Idempotency-Key,
# then unstick alone for --loop consecutive runs of GETs (runs with 0 errors
# counted). 3 backends whose responses come in two writes (head, then body
# 1 ms later), 8 keep-alive clients, a SIGKILL every 500 ms for 10 s, each
# killed backend restarted 250 ms later. HAProxy: retries 3, option
# redispatch, retry-on all-retryable-errors, check inter 500ms fall 1 rise 1.
# nginx: proxy_next_upstream error timeout http_502, max_fails=1
# fail_timeout=1s. unstick: its defaults. Details: benches/kills.py --help.
#
# Usage:  benches/kills.sh [--loop N] [kills.py options]
# Needs:  apt-get install -y nginx haproxy python3
# NO_BUILD=1 skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

LOOP=20
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --loop) LOOP=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
for tool in nginx haproxy python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx haproxy python3" >&2; exit 2; }
done
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=$(pwd)/target/release/unstick

python3 benches/kills.py --bin "$BIN" "${args[@]}"
[ "$LOOP" -eq 0 ] || python3 benches/kills.py --bin "$BIN" --proxies '' --methods GET --loop "$LOOP" "${args[@]}"
