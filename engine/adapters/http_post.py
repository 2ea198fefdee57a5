"""An HTTP endpoint as a destination: one request per record, form-encoded or JSON.

``format: form`` is the sending side of a live sync such as Aljex's: every change is a POST of
``application/x-www-form-urlencoded`` fields plus a table field and an action field (create,
update, delete); a delete carries the key fields only. ``format: json`` posts the mapped record
as a JSON object; an update goes the same way unless ``update_method`` is set (then it is sent to
``{url}/{id}``), and a delete is ``DELETE {url}/{id}``, where ``id`` is the id the endpoint
returned at the create (a JSON answer's ``id``) or else the record key. A 404 or 410 answer to a
delete counts as done: the record is not there.

Up to ``concurrency`` requests are in flight at once, each on a keep-alive connection of its own:
lean HTTP/1.1 connections driven by the stream's own thread with a selector
(:class:`~engine.adapters.http_client.ConnectionSet`), or, when a proxy is configured, a urllib3
pool used by ``concurrency`` threads. Each outcome is reported as it completes
(:meth:`HttpPostStream.write_each`), so the engine records it at once: a crash resends at most the
``concurrency`` records whose outcome was not recorded yet.
A retryable answer (see :mod:`engine.adapters.http_client`) puts its record back on a schedule
while other records are sent. A rejected record (a 4xx other than 401/407/408/429, or
retries exhausted) is a failed outcome, so it is dead-lettered and the run goes on. Delivery is
at least once; ``idempotency_header`` sends a key per change that stays the same when the same
change is sent again, for endpoints that deduplicate.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import ssl
import threading
import time as clock
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, ClassVar, Literal, TypeAlias
from urllib.parse import quote, urlencode

from engine import __version__
from engine.adapters.http_client import (
    Aborted,
    Attempted,
    ConnectionSet,
    HttpConnectionConfig,
    Retry,
    Sender,
    basic_auth_header,
    body_text,
    encode_head,
    json_id,
    make_pool,
    proxied,
    tls_context,
)
from engine.errors import ConfigError
from engine.interfaces import CREATE, DELETE, UPDATE, Change, Outcome, StreamContext
from engine.mapping import compile_template
from engine.registry import REGISTRY
from engine.templating import EnvView, make_environment
from engine.typed_config import option

GONE = frozenset({404, 410})
DEFAULT_IDEMPOTENCY_KEY = "{{ sync }}:{{ key }}:{{ hash }}"
# Printable ASCII but space and "%": what a header value keeps as it is when it must be percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


@dataclass(frozen=True, kw_only=True)
class HttpPostConfig(HttpConnectionConfig):
    """An HTTP endpoint that takes one record per request."""

    url: str = option("Endpoint URL (may use `{{ env.NAME }}`); https is verified.",
                      examples=["https://sync.example.com/aljex", "{{ env.SINK_URL }}"])
    format: Literal["form", "json"] = option("Body of each request: form fields (the Aljex live-sync shape) or "
                                             "a JSON object.", "form")
    method: str = option("Method of creates (and of updates without `update_method`).", "POST",
                         pattern="^[A-Z]+$")
    update_method: str | None = option("json only: send updates with this method to `{url}/{id}` instead.", None,
                                       examples=["PUT", "PATCH"], pattern="^[A-Z]+$")
    delete_method: str = option("json only: method of deletes, sent to `{url}/{id}`.", "DELETE",
                                pattern="^[A-Z]+$")
    concurrency: int = option("Requests in flight at once (and keep-alive connections kept); a crash resends at "
                              "most this many records.", 8, minimum=1, maximum=64)
    idempotency_header: str | None = option("Header that carries each change's idempotency key (the sync option "
                                            "`idempotency_key`), for endpoints that deduplicate; none by default.",
                                            None, examples=["Idempotency-Key"],
                                            pattern="^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class HttpPostOptions:
    """What one sync sends."""

    table: str | None = option("Value of the table field; the sync's name by default.", None,
                               examples=["employees"])
    table_field: str | None = option("Field that carries the table: `web_sync_table_name` for form, none for "
                                     "json; an empty string leaves it out.", None)
    action_field: str | None = option("Field that carries the action (create, update, delete): `web_sync_action` "
                                      "for form, none for json; an empty string leaves it out.", None)
    key_field: str = option("form deletes of a sync whose key is a template: the field that carries the key.",
                            "key")
    idempotency_key: str = option("With the destination's `idempotency_header`: the template of its value, over "
                                  "`sync`, `key`, `hash` (16 hex digits of the change's action and values), "
                                  "`action`, `table`, `vars` and `run`. The same change sent again gets the same "
                                  "value; a changed record, another.", DEFAULT_IDEMPOTENCY_KEY,
                                  examples=["{{ table }}/{{ key }}/{{ hash }}"])

    TEMPLATE_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {
        "idempotency_key": ("sync", "key", "hash", "action", "table")}
    """Names a per-record template option may use besides ``vars``, ``env`` and ``run`` (read by validation)."""


def _form_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)  # Decimal and the like: exact text, never a rounded float


class _KeyFailed(Exception):
    """The idempotency key of a change could not be rendered (the record fails, the run goes on)."""


_PENDING = Outcome(False, error="no outcome")  # stands for an outcome not reported yet

Result: TypeAlias = "tuple[int, int, Outcome | Retry | BaseException]"
"""``(index, attempt, result)`` of one request a stream sent: an outcome, a retry, or what stops the stream."""


class Direct:
    """A stream's requests over the destination's :class:`ConnectionSet`, sent and read by the stream's thread."""

    def __init__(self, stream: HttpPostStream, connections: ConnectionSet) -> None:
        self.stream = stream
        self.connections = connections
        self.sender = stream.owner.sender
        self.ready: list[Result] = []

    def stop(self) -> None:
        """Nothing is queued: every request was sent when it was started."""

    def send(self, change: Change, index: int, attempt: int) -> None:
        """Start one request (a change whose request cannot be made has its outcome at once)."""
        stream = self.stream
        try:
            method, url, body, key = stream.request(change)
        except _KeyFailed as exc:
            self.ready.append((index, attempt, Outcome(False, error=str(exc))))
            return
        head = stream.head if body is not None else stream.bare_head
        if key is not None:
            head += stream.key_line + key.encode("ascii") + b"\r\n"
        self.connections.start((change, index, attempt, url), method, url, head, body)

    def collect(self, timeout: float | None) -> list[Result]:
        """The requests that completed within ``timeout`` (``None``: wait for one)."""
        if self.ready:
            results, self.ready = self.ready, []
            timeout = 0.0
        else:
            results = []
        conclude, outcome = self.sender.conclude, self.stream.outcome
        for (change, index, attempt, url), answer in self.connections.poll(timeout):
            try:
                judged = conclude(answer, url, attempt)
                result: Outcome | Retry | BaseException = (judged if isinstance(judged, Retry)
                                                           else outcome(change, judged))
            except Exception as exc:  # noqa: BLE001 - raised by the stream, after the good outcomes
                result = exc
            results.append((index, attempt, result))
        if timeout is None and not results:
            raise AssertionError("no request was in flight")
        return results


