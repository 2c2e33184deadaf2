#!/usr/bin/env bash
# Memory per idle client connection: unstick beside nginx and HAProxy in one run.
#
# Usage:  benches/connections.sh [--counts "10000 19000"] [--h2 N] [--tls N]
#                                [--beside N] [--duration S] [--targets "unstick nginx haproxy"]
# Needs:  apt-get install -y nginx haproxy wrk curl openssl  (python3; ../shared/peer-bench)
#
# One nginx backend (the peer bench's: a fixed 100-byte 200) behind three
# proxies: unstick (defaults, 2 workers; idle timeouts raised to 300 s),
# nginx 2 workers and HAProxy 2 threads (the peer bench's configurations,
# with their connection limits raised). For each proxy and each count N,
# benches/idle_clients.py opens N keep-alive connections, one request each,
# and holds them idle; the figure is the growth of the proxy's RSS (all its
# processes) over its RSS before, divided by N. Then one more request on
# every held connection checks that all are still served. The same for
# HTTP/2 (h2c by prior knowledge, --h2 connections) and HTTP/1.1 over TLS
# (ECDSA P-256, --tls connections).
#
# Beside idle connections: wrk -t1 -c64 for --duration seconds through each
# proxy, without idle connections and then with --beside idle connections
# held; it prints the ratios of req/s and p99 (with / without).
#
# The number of connections one process holds is bounded by its file
# descriptor limit: the script raises `ulimit -n` to the hard limit and
# prints it; counts above what the limit allows are refused up front.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS="10000 19000"
H2_COUNT=10000
TLS_COUNT=5000
BESIDE=19000
DURATION=5
TARGETS="unstick nginx haproxy"
while [ $# -gt 0 ]; do
    case "$1" in
        --counts) COUNTS=$2; shift 2 ;;
        --h2) H2_COUNT=$2; shift 2 ;;
        --tls) TLS_COUNT=$2; shift 2 ;;
        --beside) BESIDE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PEER=${PEER_BENCH:-../shared/peer-bench}
[ -f "$PEER/backend-nginx.conf.tmpl" ] || { echo "peer bench not found at $PEER (set PEER_BENCH)" >&2; exit 2; }
for tool in nginx haproxy wrk curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx haproxy wrk curl openssl" >&2; exit 2; }
done

ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
MAX_COUNT=0
for n in $COUNTS $H2_COUNT $TLS_COUNT $BESIDE; do [ "$n" -gt "$MAX_COUNT" ] && MAX_COUNT=$n; done
# Each proxy process also holds its listeners, backend connections and wrk's 64.
if [ $((MAX_COUNT + 500)) -gt "$FD_LIMIT" ]; then
    echo "$MAX_COUNT connections need a file descriptor limit above $((MAX_COUNT + 500)); this shell's hard limit is $FD_LIMIT" >&2
    exit 2
