#!/usr/bin/env bash
# The session watch's cost per request (src/hops.rs), beside HAProxy in the
# same runs: unstick with the watch off and on, requests without a Cookie
# header, with an app's cookies but no session, and with a known session.
#
# Usage:  benches/session_watch.sh [--callgrind-only] [--peer-only]
#                                  [--reps N] [--duration S] [--conns N]
# Needs:  apt-get install -y valgrind nginx haproxy wrk curl  (and ../shared/peer-bench)
#
# The backends are the peer bench's 3 nginx, plus `GET /login`, which sets
# `sid` (a 32-hex-digit value, so the watch learns the name). Before the
# load, one `GET /login` goes through unstick: the backend that answers it
# is the value's issuer, and every later request carrying it is a hop (2 of
# 3 under round robin, kept: a 200 without Set-Cookie) or same-instance.
#
# 1. callgrind: instructions per request, unstick with one worker, wrk -t1
#    -c16 (as benches/profile.sh), for each case; HAProxy with one thread
#    without cookies and with the session cookie. The watch's report
#    (/api/statelessness) is checked after each run with the watch on.
# 2. the peer bench (../shared/peer-bench/run.sh, copied; its wrk script
#    sends the case's Cookie header): one run per case, HAProxy with 2
#    threads beside unstick (2 workers) in each, and CPU us per request as
#    unstick / HAProxy paired by round, so the runs compare though the
#    machine's load drifts between them.
# NO_BUILD=1 skips the release build; UNSTICK_BIN=PATH measures another
# binary; KEEP=1 leaves the callgrind files (callgrind_annotate) in /tmp;
# CASES_ONLY=REGEX keeps the cases whose names match (off-none, on-app...).
set -euo pipefail
cd "$(dirname "$0")/.."

DO_CG=1
DO_PEER=1
REPS=5
DURATION=4
CONNS=64
while [ $# -gt 0 ]; do
    case "$1" in
        --callgrind-only) DO_PEER=; shift ;;
        --peer-only) DO_CG=; shift ;;
        --reps) REPS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PEER=${PEER_BENCH:-../shared/peer-bench}
