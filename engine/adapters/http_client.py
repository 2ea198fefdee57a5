"""Shared pieces of the HTTP adapters: the connection and retry config, a keep-alive session, and
one request sent with retries, its failures translated into the engine's errors once.

Retried, with exponential backoff and jitter: connection errors, timeouts, 408, 429 (waiting at
least the server's ``Retry-After``) and every 5xx. Not retried: other 4xx (the record is wrong),
TLS failures (the identity is wrong). 401 and 407 mean the credentials are wrong for every record,
so they stop the run instead of dead-lettering each record. :meth:`Sender.attempt` sends once and
says when to retry; the caller schedules the retry, so no sending thread ever sleeps on one.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
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

    response: urllib3.BaseHTTPResponse | None
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
    """Sends requests through one connection pool, telling what a retry may cure and when to retry it."""

    def __init__(self, config: HttpConnectionConfig, pool: urllib3.PoolManager) -> None:
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
        last = self.backoff.exhausted(attempt)
        try:
            response = self.pool.urlopen(method, url, body=body, headers=headers, timeout=self.timeout,
                                         retries=False, redirect=False)
        except self.errors.SSLError as exc:
            raise ConnectError(f"TLS verification of {_origin(url)} failed: {_reason(exc)}") from exc
        except (self.errors.HTTPError, OSError) as exc:
            # A refused or failed connection means the server is not there; a timeout or a dropped
            # connection after it was made may be cured by a retry, then it is this record's failure.
            unreachable = isinstance(exc, (self.errors.NewConnectionError, self.errors.ConnectTimeoutError))
            if not last:
                return Retry(time.monotonic() + self.delay(attempt, None), hold=unreachable)
            if unreachable:
                raise ConnectError(f"cannot reach {_origin(url)} after {attempt + 1} attempts: "
                                   f"{_reason(exc)}") from exc
            if isinstance(exc, (self.errors.TimeoutError, TimeoutError)):
                return Attempted(None, f"no answer within {self.config.timeout:g}s after {attempt + 1} attempts",
                                 attempt + 1)
            return Attempted(None, f"connection lost after {attempt + 1} attempts: {_reason(exc)}", attempt + 1)
        status = response.status
        if status in stop_statuses:
            raise ConnectError(f"{_origin(url)} refused the credentials (HTTP {status})")
        if status < 500 and status not in RETRY_STATUSES:
            return Attempted(response, None, attempt + 1)
        if last:
            return Attempted(response, f"HTTP {status} after {attempt + 1} attempts", attempt + 1)
        # 429 speaks for the whole server (a rate limit); a 5xx or 408 only for this request.
        return Retry(time.monotonic() + self.delay(attempt, retry_after(response)), hold=status == 429, status=status)


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


def body_text(response: urllib3.BaseHTTPResponse, limit: int = 300) -> str:
    """The start of a response body, for an error message."""
    text = response.data.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def json_id(response: urllib3.BaseHTTPResponse) -> str | None:
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
