#!/usr/bin/env python3
"""Resource attacks against one proxy: time to cut, a well-behaved client's
success and latency during the attack, the proxy's peak RSS and CPU.

Each of N attacker slots runs R rounds: a round opens one connection,
attacks until the proxy cuts it (or LIMIT passes), closes it, and the next
round starts no sooner than PERIOD after this one began. Every proxy gets
the same N x R samples per attack, and a quick cut does not turn the attack
into a connection flood.

Usage (benches/attacks.sh starts the proxies and the backend):
    attacks.py --name NAME --pid PID --h1 PORT --h2 PORT --conns N --rounds R
Prints one JSON line per attack.
"""
import argparse
import asyncio
import json
import os
import socket
import statistics
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMIT = 40.0  # seconds: a connection still open then is "not cut"
PERIOD = 15.0  # seconds: a slot starts a round at most this often
ESTABLISHED = 1


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


class TcpTable:
    """The TCP states of 127.0.0.1 sockets, read from /proc/net/tcp at most
    every 0.25 s and shared by every attacker: {(local port, remote port): state}."""

    def __init__(self):
        self.at = 0.0
        self.states = {}

    def get(self, since):
        """The table, read after `since` (a monotonic time)."""
        if self.at <= since or time.monotonic() - self.at > 0.25:
            states = {}
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, remote, state = cols[1], cols[2], int(cols[3], 16)
                    states[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = state
            self.states, self.at = states, time.monotonic()
        return self.states


TCP = TcpTable()


def cut_by_table(proxy_port, client_port, since):
    """Whether the proxy has let go of the connection: its end left
    ESTABLISHED (it closed; a FIN queued behind unread data never reaches
    the client) or is gone, or the client's end was closed or reset."""
    states = TCP.get(since)
    proxy_end = states.get((proxy_port, client_port))
    client_end = states.get((client_port, proxy_port))
    return proxy_end != ESTABLISHED or client_end != ESTABLISHED


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
    except asyncio.TimeoutError:
        return None
    except (ConnectionError, OSError):
        return time.monotonic() - start


async def wait_table(port, writer, start):
    """Seconds until the proxy lets go of the connection, seen in
    /proc/net/tcp, probed every 0.25 s (None: not within LIMIT)."""
    client_port = writer.get_extra_info("sockname")[1]
    while time.monotonic() - start < LIMIT:
        if cut_by_table(port, client_port, start):
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    return None


async def repeat(w, data, every):
    """Writes `data` every `every` seconds until the connection fails."""
    try:
        while True:
            await asyncio.sleep(every)
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass


async def with_task(task, wait):
    t = asyncio.ensure_future(task)
    try:
        return await wait
    finally:
        t.cancel()


# --- the attacks: each gets an open connection and returns its time to cut ---

async def silent(port, r, w, start):
    return await wait_closed(r, start)


async def slowloris(port, r, w, start):
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    return await with_task(repeat(w, b"X-a: b\r\n", 1), wait_closed(r, start))


async def h2_preface_only(port, r, w, start):
    w.write(PREFACE + SETTINGS)
    return await wait_closed(r, start)


async def h2_pings(port, r, w, start):
    w.write(PREFACE + SETTINGS)
    return await with_task(repeat(w, PING, 1), wait_closed(r, start))


async def slow_body(port, r, w, start):
    w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    return await wait_closed(r, start)


async def backend_stall(port, r, w, start):
    w.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
    return await wait_closed(r, start)


async def never_reads(port, r, w, start):
    """Asks for a 1 GiB body and never reads it."""
    w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    return await wait_table(port, w, start)


async def ping_flood(port, r, w, start):
    """PINGs and SETTINGS as fast as the proxy takes them, never reading the
    replies."""
    burst = (PING + SETTINGS) * 2000
    w.write(PREFACE + SETTINGS)
    return await with_task(repeat(w, burst, 0), wait_table(port, w, start))


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


async def one_round(port, attack):
    """One connection under `attack`; its time to cut (None: not cut,
    or it could not connect)."""
    sock = socket.socket()
    # A small receive buffer: a client that does not read fills it soon.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        r, w = await asyncio.open_connection(sock=sock)
    except OSError:
        sock.close()
        return None
    try:
        return await attack(port, r, w, time.monotonic())
    finally:
        w.transport.abort()


async def slot(port, attack, rounds, cuts):
    for _ in range(rounds):
        began = time.monotonic()
        cuts.append(await one_round(port, attack))
        await asyncio.sleep(max(0.0, began + PERIOD - time.monotonic()))


async def good_client(port, stop, lat, errors):
    """One request at a time on fresh connections, as a newcomer would."""
    while not stop.is_set():
        t = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
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
    lat, errors, cuts = [], [], []
    good = asyncio.ensure_future(good_client(args.h1, stop, lat, errors))
    peak = rss0
    began = time.monotonic()
    tasks = [asyncio.ensure_future(slot(port, attack, args.rounds, cuts)) for _ in range(args.conns)]
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
        peak = max(peak, proc_stats(args.pid)[0])
    for t in tasks:
        t.result()
    stop.set()
    await good
    cut = sorted(c for c in cuts if c is not None)
    _, cpu1 = proc_stats(args.pid)
    lat.sort()
    return {
        "proxy": args.name,
        "attack": name,
        "samples": len(cuts),
        "cut": len(cut),
        "cut_median_s": round(statistics.median(cut), 1) if cut else None,
        "cut_max_s": round(cut[-1], 1) if cut else None,
        "seconds": round(time.monotonic() - began),
        "good_ok": len(lat),
        "good_failed": len(errors),
        "good_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "good_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "rss_peak_mib": round(peak / 1024, 1),
        "cpu_s": round(cpu1 - cpu0, 2),
    }


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name")
    p.add_argument("--pid", type=int)
    p.add_argument("--h1", type=int)
    p.add_argument("--h2", type=int)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="")
    p.add_argument("--list", action="store_true", help="print the attacks' names and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(ATTACKS))
        return
    for name, (kind, attack) in ATTACKS.items():
        if args.only and args.only not in name:
            continue
        print(json.dumps(await run(args, name, kind, attack)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
