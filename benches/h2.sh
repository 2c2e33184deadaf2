#!/usr/bin/env bash
# HTTP/2 bench: unstick next to HAProxy and nginx, in one run, with h2load
# over h2c (prior knowledge) and TLS 1.3 + ALPN h2, then medians and ratios
# against HAProxy.
#
# Usage:  benches/h2.sh [--reps N] [--duration S] [--cases "16x32 64x8 256x1 big:8x4"]
#                       [--protos "h2c tls"] [--targets "haproxy nginx unstick"]
#                       [--log off|json|common] [--keep] [--report RAW_CSV]
#         UNSTICK_BASE_BIN=PATH benches/h2.sh --targets "haproxy unstick unstick-base"
# Needs:  apt-get install -y nginx haproxy nghttp2-client curl openssl
#
# Three nginx backends (1 worker each, HTTP/1.1 keep-alive) answer `/` with
# 100 bytes and `/big` with 1 MiB. A case CxM is h2load with C connections
# of M concurrent streams each on `/`; big:CxM the same on `/big`. Each
# proxy listens twice (h2c and TLS) and forwards over HTTP/1.1: HAProxy 2.6
# with 2 threads, nginx with 2 workers, unstick with its defaults (2
# workers, retries and passive health on, admin off, access log as --log
# says). Runs are interleaved (round, case, protocol, proxy); CPU per
# request is the proxy's CPU time over the middle of each run divided by
# its requests; p99 comes from h2load's per-request log. NO_BUILD=1 skips
# the release build (UNSTICK_BIN=PATH benches another binary; the target
# unstick-base runs UNSTICK_BASE_BIN, to compare two builds in one run).
# --report prints the tables again from a run's raw.csv (with the same
# --cases, --protos and --targets). Run nothing else on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3
DURATION=3
CASES="16x32 64x8 256x1 big:8x4"
PROTOS="h2c tls"
TARGETS="haproxy nginx unstick"
LOG=off
KEEP=
REPORT=
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --protos) PROTOS=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --log) LOG=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --report) REPORT=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$DURATION" -ge 2 ] 2>/dev/null || { echo "--duration must be an integer >= 2" >&2; exit 2; }
for tool in nginx haproxy h2load curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx haproxy nghttp2-client curl openssl" >&2; exit 2; }
done

