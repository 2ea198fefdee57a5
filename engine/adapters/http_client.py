"""Shared pieces of the HTTP adapters: the connection and retry config, a keep-alive session, and
one request sent with retries, its failures translated into the engine's errors once.

Two ways to send: :meth:`Sender.attempt` through a urllib3 pool (the REST adapters, and any URL
reached through a proxy), blocking its thread; and a :class:`ConnectionSet`, lean HTTP/1.1
keep-alive connections that the one thread using them drives with a selector (the ``http``
destination), judged by :meth:`Sender.conclude`. On loopback a urllib3 request costs about 2.3x the
CPU of ``http.client``, and ``http.client`` several times a request of the connection set.

Retried, with exponential backoff and jitter: connection errors, timeouts, 408, 429 (waiting at
least the server's ``Retry-After``) and every 5xx. Not retried: other 4xx (the record is wrong),
TLS failures (the identity is wrong). 401 and 407 mean the credentials are wrong for every record,
so they stop the run instead of dead-lettering each record. :meth:`Sender.attempt` sends once and
says when to retry; the caller schedules the retry, so no sending thread ever sleeps on one.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from engine.errors import ConnectError
from engine.retry import Backoff
from engine.typed_config import option, secret

if TYPE_CHECKING:
    import urllib3

RETRY_STATUSES = frozenset({408, 429})
STOP_STATUSES = frozenset({401, 407})


@dataclass(frozen=True)
class HttpConnectionConfig:
    """The connection, auth and retry fields every HTTP adapter shares."""

    username: str | None = option("User name for HTTP basic auth.", None, examples=["syncengine"])
    password: str | None = secret("Password for HTTP basic auth.", examples=["{{ env.SINK_PASSWORD }}"])
    headers: dict[str, str] = option("Extra request headers (put tokens in the environment, not here).", {},
                                     examples=[{"X-Source": "syncengine"}])
    timeout: float = option("Seconds to wait for a connection or a response before retrying.", 30.0,
                            exclusiveMinimum=0)
    max_retries: int = option("Retries of one request after a 5xx, 408, 429, timeout or connection error.", 5,
                              minimum=0, maximum=20)
    backoff: float = option("First retry delay in seconds; it doubles each retry, with jitter.", 0.5,
                            minimum=0, examples=[0.5])
    max_backoff: float = option("Longest wait between retries, in seconds (a longer Retry-After is cut to this).",
                                60.0, minimum=0)
    ca_file: str | None = option("CA bundle (PEM) to verify the server with, relative to the pipeline file; "
                                 "the system's trusted CAs by default. Verification cannot be turned off.", None,
                                 examples=["certs/internal-ca.pem"])


def basic_auth_header(username: str | None, password: str | None) -> dict[str, str]:
    """The ``Authorization`` header of basic auth, or nothing without a user name."""
    if not username:
        return {}
    token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def make_pool(config: HttpConnectionConfig, base_dir: Path, url: str, pool_size: int) -> urllib3.PoolManager:
    """A thread-safe pool of ``pool_size`` keep-alive connections per host, TLS verified.

    urllib3 directly (the pool requests itself is built on) costs half of what a ``requests``
    session adds per request, which on a fast endpoint is most of the time a record takes.
    A proxy from the environment (``HTTPS_PROXY``/``HTTP_PROXY``, honouring ``NO_PROXY``) is read once.
    """
    import certifi
    import urllib3  # imported on first use, so registering the adapter stays cheap

    env_ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    ca_certs = str(base_dir / config.ca_file) if config.ca_file else (env_ca or certifi.where())
    options: dict[str, Any] = {"num_pools": 4, "maxsize": pool_size, "block": False, "cert_reqs": "CERT_REQUIRED",
                               "ca_certs": ca_certs, "retries": False}
    proxy = _proxy_for(url)
    if proxy:
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


def _proxy_for(url: str) -> str | None:
    """The environment's proxy for ``url``, unless ``NO_PROXY`` exempts its host."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or (parts.hostname and proxy_bypass(parts.hostname)):
        return None
    return proxy


