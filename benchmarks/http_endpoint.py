"""A loopback JSON endpoint for the per-record HTTP benchmark, run in its own process.

    python -m benchmarks.http_endpoint            # prints "PORT <n>", serves until stdin closes

A threaded HTTP/1.1 server on 127.0.0.1, port 0, with keep-alive: ``POST`` a JSON object and it
answers ``201`` with a small JSON body; ``GET /stats`` returns how many records it accepted and
rejected. It lives in its own process so its CPU time and memory are not the engine's.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class Handler(BaseHTTPRequestHandler):
    """Accepts JSON records; keeps the connection open between requests."""

    protocol_version = "HTTP/1.1"
    server: EndpointServer

    def setup(self) -> None:
        """Count connections, to show that keep-alive reused them."""
        super().setup()
        with self.server.stats.lock:
            self.server.stats.connections += 1

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        """Accept one JSON object."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        stats = self.server.stats
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            with stats.lock:
                stats.rejected += 1
            self._answer(400, {"error": "expected a JSON object"})
            return
        with stats.lock:
            stats.accepted += 1
            stats.keys.add(str(record.get("id")))
        self._answer(201, {"id": str(record.get("id")), "created": True})

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        """``/stats``: the counters."""
        if self.path != "/stats":
            self._answer(404, {"error": "not found"})
            return
        self._answer(200, self.server.stats.snapshot())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature of the base class
        """Quiet: one line per request would cost more than the request."""


class EndpointServer(ThreadingHTTPServer):
    """The threaded server with its counters."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.stats = Stats()


def main() -> int:
    """Serve until standard input closes (the parent's way of saying stop)."""
    server = EndpointServer()
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