class Threaded:
    """A stream's requests through the urllib3 pool (a proxy carries them), on the destination's threads."""

    def __init__(self, stream: HttpPostStream, workers: Workers) -> None:
        self.stream = stream
        self.jobs = workers.jobs
        self.abort = threading.Event()
        self.done: SimpleQueue[Result] = SimpleQueue()

    def stop(self) -> None:
        """Requests queued and not sent yet give up."""
        self.abort.set()

    def send(self, change: Change, index: int, attempt: int) -> None:
        """Queue one request for the threads (one queued after a failure gives up before it is sent)."""
        self.jobs.put((self.stream, change, index, attempt, self.abort, self.done))

    def collect(self, timeout: float | None) -> list[Result]:
        """The requests that completed within ``timeout`` (``None``: wait for one)."""
        try:
            results = [self.done.get(timeout=timeout)]
        except Empty:
            return []
        while True:
            try:
                results.append(self.done.get_nowait())
            except Empty:
                return results


Job: TypeAlias = "tuple[HttpPostStream, Change, int, int, threading.Event, SimpleQueue[Result]]"
"""One request for a thread: ``(stream, change, index, attempt, abort, done)``."""


class Workers:
    """``size`` threads sending through the urllib3 pool (used only when a proxy carries the requests)."""

    def __init__(self, size: int) -> None:
        self.jobs: SimpleQueue[Job | None] = SimpleQueue()
        self.threads = [threading.Thread(target=self.serve, name=f"http-post_{i}", daemon=True) for i in range(size)]
        for thread in self.threads:
            thread.start()

    def serve(self) -> None:
        """One thread: take a job, send it, put its result."""
        jobs = self.jobs
        while (job := jobs.get()) is not None:
            stream, change, index, attempt, abort, done = job
            try:
                result: Outcome | Retry | BaseException = stream.attempt(change, attempt, abort)
            except BaseException as exc:  # noqa: BLE001 - handed to the stream, which raises it
                result = exc
            done.put((index, attempt, result))

    def close(self) -> None:
        """Let every thread finish its job, then stop them."""
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()


