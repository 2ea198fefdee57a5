"""Real HTTP on 127.0.0.1 for the tests: a scripted endpoint, and ``syncengine serve`` as a process."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Request:
    """One request the endpoint received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int

    @property
    def form(self) -> dict[str, str]:
        """The form-encoded body, one value per field."""
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass
class Reply:
    """What the endpoint answers: status, body, headers, and a delay before answering.

    ``drop`` closes the connection without any answer (a request lost in a reset).
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: do not wait for a delayed ACK
    server: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on the recorded requests instead."""

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the sender died mid-request: an endpoint never sees it
            return
        request = Request(self.command, self.path, dict(self.headers.items()), body, self.client_address[1])
        with self.server.lock:
            self.server.requests.append(request)
        reply = self.server.script(request)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a timeout test)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET = handle_any


class ScriptedServer(ThreadingHTTPServer):
    """An HTTP/1.1 keep-alive endpoint whose answers come from ``script(request)``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, script: Callable[[Request], Reply]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about a connection the client reset (a sender killed on purpose); print anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        """The endpoint's base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class ServeProcess:
    """``syncengine serve`` as a child process on port 0; the URL comes from its first line."""

    def __init__(self, pipeline: Path, *, env: dict[str, str], state: Path | None = None) -> None:
        args = [sys.executable, "-m", "engine.cli", "serve", str(pipeline), "--host", "127.0.0.1", "--port", "0"]
        if state is not None:
            args += ["--state", str(state)]
        self.proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr = ""
        self._out = threading.Thread(target=self._pump, daemon=True)
        self._err = threading.Thread(target=self._drain, daemon=True)
        self._out.start()
        self._err.start()
        self.url = self._wait_for_url(20.0)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    self._err.join(5)
                    raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.stderr}") from None
                continue
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                return found.group(1)
        self.kill()
        raise RuntimeError("serve printed no address in time")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (the process is killed if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.kill()  # joins the readers and closes the pipes
        return code

    def kill(self) -> None:
        """Stop the process for good (used on a failing test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.join(5)
        self._err.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
