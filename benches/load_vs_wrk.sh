#!/usr/bin/env bash
# The highest rate `unstick load --threads 1` reaches against nginx (`return 200`),
# next to `wrk -t1` with the same connection count, in the same run.
#
#   benches/load_vs_wrk.sh [--duration 10s] [--connections 32] [--rounds 3] [--port N]
#
# Needs nginx and wrk (`apt-get install -y nginx wrk`). nginx runs on
# 127.0.0.1 with one worker and a config in a temp dir, and is stopped at the
# end. Rounds alternate wrk and unstick so background noise hits both alike;
# the best round of each is compared. With taskset, nginx is pinned to the
# last CPU and the load generators to the first.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10s connections=32 rounds=3 port=""
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
for tool in nginx wrk python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install -y nginx wrk)" >&2; exit 1; }
done
[ -n "$port" ] || port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cargo build --release --quiet
unstick=target/release/unstick

dir=$(mktemp -d /tmp/unstick-bench-nginx.XXXXXX)
nginx_pid=""
cleanup() {
    if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port;
        location / { return 200; }
    }
}
CONF

cpus=$(nproc)
pin_server=() pin_client=()
if command -v taskset >/dev/null && [ "$cpus" -ge 2 ]; then
    pin_server=(taskset -c $((cpus - 1)))
    pin_client=(taskset -c 0)
fi

"${pin_server[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
nginx_pid=$!
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
done
url="http://127.0.0.1:$port/"
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///') on $url (1 worker); $connections connections, $duration per run, $rounds rounds"

# CPU time per request (user and system, µs) tells more than the rate when
# the machine is shared: the rate of a round depends on what else runs.
timed() { # timed OUT_FILE CMD...: runs CMD, writes "user sys" seconds to OUT_FILE
    local out=$1; shift
    if [ -x /usr/bin/time ]; then /usr/bin/time -f "%U %S" -o "$out" "$@"; else "$@"; echo "0 0" >"$out"; fi
}

rows=()
for r in $(seq "$rounds"); do
    timed "$dir/w.time" "${pin_client[@]}" wrk -t1 -c"$connections" -d"$duration" "$url" >"$dir/w.txt"
    w=$(awk '/^Requests\/sec:/ {print $2}' "$dir/w.txt")
    wn=$(awk '/requests in/ {print $1}' "$dir/w.txt")
    timed "$dir/u.time" "${pin_client[@]}" "$unstick" load "$url" --threads 1 -c "$connections" -d "$duration" --json "$dir/u.json" >/dev/null
    read -r u un < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["rate"], j["requests"])' "$dir/u.json")
    rows+=("$w $wn $(cat "$dir/w.time") $u $un $(cat "$dir/u.time")")
    echo "round $r: wrk -t1 ${w}/s   unstick load --threads 1 ${u}/s"
done

printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
w = [r[0] for r in rows]; u = [r[4] for r in rows]
def cpu(n, user, sys_):  # µs per request
    return (user * 1e6 / n, sys_ * 1e6 / n) if n else (0, 0)
wc = [cpu(r[1], r[2], r[3]) for r in rows]; uc = [cpu(r[5], r[6], r[7]) for r in rows]
med = statistics.median
print(f"best:   wrk {max(w):.0f}/s   unstick {max(u):.0f}/s   ratio {max(u)/max(w):.2f}x")
print(f"median: wrk {med(w):.0f}/s   unstick {med(u):.0f}/s   ratio {med(u)/med(w):.2f}x")
print(f"cpu per request (median, user+sys): wrk {med(c[0] for c in wc):.2f}+{med(c[1] for c in wc):.2f} us"
      f"   unstick {med(c[0] for c in uc):.2f}+{med(c[1] for c in uc):.2f} us")
'