# --- report: medians and ratios from a raw.csv --------------------------------------
report() {  # RAW
    local RAW=$1 u
    echo
    echo "## h2 run $(date -u +%Y-%m-%dT%H:%MZ): h2load -t1, ${DURATION}s after a 1 s warm-up, $REPS rounds, unstick access log $LOG"
    echo
    echo "$(uname -srm); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc);" \
         "HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), nginx $(nginx -v 2>&1 | sed 's/.*\///'), h2load $(h2load --version | awk '{print $2}')"
    echo
    echo "Medians of the rounds (CPU: proxy CPU time per request):"
    echo
    echo "| case | proto | proxy | req/s | MB/s | p50 ms | p99 ms | CPU us/req | CPU % | failed |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, -v cases="$CASES" -v protos="$PROTOS" -v targets="$TARGETS" '
        function med(s,   n, a, i, j, x) {
            n = split(s, a, " ")
            for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        NR > 1 { k = $2 SUBSEP $3 SUBSEP $4; for (i = 5; i <= 11; i++) col[k, i] = col[k, i] " " $i; has[k] = 1; fail[k] += $9 }
        END {
            nk = split(cases, K, " "); np = split(protos, P, " "); nt = split(targets, T, " ")
            for (a = 1; a <= nk; a++) for (b = 1; b <= np; b++) for (c = 1; c <= nt; c++) {
                k = K[a] SUBSEP P[b] SUBSEP T[c]; if (!(k in has)) continue
                printf "| %s | %s | %s | %.0f | %.1f | %.2f | %.2f | %.2f | %.0f | %d |\n", K[a], P[b], T[c],
                    med(col[k, 5]), med(col[k, 6]), med(col[k, 7]), med(col[k, 8]), med(col[k, 10]), med(col[k, 11]), fail[k]
            }
        }' "$RAW"
    for u in $TARGETS; do
        [[ $u == unstick* && " $TARGETS " == *" haproxy "* ]] || continue
        echo
        echo "$u / HAProxy, paired by round, median [min - max] (CPU and p99: lower is better):"
        echo
        echo "| case | proto | req/s | CPU us/req | p99 |"
        echo "|---|---|---|---|---|"
        awk -F, -v cases="$CASES" -v protos="$PROTOS" -v u="$u" '
            function med(s,   n, a, i, j, x) {
                n = split(s, a, " ")
                for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                lo = a[1]; hi = a[n]
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            function cell(s,   m) { m = med(s); return sprintf("%.2fx [%.2f - %.2f]", m, lo, hi) }
            NR > 1 { v[$1, $2, $3, $4] = $5 " " $8 " " $10; keys[$1, $2, $3] = 1 }
            END {
                for (x in keys) {
                    split(x, q, SUBSEP)
                    if (!((x SUBSEP u) in v) || !((x SUBSEP "haproxy") in v)) continue
                    split(v[x, u], w, " "); split(v[x, "haproxy"], h, " ")
                    id = q[2] SUBSEP q[3]
                    R[id] = R[id] " " w[1] / h[1]; L[id] = L[id] " " w[2] / h[2]; C[id] = C[id] " " w[3] / h[3]
                }
                nk = split(cases, K, " "); np = split(protos, P, " ")
                for (i = 1; i <= nk; i++) for (j = 1; j <= np; j++) {
                    id = K[i] SUBSEP P[j]; if (!(id in R)) continue
                    printf "| %s | %s | %s | %s | %s |\n", K[i], P[j], cell(R[id]), cell(C[id]), cell(L[id])
                }
            }' "$RAW"
    done
}

if [ -n "$REPORT" ]; then report "$REPORT"; exit 0; fi
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=${UNSTICK_BIN:-$(pwd)/target/release/unstick}
WORK=$(mktemp -d /tmp/unstick-h2.XXXXXX)
chmod 755 "$WORK"                         # nginx workers (nobody) read /big from here
LOGS=$(mktemp -d /dev/shm/unstick-h2.XXXXXX 2>/dev/null || mktemp -d /tmp/unstick-h2-logs.XXXXXX)
mkdir -p "$WORK/tmp" "$WORK/runs"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$LOGS"
    [ -n "$KEEP" ] || rm -rf "$WORK/runs" "$WORK/tmp"
}
trap cleanup EXIT
CLK_TCK=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # URL, curl options...
    local url=$1; shift
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$@" "$url")" = 200 ] && return 0
        sleep 0.2
    done
    echo "nothing answers at $url (see $WORK)" >&2; exit 1
}
pids_of() {  # a root pid and its descendants
    local all=() frontier=("$1") next p c
    while [ ${#frontier[@]} -gt 0 ]; do
        all+=("${frontier[@]}"); next=()
        for p in "${frontier[@]}"; do
            for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do next+=("$c"); done
        done
        frontier=("${next[@]}")
    done
    echo "${all[@]}"
}
cpu_ticks() {  # utime + stime of the given pids
    local t=0 p f
    for p in "$@"; do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }
        set -- $f
        t=$((t + ${12} + ${13}))
    done
    echo $t
}

# --- certificate, backends ----------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/both.pem"
head -c $((1024 * 1024)) /dev/zero | tr '\0' x >"$WORK/big"
chmod 644 "$WORK/big"

BACKENDS=(); NGINX_UP=""; HAPROXY_UP=""; UNSTICK_UP=()
for i in 1 2 3; do
    port=$(free_port)
    body=$(printf 'h2 bench backend %d ' "$i"); while [ ${#body} -lt 99 ]; do body="${body}x"; done
    cat >"$WORK/backend-$i.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend-$i.pid;
error_log $WORK/backend-$i.error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off; server_tokens off; default_type text/plain;
    keepalive_requests 100000000; keepalive_timeout 300s;
    client_body_temp_path $WORK/tmp/b$i-body; proxy_temp_path $WORK/tmp/b$i-proxy;
    fastcgi_temp_path $WORK/tmp/b$i-fcgi; uwsgi_temp_path $WORK/tmp/b$i-uwsgi; scgi_temp_path $WORK/tmp/b$i-scgi;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /big { alias $WORK/big; }
        location / { return 200 "$body\n"; }
    }
}
EOF
    nginx -p "$WORK" -c "$WORK/backend-$i.conf" >>"$WORK/backend-$i.out" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$port/"
    [ "$(curl -s "http://127.0.0.1:$port/big" | wc -c)" = $((1024 * 1024)) ] || { echo "backend $i does not serve /big" >&2; exit 1; }
    BACKENDS+=("127.0.0.1:$port")
    NGINX_UP+="        server 127.0.0.1:$port;"$'\n'
    HAPROXY_UP+="    server b$i 127.0.0.1:$port"$'\n'
    UNSTICK_UP+=(--backend "127.0.0.1:$port")
done

# --- proxies: two listeners each (h2c, TLS) --------------------------------------
declare -A PORT ROOT
for t in $TARGETS; do PORT[$t,h2c]=$(free_port); PORT[$t,tls]=$(free_port); done
start_haproxy() {
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend fe_h2c
    bind 127.0.0.1:${PORT[haproxy,h2c]} proto h2
    default_backend be
frontend fe_tls
    bind 127.0.0.1:${PORT[haproxy,tls]} ssl crt $WORK/both.pem alpn h2,http/1.1
    default_backend be
backend be
    balance roundrobin
$HAPROXY_UP
EOF
    haproxy -db -f "$WORK/haproxy.cfg" >>"$WORK/haproxy.out" 2>&1 &
    PIDS+=($!); ROOT[haproxy]=$!
}
start_nginx() {
    cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off; server_tokens off;
    keepalive_requests 100000000; keepalive_timeout 300s; http2_max_requests 100000000;
    client_body_temp_path $WORK/tmp/n-body; proxy_temp_path $WORK/tmp/n-proxy;
    fastcgi_temp_path $WORK/tmp/n-fcgi; uwsgi_temp_path $WORK/tmp/n-uwsgi; scgi_temp_path $WORK/tmp/n-scgi;
    upstream be {
$NGINX_UP
        keepalive 512; keepalive_requests 100000000; keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx,h2c]} http2 backlog=4096;
        listen 127.0.0.1:${PORT[nginx,tls]} ssl http2 backlog=4096;
        ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
        location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
    nginx -p "$WORK" -c "$WORK/nginx.conf" >>"$WORK/nginx.out" 2>&1 &
    PIDS+=($!); ROOT[nginx]=$!
}
start_unstick() {  # NAME BINARY: one process per listener; each is measured alone
    local t=$1 bin=$2
    [ -x "$bin" ] || { echo "$t: no binary at '$bin'" >&2; exit 2; }
    "$bin" serve --listen "127.0.0.1:${PORT[$t,h2c]}" --admin off --access-log "$LOG" \
        "${UNSTICK_UP[@]}" >/dev/null 2>>"$WORK/$t-h2c.err" &
    PIDS+=($!); ROOT[$t,h2c]=$!
    "$bin" serve --listen "127.0.0.1:${PORT[$t,tls]}" --admin off --access-log "$LOG" \
        --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
        "${UNSTICK_UP[@]}" >/dev/null 2>>"$WORK/$t-tls.err" &
    PIDS+=($!); ROOT[$t,tls]=$!
}
for t in $TARGETS; do
    case $t in
        haproxy) start_haproxy ;;
        nginx) start_nginx ;;
        unstick) start_unstick unstick "$BIN" ;;
        unstick-base) start_unstick unstick-base "${UNSTICK_BASE_BIN:-}" ;;
        *) echo "unknown target $t" >&2; exit 2 ;;
    esac
