"""Weavy as a destination: per-record writes, atomic bulk imports, and relational datasets.

Every value goes through :mod:`engine.adapters.weavy_values`, typed by the entity's discovered
fields, so a value that cannot fit is the record's error before anything is sent.

- ``write: record``: ``POST {entity}/{code}`` to create (a 409, the row exists, becomes a ``PUT``),
  ``PUT`` to update (a 404 becomes a ``POST``), ``DELETE`` (``delete_mode: physical`` adds
  ``?deleteMode=Physical``; a 404 is done). Requests run ``concurrency`` at once, each outcome
  recorded as it comes.
- ``write: bulk``: upserts go as atomic imports of up to ``rows_per_import`` rows. A batch rejected
  for some rows is sent again without them when the answer names them (``errors[].rowCode``); when
  it does not, the batch is split in halves until each bad row stands alone (bisection). The bad rows
  are dead letters with the server's errors (entity, row, field, message); the good rows land.
  Deletes go as atomic ``dataset/delete`` documents, split the same way.
- ``write: relational``: each record is a parent with lists of children (``children: {contacts:
  contact}`` names the record's list fields and their entities), sent as one atomic
  ``relationalDataset``: the rows, a relation per child (the child's ``link_field`` receives the
  parent's code), and the deletes of the children the record had the last time it was sent and no
  longer has. What was sent is remembered as the record's remote id (the children's codes per
  entity), so a child removed at the source is deleted, and only that child.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.adapters.pooled import each_completed, in_order
from engine.adapters.rest import Reply
from engine.adapters.weavy import WeavyApi, WeavyConfig
from engine.adapters.weavy_values import FieldType, convert, entity_fields
from engine.errors import ConfigError, ConnectError, RecordError
from engine.interfaces import CREATE, DELETE, Change, Outcome, StreamContext
from engine.registry import REGISTRY
from engine.schema_errors import did_you_mean
from engine.typed_config import option

log = logging.getLogger("syncengine.weavy")

SYSTEM = ("srvDateUTC", "srvExport", "srvDeleted", "companyCode")


@dataclass(frozen=True)
class WeavyDestinationOptions:
    """How one sync writes to Weavy."""

    entity: str = option("The entity to write (the parent entity of a relational dataset).", examples=["customer"],
                         minLength=1)
    write: Literal["record", "bulk", "relational"] = option(
        "record: one request per record; bulk: atomic imports of many rows (bad rows found and dead-lettered); "
        "relational: one atomic dataset per record with its children and their deletes.", "bulk")
    delete_mode: Literal["logical", "physical"] = option("How deletes are carried out.", "logical")
    rows_per_import: int = option("bulk: rows per import (the server's limit is 1000).", 1000, minimum=1,
                                  maximum=1000)
    children: dict[str, str] = option("relational: the record's list fields and the entity of their rows.", {},
                                      examples=[{"contacts": "contact", "addresses": "address"}])
    link_field: str | None = option("relational: the children's field that receives the parent's code; "
                                    "`{entity}_ID` by default.", None)


def _errors(reply: Reply) -> list[dict[str, Any]]:
    errors = reply.data.get("errors") if isinstance(reply.data, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _describe(errors: list[dict[str, Any]], reply: Reply) -> tuple[str, str | None]:
    """The server's errors as one message, and the first field they name."""
    if not errors:
        message = reply.data.get("message") if isinstance(reply.data, dict) else None
        return f"Weavy answered HTTP {reply.status}: {message or reply.text[:200]}", None
    parts = []
    for e in errors[:3]:
        where = ", ".join(f"{k} {e[v]}" for k, v in (("entity", "entity"), ("row", "rowCode"), ("field", "field"))
                          if e.get(v) is not None)
        parts.append(f"{where}: {e.get('message')}" if where else str(e.get("message")))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "Weavy: " + "; ".join(parts) + more, next((str(e["field"]) for e in errors if e.get("field")), None)


