"""The HTTP server the receivers share: waitress, hardened against hostile and careless clients.

The Aljex live receiver (``aljex_live``) and the Dsync connector (``dsync_connector``) differ in what
they accept and how they answer, not in how they hold connections; this module is the part they share,
so that a fix to the server is made once. A receiver subclasses :class:`WaitressReceiver` and supplies
:meth:`~WaitressReceiver.screen` (the checks on a request head), :meth:`~WaitressReceiver.application`
(the WSGI application answering a request whose head passed), :meth:`~WaitressReceiver.render` (its
answers in its own format) and :meth:`~WaitressReceiver.waitress_error` (its answer to a request waitress
could not parse).

One thread waits on every socket, a fixed pool of ``threads`` answers requests, and at most
``max_connections`` are open (more wait in the listen ``backlog``). The receiver's ``screen`` runs as
soon as a request head has arrived, before any body is read and before an ``Expect: 100-continue`` is
answered; a refused request is answered and its connection closed after a short lingering close. A
connection silent for ``idle_timeout``, or whose request is not complete ``request_timeout`` after it
began, is closed. On stop the server stops accepting, closes idle keep-alive connections, lets the
requests in flight finish and answers them, then closes.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ErrorTask
from waitress.utilities import ServerNotImplemented

from engine.errors import ConnectError
from engine.interfaces import Delivery, PushEvent
from engine.typed_config import option

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
FIXED_ERRORS = {400: "the request is not valid HTTP", 431: f"the request head is over {MAX_HEADER_BYTES} bytes"}
"""Texts for the errors waitress finds itself: its own texts quote the offending request, these say only what
was wrong."""

_SERVER_OPTIONS: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "max_body_bytes": ("Largest request body accepted, in bytes (larger {what} get 413).", 1048576, {"minimum": 1}),
    "idle_timeout": ("Seconds a silent connection is kept open.", 30.0, {"exclusiveMinimum": 0}),
    "request_timeout": ("Seconds a client has to send a whole request (head and body) once it began; a slower one "
                        "is disconnected, however steadily it trickles.", 30.0, {"exclusiveMinimum": 0}),
    "threads": ("Threads that answer requests. Records are still written one at a time; more threads check and "
                "read more {what} at once.", 8, {"minimum": 1, "maximum": 256}),
    "max_connections": ("Connections open at once at most; further ones wait in the listen backlog until one "
                        "closes.", 1000, {"minimum": 1}),
    "backlog": ("Connections the operating system queues until the receiver accepts them (on Linux capped by "
                "net.core.somaxconn).", 1024, {"minimum": 1}),
}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def server_option(name: str, what: str = "requests") -> Any:
    """The config field for one of the server's settings (a :class:`ServerConfig` attribute).

    Every receiver's config declares these fields itself (where they stand decides the order its schema lists
    them in), but their help, default and bounds are the server's, so they are written once, here; ``what`` is
    what the receiver's senders send, as the help names it (``posts`` for Aljex).
    """
    description, default, extra = _SERVER_OPTIONS[name]
    return option(description.format(what=what), default, **extra)


class ServerConfig(Protocol):
    """The settings the server reads from a receiver's config (each receiver's config dataclass has them)."""

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def request_timeout(self) -> float: ...

    @property
    def threads(self) -> int: ...

    @property
    def max_connections(self) -> int: ...

    @property
    def backlog(self) -> int: ...


ConfigT = TypeVar("ConfigT", bound=ServerConfig)
AnswerT = TypeVar("AnswerT")


class _Refusal:
    """Stands in a request's ``error`` so that waitress answers it with ``answer`` (what ``screen`` returned)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer


def status_line(status: int) -> str:
    """``404 Not Found``: the status line WSGI wants, built from the number alone."""
    return f"{status} {HTTPStatus(status).phrase}"


