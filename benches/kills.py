#!/usr/bin/env python3
"""Backends SIGKILLed under load behind unstick, HAProxy and nginx: what clients see.

Driven by benches/kills.sh. For each proxy and each method (GET; POST with a
new Idempotency-Key per request): 3 backends (`unstick testkit-backend`,
route `/split/MS`: the response head, then the body MS ms later in a
separate write, so a kill can land between them), C keep-alive clients
sending one request at a time, and one backend SIGKILLed every EVERY
seconds (round robin over the three), restarted on the same port RESTART
seconds later, for DURATION seconds. A client counts an error for anything
but a whole 200 with the backend's body: another status, a connection
closed or reset before or during the response (a truncated body), a
timeout. Prints a table of errors per 100,000 requests; with --loop N, runs
unstick N more times per method and counts the runs with no error.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

CLIENT_TIMEOUT = 5.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


# --- one HTTP/1.1 exchange, read strictly -------------------------------------


class Closed(Exception):
    """The connection ended before a whole response: `kind` says where."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


def read_response(sock, buf):
    """Reads one response; returns (status, headers dict, body, rest of buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise Closed("closed before the head" if not buf else "truncated head")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body, buf = read_chunked(sock, buf)
        return status, headers, body, buf
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise Closed("truncated body")
        buf += chunk
    return status, headers, buf[:length], buf[length:]


def read_chunked(sock, buf):
    body = b""
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise Closed("truncated body")
            buf += chunk
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buf) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise Closed("truncated body")
            buf += chunk
        if size == 0:
            # No trailers from these backends: the last chunk ends the body.
            return body, buf[2:]
        body += buf[:size]
        buf = buf[size + 2 :]


def client(port, method, path, stop, results):
    """One keep-alive client: a request at a time until `stop`."""
    ok = 0
    errors = {}
    failures = []
    sock, buf, n = None, b"", 0
    while not stop.is_set():
        n += 1
        if method == "POST":
            body = f"item={n}".encode()
            extra = (
                f"Content-Type: application/x-www-form-urlencoded\r\n"
                f"Idempotency-Key: {uuid.uuid4()}\r\n"
                f"Content-Length: {len(body)}\r\n"
            )
        else:
            body, extra = b"", ""
        request = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode() + body
        start = time.monotonic()
        kind = None
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = b""
            sock.sendall(request)
            status, headers, rbody, buf = read_response(sock, buf)
            if status != 200:
                kind = f"status {status}"
            elif not (rbody.startswith(b"b") and rbody.endswith(b"\n") and len(rbody) <= 8):
                kind = "wrong body"
            if headers.get(b"connection", b"").lower() == b"close":
                sock.close()
                sock = None
        except Closed as e:
            kind = e.kind
        except socket.timeout:
            kind = "timeout"
        except ConnectionResetError:
            kind = "reset"
        except OSError as e:
            kind = f"socket error {e.errno}"
        if kind is None:
            ok += 1
            continue
        errors[kind] = errors.get(kind, 0) + 1
        failures.append((start, time.monotonic(), kind))
        if sock is not None:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    results.append((ok, errors, failures))


# --- the backends and the proxies ---------------------------------------------


class Backends:
    def __init__(self, binary, n, work):
        self.binary = binary
        self.ports = [free_port() for _ in range(n)]
        self.procs = [None] * n
        self.log = open(os.path.join(work, "backends.log"), "ab")
        for i in range(n):
            self.start(i)
        for i in range(n):
            wait_port(self.ports[i], self.procs[i])

    def start(self, i):
        self.procs[i] = subprocess.Popen(
            [self.binary, "testkit-backend", "--listen", f"127.0.0.1:{self.ports[i]}", "--id", f"b{i}"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        self.log.close()


HAPROXY = """global
    nbthread 2
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout http-keep-alive 30s
    option http-keep-alive
    http-reuse safe
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
{servers}
"""

NGINX = """worker_processes 2;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx.error.log crit;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream be {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout http_502;
        }}
    }}
}}
"""


def start_proxy(name, binary, port, backend_ports, work):
    log = open(os.path.join(work, f"{name}.log"), "ab")
    addrs = [f"127.0.0.1:{p}" for p in backend_ports]
    if name == "unstick":
        cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--admin", "off", "--access-log", "off"]
        for a in addrs:
            cmd += ["--backend", a]
    elif name == "haproxy":
        servers = "\n".join(
            f"    server b{i} {a} check inter 500ms fall 1 rise 1" for i, a in enumerate(addrs)
        )
        path = os.path.join(work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(HAPROXY.format(port=port, servers=servers))
        cmd = ["haproxy", "-db", "-f", path]
    elif name == "nginx":
        servers = "\n".join(f"        server {a} max_fails=1 fail_timeout=1s;" for a in addrs)
        path = os.path.join(work, "nginx.conf")
        with open(path, "w") as f:
            f.write(NGINX.format(port=port, servers=servers, work=work))
        cmd = ["nginx", "-p", work, "-c", path]
    else:
        raise ValueError(name)
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    wait_port(port, proc)
    return proc


def stop_proxy(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --- one run ------------------------------------------------------------------


def warm(port, path, timeout=10.0):
    """Waits until the proxy answers a GET with 200 (backends up, health known)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                status, _, _, _ = read_response(s, b"")
                if status == 200:
                    return
        except (OSError, Closed, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the proxy on {port} never answered 200")


def run(args, proxy, method, work):
    backends = Backends(args.bin, 3, work)
    port = free_port()
    proc = None
    try:
        proc = start_proxy(proxy, args.bin, port, backends.ports, work)
        path = f"/split/{args.gap_ms}"
        warm(port, path)
        stop = threading.Event()
        results = []
        threads = [
            threading.Thread(target=client, args=(port, method, path, stop, results))
            for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        kills = kill_loop(backends, args.duration, args.every, args.restart_after)
        stop.set()
        for t in threads:
            t.join()
    finally:
        if proc is not None:
            stop_proxy(proc)
        backends.stop()
    ok = sum(r[0] for r in results)
    errors = {}
    failures = []
    for _, e, f in results:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
        failures += f
    total = ok + sum(errors.values())
    return {
        "proxy": proxy,
        "method": method,
        "requests": total,
        "errors": sum(errors.values()),
        "by_kind": errors,
        "kills": len(kills),
        "per_100k": 1e5 * sum(errors.values()) / total if total else 0.0,
        "errors_near_a_kill": sum(1 for f in failures if near(f, kills, args.restart_after)),
    }


def kill_loop(backends, duration, every, restart_after):
    """SIGKILLs backend i % 3 every `every` s, restarting it `restart_after` later."""
    start = time.monotonic()
    kills = []
    i = 0
    next_kill = start + every / 2
    while next_kill + restart_after < start + duration:
        time.sleep(max(0.0, next_kill - time.monotonic()))
        b = i % len(backends.ports)
        kills.append(time.monotonic())
        backends.kill(b)
        time.sleep(max(0.0, kills[-1] + restart_after - time.monotonic()))
        backends.start(b)
        i += 1
        next_kill += every
    time.sleep(max(0.0, start + duration - time.monotonic()))
    return kills


def near(failure, kills, restart_after):
    start, end, _ = failure
    return any(start <= k + restart_after + 1.0 and end >= k for k in kills)


# --- the report ---------------------------------------------------------------

NAMES = {"unstick": "**unstick**", "haproxy": "HAProxy", "nginx": "nginx"}


def table(rows):
    out = [
        "| proxy | method | requests | errors | per 100,000 | errors by kind |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["by_kind"].items())) or "-"
        method = "POST + Idempotency-Key" if r["method"] == "POST" else r["method"]
        out.append(
            f"| {NAMES[r['proxy']]} | {method} | {r['requests']:,} | {r['errors']:,} "
            f"| {r['per_100k']:,.0f} | {kinds} |"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the unstick binary")
    ap.add_argument("--proxies", default="unstick,haproxy,nginx")
    ap.add_argument("--methods", default="GET,POST")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--restart-after", type=float, default=0.25)
    ap.add_argument("--gap-ms", type=int, default=1)
    ap.add_argument("--loop", type=int, default=0, help="then run unstick this many more times per method")
    ap.add_argument("--json", help="write every run's figures to this file")
    args = ap.parse_args()
    proxies = [p for p in args.proxies.split(",") if p]
    methods = [m.upper() for m in args.methods.split(",") if m]
    work = tempfile.mkdtemp(prefix="unstick-kills.")
    rows = []
    for method in methods:
        for proxy in proxies:
            r = run(args, proxy, method, work)
            print(json.dumps(r), file=sys.stderr, flush=True)
            rows.append(r)
    print(
        f"\n{args.clients} keep-alive clients, 3 backends (head, then the body {args.gap_ms} ms later), "
        f"a SIGKILL every {args.every:g} s for {args.duration:g} s, restart {args.restart_after:g} s after each\n"
    )
    if rows:
        print(table(rows))
    loops = []
    for method in methods if args.loop else []:
        runs = []
        for _ in range(args.loop):
            r = run(args, "unstick", method, work)
            print(json.dumps(r), file=sys.stderr, flush=True)
            runs.append(r)
        loops.append(runs)
        clean = sum(1 for r in runs if r["errors"] == 0)
        total = sum(r["requests"] for r in runs)
        errs = sum(r["errors"] for r in runs)
        print(
            f"\nunstick, {method}, {args.loop} consecutive runs: {clean} of {args.loop} with 0 errors; "
            f"{errs:,} errors in {total:,} requests; errors per run: {[r['errors'] for r in runs]}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": rows, "loops": loops}, f, indent=1)


if __name__ == "__main__":
    main()
