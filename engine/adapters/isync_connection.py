"""The iSync "Sync API Message Server" connection: one zeep client, one session key, one lock.

Shared by the ``isync`` source and destination. What the service demands, and how it is met:

- **Every ``Login`` voids all earlier session keys of that user.** So one adapter logs in once and
  every stream and thread shares the key; logins are serialised, and when a call answers that the
  key is invalid or superseded, the connection logs in again *once* (a thread that finds the key
  already renewed by another uses the new one) and repeats that call. Two ``syncengine``
  processes on one machine would void each other's keys, so the session is guarded by a lock file
  per (server, user) beside the state store, held from the first login until the adapter closes: a
  second process waits for it and, after ``lock_timeout``, stops with a message that says why. (The
  user's own lock folder catches pipelines with different state folders; see :meth:`Connection.hold_session`.)
- **Execute's envelope**: ``MessageType``, ``Identifier`` (unique per request, traceable to the
  run, the sync and the record key), ``Source``, ``PublishDate``, ``Instance``, ``Action``,
  ``SessionKey`` and ``MessageXml`` (the DataContract text :mod:`engine.adapters.isync_wire` writes).
  ``SuccessFlag=false`` is an answer, not a crash: the caller gets its ``ResponseText``.
- **Transport failures** (5xx, an HTML 503 page, a reset, a timeout) are retried with the engine's
  backoff, but only where a repeat is safe (``idempotent``): a request that may have reached the
  server is never repeated blindly for an operation that creates something; the caller learns it
  was *ambiguous* instead. A connection that was never made is always retried.
- **Safe by default**: TLS is verified (a CA file may be named, verification cannot be turned off);
  zeep parses with DTDs, entities and external references forbidden; the password is a secret and
  never appears in a message.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine.errors import ConnectError, RunFailed
from engine.retry import Backoff
from engine.typed_config import option, secret

if TYPE_CHECKING:
    import zeep

log = logging.getLogger("syncengine.isync")

DEFAULT_SESSION_ERROR = r"(?i)session\s*key"


@dataclass(frozen=True)
class ISyncConfig:
    """An iSync message server: where it is, who logs in, and how patiently."""

    url: str = option("The message service's address (the `.svc`); `?wsdl` is appended to fetch its WSDL.",
                      examples=["https://integration.example.com/SyncAPI/MessageService.svc"])
    username: str = option("The user iSync issued for this integration.", examples=["webstore"])
    password: str | None = secret("The user's password.", examples=["{{ env.ISYNC_PASSWORD }}"])
    wsdl_file: str | None = option("A local copy of the WSDL (relative to the pipeline file), for servers that do "
                                   "not publish it; calls still go to `url`.", None, examples=["isync.wsdl"])
    source_name: str = option("Execute's `Source` field: who sends.", "syncengine", minLength=1)
    instance: str = option("Execute's `Instance` field.", "1")
    timeout: float = option("Seconds to wait for a connection or an answer.", 60.0, exclusiveMinimum=0)
    max_retries: int = option("Retries of a call after a transport failure, where repeating it is safe.", 5,
                              minimum=0, maximum=20)
    backoff: float = option("First retry delay in seconds; it doubles each retry, with jitter.", 0.5, minimum=0)
    max_backoff: float = option("Longest wait between retries, in seconds.", 30.0, minimum=0)
    ca_file: str | None = option("CA bundle (PEM) to verify the server with, relative to the pipeline file; the "
                                 "system's trusted CAs by default. Verification cannot be turned off.", None)
    concurrency: int = option("Destination requests in flight at once (one shared session key); a crash leaves at "
                              "most this many records in doubt.", 4, minimum=1, maximum=32)
    lock_timeout: float = option("Seconds to wait for another syncengine process on this machine that holds a "
                                 "session of the same user on the same server (each login voids the others).",
                                 600.0, minimum=0)
    session_error: str = option("Regular expression that recognises an answer saying the session key is invalid or "
                                "superseded (then the connection logs in again once and repeats the call).",
                                DEFAULT_SESSION_ERROR)


@dataclass(frozen=True)
class Answer:
    """Execute's answer: ``ok`` is ``SuccessFlag``; ``text`` the ``ResponseText``; ``xml`` the ``MessageXml``."""

    ok: bool
    text: str
    xml: str | None


