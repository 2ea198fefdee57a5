"""Shared pieces of the HTTP adapters: the connection and retry config, a keep-alive session, and
one request sent with retries, its failures translated into the engine's errors once.

Retried, with exponential backoff and jitter: connection errors, timeouts, 408, 429 (waiting at
least the server's ``Retry-After``) and every 5xx. Not retried: other 4xx (the record is wrong),
TLS failures (the identity is wrong). 401 and 407 mean the credentials are wrong for every record,
so they stop the run instead of dead-lettering each record.
"""

from __future__ import annotations

import base64
import os
import random
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConnectError
from engine.typed_config import option, secret

if TYPE_CHECKING:
    import requests

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


def make_session(config: HttpConnectionConfig, base_dir: Path, url: str, pool_size: int) -> requests.Session:
    """A session whose connection pool holds ``pool_size`` keep-alive connections per host."""
    import requests  # imported on first use, so registering the adapter stays cheap
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # The environment (proxies, NO_PROXY, a CA bundle) is read once here: requests would read all
    # of os.environ on every request, which costs more than the request itself on loopback.
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(url)
    env_ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    session.verify = str(base_dir / config.ca_file) if config.ca_file else (env_ca or True)
    return session


def retry_after(response: requests.Response) -> float | None:
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
    """A request given up because another request of its batch found the server unusable."""


@dataclass(frozen=True)
class Attempted:
    """The last answer to a request: a response, or why there was none after every retry."""

    response: requests.Response | None
    error: str | None
    attempts: int


class Sender:
    """Sends requests through one session, retrying what a retry may cure."""

    def __init__(self, config: HttpConnectionConfig, session: requests.Session) -> None:
        self.config = config
        self.session = session
        import requests

        self.errors = requests.exceptions
        self._request_type = requests.Request
        self._templates: dict[tuple[str, str, int], tuple[dict[str, str], requests.PreparedRequest]] = {}

    def prepare(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> requests.PreparedRequest:
        """The request ready to send. Preparing parses the URL and merges the session's settings, which
        costs as much as sending on loopback, so a prepared template per (method, URL, headers) is
        copied and given the body."""
        slot = (method, url, id(headers))
        cached = self._templates.get(slot)
        if cached is not None and cached[0] is headers:  # the cache holds `headers`, so its id is not reused
            template = cached[1]
        else:
            template = self.session.prepare_request(self._request_type(method, url, headers=headers))
            if len(self._templates) < 256:  # URLs with a record id in them are prepared each time
                self._templates[slot] = (headers, template)
        prepared = template.copy()
        prepared.body = body
        if body is not None:
            prepared.headers["Content-Length"] = str(len(body))
        return prepared

    def delay(self, attempt: int, hint: float | None) -> float:
        """Backoff for the ``attempt``-th retry: doubling, jittered, at least the server's hint."""
        cap = self.config.max_backoff
        wait = min(cap, self.config.backoff * float(2 ** attempt)) * (0.5 + random.random() / 2)
        return min(cap, max(wait, hint or 0.0))

    def send(self, method: str, url: str, *, body: bytes | None, headers: dict[str, str],
             abort: threading.Event) -> Attempted:
        """Send until an answer that is not retryable, or retries run out.

        Raises :class:`ConnectError` (and sets ``abort``, so the other requests of the batch stop
        retrying) when the server cannot be reached at all, refuses the credentials or fails TLS
        verification."""
        config = self.config
        retries = config.max_retries
        attempt = 0
        while True:
            if abort.is_set():
                raise Aborted("stopped: another request of this batch could not reach the server")
            hint: float | None = None
            try:
                response = self.session.send(self.prepare(method, url, body, headers), timeout=config.timeout,
                                             allow_redirects=False)
            except self.errors.SSLError as exc:
                abort.set()
                raise ConnectError(f"TLS verification of {_origin(url)} failed: {_reason(exc)}") from exc
            except (self.errors.ConnectionError, self.errors.Timeout) as exc:
                unreachable = isinstance(exc, self.errors.ConnectionError) and not isinstance(
                    exc, self.errors.ReadTimeout)
                if attempt >= retries:
                    if unreachable:
                        abort.set()
                        raise ConnectError(f"cannot reach {_origin(url)} after {attempt + 1} attempts: "
                                           f"{_reason(exc)}") from exc
                    return Attempted(None, f"no answer within {config.timeout:g}s after {attempt + 1} attempts",
                                     attempt + 1)
            else:
                status = response.status_code
                if status in STOP_STATUSES:
                    abort.set()
                    raise ConnectError(f"{_origin(url)} refused the credentials (HTTP {status})")
                if status < 500 and status not in RETRY_STATUSES:
                    return Attempted(response, None, attempt + 1)
                if attempt >= retries:
                    return Attempted(response, f"HTTP {status} after {attempt + 1} attempts", attempt + 1)
                hint = retry_after(response)
                response.close()
            time.sleep(self.delay(attempt, hint))
            attempt += 1


def _origin(url: str) -> str:
    """Scheme, host and port only: a URL's path or query may carry a token."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error (the outer ones repeat the URL, query and all)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return str(exc) or type(exc).__name__


def body_text(response: requests.Response, limit: int = 300) -> str:
    """The start of a response body, for an error message."""
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def json_id(response: requests.Response) -> str | None:
    """The ``id`` of a JSON object answer, if it has one."""
    if not response.content or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        payload: Any = response.json()
    except ValueError:
        return None  # the write succeeded; a body we cannot read only means no remote id
    if isinstance(payload, dict) and payload.get("id") is not None:
        return str(payload["id"])
    return None
