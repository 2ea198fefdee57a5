"""An HTTP endpoint as a destination: one request per record, form-encoded or JSON.

``format: form`` is the sending side of a live sync such as Aljex's: every change is a POST of
``application/x-www-form-urlencoded`` fields plus a table field and an action field (create,
update, delete); a delete carries the key fields only. ``format: json`` posts the mapped record
as a JSON object; an update goes the same way unless ``update_method`` is set (then it is sent to
``{url}/{id}``), and a delete is ``DELETE {url}/{id}``, where ``id`` is the id the endpoint
returned at the create (a JSON answer's ``id``) or else the record key. A 404 or 410 answer to a
delete counts as done: the record is not there.

Requests run on a bounded thread pool (``concurrency``) over one keep-alive connection pool; retries
follow :mod:`engine.adapters.http_client`. A rejected record (a 4xx other than 401/407/408/429, or
retries exhausted) is a failed outcome, so it is dead-lettered and the run goes on. Delivery is
at least once: a record whose answer was lost (a timeout) may arrive twice.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

from engine.adapters.http_client import (
    Aborted,
    Attempted,
    HttpConnectionConfig,
    Sender,
    basic_auth_header,
    body_text,
    json_id,
    make_pool,
)
from engine.errors import ConfigError
from engine.interfaces import CREATE, DELETE, UPDATE, Change, Outcome, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option

MAX_BATCH = 1000
GONE = frozenset({404, 410})


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
    concurrency: int = option("Requests in flight at once (and keep-alive connections kept).", 8,
                              minimum=1, maximum=64)


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


class HttpPostStream:
    """One sync's requests."""

    max_batch: int | None = MAX_BATCH

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

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Send every change (``concurrency`` at a time); one outcome per change, in order."""
        abort = threading.Event()
        sender = self.owner.sender  # made here, before the pool threads share it
        if len(changes) == 1:
            return [self.send(changes[0], sender, abort)]
        futures = [self.owner.pool.submit(self.send, change, sender, abort) for change in changes]
        wait(futures)
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            # Report the request that found the problem, not those it stopped.
            raise next((e for e in errors if not isinstance(e, Aborted)), errors[0])
        return [f.result() for f in futures]

    def finish(self) -> None:
        """Nothing is buffered."""

    # --- one change -----------------------------------------------------------------------------

    def send(self, change: Change, sender: Sender, abort: threading.Event) -> Outcome:
        """Send one change and read the endpoint's answer."""
        method, url, body, headers = self.request(change)
        answer = sender.send(method, url, body=body, headers=headers, abort=abort)
        return self.outcome(change, answer)

    def request(self, change: Change) -> tuple[str, str, bytes | None, dict[str, str]]:
        """(method, url, body, headers) of one change."""
        if self.form:
            fields: list[tuple[str, str]] = []
            if self.table_field:
                fields.append((self.table_field, self.table))
            if self.action_field:
                fields.append((self.action_field, change.action))
            values = change.values if change.action != DELETE else self.key_values(change)
            fields.extend((name, _form_value(value)) for name, value in (values or {}).items())
            return self.method, self.url, urlencode(fields).encode("ascii"), self.headers
        ident = quote(change.remote_id or change.key, safe="")
        if change.action == DELETE:
            return self.delete_method, f"{self.base}/{ident}", None, self.bare_headers
        payload = dict(change.values or {})
        if self.table_field:
            payload[self.table_field] = self.table
        if self.action_field:
            payload[self.action_field] = change.action
        body = json.dumps(payload, default=_json_default, ensure_ascii=False).encode("utf-8")
        if change.action == UPDATE and self.update_method:
            return self.update_method, f"{self.base}/{ident}", body, self.headers
        return self.method, self.url, body, self.headers

    def key_values(self, change: Change) -> dict[str, Any]:
        """The key fields of a delete, from the state key."""
        if not self.key_fields:
            return {self.key_field: change.key}
        if len(self.key_fields) == 1:
            return {self.key_fields[0]: change.key}
        return dict(zip(self.key_fields, json.loads(change.key), strict=True))

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
        self._pool: ThreadPoolExecutor | None = None

    @property
    def sender(self) -> Sender:
        """The session and its retry logic, made on first use."""
        if self._sender is None:
            pool = make_pool(self.config, self.base_dir, self.config.url, self.config.concurrency)
            self._sender = Sender(self.config, pool)
        return self._sender

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The bounded pool of request threads, made on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="http-post")
        return self._pool

    def open_stream(self, options: HttpPostOptions, ctx: StreamContext) -> HttpPostStream:
        """A stream sending one sync's changes."""
        return HttpPostStream(self, options, ctx)

    def close(self) -> None:
        """Wait for requests in flight, then close the connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._sender is not None:
            self._sender.pool.clear()
            self._sender = None