class Ambiguous(RunFailed):  # noqa: N818 - a state, not a failure of ours
    """A request may have reached the server (a reset, a timeout, a 5xx) and was not repeated.

    A destination turns it into the record's outcome; anywhere else it stops the run with its message.
    """


class _ServerClock:
    """A zeep plugin that remembers the server's clock (the ``Date`` header) of the last answer."""

    def __init__(self) -> None:
        self.last: datetime | None = None

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> tuple[Any, Any]:
        value = http_headers.get("Date") if http_headers else None
        if value:
            try:
                self.last = parsedate_to_datetime(value).astimezone(UTC)
            except (TypeError, ValueError):
                pass
        return envelope, http_headers

    def egress(self, envelope: Any, http_headers: Any, operation: Any, binding_options: Any) -> tuple[Any, Any]:
        return envelope, http_headers


def _checked_transport(base: type) -> type:
    """A zeep transport that turns an error page (a plain-text 500, an IIS HTML 503) into a
    ``TransportError`` before zeep tries to parse it as SOAP: such a page is the server being unwell
    (retried where that is safe), never a crash of the client's parser. A SOAP fault (a 500 whose body
    is a SOAP envelope) still reaches zeep, which raises it as a ``Fault``."""
    import zeep

    class CheckedTransport(base):  # type: ignore[misc]
        def post_xml(self, address: str, envelope: Any, headers: Any) -> Any:
            response = super().post_xml(address, envelope, headers)
            status = response.status_code
            if status >= 400:
                head = response.content[:2048].lower()
                if b"envelope" not in head:
                    raise zeep.exceptions.TransportError(  # type: ignore[no-untyped-call]
                        status_code=status, content=response.content[:300])
            return response

    return CheckedTransport


