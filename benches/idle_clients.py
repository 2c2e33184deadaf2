#!/usr/bin/env python3
"""Holds N idle keep-alive client connections to one server (benches/connections.sh).

Each connection makes one request (HTTP/1.1, h2c by prior knowledge, or
HTTP/1.1 over TLS), reads the whole response, and then stays open and idle.
Connections are opened `--batch` at a time from source addresses
127.0.0.2.. (so the ephemeral ports of one address are not the bound), with
one selector loop, no threads.

Once all are held it prints one JSON line ({"held": n, "failed": f}) and
reads commands from stdin, one per line:
  probe   one more request on every held connection; prints {"served": n}
  close   (or end of input) closes everything and exits
"""

import argparse
import json
import selectors
import socket
import ssl
import struct
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS, H2_PING, H2_GOAWAY = 4, 6, 7
H2_END_STREAM, H2_ACK = 0x1, 0x1


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_request(stream, authority):
    # :method GET, :scheme http, :path / (static table), :authority literal.
    block = b"\x82\x86\x84\x41" + bytes([len(authority)]) + authority
    return h2_frame(1, 0x4 | H2_END_STREAM, stream, block)


class Conn:
    """One client connection and where it is in its current request."""

    def __init__(self, sock, proto, authority):
        self.sock = sock
        self.proto = proto
        self.authority = authority
        self.inbuf = b""
        self.out = b""
        self.stream = 1
        self.handshaking = proto == "tls"
        self.done = False
        self.failed = False

    def start_request(self):
        if self.proto == "h2":
            if self.stream == 1:
                self.out += H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0)
            self.out += h2_request(self.stream, self.authority)
        else:
            self.out += b"GET / HTTP/1.1\r\nhost: " + self.authority + b"\r\n\r\n"
        self.done = False

    def h1_complete(self):
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self.inbuf[:end].lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.inbuf) < end + 4 + length:
            return False
        self.inbuf = self.inbuf[end + 4 + length:]
        return True

    def h2_complete(self):
        """Consumes whole frames; answers SETTINGS and PING; true at the end of our stream."""
        finished = False
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < 9 + length:
                break
            kind, flags = self.inbuf[3], self.inbuf[4]
            stream = int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            payload = self.inbuf[9:9 + length]
            self.inbuf = self.inbuf[9 + length:]
            if kind == H2_SETTINGS and not flags & H2_ACK:
                self.out += h2_frame(H2_SETTINGS, H2_ACK, 0)
            elif kind == H2_PING and not flags & H2_ACK:
                self.out += h2_frame(H2_PING, H2_ACK, 0, payload)
            elif kind == H2_GOAWAY:
                self.failed = True
            elif stream == self.stream and kind in (0, 1) and flags & H2_END_STREAM:
                finished = True
        if finished:
            self.stream += 2
        return finished

    def on_event(self, mask):
        """Moves the connection on; returns True when its request is answered."""
        try:
            if self.handshaking:
                self.sock.do_handshake()
                self.handshaking = False
            if self.out:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
            data = self.sock.recv(65536)
            if not data:
                self.failed = True
                return False
            self.inbuf += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            self.failed = True
            return False
        complete = self.h2_complete() if self.proto == "h2" else self.h1_complete()
        if complete and self.out:
            try:
                self.sock.send(self.out)  # the SETTINGS ack, small
            except OSError:
                pass
            self.out = b""
        self.done = complete
        return complete


def open_socket(args, i, tls_context):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((f"127.0.0.{2 + i % args.sources}", 0))
    sock.setblocking(False)
    try:
        sock.connect((args.host, args.port))
    except BlockingIOError:
        pass
    if tls_context is not None:
        sock = tls_context.wrap_socket(sock, do_handshake_on_connect=False, server_hostname="localhost")
    return sock


def run_batch(sel, conns, deadline):
    """Drives `conns` until each has its answer or failed, or `deadline` passes."""
    waiting = {c.sock.fileno(): c for c in conns}
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    while waiting and time.monotonic() < deadline:
        for key, mask in sel.select(timeout=1.0):
            c = key.data
            if c.on_event(mask) or c.failed:
                waiting.pop(c.sock.fileno(), None)
                sel.unregister(c.sock)
            elif not c.out and not c.handshaking:
                sel.modify(c.sock, selectors.EVENT_READ, c)
    for fd, c in waiting.items():
        c.failed = True
        sel.unregister(c.sock)
    return [c for c in conns if c.done and not c.failed]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--proto", choices=["h1", "h2", "tls"], default="h1")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2..")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for all to open")
    args = p.parse_args()

    tls_context = None
    if args.proto == "tls":
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls_context.check_hostname = False
        tls_context.verify_mode = ssl.CERT_NONE
        tls_context.set_alpn_protocols(["http/1.1"])

    authority = args.host.encode()
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + args.timeout
    held, failed = [], 0
    i = 0
    while i < args.count and time.monotonic() < deadline:
        batch = []
        for _ in range(min(args.batch, args.count - i)):
            try:
                c = Conn(open_socket(args, i, tls_context), args.proto, authority)
            except OSError as e:
                print(f"open failed: {e}", file=sys.stderr)
                failed += 1
                i += 1
                continue
            c.start_request()
            batch.append(c)
            i += 1
        ok = run_batch(sel, batch, deadline)
        failed += len(batch) - len(ok)
        for c in batch:
            if c not in ok:
                c.sock.close()
        held.extend(ok)
    print(json.dumps({"held": len(held), "failed": failed + args.count - i}), flush=True)

    for line in sys.stdin:
        if line.strip() != "probe":
            break
        served = 0
        deadline = time.monotonic() + args.timeout
        for start in range(0, len(held), args.batch):
            batch = held[start:start + args.batch]
            for c in batch:
                c.start_request()
            served += len(run_batch(sel, batch, deadline))
        print(json.dumps({"served": served}), flush=True)
    for c in held:
        c.sock.close()


if __name__ == "__main__":
    main()
