"""Any system that implements the Dsync connector API, as a destination (entities pushed to it) and as a
source (its mass sync). Built on :mod:`engine.adapters.rest`; the layout is :mod:`engine.adapters.dsync_layout`.

**Writing.** Each record is checked against the layout before it leaves (types, ``required`` on
create, ``multiple`` as a list), so a bad record is a dead letter naming the tree key, never a 400.
Headers: ``Auth-Token``, the entity's ``Entity-Token``, ``Process-Id`` (the run id: one per run, in
the run history) and ``Entity-Id`` on updates and deletes. Answers:

- 201 and 200: done (the remote id is the key ``data`` gives back); 202: accepted, not final: the
  record is *pending* and the next run confirms it by reading the mass sync (present for a create
  or update, absent for a delete); one still missing after ``pending_timeout`` is sent again;
- 409 on a create: the record exists (most often our own write whose answer was lost): it is
  adopted and sent as an update, never a duplicate or a dead letter;
- 400: the record's error with the connector's ``detail``; 404 on an update: the record was removed,
  so it is created; 404 on a delete: done; 401: the run stops; 5xx: retried with backoff.

**Parents first.** ``parents: {product_id: products}`` names, per foreign-key field, the sync that
writes the parent entity (run it earlier in the file): a record whose parent that sync has not
delivered waits as a dead letter saying so, and is sent by a later run once the parent is there.

**After the run**, a ``POST /notification`` carries the process id, the counts and each record
error; with ``job_id``, ``POST /entity/{name}/set_job``.

**Reading** (the source): ``/api/sync/total`` gives the page size, ``/api/sync/items/?page=N`` the
pages in order. A pass is whole (so a mirror sync infers deletes) only when the total did not move
during the read and every item was read: an item deleted mid-read shifts later items back a page,
so that pass infers no deletes and the next one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.adapters.dsync_layout import Entity, check, discovered, parse_layout
from engine.adapters.pooled import each_completed, in_order
from engine.adapters.rest import Reply, RestClient, RestConfig
from engine.errors import ConfigError, ConnectError, RecordError
from engine.interfaces import (
    CREATE,
    DELETE,
    Change,
    DiscoveredStream,
    Outcome,
    PendingChange,
    StreamContext,
)
from engine.registry import REGISTRY
from engine.schema_errors import did_you_mean
from engine.typed_config import option, secret

MAX_NOTIFIED = 1000
"""Record errors one notification carries at most (the counts always say how many there were)."""


@dataclass(frozen=True, kw_only=True)
class DsyncConfig(RestConfig):
    """A Dsync connector: where it is and its token."""

    url: str = option("The connector's base URL.", examples=["https://connector.example.com"])
    auth_token: str | None = secret("The connector's Auth-Token.", examples=["{{ env.DSYNC_AUTH_TOKEN }}"])
    layout_path: str = option("Where the connector serves its data layout.", "/datalayout")
    concurrency: int = option("Writes in flight at once; a crash resends at most this many.", 8, minimum=1,
                              maximum=64)


class DsyncApi:
    """One connector: the layout (read once) and calls with its headers."""

    def __init__(self, config: DsyncConfig, base_dir: Path) -> None:
        if not config.auth_token:
            raise ConfigError("dsync: an auth_token is required (auth_token: \"{{ env.DSYNC_AUTH_TOKEN }}\")")
        self.config = config
        self.client = RestClient(config, base_dir, pool_size=config.concurrency + 2)
        self._layout: dict[str, Entity] | None = None
        self._lock = threading.Lock()

    def headers(self, entity: Entity | None = None, **extra: str) -> dict[str, str]:
        """The connector's headers: Auth-Token, and the entity's token when there is one."""
        out = {"Auth-Token": self.config.auth_token or ""}
        if entity is not None and entity.token:
            out["Entity-Token"] = entity.token
        return {**out, **extra}

    def call(self, method: str, path: str, *, entity: Entity | None = None, body: Any = None,
             params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> Reply:
        """One call; a 401 stops the run (the token is wrong for every record)."""
        reply = self.client.call(method, path, body=body, params=params, auth=False,
                                 headers=self.headers(entity, **(headers or {})))
        if reply.status == 401:
            raise ConnectError(f"the connector refused the Auth-Token or Entity-Token (HTTP 401) on {method} {path}")
        return reply

    def layout(self) -> dict[str, Entity]:
        """The connector's entities (read once per process)."""
        with self._lock:
            if self._layout is None:
                self._layout = parse_layout(self.client.expect(self.call("GET", self.config.layout_path)).data)
            return self._layout

    def entity(self, name: str) -> Entity:
        """One entity of the layout, or a configuration error with a did-you-mean."""
        layout = self.layout()
        if name not in layout:
            raise ConfigError(f"the connector has no entity '{name}'" + did_you_mean(name, list(layout)))
        return layout[name]

    def items(self, entity: Entity) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """The mass sync: (total at that page, items) per page, in order, until a short page."""
        total = self.client.expect(self.call("GET", "/api/sync/total", entity=entity)).data
        info = total.get("data") if isinstance(total, dict) else None
        per_page = int(info.get("per_page") or 100) if isinstance(info, dict) else 100
        known = int(info.get("total") or 0) if isinstance(info, dict) else 0
        page = 1
        previous: list[Any] | None = None
        while True:
            reply = self.client.expect(self.call("GET", "/api/sync/items/", entity=entity, params={"page": page}))
            data = reply.data.get("data") if isinstance(reply.data, dict) else None
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ConnectError(f"the connector's mass sync page {page} holds no items list")
            if items and items == previous:
                raise ConnectError(f"the connector answered page {page} of its mass sync with the page before it: it "
                                   "does not page by ?page=N, so its items cannot be read whole")
            header = reply.headers.get("Total") or reply.headers.get("total")
            count = int(header) if header and str(header).isdigit() else known  # no header: the total call's
            size = int(reply.headers.get("Per-Page") or reply.headers.get("per-page") or per_page)
            yield count, [i for i in items if isinstance(i, dict)]
            if len(items) < size or not items:
                return
            previous = items
            page += 1

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