class _Stream:
    """What every write style shares: the entity's fields and the conversion of a record to a row."""

    max_batch: int | None = None

    def __init__(self, api: WeavyApi, options: WeavyDestinationOptions, ctx: StreamContext) -> None:
        self.api = api
        self.options = options
        self.ctx = ctx
        self.entity = options.entity
        self.key = f"{options.entity}_ID"
        self.fields = entity_fields(api.entity(options.entity))
        self.child_fields = {entity: entity_fields(api.entity(entity)) for entity in options.children.values()}
        known = {*self.fields, self.key, *SYSTEM, *options.children}
        for name in ctx.fields or ():
            if name not in known:
                raise ConfigError(f"weavy entity '{self.entity}' has no field '{name}'"
                                  + did_you_mean(name, sorted(self.fields)))
        self.requests = 0
        self.rejected = 0

    def row(self, entity: str, fields: dict[str, FieldType], values: dict[str, Any], *,
            skip: Sequence[str] = ()) -> dict[str, Any]:
        """A record's values as the entity's row (its code included); raises :class:`RecordError`."""
        key = f"{entity}_ID"
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name in skip or name in SYSTEM:
                continue
            if name == key:
                if value is None or value == "":
                    raise RecordError(f"{entity} needs a code ({key})", field=key)
                out[name] = str(value)
                continue
            field = fields.get(name)
            if field is None:
                raise RecordError(f"entity '{entity}' has no field '{name}'" + did_you_mean(name, sorted(fields)),
                                  field=name)
            if field.read_only:
                continue
            out[name] = convert(field, value)
        if key not in out:
            raise RecordError(f"{entity} needs a code ({key})", field=key)
        return out

    def call(self, method: str, path: str, **kw: Any) -> Reply:
        """One request, counted; the configured company goes with every write."""
        self.requests += 1
        if self.api.config.company_code:
            kw["params"] = self.api.company(dict(kw.get("params") or {}))
        return self.api.client.call(method, path, **kw)

    def delete_mode(self) -> str:
        """The ``deleteMode`` of a delete."""
        return "Physical" if self.options.delete_mode == "physical" else "Logical"

    def finish(self) -> None:
        """Say how many requests the writes took (and how the rate budget paced them)."""
        pacing = self.api.client.pacing()
        if pacing:
            self.ctx.note(f"{self.entity}: {pacing}")
        if self.requests:
            self.ctx.note(f"{self.requests} request(s) to Weavy for '{self.entity}'"
                          + (f"; {self.rejected} row(s) rejected" if self.rejected else ""))
            log.info("%s: %d request(s) to Weavy, %d row(s) rejected", self.ctx.sync, self.requests, self.rejected)