class HttpPostStream:
    """One sync's requests."""

    max_batch: int | None = None
    """No cap of its own: outcomes are recorded as they complete, so a batch bounds only memory (``batch_size``),
    and fewer, longer batches wait less often for the last retry of a batch."""

    def __init__(self, owner: HttpPostDestination, options: HttpPostOptions, ctx: StreamContext) -> None:
        config = owner.config
        self.owner = owner
        self.form = config.format == "form"
        self.url = config.url
        self.base = config.url.rstrip("/")
        self.method = config.method
        self.update_method = None if self.form else config.update_method
        self.delete_method = config.delete_method
        default_table, default_action = ("web_sync_table_name", "web_sync_action") if self.form else ("", "")
        self.table_field = default_table if options.table_field is None else options.table_field
        self.action_field = default_action if options.action_field is None else options.action_field
        self.table = options.table or ctx.sync
        self.key_fields = ctx.key_fields
        self.key_field = options.key_field
        kind = "application/x-www-form-urlencoded" if self.form else "application/json"
        self.headers = {**config.headers, **basic_auth_header(config.username, config.password),
                        "Content-Type": kind}
        if not self.form:
            self.headers["Accept"] = "application/json"
        self.bare_headers = {k: v for k, v in self.headers.items() if k != "Content-Type"}
        # The same header lines, encoded once, for the lean connection (which writes Host itself).
        named = {k.lower() for k in self.headers}
        defaults = {k: v for k, v in (("User-Agent", f"syncengine/{__version__}"),
                                      ("Accept-Encoding", "identity")) if k.lower() not in named}
        try:
            encode_head(self.headers)  # every header checked, Host too (the connection writes that one)
            self.head = encode_head({k: v for k, v in {**self.headers, **defaults}.items() if k.lower() != "host"})
            self.bare_head = encode_head({k: v for k, v in {**self.bare_headers, **defaults}.items()
                                          if k.lower() != "host"})
        except ValueError as exc:
            raise ConfigError(f"http destination: {exc}") from None
        self.encode_json = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode
        self.concurrency = config.concurrency
        self.idempotency_header = config.idempotency_header
        self.key_line = f"{config.idempotency_header}: ".encode("ascii") if config.idempotency_header else b""
        self.key_context = {"sync": ctx.sync, "table": self.table, "vars": ctx.vars, "env": ctx.env or EnvView(),
                            "run": ctx.run}
        # Compiled once per stream; rendered per request (a retry renders the same value again).
        self.key_template = (compile_template(make_environment(ctx.base_dir), options.idempotency_key,
                                              context=self.key_context, text=True)
                             if self.idempotency_header else None)

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Send every change (``concurrency`` at a time); one outcome per change, in order."""
        outcomes: list[Outcome] = [_PENDING] * len(changes)
        for group in self.write_each(changes):
            for index, outcome in group:
                outcomes[index] = outcome
        return outcomes

    def write_each(self, changes: Sequence[Change]) -> Iterator[list[tuple[int, Outcome]]]:
        """Send every change and yield, as requests complete, the ``(index, outcome)`` pairs completed since.

        At most ``concurrency`` records are sent and not yet reported back or recorded: a new one is
        sent only when the engine asks for the next group, which it does once the last group is
        durable, so a crash at any instant resends at most ``concurrency`` records. A retryable answer
        puts its record on a schedule (a heap by due time) instead of sleeping in a sending thread;
        the loop waits for completions until the next retry is due. A ``hold`` (the server cannot be
        reached, or answered 429) sends nothing before its time, so a server that is down is found
        out by the retries of a few records, not by one attempt of each, and a rate limit is
        honoured by every request. A :class:`ConnectError` stops the stream once the group that
        completed with it was yielded.
        """
        if not changes:
            return
        transport, release = self.owner.transport(self)
        send, collect = transport.send, transport.collect
        window = self.concurrency
        in_flight = 0
        retries: list[tuple[float, int, int]] = []  # heap of (due, index, attempt)
        fresh, total = 0, len(changes)
        hold_until = 0.0
        try:
            while True:
                now = clock.monotonic()
                while in_flight < window and hold_until <= now:
                    if retries and retries[0][0] <= now:
                        _, index, attempt = heapq.heappop(retries)
                    elif fresh < total:
                        index, attempt, fresh = fresh, 0, fresh + 1
                    else:
                        break
                    send(changes[index], index, attempt)
                    in_flight += 1
                if not in_flight and not retries and fresh >= total:
                    return
                if in_flight >= window:
                    timeout = None  # nothing can start before a request completes
                else:
                    # The next send: a fresh record now, else the earliest retry; neither during a hold.
                    due = now if fresh < total else (retries[0][0] if retries else math.inf)
                    due = max(due, hold_until)
                    timeout = None if due == math.inf else max(0.0, due - now)
                if not in_flight:
                    clock.sleep(timeout or 0.0)  # only retries are left, none due: nothing else to do
                    continue
                finished = collect(timeout)  # and whatever else completed meanwhile: one group
                if not finished:
                    continue
                in_flight -= len(finished)
                group: list[tuple[int, Outcome]] = []
                failures: list[BaseException] = []
                for index, attempt, result in finished:
                    if isinstance(result, Outcome):
                        group.append((index, result))
                    elif isinstance(result, Retry):
                        heapq.heappush(retries, (result.at, index, attempt + 1))
                        if result.hold:
                            hold_until = max(hold_until, result.at)
                    else:
                        failures.append(result)  # raised below, after the good outcomes
                if failures:
                    transport.stop()  # requests already queued give up instead of hitting the server again
                if group:
                    group.sort()
                    yield group
                if failures:
                    # Report the request that found the problem, not those it stopped.
                    raise next((e for e in failures if not isinstance(e, Aborted)), failures[0])
        finally:
            # On a failure, or when the engine stops listening: nothing new starts (queued requests
            # give up), and the requests in flight finish before the stream returns (their outcomes
            # are not reported, so a rerun resends them).
            transport.stop()
            while in_flight:
                in_flight -= len(collect(None))
            release()

    def finish(self) -> None:
        """Nothing is buffered."""

    # --- one change -----------------------------------------------------------------------------

    def attempt(self, change: Change, attempt: int, abort: threading.Event) -> Outcome | Retry:
        """Send one change once through the urllib3 pool (in a thread): its outcome, or when to retry it."""
        try:
            method, url, body, key = self.request(change)
        except _KeyFailed as exc:
            return Outcome(False, error=str(exc))
        headers = self.headers if body is not None else self.bare_headers
        if key is not None and self.idempotency_header is not None:
            headers = {**headers, self.idempotency_header: key}
        answer = self.owner.sender.attempt(method, url, body=body, headers=headers, attempt=attempt, abort=abort)
        if isinstance(answer, Retry):
            return answer
        return self.outcome(change, answer)

    def request(self, change: Change) -> tuple[str, str, bytes | None, str | None]:
        """(method, url, body, idempotency key) of one change; a body goes with ``headers``, none with
        ``bare_headers``."""
        if self.form:
            fields: list[tuple[str, str]] = []
            if self.table_field:
                fields.append((self.table_field, self.table))
            if self.action_field:
                fields.append((self.action_field, change.action))
            values = change.values if change.action != DELETE else self.key_values(change)
            fields.extend((name, _form_value(value)) for name, value in (values or {}).items())
            return self.method, self.url, urlencode(fields).encode("ascii"), self.key_of(change)
        if change.action == DELETE:
            ident = quote(change.remote_id or change.key, safe="")
            return self.delete_method, f"{self.base}/{ident}", None, self.key_of(change)
        payload = change.values or {}
        if self.table_field or self.action_field:
            payload = dict(payload)
            if self.table_field:
                payload[self.table_field] = self.table
            if self.action_field:
                payload[self.action_field] = change.action
        body = self.encode_json(payload).encode("utf-8")
        if change.action == UPDATE and self.update_method:
            ident = quote(change.remote_id or change.key, safe="")
            return self.update_method, f"{self.base}/{ident}", body, self.key_of(change)
        return self.method, self.url, body, self.key_of(change)

    def key_of(self, change: Change) -> str | None:
        """The change's idempotency header value, when one is configured."""
        if self.key_template is None or self.idempotency_header is None:
            return None
        return self.idempotency_key(change)

    def idempotency_key(self, change: Change) -> str:
        """The rendered ``idempotency_key`` of a change: the same for the same change, sent again or rerun."""
        assert self.key_template is not None
        text = json.dumps([change.action, change.values], default=_json_default, ensure_ascii=False,
                          separators=(",", ":"))
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        try:
            value = self.key_template(key=change.key, hash=digest, action=change.action).strip()
        except Exception as exc:  # noqa: BLE001 - a template error is this record's failure
            raise _KeyFailed(f"idempotency_key: {getattr(exc, 'message', None) or exc}") from exc
        if not value:
            raise _KeyFailed("idempotency_key rendered empty")
        # A header value is ASCII without control characters; a key with others is percent-encoded.
        return value if value.isascii() and value.isprintable() and " " not in value else quote(value, _HEADER_SAFE)

    def key_values(self, change: Change) -> dict[str, Any]:
        """The key fields of a delete (a key made by a template goes in the ``key_field`` field)."""
        if not self.key_fields:
            return {self.key_field: change.key}
        return change.key_values

    def outcome(self, change: Change, answer: Attempted) -> Outcome:
        """The endpoint's answer as an :class:`Outcome`."""
        response = answer.response
        if answer.error is not None or response is None:
            detail = f": {body_text(response)}" if response is not None and response.data else ""
            return Outcome(False, error=f"{answer.error}{detail}")
        status = response.status
        if 200 <= status < 300:
            return Outcome(True, remote_id=json_id(response) if change.action == CREATE else change.remote_id)
        if change.action == DELETE and status in GONE:
            return Outcome(True)
        if 300 <= status < 400:
            return Outcome(False, error=f"HTTP {status}: redirected to {response.headers.get('Location', '?')}; "
                                        "set url to the final address")
        return Outcome(False, error=f"HTTP {status}: {body_text(response)}")


