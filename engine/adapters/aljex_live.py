"""The Aljex live sync receiver: form-encoded POSTs, one record each, behind HTTP basic auth.

Each POST carries ``web_sync_table_name`` (the route: which sync), ``web_sync_action`` (create,
update or delete) and one parameter per field. The answer is 200 only after the engine wrote the
record and its state; every refusal is a 4xx that changes nothing: 403 an address outside
``allow_ips``, 401 wrong or missing credentials (compared in constant time), 404 another path or an
unknown table, 405 a method other than POST, 411 no Content-Length, 413 a body over
``max_body_bytes``, 415 another content type or charset, 400 a body that is not UTF-8 form
encoding (a bad percent-escape included), a repeated parameter, or a missing or unknown action.
422 means the record could not be mapped or the destination rejected it (it is dead-lettered),
502 that the destination failed.

The server is waitress: one thread waits on every socket, a fixed pool of ``threads`` answers
requests, and at most ``max_connections`` are open (more wait in the listen ``backlog``). Every
check that needs only the request head (address, credentials, method, path, content type and
length) runs as soon as the head has arrived, before any body is read and before an
``Expect: 100-continue`` is answered; a refused request is answered and its connection closed. A
connection silent for ``idle_timeout``, or whose request is not complete ``request_timeout`` after
it began, is closed.

On stop (SIGTERM) the server stops accepting, closes idle keep-alive connections, lets the
requests in flight finish and answers them, then closes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple, NoReturn
from urllib.parse import unquote_to_bytes, urlsplit

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ErrorTask
from waitress.utilities import ServerNotImplemented

from engine.errors import ConfigError, ConnectError, RunFailed
from engine.interfaces import ACTIONS, Delivery, PushEvent, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option, secret

log = logging.getLogger("syncengine").getChild("aljex_live")

FORM = "application/x-www-form-urlencoded"
MAX_FIELDS = 2000
MAX_HEADER_BYTES = 65536
"""Largest request head (request line and headers); a larger one gets 431."""
TICK = 0.2
"""Longest wait for socket events before the stop flag is looked at again."""
SWEEP_EVERY = 0.1
"""Seconds between two looks for connections past their idle or request deadline."""
STOP_WAIT = 60.0
"""Longest a stop waits for the requests in flight before it closes their connections."""
LINGER = 2.0
"""Seconds a refused client's connection is drained after the answer, before it is closed."""
FD_RESERVE = 64
"""File descriptors kept for everything but connections (state, destinations, logs, the listener)."""
_CHALLENGE = (("WWW-Authenticate", 'Basic realm="syncengine", charset="UTF-8"'),)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# waitress's own error texts quote the offending request; the answers here say only what was wrong.
_FIXED_ERRORS = {400: "the request is not valid HTTP", 431: f"the request head is over {MAX_HEADER_BYTES} bytes"}


@dataclass(frozen=True)
class AljexLiveConfig:
    """Receive Aljex live-sync posts over HTTP."""

    username: str = option("User name Aljex sends with HTTP basic auth.", examples=["aljex"])
    password: str | None = secret("Password Aljex sends with HTTP basic auth.",
                                  examples=["{{ env.ALJEX_LIVE_PASSWORD }}"])
    allow_ips: list[str] = option("Addresses or networks (CIDR) allowed to post; empty allows every address. "
                                  "Aljex can say which address its posts come from.", [],
                                  examples=[["203.0.113.7", "198.51.100.0/24"]])
    max_body_bytes: int = option("Largest request body accepted, in bytes (larger posts get 413).", 1048576,
                                 minimum=1)
    path: str = option("URL path that receives the posts; other paths get 404.", "/", pattern="^/",
                       examples=["/", "/aljex/live"])
    table_param: str = option("Parameter that names the table.", "web_sync_table_name")
    action_param: str = option("Parameter that names the action (create, update or delete).", "web_sync_action")
    idle_timeout: float = option("Seconds a silent connection is kept open.", 30.0, exclusiveMinimum=0)
    request_timeout: float = option("Seconds a client has to send a whole request (head and body) once it began; "
                                    "a slower one is disconnected, however steadily it trickles.", 30.0,
                                    exclusiveMinimum=0)
    threads: int = option("Threads that answer requests. Records are still written one at a time; more threads "
                          "check and read more posts at once.", 8, minimum=1, maximum=256)
    max_connections: int = option("Connections open at once at most; further ones wait in the listen backlog "
                                  "until one closes.", 1000, minimum=1)
    backlog: int = option("Connections the operating system queues until the receiver accepts them (on Linux "
                          "capped by net.core.somaxconn).", 1024, minimum=1)