class Response(Protocol):
    """What the adapters read of an answer: a urllib3 response or a :class:`Answer`."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def data(self) -> bytes: ...


def retry_after(response: Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta or HTTP date), or ``None``."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        try:
            return max(0.0, float(value))  # not standard, but some servers send "0.5"
        except ValueError:
            return None


class Aborted(ConnectError):
    """A request given up because another request found the server unusable."""


@dataclass(frozen=True)
class Attempted:
    """The last answer to a request: a response, or why there was none after every retry."""

    response: Response | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class Retry:
    """A retryable answer: send the request again at ``at`` (on the ``time.monotonic()`` clock).

    ``hold`` says the server as a whole is unwell (it cannot be reached, or answered 429), so the
    sender should start no new request before ``at`` either, instead of finding that out once per record.
    """

    at: float
    hold: bool = False
    status: int | None = None
    """The HTTP status that asked for the retry (``None`` for a failed connection or a timeout)."""


class Sender:
    """Sends requests, telling what a retry may cure and when to retry it.

    Through a urllib3 pool (:meth:`attempt`), or, for a request a :class:`ConnectionSet` carried, by
    :meth:`conclude`; both judge an answer or a failure the same way.
    """

    def __init__(self, config: HttpConnectionConfig, pool: urllib3.PoolManager | None) -> None:
        import urllib3

        self.config = config
        self.pool = pool
        self.errors = urllib3.exceptions
        self.timeout = urllib3.Timeout(config.timeout)
        self.backoff = Backoff(first=config.backoff, cap=config.max_backoff, retries=config.max_retries)

    def delay(self, attempt: int, hint: float | None) -> float:
        """Backoff for the ``attempt``-th retry: doubling, jittered, at least the server's hint."""
        return self.backoff.delay(attempt, hint)

    def attempt(self, method: str, url: str, *, body: bytes | None, headers: dict[str, str], attempt: int,
                abort: threading.Event, stop_statuses: frozenset[int] = STOP_STATUSES) -> Attempted | Retry:
        """Send once (``attempt`` counts from 0): the final answer, or a :class:`Retry` saying when to try again.

        It never sleeps, so a thread that sends is free for other requests while this one waits for
        its retry. Once ``max_retries`` retries were spent, a retryable answer is final. Raises
        :class:`ConnectError` when the server cannot be reached at all, refuses the credentials or
        fails TLS verification, and :class:`Aborted` when ``abort`` was set before the request left.
        ``stop_statuses`` are the answers that refuse the credentials (a token client handles 401 itself)."""
        if abort.is_set():
            raise Aborted("stopped: another request could not reach the server")
        assert self.pool is not None, "a Sender without a pool judges what a ConnectionSet carried (conclude)"
        try:
            response = self.pool.urlopen(method, url, body=body, headers=headers, timeout=self.timeout,
                                         retries=False, redirect=False)
        except self.errors.SSLError as exc:
            raise ConnectError(f"TLS verification of {_origin(url)} failed: {_reason(exc)}") from exc
        except (self.errors.HTTPError, OSError) as exc:
            # A refused or failed connection means the server is not there; a timeout or a dropped
            # connection after it was made may be cured by a retry, then it is this record's failure.
            unreachable = isinstance(exc, (self.errors.NewConnectionError, self.errors.ConnectTimeoutError))
            timed_out = isinstance(exc, (self.errors.TimeoutError, TimeoutError))
            return self.failed(exc, url, attempt, unreachable=unreachable, timed_out=timed_out)
        return self.judge(response, url, attempt, stop_statuses)

    def conclude(self, result: Response | BaseException, url: str, attempt: int) -> Attempted | Retry:
        """What a request over a :class:`ConnectionSet` came to: judged as :meth:`attempt` judges it."""
        if isinstance(result, Unreachable):
            return self.failed(result, url, attempt, unreachable=True, timed_out=False)
        if isinstance(result, TlsFailed):
            raise ConnectError(f"TLS verification of {_origin(url)} failed: {_reason(result)}") from result
        if isinstance(result, OSError):  # a timeout, a reset, an answer cut short or not HTTP
            return self.failed(result, url, attempt, unreachable=False, timed_out=isinstance(result, TimeoutError))
        if isinstance(result, BaseException):
            raise result
        return self.judge(result, url, attempt, STOP_STATUSES)

    def failed(self, exc: BaseException, url: str, attempt: int, *, unreachable: bool,
               timed_out: bool) -> Attempted | Retry:
        """No answer: a retry, or once they are spent a failed record (or a stopped run when unreachable)."""
        if not self.backoff.exhausted(attempt):
            return Retry(time.monotonic() + self.delay(attempt, None), hold=unreachable)
        if unreachable:
            raise ConnectError(f"cannot reach {_origin(url)} after {attempt + 1} attempts: {_reason(exc)}") from exc
        if timed_out:
            return Attempted(None, f"no answer within {self.config.timeout:g}s after {attempt + 1} attempts",
                             attempt + 1)
        return Attempted(None, f"connection lost after {attempt + 1} attempts: {_reason(exc)}", attempt + 1)

    def judge(self, response: Response, url: str, attempt: int, stop_statuses: frozenset[int]) -> Attempted | Retry:
        """An answer: final, a retry (5xx, 408, 429), or a stopped run (refused credentials)."""
        status = response.status
        if status in stop_statuses:
            raise ConnectError(f"{_origin(url)} refused the credentials (HTTP {status})")
        if status < 500 and status not in RETRY_STATUSES:
            return Attempted(response, None, attempt + 1)
        if self.backoff.exhausted(attempt):
            return Attempted(response, f"HTTP {status} after {attempt + 1} attempts", attempt + 1)
        # 429 speaks for the whole server (a rate limit); a 5xx or 408 only for this request.
        return Retry(time.monotonic() + self.delay(attempt, retry_after(response)), hold=status == 429, status=status)


