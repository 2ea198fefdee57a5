"""A loopback JSON endpoint for the per-record HTTP benchmark, run in its own process.

    python -m benchmarks.http_endpoint            # prints "PORT <n>", serves until stdin closes
    python -m benchmarks.http_endpoint --delay 0.02   # each POST waits 20 ms before its answer

A threaded HTTP/1.1 server on 127.0.0.1, port 0, with keep-alive: ``POST`` a JSON object and it
answers ``201`` with a small JSON body; ``GET /stats`` returns how many records it accepted and
rejected. It lives in its own process so its CPU time and memory are not the engine's. ``--delay``
stands for a remote endpoint's latency: every POST is answered that many seconds late (a thread
per connection, so connections wait side by side, as they would for a distant server).
"""

from __future__ import annotations

import argparse
import json
import socketserver
import sys
import threading
import time
from typing import Any


class Stats:
    """Counts shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0
        self.connections = 0
        self.keys: set[str] = set()

    def snapshot(self) -> dict[str, int]:
        """The counters as plain data."""
        with self.lock:
            return {"accepted": self.accepted, "rejected": self.rejected, "connections": self.connections,
                    "distinct_ids": len(self.keys)}


REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}


def response(status: int, payload: dict[str, Any], *, close: bool = False) -> bytes:
    """One whole HTTP/1.1 response, to be sent in a single write."""
    body = json.dumps(payload).encode()
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n")
    return head.encode("ascii") + body


class Handler(socketserver.StreamRequestHandler):
    """Serves the requests of one keep-alive connection until the client closes it.

    The parsing is minimal on purpose (request line, ``Content-Length``, ``Connection``): the
    standard library's handler parses headers with the e-mail parser and answers in two writes,
    which would make the endpoint, not the engine, the thing measured.
    """

    disable_nagle_algorithm = True
    server: EndpointServer

    def handle(self) -> None:
        """Read requests in a loop; one response per request, in one write."""
        stats = self.server.stats
        with stats.lock:
            stats.connections += 1
        while True:
            line = self.rfile.readline(8192)
            if not line:
                return
            parts = line.split()
            if len(parts) != 3:
                self.wfile.write(response(400, {"error": "bad request line"}, close=True))
                return
            method, path = parts[0], parts[1]
            length, close = -1, False
            while True:
                header = self.rfile.readline(8192)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = self.rfile.read(length) if length > 0 else b""
            if method == b"GET":
                answer = response(200, stats.snapshot()) if path == b"/stats" else response(404, {"error": "no"})
            elif length < 0:
                answer, close = response(411, {"error": "Content-Length required"}, close=True), True
            else:
                answer = self.accept(body)
                if self.server.delay:
                    time.sleep(self.server.delay)
            self.wfile.write(answer)
            if close:
                return

    def accept(self, body: bytes) -> bytes:
        """Count one posted record; 201 for a JSON object, 400 for anything else."""
        stats = self.server.stats
        try:
            record = json.loads(body)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            with stats.lock:
                stats.rejected += 1
            return response(400, {"error": "expected a JSON object"})
        ident = str(record.get("id"))
        with stats.lock:
            stats.accepted += 1
            stats.keys.add(ident)
        return response(201, {"id": ident, "created": True})


class EndpointServer(socketserver.ThreadingTCPServer):
    """The threaded server (a thread per connection) with its counters."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.stats = Stats()
        self.delay = delay


def main(argv: list[str] | None = None) -> int:
    """Serve until standard input closes (the parent's way of saying stop)."""
    parser = argparse.ArgumentParser(description="A loopback JSON endpoint for the HTTP benchmarks.")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each POST waits before its answer")
    args = parser.parse_args(argv)
    server = EndpointServer(args.delay)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    sys.stdout.write(f"PORT {server.server_address[1]}\n")
    sys.stdout.flush()
    sys.stdin.read()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
