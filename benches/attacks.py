#!/usr/bin/env python3
"""Resource attacks against one proxy: time to cut, a well-behaved client's
success and latency during the attack, the proxy's peak RSS and CPU.

Usage (benches/attacks.sh starts the proxies and the backend):
    attacks.py --name NAME --pid PID --h1 PORT --h2 PORT --conns N
Prints one JSON line per attack.
"""
import argparse
import asyncio
import json
import os
import statistics
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMIT = 40.0  # seconds: a connection still open then is "not cut"


def frame(kind, flags, stream, payload=b""):
    n = len(payload)
    return bytes([n >> 16 & 255, n >> 8 & 255, n & 255, kind, flags]) + stream.to_bytes(4, "big") + payload


SETTINGS = frame(4, 0, 0)
PING = frame(6, 0, 0, b"\x07" * 8)


def proc_stats(pid):
    """RSS (KiB, this process and its children) and CPU seconds so far."""
    pids = [pid]
    try:
        pids += [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    rss, cpu = 0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            cpu += (int(f[11]) + int(f[12])) / tick
        except OSError:
            pass
    return rss, cpu


async def wait_closed(reader, start):
    """Seconds until the proxy closes the connection (None: not within LIMIT)."""
    try:
        while True:
            left = LIMIT - (time.monotonic() - start)
            if left <= 0:
                return None
            data = await asyncio.wait_for(reader.read(65536), left)
            if not data:
                return time.monotonic() - start
    except (asyncio.TimeoutError,):
        return None
    except (ConnectionError, OSError):
        return time.monotonic() - start


async def open_conn(port):
    return await asyncio.open_connection("127.0.0.1", port)


# --- the attacks: each opens one connection and returns its time to cut -------

async def silent(port):
    r, w = await open_conn(port)
    return await wait_closed(r, time.monotonic())


async def slowloris(port):
    r, w = await open_conn(port)
    start = time.monotonic()
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")

    async def trickle():
        try:
            while True:
                await asyncio.sleep(1)
                w.write(b"X-a: b\r\n")
                await w.drain()
        except (ConnectionError, OSError):
            pass
    t = asyncio.ensure_future(trickle())
    cut = await wait_closed(r, start)
    t.cancel()
    return cut


async def h2_preface_only(port):
    r, w = await open_conn(port)
    start = time.monotonic()
    w.write(PREFACE + SETTINGS)
    return await wait_closed(r, start)


async def h2_pings(port):
    r, w = await open_conn(port)
    start = time.monotonic()
    w.write(PREFACE + SETTINGS)

    async def ping():
        try:
            while True:
                await asyncio.sleep(1)
                w.write(PING)
                await w.drain()
        except (ConnectionError, OSError):
            pass
    t = asyncio.ensure_future(ping())
    cut = await wait_closed(r, start)
    t.cancel()
    return cut


async def slow_body(port):
    r, w = await open_conn(port)
    start = time.monotonic()
    w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    return await wait_closed(r, start)


async def backend_stall(port):
    r, w = await open_conn(port)
    start = time.monotonic()
    w.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
    return await wait_closed(r, start)


async def never_reads(port):
    """Asks for a large body and never reads; the cut is seen as the socket
    closing under us (a write that fails), probed once a second."""
    sock_r, w = await open_conn(port)
    sock = w.get_extra_info("socket")
    sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    start = time.monotonic()
    w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await w.drain()
    import socket as s
    while time.monotonic() - start < LIMIT:
        await asyncio.sleep(0.5)
        try:
            # MSG_PEEK a byte: an RST shows as an error, a FIN after data stays hidden,
            # so also look at the TCP state.
            info = sock.getsockopt(s.IPPROTO_TCP, s.TCP_INFO, 8)
            state = info[0]
            if state in (8, 7, 11, 6):  # CLOSE_WAIT, CLOSE, CLOSING, TIME_WAIT
                return time.monotonic() - start
        except OSError:
            return time.monotonic() - start
    return None


async def ping_flood(port):
    r, w = await open_conn(port)
    start = time.monotonic()
    burst = PREFACE + SETTINGS + (PING + SETTINGS) * 2000
    sock = w.get_extra_info("socket")
    import socket as s
    sock.setsockopt(s.SOL_SOCKET, s.SO_RCVBUF, 4096)
    while time.monotonic() - start < LIMIT:
        try:
            w.write(burst)
            await asyncio.wait_for(w.drain(), LIMIT - (time.monotonic() - start))
        except asyncio.TimeoutError:
            return None
        except (ConnectionError, OSError):
            return time.monotonic() - start
    return None


ATTACKS = {
    "silent connections": ("h1", silent),
    "slowloris (a header line a second)": ("h1", slowloris),
    "slow POST body (3 of 1,000 bytes)": ("h1", slow_body),
    "h2c preface only": ("h2", h2_preface_only),
    "h2c preface + a PING a second": ("h2", h2_pings),
    "h2c PING/SETTINGS flood, replies unread": ("h2", ping_flood),
    "backend stalls mid-body": ("h1", backend_stall),
    "client never reads a 1 GiB response": ("h1", never_reads),
}


async def good_client(port, stop, lat, errors):
    """One request at a time on fresh connections, as a newcomer would."""
    while not stop.is_set():
        t = time.monotonic()
        try:
            r, w = await asyncio.wait_for(open_conn(port), 5)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            if data.startswith(b"HTTP/1.1 200"):
                lat.append(time.monotonic() - t)
            else:
                errors.append(1)
        except Exception:
            errors.append(1)
        await asyncio.sleep(0.05)


async def run(args, name, kind, attack):
    port = args.h1 if kind == "h1" else args.h2
    rss0, cpu0 = proc_stats(args.pid)
    stop = asyncio.Event()
    lat, errors = [], []
    good = asyncio.ensure_future(good_client(args.h1, stop, lat, errors))
    peak = rss0
    tasks = [asyncio.ensure_future(attack(port)) for _ in range(args.conns)]
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
        peak = max(peak, proc_stats(args.pid)[0])
    stop.set()
    await good
    cuts = [t.result() for t in tasks if not t.exception()]
    cut = [c for c in cuts if c is not None]
    _, cpu1 = proc_stats(args.pid)
    lat.sort()
    return {
        "proxy": args.name,
        "attack": name,
        "conns": args.conns,
        "cut": len(cut),
        "cut_median_s": round(statistics.median(cut), 1) if cut else None,
        "good_ok": len(lat),
        "good_failed": len(errors),
        "good_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "good_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "rss_peak_mib": round(peak / 1024, 1),
        "cpu_s": round(cpu1 - cpu0, 2),
    }


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--h1", type=int, required=True)
    p.add_argument("--h2", type=int, required=True)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--only", default="")
    args = p.parse_args()
    for name, (kind, attack) in ATTACKS.items():
        if args.only and args.only not in name:
            continue
        print(json.dumps(await run(args, name, kind, attack)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
