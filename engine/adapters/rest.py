"""A JSON REST client the REST adapters share: token sessions, a proactive rate budget, paging.

Built on :mod:`engine.adapters.http_client` (the same keep-alive pool, TLS verification, retry
classification and ``Retry-After`` handling as the ``http`` destination), it adds what a service API
needs on top:

- **Token sessions** (:class:`TokenSession`): log in before the token expires (a margin ahead), and
  once more on a 401; logins are serialised, and a thread holding the token that failed does not
  log in again when another thread already did, so several threads never cause a login storm.
- **A proactive rate budget** (:class:`RateBudget`): a declared quota of calls per minute per host,
  logins included, shared by every stream, sync and pipeline in the process, so the service never
  has to answer 429. A call waits for a slot instead; a wait is logged, and counted. A 429 that
  still comes (another client on the same IP) is waited out with ``Retry-After``.
- **Paging**: offset/limit, page number, and next-link styles as generators of pages.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from engine.adapters.http_client import (
    Attempted,
    HttpConnectionConfig,
    Retry,
    Sender,
    body_text,
    make_pool,
)
from engine.errors import ConnectError, RecordError
from engine.typed_config import option

log = logging.getLogger("syncengine.rest")

QUOTA_WINDOW = 60.0


@dataclass(frozen=True, kw_only=True)
class RestConfig(HttpConnectionConfig):
    """A JSON service: where it is and how fast it may be called."""

    url: str = option("The service's base URL.", examples=["https://api.example.com"])
    calls_per_minute: int | None = option("The service's quota of calls per minute from this machine, logins "
                                          "included: calls wait for a slot instead of being answered 429. Shared by "
                                          "every sync of every pipeline this process runs against the host.", None,
                                          minimum=1, examples=[60])


class RateBudget:
    """At most ``limit`` calls in any ``window`` seconds to one host (a sliding window), shared process-wide.

    A slot is taken when a call is sent; a caller that finds no free slot sleeps until the oldest
    call leaves the window. ``margin`` widens the window a little so that the server, which counts
    calls when they *arrive*, never sees ``limit + 1`` in its own minute.
    """

    _shared: dict[str, RateBudget] = {}
    _shared_lock = threading.Lock()

    def __init__(self, limit: int, window: float = QUOTA_WINDOW, margin: float = 1.0) -> None:
        self.limit = limit
        self.window = window + margin
        self.sent: deque[float] = deque()
        self.lock = threading.Lock()
        self.waited = 0.0
        self.waits = 0

    @classmethod
    def for_host(cls, url: str, limit: int) -> RateBudget:
        """The process's budget of a host; a second, lower quota for the same host lowers it for everyone."""
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"
        with cls._shared_lock:
            budget = cls._shared.get(host)
            if budget is None:
                budget = cls._shared[host] = cls(limit)
            elif limit < budget.limit:
                budget.limit = limit
            return budget

    def acquire(self) -> float:
        """Take a slot, waiting for one if needed; returns the seconds waited."""
        waited = 0.0
        while True:
            with self.lock:
                now = time.monotonic()
                while self.sent and now - self.sent[0] >= self.window:
                    self.sent.popleft()
                if len(self.sent) < self.limit:
                    self.sent.append(now)
                    if waited:
                        self.waited += waited
                        self.waits += 1
                    return waited
                wait = self.window - (now - self.sent[0]) + 0.001
            if wait >= 1.0 and not waited:
                log.info("rate budget: waiting %.1fs for a slot (%d calls per %.0fs)", wait, self.limit,
                         self.window)
            time.sleep(wait)
            waited += wait