def _holds(found: Any, sent: Any) -> bool:
    """Whether a record read back holds every value that was sent (numbers compared as numbers, objects deeply)."""
    if isinstance(sent, Mapping):
        return isinstance(found, Mapping) and all(_holds(found.get(k), v) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(found, list) and len(found) == len(sent) and all(map(_holds, found, sent))
    if isinstance(sent, (int, float)) and not isinstance(sent, bool) and isinstance(found, (int, float, str)):
        try:
            return float(found) == float(sent)
        except ValueError:
            return False
    return bool(found == sent or (sent is not None and str(found) == str(sent)))


def _detail(reply: Reply) -> tuple[str, str | None]:
    """The connector's reason for a refusal, and the tree key it names."""
    data = reply.data if isinstance(reply.data, dict) else {}
    detail = data.get("detail")
    message = data.get("message") or f"HTTP {reply.status}"
    if isinstance(detail, dict) and detail:
        where = detail.get("treekey") or detail.get("field") or detail.get("header")
        text = detail.get("message") or ", ".join(f"{k}: {v}" for k, v in detail.items())
        return f"the connector answered {reply.status} {message}: {where + ': ' if where else ''}{text}", \
            str(where) if where else None
    if isinstance(detail, str) and detail:
        return f"the connector answered {reply.status} {message}: {detail}", None
    return f"the connector answered {reply.status} {message}", None


# --- the destination -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DsyncDestinationOptions:
    """What one sync writes to the connector."""

    entity: str = option("The entity (its `entity_name` in the layout).", examples=["product"], minLength=1)
    parents: dict[str, str] = option("Foreign-key fields and the sync that writes their parent (run earlier): a "
                                     "record whose parent was not delivered waits as a dead letter.", {},
                                     examples=[{"product_id": "products"}])
    job_id: str | None = option("After the run, tell the connector this job id (`set_job`).", None)
    pending_timeout: float = option("Seconds after which a change the connector accepted (202) but that the mass "
                                    "sync still does not show is sent again.", 3600.0, minimum=0)
    notify: bool = option("After the run, post a notification with the counts and the record errors.", True)


class DsyncDestinationStream:
    """One sync's writes: checked against the layout, several at once, each outcome as it comes."""

    max_batch: int | None = None

    def __init__(self, owner: DsyncDestination, options: DsyncDestinationOptions, ctx: StreamContext) -> None:
        self.api = owner.api
        self.owner = owner
        self.options = options
        self.ctx = ctx
        self.entity = self.api.entity(options.entity)
        self.process_id = ctx.run.id
        self.process = {"Process-Id": self.process_id}
        self.parents = {name: set(ctx.delivered_keys(sync)) for name, sync in options.parents.items()}
        self.lock = threading.Lock()
        self.counts = {"created": 0, "updated": 0, "deleted": 0, "accepted": 0, "failed": 0}
        self.failures: list[dict[str, str]] = []

    # --- writing --------------------------------------------------------------------------------------

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Every change, answered in order (the engine prefers :meth:`write_each`)."""
        return in_order(self.write_each(changes), len(changes))

    def write_each(self, changes: Sequence[Change]) -> Iterator[list[tuple[int, Outcome]]]:
        """Send the changes, ``concurrency`` at once, yielding outcomes as they complete."""
        if changes:
            yield from each_completed(self.owner.executor(), self.api.config.concurrency, changes, self.counted)

    def counted(self, change: Change) -> Outcome:
        """One change, its outcome counted for the run's notification."""
        outcome = self.send(change)
        with self.lock:
            if not outcome.ok:
                self.counts["failed"] += 1
                if len(self.failures) < MAX_NOTIFIED:
                    self.failures.append({"node_id": change.key, "status": "400",
                                          "message": outcome.error or "failed"})
            elif outcome.pending:
                self.counts["accepted"] += 1
            else:
                self.counts[{CREATE: "created", DELETE: "deleted"}.get(change.action, "updated")] += 1
        return outcome

    def entity_id(self, change: Change) -> str:
        """The id the connector knows the record by: the one its create gave back, else the key's value."""
        return change.remote_id or str(change.key_values.get(self.entity.key, change.key))

    def send(self, change: Change) -> Outcome:
        """One change, with the connector's answers interpreted (see the module's notes)."""
        entity = self.entity
        if change.action == DELETE:
            reply = self.api.call("DELETE", entity.path, entity=entity, body={}, headers={
                "Process-Id": self.process_id, "Entity-Id": self.entity_id(change)})
            if reply.status in (200, 204, 404, 410):
                return Outcome(True)
            return self.answer(reply, change)
        values = change.values or {}
        create = change.action == CREATE
        try:
            check(entity, values, create=create)
            self.check_parents(values)
        except RecordError as exc:
            return Outcome(False, error=exc.message, field=exc.field)
        if create:
            reply = self.api.call("POST", entity.path, entity=entity, body=values, headers=self.process)
            if reply.status != 409:
                return self.answer(reply, change)
            # The record exists: most often our own earlier write whose answer was lost. Adopt it.
        reply = self.api.call("PUT", entity.path, entity=entity, body=values,
                              headers={**self.process, "Entity-Id": self.entity_id(change)})
        if reply.status == 404 and not create:
            reply = self.api.call("POST", entity.path, entity=entity, body=values, headers=self.process)
        return self.answer(reply, change)

    def answer(self, reply: Reply, change: Change) -> Outcome:
        """What an answer means for the record."""
        key = str(change.key_values.get(self.entity.key, change.key))
        if reply.status in (200, 201, 204):
            data = reply.data.get("data") if isinstance(reply.data, dict) else None
            remote = data.get(self.entity.key) if isinstance(data, dict) else None
            return Outcome(True, remote_id=str(remote) if remote is not None else
                           (None if change.action == DELETE else key))
        if reply.status == 202:
            return Outcome(True, pending=True, remote_id=None if change.action == DELETE else key)
        message, field = _detail(reply)
        return Outcome(False, error=message, field=field)

    def check_parents(self, values: Mapping[str, Any]) -> None:
        """A record whose parent was not delivered waits (its dead letter says why)."""
        for name, delivered in self.parents.items():
            value = values.get(name)
            if value is None or str(value) in delivered:
                continue
            sync = self.options.parents[name]
            target = self.entity.foreign.get(name, "parent")
            raise RecordError(f"waits for its {target} '{value}', which sync '{sync}' has not delivered (see "
                              f"syncengine dead-letters --sync {sync}); it is sent once the {target} is there",
                              field=f"{self.entity.name}.{name}")

    # --- confirming accepted changes -------------------------------------------------------------------

    def confirm(self, pending: Sequence[PendingChange]) -> Iterator[tuple[str, bool]]:
        """Read the mass sync: an accepted create or update is done when its record is there, a delete when not.

        One still not done after ``pending_timeout`` seconds did not happen: it is sent again.
        """
        present = {str(item.get(self.entity.key)): item for _, page in self.api.items(self.entity) for item in page}
        now = datetime.now(UTC)
        for change in pending:
            value = str(change.key_values.get(self.entity.key, change.key))
            if change.action == DELETE:
                done = value not in present
            else:  # there, and holding what was sent (an accepted update leaves the record there either way)
                done = value in present and _holds(present[value], change.values or {})
            if done:
                yield change.key, True
                continue
            try:
                since = datetime.fromisoformat(change.since)
            except ValueError:
                since = now
            if (now - since).total_seconds() >= self.options.pending_timeout:
                yield change.key, False

    # --- after the run ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Tell the connector what the run did (a notification), and the job id when one is set."""
        entity = self.entity
        total = sum(self.counts.values())
        if self.options.notify and total:
            failed = self.counts["failed"]
            summary = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n)
            body = {"process_id": self.process_id, "status": "500" if failed else "200",
                    "message": f"{entity.name}: {summary}", "data": {"notifications": self.failures}}
            reply = self.api.call("POST", "/notification", body=body, headers={"Process-Id": self.process_id})
            if not 200 <= reply.status < 300:
                self.ctx.warn(f"the connector refused the run's notification: {_detail(reply)[0]}")
        if self.options.job_id:
            reply = self.api.call("POST", f"{entity.path}/set_job", entity=entity,
                                  body={"job_id": self.options.job_id})
            if not 200 <= reply.status < 300:
                self.ctx.warn(f"the connector refused job id '{self.options.job_id}': {_detail(reply)[0]}")