done
for t in $TARGETS; do
    wait_ready "http://127.0.0.1:${PORT[$t,h2c]}/" --http2-prior-knowledge
    wait_ready "https://127.0.0.1:${PORT[$t,tls]}/" --http2 -k
done
root_of() { echo "${ROOT[$1,$2]:-${ROOT[$1]}}"; }  # target proto

url_of() {  # target proto case
    local scheme=http path=/
    [ "$2" = tls ] && scheme=https
    case $3 in big:*) path=/big ;; esac
    echo "$scheme://127.0.0.1:${PORT[$1,$2]}$path"
}
shape_of() { local s=${1#big:}; echo "-c ${s%x*} -m ${s#*x}"; }  # case -> h2load flags

# --- one h2load run: appends a CSV line ------------------------------------------
RAW="$WORK/raw.csv"
echo "round,case,proto,target,rps,mbps,p50_ms,p99_ms,failed,cpu_us_per_req,cpu_pct" >"$RAW"
run_one() {  # round case proto target
    local r=$1 k=$2 p=$3 t=$4
    local f="$WORK/runs/r$r-$k-$p-$t" pids
    pids=($(pids_of "$(root_of "$t" "$p")"))
    # shellcheck disable=SC2046
    h2load $(shape_of "$k") -t 1 --warm-up-time=1 -D "$DURATION" --log-file="$LOGS/run.log" \
        "$(url_of "$t" "$p" "$k")" >"$f.out" 2>&1 &
    local h=$! c0 c1 t0 t1
    sleep 1.3
    c0=$(cpu_ticks "${pids[@]}"); t0=$(date +%s%N)
    sleep "$(awk -v d="$DURATION" 'BEGIN {print d - 0.6}')"   # inside the main phase
    c1=$(cpu_ticks "${pids[@]}"); t1=$(date +%s%N)
    wait "$h" || true
    local rps mbps failed
    # "finished in 3.00s, 75800.25 req/s, 10.34MB/s" (or KB/s, GB/s)
    read -r rps mbps < <(awk '/^finished in/ {
        split($0, f, ", "); rps = f[2] + 0; t = f[3]; v = t + 0
        m = t ~ /GB/ ? 1024 : t ~ /KB/ ? 1 / 1024 : t ~ /MB/ ? 1 : 1 / 1048576
        print rps, v * m }' "$f.out")
    failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$f.out")
    [ -n "$rps" ] || { echo "no result for $t $p $k round $r (see $f.out)" >&2; return; }
    awk -F'\t' '$2 >= 200 && $2 < 300 {print $3}' "$LOGS/run.log" | sort -n | awk -v OFS=, \
        -v r="$r" -v k="$k" -v p="$p" -v t="$t" -v rps="$rps" -v mbps="$mbps" -v failed="${failed:-0}" \
        -v dc=$((c1 - c0)) -v hz="$CLK_TCK" -v win=$(( (t1 - t0) / 1000000 )) '
        { v[NR] = $1 }
        END {
            n = NR; if (n == 0) n = 1
            cpu_s = dc / hz; secs = win / 1000
            print r, k, p, t, rps, mbps, v[int(n * 0.50) + 1] / 1000, v[int(n * 0.99) + 1] / 1000, failed,
                sprintf("%.2f", 1e6 * cpu_s / secs / rps), sprintf("%.0f", 100 * cpu_s / secs)
        }' >>"$RAW"
    rm -f "$LOGS/run.log"
    echo "$(tail -1 "$RAW")" >&2
}

echo "warm-up" >&2
for t in $TARGETS; do for p in $PROTOS; do
    h2load -c 16 -m 8 -t 1 -D 1 "$(url_of "$t" "$p" x)" >/dev/null 2>&1 || true
done; done
for r in $(seq "$REPS"); do for k in $CASES; do for p in $PROTOS; do for t in $TARGETS; do
    run_one "$r" "$k" "$p" "$t"
done; done; done; done
report "$RAW"
echo
echo "raw results: $RAW"