def _nothing() -> None:
    """Nothing to release."""


@REGISTRY.destination("http", config=HttpPostConfig, options=HttpPostOptions)
class HttpPostDestination:
    """An HTTP endpoint, one request per record (form fields or JSON), with retries and keep-alive."""

    def __init__(self, config: HttpPostConfig, base_dir: Path) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise ConfigError(f"http destination: url must start with http:// or https:// (got '{config.url[:40]}')")
        if config.ca_file and not (base_dir / config.ca_file).is_file():
            raise ConfigError(f"http destination: no CA bundle at {config.ca_file}")
        if config.password and not config.username:
            raise ConfigError("http destination: a password needs a username")
        self.config = config
        self.base_dir = base_dir
        self._sender: Sender | None = None
        self._workers: Workers | None = None
        self._connections: ConnectionSet | None = None
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._busy = threading.Lock()

    @property
    def sender(self) -> Sender:
        """The retry logic (with a urllib3 pool only when a proxy carries the requests), made on first use."""
        if self._sender is None:
            with self._lock:
                if self._sender is None:
                    config = self.config
                    pool = (make_pool(config, self.base_dir, config.url, config.concurrency)
                            if proxied(config.url) else None)
                    self._sender = Sender(config, pool)
        return self._sender

    def transport(self, stream: HttpPostStream) -> tuple[Direct | Threaded, Callable[[], None]]:
        """How ``stream`` sends, and what to call when it is done: the connection set (one stream at a
        time; a second stream at the same moment gets a set of its own for that batch), or the threads."""
        config = self.config
        if self.sender.pool is not None:
            with self._lock:
                if self._workers is None:
                    self._workers = Workers(config.concurrency)
            return Threaded(stream, self._workers), _nothing
        with self._lock:
            if self._context is None and config.url.startswith("https:"):
                self._context = tls_context(config, self.base_dir)
        host = next((v for k, v in config.headers.items() if k.lower() == "host"), None)
        with self._lock:
            if self._connections is None:
                self._connections = ConnectionSet(config.url, config.concurrency, config.timeout, self._context,
                                                  host)
        if self._busy.acquire(blocking=False):
            return Direct(stream, self._connections), self._busy.release
        extra = ConnectionSet(config.url, config.concurrency, config.timeout, self._context, host)
        return Direct(stream, extra), extra.close

    def open_stream(self, options: HttpPostOptions, ctx: StreamContext) -> HttpPostStream:
        """A stream sending one sync's changes."""
        return HttpPostStream(self, options, ctx)

    def close(self) -> None:
        """Wait for requests in flight, then close the connections."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._connections is not None:
            self._connections.close()
            self._connections = None
        if self._sender is not None:
            if self._sender.pool is not None:
                self._sender.pool.clear()
            self._sender = None
