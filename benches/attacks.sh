#!/usr/bin/env bash
# Resource attacks against unstick, nginx and HAProxy in one run, with the
# same timeouts: header 10 s, idle 60 s, a client that sends or takes
# nothing of a body 10 s, a backend that sends nothing of a body 5 s. Each
# proxy gets each attack (benches/attacks.py) from N connections at once,
# R rounds each (a round starts at most every 15 s), while a well-behaved
# client sends one request at a time beside it; the table gives the time to
# cut (median and slowest), how many of the N x R connections were cut
# within 40 s, the well-behaved client's successes, failures and latency,
# the proxy's peak RSS and CPU seconds.
#
# Usage:  benches/attacks.sh [--conns N] [--rounds R] [--only TEXT]
# Needs:  apt-get install -y nginx haproxy python3
# NO_BUILD=1 skips the release build; KEEP_WORK=1 keeps the work directory
# (configs, logs, results.jsonl) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=100
ROUNDS=3
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --conns) CONNS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
for tool in nginx haproxy python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx haproxy" >&2; exit 2; }
done
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=$(pwd)/target/release/unstick
WORK=$(mktemp -d /tmp/unstick-attacks.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_WORK:-}" ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

# --- the backend: `/` 200; `/stall` 10 of 1,000 bytes, then nothing; `/big` 1 GiB
BACKEND=$(free_port)
cat >"$WORK/backend.py" <<'EOF'
import asyncio, sys
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/stall":
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
                await w.drain(); await r.read(); return
            if path == b"/big":
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (1 << 30))
                chunk = b"x" * 65536
                for _ in range((1 << 30) // 65536):
                    w.write(chunk); await w.drain()
                continue
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"); await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await s.serve_forever()
asyncio.run(main())
EOF
python3 "$WORK/backend.py" "$BACKEND" & PIDS+=($!)
wait_port "$BACKEND"

# --- the proxies -----------------------------------------------------------------
U1=$(free_port)
UNSTICK_TIMEOUTS_CLIENT_HEADER=10s UNSTICK_TIMEOUTS_CLIENT_IDLE=60s \
UNSTICK_TIMEOUTS_CLIENT_STALL=10s UNSTICK_TIMEOUTS_UPSTREAM_STALL=5s \
UNSTICK_ACCESS_LOG=off UNSTICK_WORKERS=2 \
    "$BIN" serve --listen "127.0.0.1:$U1" --admin off --backend "127.0.0.1:$BACKEND" \
    >"$WORK/unstick.log" 2>&1 & UPID=$!; PIDS+=($UPID)

N1=$(free_port); N2=$(free_port)
# nginx's workers (user nobody when started as root) buffer large responses
# in its temp paths: a directory they can reach and write.
chmod 755 "$WORK"
mkdir -p "$WORK/nginx"
chmod 1777 "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
    client_header_timeout 10s; keepalive_timeout 60s;
    client_body_timeout 10s; send_timeout 10s; proxy_read_timeout 5s; proxy_send_timeout 10s;
    upstream app { server 127.0.0.1:$BACKEND; keepalive 32; }
    server {
        listen 127.0.0.1:$N1;
        listen 127.0.0.1:$N2 http2;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.out" 2>&1 & NPID=$!; PIDS+=($NPID)

H1=$(free_port); H2=$(free_port)
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 8000
defaults
    mode http
    timeout connect 1s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout client 10s
    timeout server 5s
frontend f
    bind 127.0.0.1:$H1
    bind 127.0.0.1:$H2 proto h2
    default_backend b
backend b
    server s1 127.0.0.1:$BACKEND
EOF
haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 & HPID=$!; PIDS+=($HPID)
for p in "$U1" "$N1" "$N2" "$H1" "$H2"; do wait_port "$p"; done

echo "# attacks, $CONNS connections x $ROUNDS rounds each; $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores; $(git rev-parse --short HEAD)"
run() { python3 benches/attacks.py --name "$1" --pid "$2" --h1 "$3" --h2 "$4" --conns "$CONNS" --rounds "$ROUNDS" --only "$5"; }
# Attack by attack, each proxy in turn: load from elsewhere on the machine
# falls on all three alike.
python3 benches/attacks.py --list | while IFS= read -r attack; do
    [ -z "$ONLY" ] || [[ "$attack" == *"$ONLY"* ]] || continue
    run unstick "$UPID" "$U1" "$U1" "$attack"
    run nginx "$NPID" "$N1" "$N2" "$attack"
    run haproxy "$HPID" "$H1" "$H2" "$attack"
done | tee "$WORK/results.jsonl"
python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| attack | proxy | cut (of N) | time to cut, median / slowest | good client ok / failed | good p50 / p99 ms | peak RSS MiB | CPU s |")
print("|---|---|---|---|---|---|---|---|")
for attack in dict.fromkeys(r["attack"] for r in rows):
    for r in (r for r in rows if r["attack"] == attack):
        cut = f'{r["cut_median_s"]} / {r["cut_max_s"]} s' if r["cut_median_s"] is not None else "never (40 s)"
        print(f'| {attack} | {r["proxy"]} | {r["cut"]}/{r["samples"]} | {cut} | {r["good_ok"]} / {r["good_failed"]} '
              f'| {r["good_p50_ms"]} / {r["good_p99_ms"]} | {r["rss_peak_mib"]} | {r["cpu_s"]} |')
EOF