fi

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=${UNSTICK_BIN:-$(pwd)/target/release/unstick}
CLIENT=$(pwd)/benches/idle_clients.py
WORK=$(mktemp -d /tmp/unstick-conns.XXXXXX)
mkdir -p "$WORK/tmp"
BACKEND_PID=
declare -A ROOT
cleanup() {
    local p
    for p in $BACKEND_PID "${ROOT[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in $BACKEND_PID "${ROOT[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fill() {  # template, output, KEY=VALUE... (replaces @KEY@)
    local tmpl=$1 out=$2 kv; shift 2
    cp "$tmpl" "$out"
    for kv in "$@"; do
        K="@${kv%%=*}@" V="${kv#*=}" perl -0pi -e 's/\Q$ENV{K}\E/$ENV{V}/g' "$out"
    done
}
wait_ready() {  # port [curl options...]
    local port=$1; shift
    for _ in $(seq 100); do
        curl -s -o /dev/null "$@" "http://127.0.0.1:$port/" 2>/dev/null && return 0
        curl -s -o /dev/null -k "$@" "https://127.0.0.1:$port/" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$port (see $WORK)" >&2; exit 1
}
# RSS in KiB of a process and its children.
rss_kb() {
    local root=$1
    ps -o rss= -p "$root" --ppid "$root" 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

# --- the backend, the certificate ---------------------------------------------
BACKEND_PORT=$(free_port)
body="peer-bench backend 1 "; while [ ${#body} -lt 99 ]; do body="${body}x"; done
fill "$PEER/backend-nginx.conf.tmpl" "$WORK/backend.conf" WORK="$WORK" ID=1 PORT="$BACKEND_PORT" BODY="${body}\\n"
nginx -p "$WORK" -e "$WORK/backend.error.log" -c "$WORK/backend.conf" >"$WORK/backend.out" 2>&1 &
BACKEND_PID=$!
wait_ready "$BACKEND_PORT"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/haproxy.pem"

# --- the proxies: each listens for HTTP/1.1, h2c and TLS ----------------------
declare -A H1 H2 TLS
LIMIT=$((FD_LIMIT - 200))
start_unstick() {
    H1[unstick]=$(free_port); TLS[unstick]=$(free_port); H2[unstick]=${H1[unstick]}
    local common="UNSTICK_BACKENDS=127.0.0.1:$BACKEND_PORT UNSTICK_LIMITS_MAX_CONNECTIONS=$LIMIT"
    common+=" UNSTICK_TIMEOUTS_CLIENT_IDLE=300s UNSTICK_TIMEOUTS_CLIENT_HEADER=300s"
    env $common "$BIN" serve --listen "127.0.0.1:${H1[unstick]}" --admin off --access-log off \
        >"$WORK/unstick.out" 2>&1 &
    ROOT[unstick]=$!
    env $common UNSTICK_TLS_CERT="$WORK/cert.pem" UNSTICK_TLS_KEY="$WORK/key.pem" \
        "$BIN" serve --listen "127.0.0.1:${TLS[unstick]}" --admin off --access-log off \
        >"$WORK/unstick-tls.out" 2>&1 &
    ROOT[unstick-tls]=$!
}
start_nginx() {
    H1[nginx]=$(free_port); H2[nginx]=$(free_port); TLS[nginx]=$(free_port)
    fill "$PEER/proxy-nginx.conf.tmpl" "$WORK/nginx.conf" WORK="$WORK" NAME=nginx PORT="${H1[nginx]}" \
        WORKERS=2 UPSTREAM_SERVERS="        server 127.0.0.1:$BACKEND_PORT;"
    # The same location behind an h2c and a TLS listener; limits raised.
    perl -0pi -e "s/worker_rlimit_nofile \d+/worker_rlimit_nofile $FD_LIMIT/; s/worker_connections \d+/worker_connections $LIMIT/;
        s|(listen 127.0.0.1:\d+ backlog=4096 reuseport;)|\$1\n        listen 127.0.0.1:${H2[nginx]} http2 backlog=4096 reuseport;\n        listen 127.0.0.1:${TLS[nginx]} ssl backlog=4096 reuseport;\n        ssl_certificate $WORK/cert.pem;\n        ssl_certificate_key $WORK/key.pem;|" \
        "$WORK/nginx.conf"
    nginx -p "$WORK" -e "$WORK/nginx.error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 &
    ROOT[nginx]=$!
}
start_haproxy() {
    H1[haproxy]=$(free_port); H2[haproxy]=$(free_port); TLS[haproxy]=$(free_port)
    fill "$PEER/proxy-haproxy.cfg.tmpl" "$WORK/haproxy.cfg" PORT="${H1[haproxy]}" NBTHREAD=2 \
        SERVERS="    server b1 127.0.0.1:$BACKEND_PORT"
    # `no strict-limits`: HAProxy reserves two descriptors per connection
    # (client and server side) and would refuse a maxconn above half the limit.
    perl -0pi -e "s/maxconn \d+/maxconn $LIMIT\n    no strict-limits/;
        s|(bind 127.0.0.1:\d+)|\$1\n    bind 127.0.0.1:${H2[haproxy]} proto h2\n    bind 127.0.0.1:${TLS[haproxy]} ssl crt $WORK/haproxy.pem alpn http/1.1|" \
        "$WORK/haproxy.cfg"
    haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
    ROOT[haproxy]=$!
}
# Each measurement runs on a freshly started proxy: memory freed when
# connections close is not all given back to the system, so a proxy that
# held connections before would hide part of the next figure.
start() {  # target
    "start_$1"
    wait_ready "${H1[$1]}"
    wait_ready "${TLS[$1]}"
}
stop() {  # target
    local p
    for p in "${ROOT[$1]}" ${ROOT[$1-tls]:-}; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    ROOT[$1]=; ROOT[$1-tls]=
}

# The process whose RSS a protocol's connections grow.
root_of() {  # target proto
    if [ "$1" = unstick ] && [ "$2" = tls ]; then echo "${ROOT[unstick-tls]}"; else echo "${ROOT[$1]}"; fi
}
port_of() {  # target proto
    case $2 in h1) echo "${H1[$1]}" ;; h2) echo "${H2[$1]}" ;; tls) echo "${TLS[$1]}" ;; esac
}

# Opens `count` idle connections (the client runs as a coprocess); sets
# OPENED to its report. Not to be called in a subshell.
CLIENT_PID=
OPENED=
open_idle() {  # target proto count
    local port; port=$(port_of "$1" "$2")
    coproc IDLE { exec python3 "$CLIENT" --port "$port" --count "$3" --proto "$2" 2>>"$WORK/client.err"; }
    CLIENT_PID=$IDLE_PID
    read -r OPENED <&"${IDLE[0]}"
}
PROBED=
probe_idle() { echo probe >&"${IDLE[1]}"; read -r PROBED <&"${IDLE[0]}"; }
close_idle() { echo close >&"${IDLE[1]}"; wait "$CLIENT_PID" 2>/dev/null || true; }
json_field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }

# Warm a proxy for a protocol: a few hundred connections opened and closed,
# so its backend connections and allocator arenas exist before the baseline.
warm() {  # target proto
    open_idle "$1" "$2" 300
    close_idle
    sleep 1
}

RESULTS=$WORK/results.csv
: > "$RESULTS"
measure() {  # target proto count
    local t=$1 proto=$2 n=$3 root
    start "$t"
    root=$(root_of "$t" "$proto")
    warm "$t" "$proto"
    local before; before=$(rss_kb "$root")
    open_idle "$t" "$proto" "$n"
    sleep 2
    local after; after=$(rss_kb "$root")
    probe_idle
    close_idle
    local held served
    held=$(json_field "$OPENED" held); served=$(json_field "$PROBED" served)
    echo "$t,$proto,$n,$held,$served,$before,$after" >> "$RESULTS"
    printf '%-8s %-4s %6d held %6d, served again %6d: RSS %7d -> %7d KiB, %.2f KiB per connection\n' \
        "$t" "$proto" "$n" "$held" "$served" "$before" "$after" \
        "$(awk -v a="$after" -v b="$before" -v n="$held" 'BEGIN{print (n > 0 ? (a - b) / n : 0)}')" >&2
    stop "$t"
}

wrk_run() {  # target -> "req/s p99_ms"
    local out; out=$(wrk -t1 -c64 -d"${DURATION}s" --latency --timeout 5s "http://127.0.0.1:${H1[$1]}/")
    local rps p99
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) sub(/ms/, "", v); else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}')
    echo "$rps $p99"
}
BESIDE_CSV=$WORK/beside.csv
: > "$BESIDE_CSV"
beside() {  # target
    local t=$1
    start "$t"
    wrk -t1 -c64 -d1s "http://127.0.0.1:${H1[$t]}/" >/dev/null
    local alone; alone=$(wrk_run "$t")
    open_idle "$t" h1 "$BESIDE"
    local with; with=$(wrk_run "$t")
    close_idle
    echo "$t,$(json_field "$OPENED" held),$alone,$with" | tr ' ' , >> "$BESIDE_CSV"
    echo "$t beside $(json_field "$OPENED" held) idle: alone $alone, with $with (req/s p99 ms)" >&2
    stop "$t"
}