class Rendered(NamedTuple):
    """An answer as it is sent: the status, the headers (``Content-Type`` included) and the body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def start(self, start_response: Callable[..., Any]) -> bytes:
        """Start the WSGI response (with its ``Content-Length``); returns the body, for the application to return."""
        start_response(status_line(self.status), [*self.headers, ("Content-Length", str(len(self.body)))])
        return self.body


def request_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """A WSGI environ's request headers under the names ``screen`` sees (``CONTENT_LENGTH``, ``AUTH_TOKEN``).

    The WSGI application screens the head again with these, so that it is safe without the server's early check.
    """
    return {name.removeprefix("HTTP_"): value for name, value in environ.items()
            if name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH")}


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
    """Answers a refused or malformed request in the receiver's own form, naming no server."""

    def execute(self) -> None:
        """Write the answer; the connection closes after it."""
        receiver: WaitressReceiver[Any, Any] = self.channel.receiver
        error = self.request.error
        if isinstance(error, _Refusal):
            rendered = receiver.render(error.answer)
        else:
            text = FIXED_ERRORS.get(error.code, str(error.reason).lower())
            rendered = receiver.render(receiver.waitress_error(error.code, text))
        self.status = status_line(rendered.status)
        self.response_headers.extend(rendered.headers)
        self.set_close_on_finish()
        self.content_length = len(rendered.body)
        self.write(b"" if getattr(self.request, "command", "") == "HEAD" else rendered.body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    """One client connection; it knows when its current request began, and stops parsing after a refusal."""

    error_task_class = _ErrorTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        self.receiver: WaitressReceiver[Any, Any] = server.receiver
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


def _connection_room(wanted: int, receiver: str) -> int:
    """Connections the open-file limit allows, raising the soft limit toward the hard one when it is short.

    ``receiver`` names the receiver in the warning (and picks its logger), so an operator knows whose cap it is.
    """
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
        logging.getLogger("syncengine").getChild(receiver).warning(
            "%s: max_connections %d is over what the open-file limit %d allows; using %d", receiver, wanted, soft,
            room)
        return room
    return wanted


class WaitressReceiver(ABC, Generic[ConfigT, AnswerT]):
    """A receiver served by waitress: ``bind``, ``serve`` and ``close`` of the receiver protocol.

    ``AnswerT`` is the receiver's own answer type. A subclass sets :attr:`receiver_name` and supplies the checks on
    a request head (:meth:`screen`), the WSGI application (:meth:`application`), how its answers are sent
    (:meth:`render`) and its answer to a request waitress refused itself (:meth:`waitress_error`); :meth:`url_path`
    is what ``bind`` puts after the address. The application reads :attr:`deliver`, which ``serve`` sets.
    """

    receiver_name: ClassVar[str]
    """The receiver's registered name, for its log lines."""

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self.server: Any = None  # a waitress TcpWSGIServer between bind() and the end of serve()
        self.deliver: Callable[[PushEvent], Delivery] | None = None
        """The engine's delivery, once ``serve`` began; until then the application answers that it is not ready."""

    @abstractmethod
    def screen(self, address: str, method: str, target: str, headers: Mapping[str, str], *,
               chunked: bool) -> AnswerT | None:
        """The refusal for a request head (header names as ``CONTENT_LENGTH``), or ``None`` to read its body.

        The server calls it as soon as a head has arrived; a refusal is answered (with :meth:`render`) and the
        connection closed without reading the body.
        """

    @abstractmethod
    def application(self) -> WSGIApp:
        """The WSGI application that answers a request whose head passed :meth:`screen`."""

    @abstractmethod
    def render(self, answer: AnswerT) -> Rendered:
        """An answer as it is sent, in the receiver's format (``Content-Type`` among its headers)."""

    @abstractmethod
    def waitress_error(self, status: int, text: str) -> AnswerT:
        """The answer to a request waitress refused itself (a malformed or oversized head: ``text`` says what was
        wrong, quoting nothing of the request), or, with status 500, one it failed to answer."""

    def url_path(self) -> str:
        """What the URL ``bind`` returns has after the address (empty: the root)."""
        return ""

    def bind(self, host: str, port: int) -> str:
        """Open the listening socket; returns the URL to give the sender."""
        self.close()
        config = self.config
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 requests too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # waitress warns on every queued request once all threads are busy: a burst would log a line per request.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        # The server counts its listener and its wake-up pipe as connections.
        connection_limit = _connection_room(config.max_connections, self.receiver_name) + 2
        self.server = create_server(
            self.application(), map={}, sockets=[sock], threads=config.threads, connection_limit=connection_limit,
            backlog=config.backlog, channel_timeout=max(1, math.ceil(config.idle_timeout)),
            max_request_body_size=config.max_body_bytes + 1,  # waitress refuses a length equal to it
            max_request_header_size=MAX_HEADER_BYTES, expose_tracebacks=False, ident="", asyncore_use_poll=True,
            log_socket_errors=False, clear_untrusted_proxy_headers=False)
        self.server.channel_class = _Channel
        self.server.receiver = self
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return f"http://{shown}:{bound}{self.url_path()}"

    def serve(self, deliver: Callable[[PushEvent], Delivery], stop: threading.Event) -> None:
        """Answer requests until ``stop`` is set, then finish the requests in flight and close."""
        if self.server is None:
            self.bind("127.0.0.1", 0)
        server = self.server
        self.deliver = deliver
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
