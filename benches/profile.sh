#!/usr/bin/env bash
# Instruction counts per proxied request (valgrind callgrind): unstick with one
# worker, and HAProxy with one thread as the peer, each behind the same 3 nginx
# backends as the peer bench, under the same wrk load. Counts do not drift with
# the machine's load the way times do, so this is the profile to compare
# commits with.
#
# Usage:  benches/profile.sh [--log off|json|common] [--conns N] [--duration S]
#                            [--top N] [--no-peer] [--keep] [--h2 STREAMS]
# Needs:  apt-get install -y valgrind nginx haproxy wrk curl  (and ../shared/peer-bench)
#         (--h2: nghttp2-client too)
#
# --h2 STREAMS drives the proxies over h2c (prior knowledge) with h2load,
# --conns connections of STREAMS concurrent streams each, instead of wrk
# over HTTP/1.1; the backends still speak HTTP/1.1.
#
# Only the load run is counted (callgrind's collection is switched on after a
# warm-up and off before the proxy stops). It prints instructions per request
# and the functions that cost the most per request (exclusive counts).
# --keep leaves the callgrind files in the printed directory for
# callgrind_annotate. NO_BUILD=1 skips the release build; UNSTICK_BIN=PATH
# profiles another binary.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG=off
CONNS=16
DURATION=5
TOP=15
PEER_TOO=1
KEEP=
H2=
while [ $# -gt 0 ]; do
    case "$1" in
        --log) LOG=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --top) TOP=$2; shift 2 ;;
        --no-peer) PEER_TOO=; shift ;;
        --keep) KEEP=1; shift ;;
        --h2) H2=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PEER=${PEER_BENCH:-../shared/peer-bench}
[ -f "$PEER/backend-nginx.conf.tmpl" ] || { echo "peer bench not found at $PEER (set PEER_BENCH)" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind nginx haproxy wrk curl" >&2; exit 2; }
done
[ -z "$H2" ] || command -v h2load >/dev/null || { echo "missing h2load: apt-get install -y nghttp2-client" >&2; exit 2; }
[ -z "$PEER_TOO" ] || command -v haproxy >/dev/null || { echo "missing haproxy (or pass --no-peer)" >&2; exit 2; }

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=${UNSTICK_BIN:-$(pwd)/target/release/unstick}
WORK=$(mktemp -d /tmp/unstick-profile.XXXXXX)
mkdir -p "$WORK/tmp"                      # nginx's temp paths in the template
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$KEEP" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # port, seconds[, curl option]
    for _ in $(seq $(( $2 * 10 ))); do
        curl -s -o /dev/null ${3:-} "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$1 (see $WORK)" >&2; exit 1
}
fill() {  # template, output, KEY=VALUE... (replaces @KEY@)
    local tmpl=$1 out=$2 kv; shift 2
    cp "$tmpl" "$out"
    for kv in "$@"; do
        K="@${kv%%=*}@" V="${kv#*=}" perl -0pi -e 's/\Q$ENV{K}\E/$ENV{V}/g' "$out"
    done
}