[ -x "$PEER/run.sh" ] || { echo "peer bench not found at $PEER (set PEER_BENCH)" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate nginx haproxy wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind nginx haproxy wrk curl" >&2; exit 2; }
done

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=${UNSTICK_BIN:-$(pwd)/target/release/unstick}
WORK=$(mktemp -d /tmp/unstick-session-watch.XXXXXX)
mkdir -p "$WORK/tmp"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

SID=8f14e45fceea167a5a36dedd4bea2543
APP="_ga=GA1.2.1234567890.1700000000; csrftoken=Xy9kLm2Nq; theme=dark; lang=en-GB"
# case name, watch on or off, Cookie header
# (each "on" case is compared with the "off" case before it)
CASES=(
    "off-none|false|"
    "on-none|true|"
    "off-app|false|$APP"
    "on-app|true|$APP"
    "off-session|false|$APP; sid=$SID"
    "on-session|true|$APP; sid=$SID"
)

if [ -n "${CASES_ONLY:-}" ]; then
    only=(); for c in "${CASES[@]}"; do [[ "${c%%|*}" =~ $CASES_ONLY ]] && only+=("$c"); done
    CASES=("${only[@]}")
fi

# The peer bench, copied: its backends also answer /login with the session
# cookie, and its wrk script sends $PEERBENCH_COOKIE (set once, at start-up).
cp -r "$PEER" "$WORK/peer"
perl -0pi -e 's|(\s*)location / \{|$1location = /login {$1    add_header Set-Cookie "sid='"$SID"'; Path=/; HttpOnly";$1    return 200 "logged in\\n";$1}$1location / {|' \
    "$WORK/peer/backend-nginx.conf.tmpl"
grep -q 'location = /login' "$WORK/peer/backend-nginx.conf.tmpl" || { echo "cannot add /login to the backends" >&2; exit 1; }
{
    echo 'local cookie = os.getenv("PEERBENCH_COOKIE")'
    echo 'if cookie and cookie ~= "" then wrk.headers["Cookie"] = cookie end'
    cat "$PEER/wrk-report.lua"
} >"$WORK/peer/wrk-report.lua"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # port seconds
    for _ in $(seq $(( $2 * 10 ))); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
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

# --- 1. callgrind ---------------------------------------------------------------
callgrind_backends() {
    BACKENDS=(); SERVERS=""
    local i port body
    for i in 1 2 3; do
        port=$(free_port)
        body=$(printf 'peer-bench backend %d ' "$i"); while [ ${#body} -lt 99 ]; do body="${body}x"; done
        fill "$WORK/peer/backend-nginx.conf.tmpl" "$WORK/backend-$i.conf" WORK="$WORK" ID="$i" PORT="$port" BODY="${body}\\n"
        nginx -p "$WORK" -e "$WORK/backend-$i.error.log" -c "$WORK/backend-$i.conf" >>"$WORK/backend-$i.out" 2>&1 &
        PIDS+=($!)
        wait_ready "$port" 10
        BACKENDS+=("127.0.0.1:$port")
        SERVERS+="    server b$i 127.0.0.1:$port"$'\n'
    done
}

# instructions NAME PORT COOKIE ADMIN COMMAND...: "requests instructions hops"
# (hops: the watch's count of sid hops, from ADMIN; "-" without one)
instructions() {
    local name=$1 port=$2 cookie=$3 admin=$4; shift 4
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.cg" \
        "$@" >/dev/null 2>"$WORK/$name.valgrind" &
    local pid=$! header=()
    PIDS+=($pid)
    wait_ready "$port" 60
    curl -s -o /dev/null "http://127.0.0.1:$port/login"          # issues the session value
    [ -z "$cookie" ] || header=(-H "Cookie: $cookie")
    wrk -t1 -c16 -d1s "${header[@]}" "http://127.0.0.1:$port/" >/dev/null   # warm-up, not counted
    callgrind_control -i on "$pid" >/dev/null 2>&1
    wrk -t1 -c16 -d"${DURATION}s" "${header[@]}" "http://127.0.0.1:$port/" >"$WORK/$name.load"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    local hops=-
    [ "$admin" = - ] || hops=$(curl -s "http://127.0.0.1:$admin/api/statelessness" |
        python3 -c 'import json,sys; c=[c for c in json.load(sys.stdin)["cookies"] if c["name"]=="sid"]; print(c[0]["hops"] if c else 0)')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    ! grep -q Non-2xx "$WORK/$name.load" || { echo "$name: non-2xx answers (see $WORK)" >&2; exit 1; }
    callgrind_annotate --inclusive=no --threshold=100 "$WORK/$name.cg"* >"$WORK/$name.annotate" 2>/dev/null
    local requests total
    requests=$(awk '/requests in/ {print $1}' "$WORK/$name.load")
    total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/$name.annotate")
    echo "$requests $total $hops"
}

run_callgrind() {
    callgrind_backends
    echo "## callgrind, $(date -u +%Y-%m-%dT%H:%MZ): wrk -t1 -c16 -d${DURATION}s, 3 nginx backends"
    echo
    echo "| proxy | watch | Cookie header | instructions per request | vs watch off, same header | sid hops seen |"
    echo "|---|---|---|---:|---:|---:|"
    local base="" c name enabled cookie port admin req total hops per
    for c in "${CASES[@]}"; do
        IFS='|' read -r name enabled cookie <<<"$c"
        port=$(free_port); admin=$(free_port)
        read -r req total hops < <(UNSTICK_WORKERS=1 UNSTICK_SESSION_WATCH_ENABLED=$enabled \
            instructions "unstick-$name" "$port" "$cookie" "$admin" "$BIN" serve \
            --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --access-log off \
            --backend "${BACKENDS[0]}" --backend "${BACKENDS[1]}" --backend "${BACKENDS[2]}")
        per=$(( total / req ))
        [ "$enabled" = true ] || { base=$per; hops=-; }
        printf '| unstick, 1 worker | %s | %s | %d | %s | %s |\n' "$enabled" "$(label "$cookie")" \
            "$per" "$(awk -v a="$per" -v b="$base" -v on="$enabled" 'BEGIN{if (on == "true") printf "%+.1f%%", 100 * (a - b) / b}')" "$hops"
        case "$name" in on-session) [ "$hops" -gt 0 ] || { echo "no hop seen with the session cookie" >&2; exit 1; } ;; esac
    done
    local n=0
    for cookie in "" "$APP; sid=$SID"; do
        port=$(free_port); n=$((n + 1))
        fill "$PEER/proxy-haproxy.cfg.tmpl" "$WORK/haproxy-$n.cfg" PORT="$port" NBTHREAD=1 SERVERS="$SERVERS"
        read -r req total hops < <(instructions "haproxy-$n" "$port" "$cookie" - haproxy -db -f "$WORK/haproxy-$n.cfg")
        printf '| HAProxy %s, 1 thread | - | %s | %d | | |\n' "$(haproxy -v | awk 'NR==1 {print $3}')" \
            "$(label "$cookie")" "$(( total / req ))"
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    PIDS=()
    echo
}

label() {  # the Cookie header as the tables name it
    case "$1" in
        "") echo "none" ;;
        "$APP") echo "4 app cookies, no session" ;;
        *) echo "4 app cookies + a known sid" ;;
    esac
}