@dataclass(frozen=True)
class AljexLiveOptions:
    """Which posts a sync receives."""

    table: str = option("The `web_sync_table_name` whose posts this sync receives.", examples=["employees"])


class _Answer(NamedTuple):
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


class _Refusal:
    """Stands in a request's ``error`` so that waitress answers it with ``answer`` and closes."""

    def __init__(self, answer: _Answer) -> None:
        self.answer = answer


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _body(answer: _Answer) -> bytes:
    return (answer.message + "\n").encode("utf-8")


class _Request(HTTPRequestParser):  # type: ignore[misc]  # waitress ships no type information
    """waitress's request parser, with the receiver's checks run as soon as the head is complete."""

    error: Any  # waitress's Error, or a _Refusal

    def __init__(self, adj: Any, channel: _Channel) -> None:
        super().__init__(adj)
        self.channel = channel

    def received(self, data: bytes) -> int:
        """Parse more of the request; a head the receiver refuses completes it with no body read."""
        had_head = self.headers_finished
        consumed: int = super().received(data)
        # `command` is missing when the request line or a header was malformed: waitress's 400 stands.
        if self.headers_finished and not had_head and not self.empty and hasattr(self, "command"):
            # waitress drops Transfer-Encoding from an HTTP/1.1 head once it has noted it (or failed on it).
            chunked = self.chunked or isinstance(self.error, ServerNotImplemented)
            answer = self.channel.receiver.screen(self.channel.addr[0], self.command, self.request_uri,
                                                  self.headers, chunked=chunked)
            if answer is not None:
                # Completing now keeps waitress from reading the body.
                self.error = _Refusal(answer)
                self.completed = True
        if self.completed and self.error is not None:
            # Answered with an error, then closed: no 100 Continue, the rest of this read is dropped and
            # the channel parses nothing more, so no byte of a refused body is taken for a request.
            self.expect_continue = False
            self.channel.refused = True
            return len(data)
        return consumed