class TokenSession:
    """A bearer token from ``login`` (which returns the token and its lifetime in seconds), renewed ahead of
    expiry and once after a 401, one login at a time."""

    def __init__(self, login: Callable[[], tuple[str, float | None]], *, margin: float = 30.0) -> None:
        self._login = login
        self.margin = margin
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.logins = 0

    def token(self, stale: str | None = None) -> str:
        """The current token; a new login when there is none, it is about to expire, or it is ``stale``."""
        with self._lock:
            if self._token is None or self._token == stale or time.monotonic() >= self._expires:
                token, lifetime = self._login()
                self.logins += 1
                self._token = token
                # Renew a margin ahead (at most half the lifetime ahead, for short-lived tokens).
                if lifetime is None:
                    self._expires = float("inf")
                else:
                    ahead = min(self.margin, lifetime / 2)
                    self._expires = time.monotonic() + lifetime - ahead
            return self._token


@dataclass(frozen=True)
class Reply:
    """A JSON answer: status, parsed body (``None`` when empty or not JSON), headers."""

    status: int
    data: Any
    headers: Mapping[str, str]
    text: str


class RestClient:
    """JSON calls to one service with retries, the rate budget and the token session."""

    def __init__(self, config: RestConfig, base_dir: Path, *, pool_size: int = 4) -> None:
        self.config = config
        self.base = config.url.rstrip("/")
        self.pool = make_pool(config, base_dir, config.url, pool_size)
        self.sender = Sender(config, self.pool)
        self.budget = RateBudget.for_host(config.url, config.calls_per_minute) if config.calls_per_minute else None
        self.session: TokenSession | None = None
        self.abort = threading.Event()
        self._counting = threading.Lock()
        self.calls = 0
        self.throttled = 0
        """Answers 429 received (the budget should keep this at zero)."""
        self.waited = 0.0
        """Seconds this client's calls waited for the rate budget."""

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """An absolute URL for a path below the base (or a next link the service gave)."""
        url = path if "://" in path else f"{self.base}/{path.lstrip('/')}"
        if params:
            query = {k: _param(v) for k, v in params.items() if v is not None}
            url += ("&" if "?" in url else "?") + urlencode(query)
        return url

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
             auth: bool = True, headers: Mapping[str, str] | None = None) -> Reply:
        """One call with retries: connection errors, timeouts, 408, 429 (waiting ``Retry-After``) and 5xx.

        A 401 logs in again once and repeats the call; a second 401 is a :class:`ConnectError`.
        Any other answer is returned as it is, for the caller to judge.
        """
        url = self.url(path, params)
        try:
            data = None if body is None else json.dumps(body, default=_json_default, ensure_ascii=False,
                                                         allow_nan=False).encode()
        except ValueError:
            raise RecordError("the body holds a number JSON cannot carry (NaN or infinity)") from None
        sent_headers = {"Accept": "application/json", **self.config.headers, **(headers or {})}
        if data is not None:
            sent_headers["Content-Type"] = "application/json"
        token = None
        relogged = False
        attempt = 0
        while True:
            if auth and self.session is not None:
                token = self.session.token()
                sent_headers["Authorization"] = f"Bearer {token}"
            if self.budget is not None:
                waited = self.budget.acquire()
                if waited:
                    with self._counting:
                        self.waited += waited
            with self._counting:
                self.calls += 1
            result = self.sender.attempt(method, url, body=data, headers=sent_headers, attempt=attempt,
                                         abort=self.abort, stop_statuses=frozenset({407}))
            if isinstance(result, Retry):
                if result.status == 429:
                    with self._counting:
                        self.throttled += 1
                time.sleep(max(0.0, result.at - time.monotonic()))
                attempt += 1
                continue
            response = result.response
            if response is not None and response.status == 429:
                with self._counting:
                    self.throttled += 1
            if response is not None and response.status == 401 and auth and self.session is not None:
                if relogged:
                    raise ConnectError(f"{_origin(url)} refused a fresh token (HTTP 401): {body_text(response)}")
                self.session.token(stale=token)
                relogged = True
                continue
            return _reply(result)

    def login_call(self, path: str, body: Any) -> Reply:
        """The login request itself (no token; it counts against the budget like any call)."""
        return self.call("POST", path, body=body, auth=False)

    # --- paging -------------------------------------------------------------------------------------------

    def offset_pages(self, path: str, params: Mapping[str, Any], *, limit: int,
                     items: Callable[[Reply], list[Any]] | None = None) -> Iterator[list[Any]]:
        """Pages by ``offset``/``limit`` until a page is shorter than ``limit``."""
        offset = 0
        while True:
            reply = self.expect(self.call("GET", path, params={**params, "offset": offset, "limit": limit}))
            page = items(reply) if items else _list(reply.data)
            yield page
            if len(page) < limit:
                return
            offset += len(page)

    def numbered_pages(self, path: str, params: Mapping[str, Any], *, size: int, first: int = 1,
                       page_param: str = "page", size_param: str = "pageSize",
                       items: Callable[[Reply], list[Any]] | None = None) -> Iterator[list[Any]]:
        """Pages by page number until a page is shorter than ``size`` (or empty)."""
        page_no = first
        while True:
            reply = self.expect(self.call("GET", path, params={**params, page_param: page_no, size_param: size}))
            page = items(reply) if items else _list(reply.data)
            yield page
            if len(page) < size:
                return
            page_no += 1

    def linked_pages(self, path: str, params: Mapping[str, Any], *, next_link: Callable[[Reply], str | None],
                     items: Callable[[Reply], list[Any]]) -> Iterator[list[Any]]:
        """Pages by following the link each answer gives to the next, until it gives none."""
        url: str | None = self.url(path, params)
        origin = _origin(url or "")
        seen: set[str] = set()
        while url is not None:
            if _origin(url) != origin:
                # The token is for this service: a page elsewhere would receive it.
                raise ConnectError(f"{origin} sent a next link to another host ({_origin(url)}); it is not followed")
            if url in seen:
                raise ConnectError(f"{_origin(url)} sent a next link that loops back to a page already read")
            seen.add(url)
            reply = self.expect(self.call("GET", url))
            yield items(reply)
            link = next_link(reply)
            url = urljoin(url, link) if link else None

    def expect(self, reply: Reply) -> Reply:
        """The reply when it is a success; else a :class:`ConnectError` with the service's own message."""
        if 200 <= reply.status < 300:
            return reply
        raise ConnectError(f"the service answered HTTP {reply.status}: {reply.text[:300]}")

    def pacing(self) -> str | None:
        """A line on how the rate budget paced this client's calls, when it did (for a run's notes)."""
        parts = []
        if self.waited >= 1:
            parts.append(f"waited {self.waited:.0f}s for the rate budget ({self.budget.limit if self.budget else '?'} "
                         "calls/minute)")
        if self.throttled:
            parts.append(f"the service answered 429 {self.throttled} time(s) (waited out with Retry-After)")
        return "; ".join(parts) or None

    def close(self) -> None:
        """Close the connections."""
        self.pool.clear()


def _reply(result: Attempted) -> Reply:
    response = result.response
    if response is None:
        raise ConnectError(result.error or "no answer")
    raw = response.data or b""
    text = raw.decode("utf-8", "replace")
    data: Any = None
    if raw and "json" in (response.headers.get("Content-Type") or ""):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    return Reply(response.status, data, dict(response.headers), text)


def _list(data: Any) -> list[Any]:
    """The records of a page: a bare JSON array, or the ``data``/``items``/``value`` array of an envelope."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for name in ("data", "items", "value", "results"):
            if isinstance(data.get(name), list):
                return list(data[name])
    raise ConnectError("the service answered a page that holds no list of records")


def _param(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _json_default(value: Any) -> Any:
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        # A JSON number when a float carries it exactly (69.33 does), else its exact text.
        if not value.is_finite():
            raise ValueError("not a finite number")
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else format(value, "f")
    return str(value)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


__all__ = ["RateBudget", "Reply", "RestClient", "RestConfig", "TokenSession"]