echo "fd limit (ulimit -n): $FD_LIMIT; unstick max_connections, nginx worker_connections, HAProxy maxconn: $LIMIT" >&2
for t in $TARGETS; do
    for n in $COUNTS; do measure "$t" h1 "$n"; done
    [ "$H2_COUNT" -gt 0 ] && measure "$t" h2 "$H2_COUNT"
    [ "$TLS_COUNT" -gt 0 ] && measure "$t" tls "$TLS_COUNT"
    [ "$BESIDE" -gt 0 ] && beside "$t"
done

# --- report -------------------------------------------------------------------
echo
echo "## Run $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "fd limit $FD_LIMIT; $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), $(nproc) CPUs"
echo
echo "| protocol | idle connections | target | held | served again | RSS before | RSS with them | per connection | vs nginx |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
awk -F, '
    { k = $2 SUBSEP $3; per[k, $1] = ($4 > 0) ? ($7 - $6) / $4 : 0; row[NR] = $0 }
    END {
        for (i = 1; i <= NR; i++) {
            split(row[i], f, ","); k = f[2] SUBSEP f[3]
            vs = ((k, "nginx") in per && per[k, "nginx"] > 0) ? sprintf("%.2fx", per[k, f[1]] / per[k, "nginx"]) : "-"
            printf "| %s | %d | %s | %d | %d | %.1f MiB | %.1f MiB | %.2f KiB | %s |\n",
                f[2], f[3], f[1], f[4], f[5], f[6] / 1024, f[7] / 1024, per[k, f[1]], vs
        }
    }' "$RESULTS" | sort -t'|' -k2,2 -k3,3n -s
echo
if [ -s "$BESIDE_CSV" ]; then
    echo "wrk -t1 -c64 -d${DURATION}s beside idle keep-alive connections:"
    echo
    echo "| target | idle held | req/s alone | req/s beside | ratio | p99 alone | p99 beside | ratio |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, '{ printf "| %s | %d | %.0f | %.0f | %.2fx | %.2f ms | %.2f ms | %.2fx |\n", $1, $2, $3, $5, $5 / $3, $4, $6, $6 / $4 }' "$BESIDE_CSV"
fi