class _ErrorTask(ErrorTask):  # type: ignore[misc]
    """Answers a refused or malformed request in the receiver's plain-text form, naming no server."""

    def execute(self) -> None:
        """Write the answer; the connection closes after it."""
        error = self.request.error
        if isinstance(error, _Refusal):
            answer = error.answer
        elif error.code == 500:
            answer = _Answer(error.code, "the server failed; send the post again")
        else:
            answer = _Answer(error.code, _FIXED_ERRORS.get(error.code, str(error.reason).lower()))
        body = _body(answer)
        self.status = _status_line(answer.status)
        self.response_headers.extend([*answer.headers, ("Content-Type", "text/plain; charset=utf-8")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(b"" if getattr(self.request, "command", "") == "HEAD" else body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    """One client connection; it knows when its current request began, and stops parsing after a refusal."""

    error_task_class = _ErrorTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        self.receiver: AljexLiveReceiver = server.receiver
        self.refused = False
        self.began: float | None = None  # monotonic time the first byte of the unfinished request came
        self.linger_until: float | None = None  # set once a refusal was sent and the sending side shut
        self.discarded = 0
        self.parser_class = lambda adj: _Request(adj, self)
        super().__init__(server, sock, addr, adj, map)

    def readable(self) -> bool:
        """Parse nothing more once a request was refused; after its answer, read only to discard."""
        if self.linger_until is not None:
            return True
        return not self.refused and bool(super().readable())

    def handle_read(self) -> None:
        """Read a request, or discard what a refused client still sends."""
        if self.linger_until is None:
            super().handle_read()
            return
        try:
            data = self.socket.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.discarded += len(data)
        if not data or self.discarded > self.receiver.config.max_body_bytes + MAX_HEADER_BYTES:
            super().handle_close()

    def handle_close(self) -> None:
        """Close; after a refusal, first shut the sending side and drain for a moment (a lingering close).

        Closing a socket with unread bytes (the refused body) sends a reset, and a reset that arrives
        before the client read the answer destroys the answer.
        """
        if self.refused and self.linger_until is None and self.connected and not self.total_outbufs_len:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                super().handle_close()
                return
            self.linger_until = time.monotonic() + LINGER
            self.will_close = self.close_when_flushed = False
            return
        super().handle_close()

    def received(self, data: bytes) -> bool:
        """Hand bytes to the parser and note when a new request starts or the current one completes."""
        before = self.request
        result = bool(super().received(data))
        if self.request is None:
            self.began = None
        elif self.request is not before:
            self.began = time.monotonic()
        return result


class _App:
    """The WSGI application: checks (again), reads, decodes and delivers one post."""

    def __init__(self, receiver: AljexLiveReceiver) -> None:
        self.receiver = receiver
        self.deliver: Callable[[PushEvent], Delivery] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Answer one request with a short plain text."""
        answer = self.answer(environ)
        body = _body(answer)
        start_response(_status_line(answer.status), [*answer.headers, ("Content-Type", "text/plain; charset=utf-8"),
                                                     ("Content-Length", str(len(body)))])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    def answer(self, environ: dict[str, Any]) -> _Answer:
        """Check, read and decode one post, and hand it to the engine."""
        # The head was screened while it arrived; screening again keeps the app safe on its own.
        headers = {name.removeprefix("HTTP_"): value for name, value in environ.items()
                   if name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH")}
        refusal = self.receiver.screen(environ["REMOTE_ADDR"], environ["REQUEST_METHOD"],
                                       environ.get("REQUEST_URI") or environ["PATH_INFO"], headers, chunked=False)
        if refusal is not None:
            return refusal
        length = int(headers["CONTENT_LENGTH"])
        body = environ["wsgi.input"].read(length)
        if len(body) < length:
            return _Answer(400, "the body ended early")
        return self.decode_and_deliver(body)

    def decode_and_deliver(self, body: bytes) -> _Answer:
        """Decode a form body into a record and deliver it."""
        config = self.receiver.config
        try:
            params = decode_form(body)
        except UnicodeDecodeError:
            return _Answer(400, "the body is not UTF-8 text")
        except ValueError as exc:
            return _Answer(400, f"the body is not form-encoded: {exc}")
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            return _Answer(400, f"parameter '{repeated[0]}' appears more than once")
        table = params.get(config.table_param, [""])[0]
        action = params.get(config.action_param, [""])[0].strip().lower()
        if not table:
            return _Answer(400, f"missing {config.table_param}")
        if not action:
            return _Answer(400, f"missing {config.action_param}")
        if action not in ACTIONS:
            return _Answer(400, f"unknown {config.action_param} '{action[:40]}'; expected create, update or delete")
        record = {name: values[0] for name, values in params.items()
                  if name not in (config.table_param, config.action_param)}
        if self.deliver is None:
            return _Answer(503, "the receiver is not serving yet; send the post again")
        try:
            delivery = self.deliver(PushEvent(table, action, record))
        except Exception:  # noqa: BLE001 - the sender is told and retries; the state did not advance
            log.exception("delivering a %s for %s failed", action, table)
            return _Answer(500, "the record could not be stored; send it again")
        return _Answer(delivery.status, delivery.message)


def decode_form(body: bytes) -> dict[str, list[str]]:
    """Strict form decoding: UTF-8, ``name=value`` pairs joined by ``&``, only valid ``%XX`` escapes."""
    text = body.decode("utf-8")
    fields: dict[str, list[str]] = {}
    if not text:
        return fields
    pairs = text.split("&")
    if len(pairs) > MAX_FIELDS:
        raise ValueError(f"more than {MAX_FIELDS} fields")
    for number, pair in enumerate(pairs, 1):
        name, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"field {number} has no '='")
        # unquote_to_bytes leaves '%ZZ', '%4' and a trailing '%' as they are; here they are errors.
        bad = _BAD_ESCAPE.search(pair)
        if bad is not None:
            raise ValueError(f"field {number} has a bad percent-escape '{pair[bad.start():bad.start() + 3]}'")
        fields.setdefault(_unquote(name), []).append(_unquote(value))
    return fields


def _unquote(text: str) -> str:
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")


def _connection_room(wanted: int) -> int:
    """Connections the open-file limit allows, raising the soft limit toward the hard one when it is short."""
    if sys.platform == "win32":
        return wanted
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass  # the limit stays; the connection cap below follows it
    if soft != resource.RLIM_INFINITY and soft < need:
        # Past the limit accept() fails, and waitress closes its listener on that error for good.
        room = max(1, soft - FD_RESERVE)
        log.warning("aljex_live: max_connections %d is over what the open-file limit %d allows; using %d",
                    wanted, soft, room)
        return room
    return wanted


@REGISTRY.receiver("aljex_live", config=AljexLiveConfig, options=AljexLiveOptions)
class AljexLiveReceiver:
    """Aljex live sync: form-encoded HTTP posts, one record each, routed by table name."""

    def __init__(self, config: AljexLiveConfig, base_dir: Path) -> None:
        if not config.username or not config.password:
            raise ConfigError("aljex_live needs a username and a password (from the environment)")
        self.config = config
        self._user = config.username.encode("utf-8")
        self._password = config.password.encode("utf-8")
        try:
            self.networks = [ipaddress.ip_network(a, strict=False) for a in config.allow_ips]
        except ValueError as exc:
            raise ConfigError(f"aljex_live allow_ips: {exc}") from exc
        self.server: Any = None  # a waitress TcpWSGIServer between bind() and the end of serve()
        self.app = _App(self)

    def allowed(self, address: str) -> bool:
        """Whether ``address`` may post (always, without an allow-list)."""
        if not self.networks:
            return True
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def authorized(self, header: str | None) -> bool:
        """Check an ``Authorization`` header; user and password are both compared in constant time."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, _, password = decoded.partition(b":")
        # `&`, not `and`: both comparisons always run.
        return hmac.compare_digest(user, self._user) & hmac.compare_digest(password, self._password)

    def screen(self, address: str, method: str, target: str, headers: Mapping[str, str], *,
               chunked: bool) -> _Answer | None:
        """The refusal for a request head (header names as ``CONTENT_LENGTH``), or ``None`` to read its body."""
        config = self.config
        if not self.allowed(address):
            return _Answer(403, "this address may not post here")
        if not self.authorized(headers.get("AUTHORIZATION")):
            return _Answer(401, "wrong or missing credentials", _CHALLENGE)
        if method != "POST":
            return _Answer(405, "only POST is accepted", (("Allow", "POST"),))
        if urlsplit(target).path != config.path:
            return _Answer(404, f"posts go to {config.path}")
        kind, _, params = (headers.get("CONTENT_TYPE") or "").partition(";")
        if kind.strip().lower() != FORM:
            return _Answer(415, f"expected Content-Type {FORM}")
        charset = next((v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
                        if k.strip().lower() == "charset"), "utf-8")
        if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
            return _Answer(415, f"charset {charset} is not accepted; send UTF-8")
        length = headers.get("CONTENT_LENGTH")
        if chunked or headers.get("TRANSFER_ENCODING") or length is None:
            return _Answer(411, "send the body with a Content-Length")
        # Exactly one, plain digits: int() would take "+64", " 64" or "6_4", and a second header
        # another server might read differently is how requests get smuggled past a proxy (waitress
        # joins repeated headers with ", ", so two of them fail here too).
        if not re.fullmatch(r"[0-9]{1,12}", length):
            return _Answer(400, "Content-Length must be one plain number")
        if int(length) > config.max_body_bytes:
            return _Answer(413, f"the body is over {config.max_body_bytes} bytes")
        return None

    def open_stream(self, options: AljexLiveOptions, ctx: StreamContext) -> NoReturn:
        """A receiver cannot be pulled: ``apply`` reaches this for a live sync, and is told so."""
        raise RunFailed(f"sync '{ctx.sync}' is fed by Aljex live posts; run it with `syncengine serve`")

    def route(self, options: AljexLiveOptions) -> str:
        """The table name a sync receives."""
        return options.table

    def bind(self, host: str, port: int) -> str:
        """Open the listening socket; returns the URL to give Aljex."""
        self.close()
        config = self.config
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 posts too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # waitress warns on every queued request once all threads are busy: a burst would log a line per post.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        # The server counts its listener and its wake-up pipe as connections.
        connection_limit = _connection_room(config.max_connections) + 2
        self.server = create_server(
            self.app, map={}, sockets=[sock], threads=config.threads, connection_limit=connection_limit,
            backlog=config.backlog, channel_timeout=max(1, math.ceil(config.idle_timeout)),
            max_request_body_size=config.max_body_bytes + 1,  # waitress refuses a length equal to it
            max_request_header_size=MAX_HEADER_BYTES, expose_tracebacks=False, ident="", asyncore_use_poll=True,
            log_socket_errors=False, clear_untrusted_proxy_headers=False)
        self.server.channel_class = _Channel
        self.server.receiver = self
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return f"http://{shown}:{bound}{config.path}"

    def serve(self, deliver: Callable[[PushEvent], Delivery], stop: threading.Event) -> None:
        """Answer posts until ``stop`` is set, then finish the requests in flight and close."""
        if self.server is None:
            self.bind("127.0.0.1", 0)
        server = self.server
        self.app.deliver = deliver
        try:
            next_sweep = 0.0
            while not stop.is_set():
                wasyncore.loop(timeout=TICK, use_poll=True, map=server._map, count=1)
                if time.monotonic() >= next_sweep:
                    self._sweep(server)
                    next_sweep = time.monotonic() + SWEEP_EVERY
        finally:
            try:
                self._drain(server)
            finally:
                self.server = None

    def _sweep(self, server: Any) -> None:
        """Close connections silent for ``idle_timeout`` or with a request unfinished after ``request_timeout``."""
        silent_since = time.time() - self.config.idle_timeout  # waitress stamps activity with time.time()
        begun_before = time.monotonic() - self.config.request_timeout
        now = time.monotonic()
        for channel in list(server.active_channels.values()):
            if channel.linger_until is not None and channel.linger_until < now:
                channel.will_close = True
            if channel.requests:
                continue  # a complete request is being answered; its connection is busy, not slow
            if channel.last_activity < silent_since or (channel.began is not None and channel.began < begun_before):
                channel.will_close = True

    def _drain(self, server: Any) -> None:
        """Stop accepting, close idle connections, let the requests in flight be answered, then close."""
        wasyncore.dispatcher.close(server)  # the listener only; the wake-up pipe is still needed
        deadline = time.monotonic() + STOP_WAIT
        while server.active_channels and time.monotonic() < deadline:
            for channel in list(server.active_channels.values()):
                with channel.requests_lock:
                    request = channel.request
                    uploading = request is not None and request.headers_finished and not request.completed
                    if not channel.requests and not uploading:
                        channel.close_when_flushed = True  # closes once its last answer is sent
            self._sweep(server)  # an upload still gets only until its request deadline
            wasyncore.loop(timeout=0.05, use_poll=True, map=server._map, count=1)
        server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(server._map)

    def close(self) -> None:
        """Close a socket that was bound but never served."""
        if self.server is not None:
            self.server.task_dispatcher.shutdown(timeout=5)
            wasyncore.close_all(self.server._map)
            self.server = None
