#!/usr/bin/env bash
# End-to-end bench: unstick next to HAProxy and nginx, in the same run, through
# the shared peer comparison (../shared/peer-bench/run.sh), then a table of
# ratios against HAProxy.
#
# Usage:  benches/e2e.sh [--log off|json|common] [--reps N] [--conns "64 256"]
#                        [--duration S] [--targets "haproxy-t2 nginx-w2"]
# Needs:  apt-get install -y nginx haproxy wrk curl   (and ../shared/peer-bench)
#
# unstick runs with its defaults (retries on, passive health on, 2 workers on
# 2 CPUs), the access log as --log says, and the admin listener off (the
# peer bench only gives it one port). NO_BUILD=1 skips the release build
# (to bench a binary built earlier, e.g. with an experiment's env var).
set -euo pipefail
cd "$(dirname "$0")/.."

LOG=off
REPS=3
CONNS="64 256"
DURATION=4
TARGETS="haproxy-t2 nginx-w2"
while [ $# -gt 0 ]; do
    case "$1" in
        --log) LOG=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PEER=${PEER_BENCH:-../shared/peer-bench}
[ -x "$PEER/run.sh" ] || { echo "peer bench not found at $PEER (set PEER_BENCH)" >&2; exit 2; }
for tool in nginx haproxy wrk curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx haproxy wrk curl" >&2; exit 2; }
done

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
BIN=$(pwd)/target/release/unstick
WORK=$(mktemp -d /tmp/unstick-e2e.XXXXXX)
trap 'rm -rf "$WORK/peer"' EXIT
cp -r "$PEER" "$WORK/peer"
OUT="$WORK/out"

EXTRA_PROXY_NAME="unstick-log-$LOG" \
EXTRA_PROXY_PORT=18100 \
EXTRA_PROXY_CMD="UNSTICK_BACKENDS=\$BACKEND_ADDRS exec $BIN serve --listen 127.0.0.1:\$EXTRA_PROXY_PORT --admin off --access-log $LOG >/dev/null" \
TARGETS="$TARGETS unstick-log-$LOG" CONNS="$CONNS" REPS="$REPS" DURATION="$DURATION" OUT_DIR="$OUT" \
MAX_SECONDS=$(( REPS * 90 + 60 )) \
    "$WORK/peer/run.sh" >&2

echo
echo "## Run $(date -u +%Y-%m-%dT%H:%MZ), access log $LOG"
echo
cat "$OUT/summary.md"
echo
echo "Ratios (unstick / haproxy-t2, same run; CPU and p99: lower is better):"
echo
echo "| conns | req/s | CPU us/req | p99 | RSS |"
echo "|---:|---:|---:|---:|---:|"
awk -F'|' -v u="unstick-log-$LOG" '
    /^\| *[0-9]+ \|/ {
        c=$2+0; t=$3; gsub(/ /,"",t)
        rps[c,t]=$4; p99[c,t]=$7; cpu[c,t]=$9; rss[c,t]=$13; conns[c]=1
    }
    END {
        for (c in conns) if ((c,"haproxy-t2") in rps && (c,u) in rps)
            printf "| %d | %.2fx | %.2fx | %.2fx | %.2fx |\n", c,
                rps[c,u]/rps[c,"haproxy-t2"], cpu[c,u]/cpu[c,"haproxy-t2"],
                p99[c,u]/p99[c,"haproxy-t2"], rss[c,u]/rss[c,"haproxy-t2"]
    }' "$OUT/summary.md" | sort -n -t'|' -k2
echo
echo "Paired by round (unstick / haproxy-t2 within each round, seconds apart, so"
echo "drift in the machine's speed between rounds cancels): median [min - max]:"
echo
echo "| conns | rounds | req/s | CPU us/req | p99 |"
echo "|---:|---:|---|---|---|"
awk -F, -v u="unstick-log-$LOG" '
    NR > 1 { key = $1 "," $2; if ($3 == "haproxy-t2") h[key] = $0; if ($3 == u) x[key] = $0 }
    function med(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
        return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
    }
    END {
        for (key in x) if (key in h) {
            split(h[key], a, ","); split(x[key], b, ",")
            c = b[2]; n[c]++
            r[c, n[c]] = b[4] / a[4]; cpu[c, n[c]] = b[15] / a[15]; p[c, n[c]] = b[7] / a[7]
        }
        for (c in n) {
            m = n[c]
            for (k = 1; k <= m; k++) { R[k] = r[c, k]; C[k] = cpu[c, k]; P[k] = p[c, k] }
            # med() sorts its array: index 1 and m are then min and max.
            mr = med(R, m); mc = med(C, m); mp = med(P, m)
            printf "| %d | %d | %.2fx [%.2f - %.2f] | %.2fx [%.2f - %.2f] | %.2fx [%.2f - %.2f] |\n",
                c, m, mr, R[1], R[m], mc, C[1], C[m], mp, P[1], P[m]
        }
    }' "$OUT/raw.csv" | sort -n -t'|' -k2
echo
echo "raw results: $OUT"