# --- 3 nginx backends returning a 100-byte 200, as in the peer bench ----------
BACKENDS=(); SERVERS=""
for i in 1 2 3; do
    port=$(free_port)
    body=$(printf 'peer-bench backend %d ' "$i"); while [ ${#body} -lt 99 ]; do body="${body}x"; done
    fill "$PEER/backend-nginx.conf.tmpl" "$WORK/backend-$i.conf" WORK="$WORK" ID="$i" PORT="$port" BODY="${body}\\n"
    nginx -p "$WORK" -e "$WORK/backend-$i.error.log" -c "$WORK/backend-$i.conf" >>"$WORK/backend-$i.out" 2>&1 &
    PIDS+=($!)
    wait_ready "$port" 10
    BACKENDS+=("127.0.0.1:$port")
    SERVERS+="    server b$i 127.0.0.1:$port"$'\n'
done

# --- one proxy under callgrind: prints "requests instructions" ----------------
# profile NAME PORT COMMAND...
profile() {
    local name=$1 port=$2; shift 2
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.cg" \
        "$@" >/dev/null 2>"$WORK/$name.valgrind" &
    local pid=$!
    PIDS+=($pid)
    local requests non2xx
    if [ -n "$H2" ]; then
        wait_ready "$port" 60 --http2-prior-knowledge
        h2load -t1 -c"$CONNS" -m"$H2" -D 1 "http://127.0.0.1:$port/" >/dev/null   # warm-up, not counted
        callgrind_control -i on "$pid" >/dev/null 2>&1
        h2load -t1 -c"$CONNS" -m"$H2" -D "$DURATION" "http://127.0.0.1:$port/" >"$WORK/$name.load"
        callgrind_control -i off "$pid" >/dev/null 2>&1
        # "requests: N total, N started, N done, N succeeded, N failed, ..."
        requests=$(awk '/^requests:/ {print $8}' "$WORK/$name.load")
        non2xx=$(awk '/^status codes:/ {n = $5 + $7 + $9; if (n) print n}' "$WORK/$name.load")
    else
        wait_ready "$port" 60
        wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/" >/dev/null            # warm-up, not counted
        callgrind_control -i on "$pid" >/dev/null 2>&1
        wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" >"$WORK/$name.load"
        callgrind_control -i off "$pid" >/dev/null 2>&1
        requests=$(awk '/requests in/ {print $1}' "$WORK/$name.load")
        non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/$name.load")
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    [ -z "$non2xx" ] || { echo "$name answered $non2xx non-2xx responses (see $WORK)" >&2; exit 1; }
    # Every output file of the process (callgrind writes one per thread
    # with --separate-threads, one in all otherwise).
    callgrind_annotate --inclusive=no --threshold=100 "$WORK/$name.cg"* >"$WORK/$name.annotate" 2>/dev/null
    local total
    total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/$name.annotate")
    echo "$requests $total"
}

report() {  # NAME LABEL REQUESTS TOTAL
    local name=$1 label=$2 requests=$3 total=$4
    echo "### $label: $(( total / requests )) instructions per request ($requests requests, $total instructions)"
    echo
    echo "| instructions per request | share | function |"
    echo "|---:|---:|---|"
    # (The top rows are cut with awk, which reads all its input: `head`
    # would leave `sort` writing to a closed pipe, and pipefail would stop
    # the script there.)
    # The table under "file:function" (up to a blank line) has lines like
    # "1,234,567 ( 1.23%)  file:function [object]"; a function inlined from
    # several files is added up under its name.
    awk -v n="$requests" -v total="$total" '
        /file:function/ { started = 1; next }
        started && /^$/ { exit }
        started && match($0, /^ *[0-9,]+ \( *[0-9.]+%\)  /) {
            count = substr($0, 1, RLENGTH); sub(/ *\(.*/, "", count); gsub(/[ ,]/, "", count)
            fn = substr($0, RLENGTH + 1)
            sub(/ \[[^]]*\]$/, "", fn)
            sub(/^[^:]*:/, "", fn)
            sum[fn] += count
        }
        END {
            for (fn in sum) printf "%d\t%.1f%%\t%s\n", sum[fn] / n, 100 * sum[fn] / total, substr(fn, 1, 110)
        }' "$WORK/$name.annotate" | sort -t$'\t' -k1,1nr | awk -v n="$TOP" 'NR <= n' | awk -F'\t' '{printf "| %s | %s | `%s` |\n", $1, $2, $3}'
    echo
}

LOAD="wrk -t1 -c$CONNS -d${DURATION}s"
[ -z "$H2" ] || LOAD="h2load (h2c) -t1 -c$CONNS -m$H2 -D $DURATION"
echo "## callgrind, $(date -u +%Y-%m-%dT%H:%MZ): $LOAD, 3 nginx backends, unstick access log $LOG"
echo
port=$(free_port)
# (UNSTICK_WORKERS set for the function, not through `env`: valgrind does
# not follow an exec.)
read -r req total < <(UNSTICK_WORKERS=1 profile unstick "$port" "$BIN" serve \
    --listen "127.0.0.1:$port" --admin off --access-log "$LOG" \
    --backend "${BACKENDS[0]}" --backend "${BACKENDS[1]}" --backend "${BACKENDS[2]}")
report unstick "unstick, 1 worker, log $LOG" "$req" "$total"
if [ -n "$PEER_TOO" ]; then
    port=$(free_port)
    fill "$PEER/proxy-haproxy.cfg.tmpl" "$WORK/haproxy.cfg" PORT="$port" NBTHREAD=1 SERVERS="$SERVERS"
    [ -z "$H2" ] || sed -i "s/^\( *bind .*\)$/\1 proto h2/" "$WORK/haproxy.cfg"
    read -r req total < <(profile haproxy "$port" haproxy -db -f "$WORK/haproxy.cfg")
    report haproxy "HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), 1 thread, no log" "$req" "$total"
fi
[ -z "$KEEP" ] || echo "callgrind files: $WORK"