class SessionLock:
    """An exclusive lock per (server, user) on this machine, in the state store's folder; the OS drops it with
    the process, so a killed run never leaves it behind."""

    def __init__(self, folder: Path, url: str, username: str) -> None:
        parts = urlsplit(url)
        digest = hashlib.sha256(f"{parts.hostname}:{parts.port}{parts.path}\x00{username}".encode()).hexdigest()[:16]
        self.path = folder / f".isync-session-{digest}.lock"
        self.what = f"user '{username}' on {parts.hostname}"
        self.fd: int | None = None

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` seconds for the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunFailed(
                        f"the iSync session of {self.what} is held by {holder} on this machine; waited "
                        f"{timeout:g}s. Each iSync login voids every earlier session key of the user, so two "
                        "processes cannot share one: run them one after the other, give each its own user, or "
                        "raise lock_timeout") from None
                if not told:
                    log.warning("waiting for %s, which holds the iSync session of %s", holder, self.what)
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Let the next process in."""
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


class Connection:
    """One iSync server and user: the zeep client, the shared session key, retries and the session lock."""

    def __init__(self, config: ISyncConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.backoff = Backoff(first=config.backoff, cap=config.max_backoff, retries=config.max_retries)
        self.session_error = re.compile(config.session_error)
        self.clock = _ServerClock()
        self._service: Any = None
        self._client_lock = threading.Lock()
        self._login_lock = threading.Lock()
        self._key: str | None = None
        self._refused: ConnectError | None = None
        self._locks: list[SessionLock] = []
        self._counter = 0
        self.logins = 0

    # --- the client -------------------------------------------------------------------------------------

    def service(self) -> Any:
        """The zeep service proxy bound to ``url`` (built once, on first use)."""
        with self._client_lock:
            if self._service is None:
                self._service = self._build()
            return self._service

    def _build(self) -> Any:
        import requests
        import zeep
        from requests.adapters import HTTPAdapter
        from zeep.transports import Transport

        config = self.config
        session = requests.Session()
        session.verify = str(self.base_dir / config.ca_file) if config.ca_file else True
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(4, config.concurrency + 2), max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        transport = _checked_transport(Transport)(session=session, timeout=config.timeout,
                                                  operation_timeout=config.timeout)
        settings = zeep.Settings(strict=False, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True)
        wsdl = str(self.base_dir / config.wsdl_file) if config.wsdl_file else (
            config.url if "?" in config.url else f"{config.url}?wsdl")
        attempt = 0
        while True:
            try:
                client = zeep.Client(wsdl, transport=transport, settings=settings,  # type: ignore[no-untyped-call]
                                     plugins=[self.clock])
                break
            except (requests.exceptions.SSLError) as exc:
                raise ConnectError(f"TLS verification of {_origin(config.url)} failed: {exc}") from None
            except (requests.exceptions.RequestException, zeep.exceptions.TransportError) as exc:
                if self.backoff.exhausted(attempt):
                    raise ConnectError(f"cannot read the WSDL of {_origin(config.url)}: {_short(exc)} (a server "
                                       "that does not publish it can be given a local copy: wsdl_file)") from None
                time.sleep(self.backoff.delay(attempt, None))
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - a WSDL zeep cannot read: say which and why, once
                raise ConnectError(f"the WSDL at {wsdl if config.wsdl_file else _origin(config.url)} cannot be "
                                   f"read: {_short(exc)}") from None
        self._client = client
        return client.create_service(_binding(client), config.url)  # type: ignore[no-untyped-call]

    # --- the session ------------------------------------------------------------------------------------

    def hold_session(self, state_dir: Path | None) -> None:
        """Take the session locks of this server and user before the first login (once).

        Two locks, always in this order: one in this OS user's lock folder (every pipeline of the user
        on this machine, whatever its state folder) and one beside the state store (processes of other
        OS users sharing that state). A process waits for either at most ``lock_timeout``.
        """
        if self._locks or state_dir is None:
            return
        for folder in dict.fromkeys((user_lock_dir(), state_dir)):
            lock = SessionLock(folder, self.config.url, self.config.username)
            try:
                lock.acquire(self.config.lock_timeout)
            except BaseException:
                self._release_locks()
                raise
            self._locks.append(lock)

    def _release_locks(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    def key(self, stale: str | None = None) -> str:
        """The shared session key; a new login only when there is none or the caller's ``stale`` key is current."""
        with self._login_lock:
            if self._refused is not None:
                raise self._refused  # one refused login is enough: retrying it could lock the account
            if self._key is None or self._key == stale:
                try:
                    self._key = self._login()
                except ConnectError as exc:
                    self._refused = exc
                    raise
            return self._key

    def _login(self) -> str:
        import zeep

        service = self.service()
        config = self.config
        for attempt in range(self.backoff.retries + 1):
            try:
                key = service.Login(username=config.username, password=config.password or "")
            except zeep.exceptions.Fault as exc:
                raise ConnectError(f"iSync at {_origin(config.url)} refused the login of user '{config.username}': "
                                   f"{_short(exc.message, config.password)}") from None
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _transient(exc) or self.backoff.exhausted(attempt):
                    raise ConnectError(f"cannot log in to iSync at {_origin(config.url)}: "
                                       f"{_short(exc, config.password)}") from None
                time.sleep(self.backoff.delay(attempt, None))
                continue
            if not key:
                raise ConnectError(f"iSync at {_origin(config.url)} gave user '{config.username}' no session key")
            self.logins += 1
            return str(key)
        raise AssertionError("unreachable")

    def server_time(self) -> datetime | None:
        """The server's clock (UTC) at its last answer, from the ``Date`` header."""
        return self.clock.last

    # --- Execute ------------------------------------------------------------------------------------------

    def identifier(self, run_id: str, sync: str, what: str) -> str:
        """A request identifier unique per request and traceable to the run, the sync and the record."""
        with self._login_lock:
            self._counter += 1
            n = self._counter
        return f"{run_id}/{sync}/{what}/{n}"

    def execute(self, message_type: str, action: str, message_xml: str, *, identifier: str,
                idempotent: bool) -> Answer:
        """One Execute with the shared key: re-login once on a stale key; retries where a repeat is safe.

        Raises :class:`Ambiguous` when a request that may have reached the server failed and
        ``idempotent`` is false, and :class:`ConnectError` when the server cannot be reached.
        """
        import zeep

        service = self.service()
        key = self.key()
        relogged = False
        attempt = 0
        while True:
            request = {"MessageType": message_type, "Identifier": identifier, "Source": self.config.source_name,
                       "PublishDate": datetime.now(UTC).replace(microsecond=0), "Instance": self.config.instance,
                       "Action": action, "SessionKey": key, "MessageXml": message_xml}
            try:
                result = service.Execute(request=request)
            except zeep.exceptions.Fault as exc:
                # The server carried out nothing and said why (a fault instead of SuccessFlag=false).
                return Answer(False, f"SOAP fault: {_short(exc.message)}", None)
            except Exception as exc:  # noqa: BLE001 - classified below
                sent = _maybe_sent(exc)
                if not _transient(exc):
                    raise RunFailed(f"iSync {message_type} failed: {_short(exc)}") from None
                if sent and not idempotent:
                    raise Ambiguous(f"{_short(exc)}; the request may have been carried out") from None
                if self.backoff.exhausted(attempt):
                    if not sent:
                        raise ConnectError(f"cannot reach iSync at {_origin(self.config.url)} after "
                                           f"{attempt + 1} attempts: {_short(exc)}") from None
                    raise Ambiguous(f"{_short(exc)} after {attempt + 1} attempts") from None
                time.sleep(self.backoff.delay(attempt, None))
                attempt += 1
                continue
            answer = Answer(bool(getattr(result, "SuccessFlag", False)), str(getattr(result, "ResponseText", "") or ""),
                            getattr(result, "MessageXml", None))
            if not answer.ok and self.session_error.search(answer.text) and not relogged:
                # Another login (ours in another thread, or someone else's) voided the key: log in once, repeat.
                key = self.key(stale=key)
                relogged = True
                continue
            if not answer.ok and self.session_error.search(answer.text):
                raise ConnectError(f"iSync keeps rejecting fresh session keys of user '{self.config.username}': "
                                   f"{answer.text[:200]} (is another program logging in as the same user?)")
            return answer

    def close(self) -> None:
        """Release the session lock and the HTTP connections."""
        self._release_locks()
        client = getattr(self, "_client", None)
        if client is not None:
            client.transport.session.close()


def user_lock_dir() -> Path:
    """This OS user's folder for locks shared by every pipeline on the machine (``SYNCENGINE_LOCK_DIR``
    overrides it): ``$XDG_RUNTIME_DIR/syncengine``, else ``~/.cache/syncengine/locks``."""
    override = os.environ.get("SYNCENGINE_LOCK_DIR")
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "syncengine" if runtime else Path.home() / ".cache" / "syncengine" / "locks"


def _binding(client: zeep.Client) -> str:
    """The SOAP 1.1 binding of the WSDL's first service (the one ``Login``/``Execute`` live on)."""
    for service in client.wsdl.services.values():
        for port in service.ports.values():
            return str(port.binding.name)
    raise ConnectError("the iSync WSDL declares no service")


def _transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed when repeated (the network or the server, not our request)."""
    import requests
    import zeep

    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(exc, zeep.exceptions.TransportError):
        return exc.status_code >= 500 or exc.status_code in (408, 429)
    if isinstance(exc, (zeep.exceptions.XMLSyntaxError, zeep.exceptions.DTDForbidden)):
        return True  # an HTML page where a SOAP answer should be (a proxy's 200 "try later"); never parsed
    return False


def _maybe_sent(exc: BaseException) -> bool:
    """Whether the request may have reached the server: anything but a connection that was never made."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = repr(exc)
        return not ("NewConnectionError" in text or "Connection refused" in text
                    or "Name or service not known" in text)
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _short(exc: object, secret_value: str | None = None) -> str:
    """A failure in one line, never longer than 300 characters, with a secret masked."""
    import zeep

    if isinstance(exc, zeep.exceptions.TransportError):
        text = f"HTTP {exc.status_code}"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    if secret_value:
        text = text.replace(secret_value, "***")
    return text[:300]