# --- a lean keep-alive connection -------------------------------------------------------------------------


class Unreachable(OSError):
    """The server could not be reached: no connection was made (refused, no route, no name, timed out)."""


class TlsFailed(OSError):
    """The TLS handshake failed (the server's identity could not be verified, or it speaks no TLS)."""


class Dropped(OSError):
    """The connection ended before a whole answer came, or what came was not HTTP."""


class Headers(dict[str, str]):
    """An answer's header fields, looked up by name in any case (repeated fields joined with ", ")."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer read by a :class:`Connection`."""

    status: int
    headers: Headers
    data: bytes


_NO_BODY = frozenset({204, 304})
_TARGET_SAFE = "/?#[]@!$&'()*+,;=:-._~%"
"""What a request target keeps as it is: reserved and unreserved characters, and ``%`` (escapes stay escapes)."""


def tls_context(config: HttpConnectionConfig, base_dir: Path) -> ssl.SSLContext:
    """The context that verifies servers: ``ca_file``, else ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``, else certifi."""
    import certifi

    env_ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    ca_certs = str(base_dir / config.ca_file) if config.ca_file else (env_ca or certifi.where())
    return ssl.create_default_context(cafile=ca_certs)  # CERT_REQUIRED and host names checked


def proxied(url: str) -> bool:
    """Whether the environment sends ``url`` through a proxy (then the urllib3 pool carries it)."""
    return _proxy_for(url) is not None


_IDLE, _CONNECTING, _HANDSHAKE, _SENDING, _RECEIVING = range(5)
_NOT_YET = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Link:
    """One connection of a :class:`ConnectionSet` and the request it carries (if any)."""

    __slots__ = ("sock", "state", "buffer", "tag", "data", "sent", "deadline", "addresses", "events", "poller")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.state = _IDLE
        self.buffer = b""
        self.tag: Any = None
        self.data = b""
        self.sent = 0
        self.deadline = 0.0
        self.addresses: list[Any] = []
        self.events = 0
        self.poller: select.poll | None = None