# --- 2. the peer bench ----------------------------------------------------------
run_peer() {
    echo "## peer bench, $(date -u +%Y-%m-%dT%H:%MZ): one run per case, ${REPS} rounds of ${DURATION}s at c$CONNS"
    echo
    echo "| unstick watch | Cookie header | unstick req/s | unstick CPU us/req | HAProxy CPU us/req | CPU us/req, unstick / HAProxy (paired rounds: median [min - max]) | watch on / off, same header |"
    echo "|---|---|---:|---:|---:|---|---:|"
    local c name enabled cookie out row base=""
    for c in "${CASES[@]}"; do
        IFS='|' read -r name enabled cookie <<<"$c"
        out="$WORK/peer-$name"
        # The session value is issued through unstick once it answers.
        PEERBENCH_COOKIE="$cookie" \
        EXTRA_PROXY_NAME="unstick" EXTRA_PROXY_PORT=18100 \
        EXTRA_PROXY_CMD="( for i in \$(seq 100); do curl -sf -o /dev/null http://127.0.0.1:\$EXTRA_PROXY_PORT/login && break; sleep 0.1; done ) & UNSTICK_SESSION_WATCH_ENABLED=$enabled UNSTICK_BACKENDS=\$BACKEND_ADDRS exec $BIN serve --listen 127.0.0.1:\$EXTRA_PROXY_PORT --admin off --access-log off >/dev/null" \
        TARGETS="haproxy-t2 unstick" CONNS="$CONNS" REPS="$REPS" DURATION="$DURATION" OUT_DIR="$out" \
        MAX_SECONDS=$(( REPS * 2 * (DURATION + 1) + 60 )) \
            "$WORK/peer/run.sh" >"$out.log" 2>&1 || { cat "$out.log" >&2; exit 1; }
        row=$(awk -F, -v label="$(label "$cookie")" -v on="$enabled" -v base="$base" '
            function median(s,   n, a, i, j, x) {
                n = split(s, a, " ")
                for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            NR > 1 { us[$1, $3] = $15; rps[$1, $3] = $4; rounds[$1] = 1 }
            END {
                for (r in rounds) if ((r, "unstick") in us && (r, "haproxy-t2") in us && us[r, "haproxy-t2"] > 0) {
                    q = us[r, "unstick"] / us[r, "haproxy-t2"]; ratios = ratios " " q
                    u = u " " us[r, "unstick"]; h = h " " us[r, "haproxy-t2"]; k = k " " rps[r, "unstick"]
                    if (min == "" || q < min) min = q; if (max == "" || q > max) max = q
                }
                m = median(ratios)
                cost = (on == "true" && base > 0) ? sprintf("%+.1f%%", 100 * (m / base - 1)) : ""
                printf "%.6f| %s | %s | %.0f | %.1f | %.1f | %.3f [%.3f - %.3f] | %s |\n", m, on, label, median(k), median(u), median(h), m, min, max, cost
            }' "$out/raw.csv")
        [ "$enabled" = true ] || base=${row%%|*}
        echo "|${row#*|}"
    done
    echo
}

[ -z "$DO_CG" ] || run_callgrind
[ -z "$DO_PEER" ] || run_peer