class WeavyBulkStream(_Stream):
    """Atomic imports of many rows; a rejected batch is narrowed down to its bad rows."""

    def __init__(self, api: WeavyApi, options: WeavyDestinationOptions, ctx: StreamContext) -> None:
        super().__init__(api, options, ctx)
        self.max_batch = options.rows_per_import

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Upserts as imports, deletes as a dataset delete; one outcome per change."""
        outcomes: list[Outcome | None] = [None] * len(changes)
        upserts: list[tuple[int, dict[str, Any]]] = []
        deletes: list[tuple[int, str]] = []
        for i, change in enumerate(changes):
            if change.action == DELETE:
                code = change.key_values.get(self.key, change.key)
                deletes.append((i, str(code)))
                continue
            try:
                upserts.append((i, self.row(self.entity, self.fields, change.values or {})))
            except RecordError as exc:
                outcomes[i] = Outcome(False, error=exc.message, field=exc.field)
        size = self.options.rows_per_import
        for start in range(0, len(upserts), size):
            self.send(upserts[start:start + size], outcomes, self.import_body, "import")
        for start in range(0, len(deletes), size):
            self.send(deletes[start:start + size], outcomes, self.delete_body, "dataset/delete")
        return [o if o is not None else Outcome(False, error="no outcome") for o in outcomes]

    def import_body(self, items: Sequence[tuple[int, Any]]) -> tuple[str, Any]:
        return self.api.path(self.entity, "import"), [row for _, row in items]

    def delete_body(self, items: Sequence[tuple[int, Any]]) -> tuple[str, Any]:
        return self.api.path("dataset", "delete"), [{"entityName": self.entity, "rowCodes": [c for _, c in items],
                                                     "deleteMode": self.delete_mode()}]

    def send(self, items: Sequence[tuple[int, Any]], outcomes: list[Outcome | None],
             body: Any, what: str) -> None:
        """One atomic request; on a reject, the named rows out and the rest again, or halves (bisection)."""
        if not items:
            return
        path, document = body(items)
        reply = self.call("POST", path, body=document)
        if 200 <= reply.status < 300:
            for i, item in items:
                code = item.get(self.key) if isinstance(item, dict) else item
                outcomes[i] = Outcome(True, remote_id=str(code))
            return
        if reply.status not in (400, 404, 409, 422):
            raise ConnectError(f"Weavy {what} failed: HTTP {reply.status}: {reply.text[:300]}")
        errors = _errors(reply)
        code_of = {str(item.get(self.key) if isinstance(item, dict) else item): i for i, item in items}
        if what == "dataset/delete":
            gone = {str(e.get("rowCode")) for e in errors if _not_found(e)}
            if gone and gone <= set(code_of):
                # A row already deleted (by someone else, or by our own delete whose answer was lost) is done.
                for code in gone:
                    outcomes[code_of[code]] = Outcome(True)
                if len(gone) < len(errors) or len(gone) < len(items):
                    self.send([it for it in items if str(it[1]) not in gone], outcomes, body, what)
                return
        if len(items) == 1:
            message, field = _describe(errors, reply)
            outcomes[items[0][0]] = Outcome(False, error=message, field=field)
            self.rejected += 1
            return
        named = {str(e.get("rowCode")) for e in errors if e.get("rowCode") is not None}
        if errors and named and named <= set(code_of):
            for code in named:
                mine = [e for e in errors if str(e.get("rowCode")) == code]
                message, field = _describe(mine, reply)
                outcomes[code_of[code]] = Outcome(False, error=message, field=field)
                self.rejected += 1
            self.send([it for it in items if str(it[1].get(self.key) if isinstance(it[1], dict) else it[1])
                       not in named], outcomes, body, what)
            return
        half = len(items) // 2
        self.send(items[:half], outcomes, body, what)
        self.send(items[half:], outcomes, body, what)


class WeavyRecordStream(_Stream):
    """One request per record (``record``) or per parent with its children (``relational``), several at once."""

    def __init__(self, api: WeavyApi, options: WeavyDestinationOptions, ctx: StreamContext,
                 executor: ThreadPoolExecutor) -> None:
        super().__init__(api, options, ctx)
        self.executor = executor
        self.relational = options.write == "relational"
        self.link = options.link_field or self.key
        self._count = threading.Lock()
        self.claimed: dict[str, set[str]] = {}
        """Per child entity, the codes records of this run hold (see :meth:`claim`)."""

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Every change, answered in order (the engine prefers :meth:`write_each`)."""
        return in_order(self.write_each(changes), len(changes))

    def write_each(self, changes: Sequence[Change]) -> Iterator[list[tuple[int, Outcome]]]:
        """Send the changes, ``concurrency`` at once, yielding outcomes as they complete."""
        if changes:
            if self.relational:
                self.claim(changes)
            send = self.send_dataset if self.relational else self.send_record
            yield from each_completed(self.executor, self.api.config.concurrency, changes, send)

    def call(self, method: str, path: str, **kw: Any) -> Reply:
        """One request, counted (from several threads); the configured company goes with every write."""
        with self._count:
            self.requests += 1
        if self.api.config.company_code:
            kw["params"] = self.api.company(dict(kw.get("params") or {}))
        return self.api.client.call(method, path, **kw)

    def claim(self, changes: Sequence[Change]) -> None:
        """Note the children every record of this run holds, before any is sent, so that a child another
        record now holds is never deleted as 'removed' from its former parent."""
        for change in changes:
            values = change.values or {}
            for list_field, entity in self.options.children.items():
                rows = values.get(list_field)
                if isinstance(rows, list):
                    self.claimed.setdefault(entity, set()).update(
                        str(r[f"{entity}_ID"]) for r in rows if isinstance(r, dict) and r.get(f"{entity}_ID"))

    def failed(self, reply: Reply) -> Outcome:
        """A rejected request as the record's outcome."""
        with self._count:
            self.rejected += 1
        message, field = _describe(_errors(reply), reply)
        return Outcome(False, error=message, field=field)

    def send_record(self, change: Change) -> Outcome:
        """One record: create, update or delete, each falling back when the server knows better."""
        code = str(change.key_values.get(self.key, change.key))
        path = self.api.path(self.entity, code)
        if change.action == DELETE:
            params = {"deleteMode": "Physical"} if self.options.delete_mode == "physical" else None
            reply = self.call("DELETE", path, params=params)
            return Outcome(True) if reply.status in (200, 204, 404, 410) else self.failed(reply)
        try:
            row = self.row(self.entity, self.fields, change.values or {})
        except RecordError as exc:
            return Outcome(False, error=exc.message, field=exc.field)
        del row[self.key]
        first, second = ("POST", "PUT") if change.action == CREATE else ("PUT", "POST")
        reply = self.call(first, path, body=row)
        if (first == "POST" and reply.status == 409) or (first == "PUT" and reply.status == 404):
            reply = self.call(second, path, body=row)  # it exists after all (a lost answer), or it was removed
        return Outcome(True, remote_id=code) if 200 <= reply.status < 300 else self.failed(reply)

    def send_dataset(self, change: Change) -> Outcome:
        """One parent with its children, their relations and the deletes of children it no longer has."""
        before = _children_of(change.remote_id)
        code = str(change.key_values.get(self.key, change.key))
        data: list[dict[str, Any]] = []
        relations: list[dict[str, str]] = []
        now: dict[str, list[str]] = {}
        if change.action != DELETE:
            values = change.values or {}
            try:
                parent = self.row(self.entity, self.fields, values, skip=tuple(self.options.children))
                data.append({"entityName": self.entity, "rows": [parent]})
                for list_field, entity in self.options.children.items():
                    rows = values.get(list_field) or []
                    if not isinstance(rows, list):
                        raise RecordError(f"'{list_field}' must be a list of {entity} rows", field=list_field)
                    made = []
                    for n, child in enumerate(rows):
                        if not isinstance(child, dict):
                            raise RecordError(f"item {n} is not an object", field=f"{list_field}[{n}]")
                        try:
                            made.append(self.row(entity, self.child_fields[entity], {**child, self.link: code}))
                        except RecordError as exc:
                            raise RecordError(exc.message, field=f"{list_field}[{n}].{exc.field}") from None
                    now[entity] = [str(r[f"{entity}_ID"]) for r in made]
                    if made:
                        data.append({"entityName": entity, "rows": made})
                    relations += [{"SourceEntityName": self.entity, "SourceRowCode": code, "TargetEntityName": entity,
                                   "TargetRowCode": c, "TargetFieldName": self.link} for c in now[entity]]
            except RecordError as exc:
                return Outcome(False, error=exc.message, field=exc.field)
        # Children the record no longer has are deleted, unless another record of this run holds them now
        # (a contact moved to another customer); only entities still listed in `children` are considered.
        current = set(self.options.children.values())
        claimed = self.claimed
        deletes = [{"entityName": entity, "rowCodes": gone, "deleteMode": self.delete_mode()}
                   for entity, codes in before.items() if entity in current
                   and (gone := sorted(set(codes) - set(now.get(entity, [])) - claimed.get(entity, set())))]
        if change.action == DELETE:
            deletes.append({"entityName": self.entity, "rowCodes": [code], "deleteMode": self.delete_mode()})
        body: dict[str, Any] = {"noResultData": True, "data": data, "relations": relations, "deletes": deletes}
        reply = self.call("POST", self.api.path("relationalDataset"), body=body)
        gone_already = {(str(e.get("entity")), str(e.get("rowCode"))) for e in _errors(reply) if _not_found(e)}
        if reply.status == 400 and gone_already and len(gone_already) == len(_errors(reply)):
            # Rows to delete that are not there any more: the document without those deletes.
            left = [{**d, "rowCodes": [c for c in d["rowCodes"] if (d["entityName"], c) not in gone_already]}
                    for d in deletes]
            body["deletes"] = [d for d in left if d["rowCodes"]]
            reply = self.call("POST", self.api.path("relationalDataset"), body=body)
        if not 200 <= reply.status < 300:
            return self.failed(reply)
        return Outcome(True, remote_id=json.dumps({e: sorted(c) for e, c in now.items() if c}, sort_keys=True)
                       if any(now.values()) else code)