class ConnectionSet:
    """Up to ``size`` keep-alive HTTP/1.1 connections to one origin, driven by the thread that uses it.

    :meth:`start` writes a request on an idle connection (a new one is made when none is open, or
    the open one was closed by the server while idle, as urllib3 checks before each reuse);
    :meth:`poll` waits on every connection at once with a selector and returns the requests that
    completed. No thread hands a request to another: the one thread that records outcomes also
    sends and reads, so on a fast endpoint a record costs a few system calls and a plain parse
    (no request object, no pool lock, no GIL hand-off between threads).

    A request is written as one buffer (request line, ``Host``, the caller's header lines,
    ``Content-Length``, body); an answer's body is read by ``Content-Length``, chunked, or up to the
    end of the connection. A connection is closed after anything went wrong (a timeout, a reset, an
    answer cut short: a late answer must never be read as the next request's) and after
    ``Connection: close``. ``timeout`` bounds each wait for the server: to connect, and between
    bytes of an answer. Redirects are answers like any other; cookies are not kept.

    What :meth:`poll` returns for a request: an :class:`Answer`, or the error: :class:`Unreachable`
    (no connection could be made), :class:`TlsFailed`, ``TimeoutError`` (no answer in time) or another
    ``OSError`` (the connection was lost, or what came was not HTTP).
    """

    def __init__(self, url: str, size: int, timeout: float, context: ssl.SSLContext | None,
                 host: str | None = None) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        name = self.host if self.host.isascii() else self.host.encode("idna").decode("ascii")
        name = f"[{name}]" if ":" in name else name
        if self.port != (443 if self.https else 80):
            name = f"{name}:{self.port}"
        self.prefix = f"{parts.scheme}://{parts.netloc}"
        """Every URL sent here starts with this; the rest is the request target."""
        self.host_line = f"Host: {host or name}\r\n".encode("latin-1")
        """``Host`` as the URL says, unless the caller's headers name one (``host``)."""
        self.timeout = timeout
        self.context = context
        self.selector = selectors.DefaultSelector()
        self.links = [_Link() for _ in range(size)]
        self.idle = list(self.links)
        self.done: list[tuple[Any, Answer | BaseException]] = []

    # --- the caller's side ---------------------------------------------------------------------------------

    def start(self, tag: Any, method: str, url: str, head: bytes, body: bytes | None) -> None:
        """Send a request (``head``: its header lines, encoded, without ``Host`` and ``Content-Length``);
        :meth:`poll` returns ``tag`` with its answer. There must be an idle connection (at most ``size``
        requests at once)."""
        target = url[len(self.prefix):] if url.startswith(self.prefix) else urlsplit(url).path
        if not target.startswith("/"):
            target = "/" + target
        if not target.isascii() or not target.isprintable() or " " in target:
            target = quote(target, safe=_TARGET_SAFE)
        request = f"{method} {target} HTTP/1.1\r\n".encode("ascii") + self.host_line + head
        if body is not None:
            request += b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            request += b"\r\n"
        link = self.idle.pop()
        link.tag, link.data, link.sent = tag, request, 0
        link.deadline = time.monotonic() + self.timeout
        if link.sock is not None and (link.buffer or (link.poller is not None and link.poller.poll(0))):
            self.drop(link)  # the server closed it while it was idle (or sent what nobody asked for)
        if link.sock is None:
            self.open(link)
        else:
            self.send(link)

    def poll(self, timeout: float | None) -> list[tuple[Any, Answer | BaseException]]:
        """Wait up to ``timeout`` seconds (``None``: until one completes) for requests to complete;
        ``(tag, answer or error)`` of each that did (none when the time ran out first)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            busy = [link for link in self.links if link.state != _IDLE]
            if not busy:
                break
            now = time.monotonic()
            wait = max(0.0, min(link.deadline for link in busy) - now)
            if end is not None:
                wait = min(wait, max(0.0, end - now))
            for key, mask in self.selector.select(wait):
                self.event(key.data, mask)
            now = time.monotonic()
            for link in busy:
                if link.state != _IDLE and now >= link.deadline:
                    connecting = link.state in (_CONNECTING, _HANDSHAKE)
                    self.fail(link, Unreachable(f"no connection within {self.timeout:g}s") if connecting
                              else TimeoutError(f"no answer within {self.timeout:g}s"))
            if end is not None and now >= end:
                break
        done, self.done = self.done, []
        return done

    def close(self) -> None:
        """Close every connection (a request still on its way is dropped)."""
        for link in self.links:
            self.drop(link)
        self.selector.close()

    # --- one connection ---------------------------------------------------------------------------------------

    def event(self, link: _Link, mask: int) -> None:
        """A connection is ready: go on with what it was doing."""
        state = link.state
        if state == _RECEIVING:
            self.receive(link)
        elif state == _SENDING:
            self.send(link)
        elif state == _CONNECTING:
            self.connected(link)
        elif state == _HANDSHAKE:
            self.handshake(link)
        else:
            self.drop(link)  # idle and readable: the server closed it

    def watch(self, link: _Link, events: int) -> None:
        """Wait for ``events`` on the connection."""
        assert link.sock is not None
        if link.events == events:
            return
        if link.events:
            self.selector.modify(link.sock, events, link)
        else:
            self.selector.register(link.sock, events, link)
        link.events = events

    def open(self, link: _Link) -> None:
        """Start a new connection (the name is resolved here; connecting does not block)."""
        try:
            link.addresses = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(link, Unreachable(f"{exc.__class__.__name__}: {exc}"))
            return
        self.connect_next(link, None)

    def connect_next(self, link: _Link, error: OSError | None) -> None:
        """Connect to the next address of the name (each is tried in turn, as ``create_connection`` does)."""
        while link.addresses:
            family, kind, proto, _, address = link.addresses.pop(0)
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                link.sock, link.state, link.events = sock, _CONNECTING, 0
                self.watch(link, selectors.EVENT_WRITE)
                return
            sock.close()
            error = OSError(code, os.strerror(code))
        self.fail(link, Unreachable(f"{error.__class__.__name__}: {error}" if error else "no address"))

    def connected(self, link: _Link) -> None:
        """The connection is made (or refused): on to TLS, or to sending."""
        assert link.sock is not None
        code = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.forget(link)
            self.connect_next(link, OSError(code, os.strerror(code)))
            return
        link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.deadline = time.monotonic() + self.timeout
        if self.https:
            assert self.context is not None
            self.selector.unregister(link.sock)
            link.events = 0
            link.sock = self.context.wrap_socket(link.sock, server_hostname=self.host, do_handshake_on_connect=False)
            link.state = _HANDSHAKE
            self.handshake(link)
        else:
            self.ready(link)

    def handshake(self, link: _Link) -> None:
        """Go on with the TLS handshake."""
        assert isinstance(link.sock, ssl.SSLSocket)
        try:
            link.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.watch(link, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.watch(link, selectors.EVENT_WRITE)
            return
        except ssl.SSLError as exc:
            self.fail(link, TlsFailed(str(exc)))
            return
        except OSError as exc:
            self.fail(link, exc)
            return
        self.ready(link)

    def ready(self, link: _Link) -> None:
        """The connection is usable: send the request."""
        assert link.sock is not None
        link.poller = select.poll()
        link.poller.register(link.sock.fileno(), select.POLLIN | select.POLLPRI)
        self.send(link)

    def send(self, link: _Link) -> None:
        """Write (the rest of) the request."""
        assert link.sock is not None
        link.state = _SENDING
        try:
            link.sent += link.sock.send(link.data[link.sent:] if link.sent else link.data)
        except ssl.SSLWantReadError:
            self.watch(link, selectors.EVENT_READ)
            return
        except _NOT_YET:
            self.watch(link, selectors.EVENT_WRITE)
            return
        except OSError as exc:
            self.fail(link, exc)
            return
        if link.sent < len(link.data):
            self.watch(link, selectors.EVENT_WRITE)
            return
        link.state = _RECEIVING
        link.deadline = time.monotonic() + self.timeout
        self.watch(link, selectors.EVENT_READ)

    def receive(self, link: _Link) -> None:
        """Read what came, and complete the request when its answer is whole."""
        sock = link.sock
        assert sock is not None
        ended = False
        while True:
            try:
                chunk = sock.recv(65536)
            except _NOT_YET:
                break
            except ssl.SSLZeroReturnError:  # the server closed TLS (close_notify): the end, as an empty read
                chunk = b""
            except OSError as exc:
                self.fail(link, exc)
                return
            if not chunk:
                ended = True
                break
            link.buffer += chunk
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):  # TLS may hold bytes the selector cannot see
                break
        try:
            parsed = parse_answer(link.buffer, ended)
        except Dropped as exc:
            self.fail(link, exc)
            return
        if parsed is None:
            if ended:
                self.fail(link, Dropped("the server closed the connection without an answer" if not link.buffer
                                        else "the answer ended early"))
            else:
                link.deadline = time.monotonic() + self.timeout
            return
        answer, rest, close = parsed
        link.buffer = rest
        self.done.append((link.tag, answer))
        self.release(link)
        if close or ended or rest:
            self.drop(link)

    def release(self, link: _Link) -> None:
        """The connection carries no request any more."""
        link.state, link.tag, link.data = _IDLE, None, b""
        self.idle.append(link)

    def fail(self, link: _Link, error: BaseException) -> None:
        """The request failed: report it, close the connection."""
        self.done.append((link.tag, error))
        self.release(link)
        self.drop(link)

    def forget(self, link: _Link) -> None:
        """Close the socket (the connection's state stays)."""
        if link.sock is not None:
            if link.events:
                try:
                    self.selector.unregister(link.sock)
                except (KeyError, ValueError):
                    pass
            try:
                link.sock.close()
            except OSError:
                pass
        link.sock, link.events, link.poller = None, 0, None

    def drop(self, link: _Link) -> None:
        """Close the connection; the next request on it makes a new one."""
        self.forget(link)
        link.buffer = b""
        if link.state != _IDLE:
            link.state = _IDLE  # only by close(): a request on its way is dropped


MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The largest answer body read (a write's answer carries an id or an error, not a download)."""


def parse_answer(buffer: bytes, ended: bool) -> tuple[Answer, bytes, bool] | None:
    """The first final answer in ``buffer`` (informational 1xx answers skipped): the answer, what
    follows it, and whether the connection closes after it; ``None`` while it is not whole.
    ``ended``: the server closed the connection after ``buffer``. Raises :class:`Dropped` for what is not HTTP,
    and for an answer over :data:`MAX_ANSWER_BYTES` (a broken or hostile server must not fill the memory)."""
    if len(buffer) > MAX_ANSWER_BYTES + 65536:
        raise Dropped(f"the answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > 65536:
                raise Dropped("the answer's header is over 64 KiB")
            return None
        lines = buffer[:end].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise Dropped(f"not an HTTP answer: {lines[0][:60]!r}")
        status = int(code)
        start = end + 4
        if not 100 <= status < 200:
            break
        buffer = buffer[start:]
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue  # not a field (an obsolete folded line): skipped, as lenient clients do
        key = name.strip().decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        known = dict.get(headers, key)
        dict.__setitem__(headers, key, f"{known}, {text}" if known is not None else text)
    close = version == b"HTTP/1.0"
    connection = dict.get(headers, "connection", "").lower()
    if "close" in connection:
        close = True
    elif "keep-alive" in connection:
        close = False
    if status in _NO_BODY:
        return Answer(status, headers, b""), buffer[start:], close
    if "chunked" in dict.get(headers, "transfer-encoding", "").lower():
        body = _chunked(buffer, start)
        if body is None:
            return None
        data, stop = body
        return Answer(status, headers, data), buffer[stop:], close
    if dict.__contains__(headers, "content-length"):
        text = dict.__getitem__(headers, "content-length")
        try:
            length = int(text.split(",")[0])
        except ValueError:
            raise Dropped(f"bad Content-Length: {text[:40]!r}") from None
        if length > MAX_ANSWER_BYTES:
            raise Dropped(f"the answer announces {length:,} bytes (at most {MAX_ANSWER_BYTES:,} are read)")
        if len(buffer) - start < length:
            return None
        return Answer(status, headers, buffer[start:start + length]), buffer[start + length:], close
    if not ended:
        return None  # the body runs to the end of the connection
    return Answer(status, headers, buffer[start:]), b"", True


def _chunked(buffer: bytes, at: int) -> tuple[bytes, int] | None:
    """A chunked body from ``at``: (the body, where it ends), or ``None`` while it is not whole."""
    chunks: list[bytes] = []
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        try:
            size = int(buffer[at:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise Dropped(f"bad chunk size: {buffer[at:eol][:40]!r}") from None
        at = eol + 2
        if size == 0:
            trailer = buffer.find(b"\r\n", at)  # trailer fields end with an empty line
            while trailer >= 0 and trailer != at:
                at = trailer + 2
                trailer = buffer.find(b"\r\n", at)
            return None if trailer < 0 else (b"".join(chunks), trailer + 2)
        if len(buffer) < at + size + 2:
            return None
        chunks.append(buffer[at:at + size])
        if buffer[at + size:at + size + 2] != b"\r\n":
            raise Dropped("a chunk is longer than its size")
        at += size + 2


def encode_head(headers: Mapping[str, str]) -> bytes:
    """Header lines (``Name: value\\r\\n`` each), checked: no line breaks, nothing that latin-1 cannot carry."""
    lines = []
    for name, value in headers.items():
        text = str(value)
        if not name or any(c in name for c in " :\r\n\0\t") or any(c in text for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has a character a header cannot carry")
        try:
            lines.append(f"{name}: {text}\r\n".encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r} has a character a header cannot carry (not latin-1)") from None
    return b"".join(lines)


def _origin(url: str) -> str:
    """Scheme, host and port only: a URL's path or query may carry a token."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of an HTTP client error (the outer ones repeat the URL, query and all)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return str(exc) or type(exc).__name__


def body_text(response: Response, limit: int = 300) -> str:
    """The start of a response body, for an error message."""
    text = response.data.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def json_id(response: Response) -> str | None:
    """The ``id`` of a JSON object answer, if it has one."""
    if not response.data or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        payload: Any = json.loads(response.data)
    except ValueError:
        return None  # the write succeeded; a body we cannot read only means no remote id
    if isinstance(payload, dict) and payload.get("id") is not None:
        return str(payload["id"])
    return None