@REGISTRY.destination("dsync", config=DsyncConfig, options=DsyncDestinationOptions)
class DsyncDestination:
    """A Dsync connector: entities created, updated and deleted, checked against its data layout."""

    def __init__(self, config: DsyncConfig, base_dir: Path) -> None:
        self.api = DsyncApi(config, base_dir)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        """The sending threads, shared by the destination's syncs."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.api.config.concurrency, thread_name_prefix="dsync")
            return self._executor

    def open_stream(self, options: DsyncDestinationOptions, ctx: StreamContext) -> DsyncDestinationStream:
        """One sync's writes."""
        return DsyncDestinationStream(self, options, ctx)

    def discover(self) -> list[DiscoveredStream]:
        """The connector's layout: one closed stream per entity, nested fields dotted."""
        return [discovered(e) for e in self.api.layout().values()]

    def stream_for(self, options: DsyncDestinationOptions) -> str | None:
        """The entity a sync writes."""
        return options.entity

    def close(self) -> None:
        """Stop the threads, close the connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self.api.close()


# --- the source ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DsyncSourceOptions:
    """What one sync reads from the connector's mass sync."""

    entity: str = option("The entity to read.", examples=["product"], minLength=1)


class DsyncSourceStream:
    """The mass sync of one entity, page by page; whole only when nothing moved during the read."""

    def __init__(self, api: DsyncApi, options: DsyncSourceOptions, ctx: StreamContext) -> None:
        self.api = api
        self.entity = api.entity(options.entity)
        self.ctx = ctx
        self.whole = False

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """Every item, each key once."""
        seen: set[str] = set()
        totals: set[int] = set()
        started = time.monotonic()
        for total, page in self.api.items(self.entity):
            totals.add(total)
            for item in page:
                key = str(item.get(self.entity.key))
                if key in seen:
                    continue  # an item shifted forward by an insert before it: read once
                seen.add(key)
                yield item
        if totals == {0} and seen:
            self.whole = False  # no total anywhere: a move during the read could not be seen
            self.ctx.note(f"the connector gives no total for '{self.entity.name}': no deletes are inferred")
            return
        moved = len(totals) > 1 or (totals and len(seen) != next(iter(totals)))
        self.whole = not moved
        if moved:
            self.ctx.note(f"the connector's '{self.entity.name}' items changed during the read "
                          f"({time.monotonic() - started:.0f}s): no deletes are inferred from this pass")

    def finish(self) -> str | None:
        """No cursor: every pass reads everything."""
        return None


@REGISTRY.source("dsync", config=DsyncConfig, options=DsyncSourceOptions)
class DsyncSource:
    """A Dsync connector's mass sync: every item of an entity, page by page (a snapshot)."""

    def __init__(self, config: DsyncConfig, base_dir: Path) -> None:
        self.api = DsyncApi(config, base_dir)

    def open_stream(self, options: DsyncSourceOptions, ctx: StreamContext) -> DsyncSourceStream:
        """One sync's read."""
        return DsyncSourceStream(self.api, options, ctx)

    def discover(self) -> list[DiscoveredStream]:
        """The connector's layout."""
        return [discovered(e) for e in self.api.layout().values()]

    def stream_for(self, options: DsyncSourceOptions) -> str | None:
        """The entity a sync reads."""
        return options.entity

    def close(self) -> None:
        """Close the connections."""
        self.api.close()