_NOT_FOUND = re.compile(r"not found|does not exist|n'existe pas|introuvable", re.IGNORECASE)


def _not_found(error: dict[str, Any]) -> bool:
    """Whether a row error says the row is not there (a delete of it is then done)."""
    return error.get("rowCode") is not None and bool(_NOT_FOUND.search(str(error.get("message") or "")))


def _children_of(remote_id: str | None) -> dict[str, list[str]]:
    """The children's codes a relational record had when it was last sent (kept as its remote id)."""
    if not remote_id or not remote_id.startswith("{"):
        return {}
    try:
        found = json.loads(remote_id)
    except ValueError:
        return {}
    return {str(k): [str(c) for c in v] for k, v in found.items() if isinstance(v, list)} \
        if isinstance(found, dict) else {}


@REGISTRY.destination("weavy", config=WeavyConfig, options=WeavyDestinationOptions)
class WeavyDestination:
    """Weavy CRM rows: per record, in atomic bulk imports, or as relational datasets (parent with children)."""

    def __init__(self, config: WeavyConfig, base_dir: Path) -> None:
        self.api = WeavyApi(config, base_dir)
        self._executor: ThreadPoolExecutor | None = None

    def open_stream(self, options: WeavyDestinationOptions,
                    ctx: StreamContext) -> WeavyBulkStream | WeavyRecordStream:
        """One sync's writes, in its write style."""
        if options.write == "bulk":
            return WeavyBulkStream(self.api, options, ctx)
        if options.write != "relational" and options.children:
            raise ConfigError("weavy: `children` applies to write: relational")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.api.config.concurrency, thread_name_prefix="weavy")
        return WeavyRecordStream(self.api, options, ctx, self._executor)

    def discover(self) -> list[Any]:
        """The project's entities and their fields."""
        from engine.adapters.weavy import discovered

        return [discovered(e) for e in self.api.entities()]

    def stream_for(self, options: WeavyDestinationOptions) -> str | None:
        """The entity a sync writes."""
        return options.entity

    def close(self) -> None:
        """Stop the threads, close the connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self.api.close()
