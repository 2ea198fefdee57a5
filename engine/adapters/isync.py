"""iSync as a source (the product catalogue, stock units, sales orders read back) and a destination
(web sales orders, credit notes), over SOAP with zeep.

The wire format is :mod:`engine.adapters.isync_wire`'s; the session, retries and lock are
:mod:`engine.adapters.isync_connection`'s. This module decides what each operation means for the
engine: which cursor a read starts from, what a rejected or lost request becomes.

**Cursors are the server's own time.** ``GetProductStockCatalogue`` returns products whose units
changed after ``AddedDate``; the cursor is the largest ``AddedDate`` of the records read, as the
server wrote it (a naive local time of the server's zone; never this machine's clock). The next read
asks from ``cursor - overlap`` (one second by default) so that products sharing the cursor's
timestamp are read again whether the server compares ``>`` or ``>=``; records read again are
unchanged, so the hashes keep them from being sent again. With ``server_timezone`` set, a cursor
inside the hour a daylight-saving change repeats is moved back by that hour, since the server's naive
clock ran through it twice. ``GetProductStockUnits`` sends no timestamp: its cursor is the server's
clock (the HTTP ``Date`` of the answer received before the request was sent, so at or before the
moment the server evaluated it) in ``server_timezone``; without a ``server_timezone`` every read is
whole (every unit; only changes are sent).

**Orders are never created twice.** A lost answer is retried; the retry answers "already exists",
and the order is then read back (``GetWebSalesOrder``) and its ``SalesOrderID`` adopted when it is
the same order (PO number, tracking number and lines). A credit note cannot be read back, so a
request that may have reached the server is never repeated: the record is *held* (outcome unknown)
until someone decides, and every note is recorded as held before it is sent, so a crash leaves the
notes in flight held too (see :class:`~engine.interfaces.AtMostOnce`). iSync has no operation to
change or delete either: a change to a record already sent is a record error that says so
(``on_change: ignore`` records it without sending).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.adapters import isync_wire as wire
from engine.adapters.isync_connection import Ambiguous, Answer, Connection, ISyncConfig
from engine.adapters.pooled import each_completed, in_order
from engine.errors import ConfigError, RecordError
from engine.interfaces import CREATE, Change, Outcome, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option

log = logging.getLogger(__name__)

SOURCE_OPERATIONS = ("GetProductStockCatalogue", "GetProductStockUnits", "GetWebSalesOrder")
DESTINATION_OPERATIONS = ("PersistWebSalesOrder", "CreateWebCreditNote")
SELECT = "SELECT"
SERVER_TIME = "%Y-%m-%dT%H:%M:%S"

_shared: dict[tuple[str, str], tuple[Connection, int]] = {}
_shared_lock = threading.Lock()


def _connect(config: ISyncConfig, base_dir: Path) -> Connection:
    """The process's one connection for a server and user: a source and a destination block naming the same
    user share its session key (a second login would void the first)."""
    slot = (config.url, config.username)
    with _shared_lock:
        found = _shared.get(slot)
        if found is None:
            found = (Connection(config, base_dir), 0)
        _shared[slot] = (found[0], found[1] + 1)
        return found[0]


def _disconnect(connection: Connection) -> None:
    slot = (connection.config.url, connection.config.username)
    with _shared_lock:
        found = _shared.get(slot)
        if found is None or found[0] is not connection:
            return
        if found[1] <= 1:
            del _shared[slot]
            connection.close()
        else:
            _shared[slot] = (connection, found[1] - 1)


# --- the source -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ISyncSourceOptions:
    """What one sync reads from iSync."""

    operation: Literal["GetProductStockCatalogue", "GetProductStockUnits", "GetWebSalesOrder"] = option(
        "The read: products changed since the cursor (catalogue, or units only), or orders by PO number.")
    start: str = option("AddedDate of the first read (and of --full-refresh), in the server's local time.",
                        "2000-01-01T00:00:00", pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
    overlap: float = option("Seconds re-read before the cursor, so records sharing its timestamp are never lost "
                            "whether the server compares > or >=.", 1.0, minimum=0)
    cursor_field: str = option("The record field that holds the server's change time (catalogue).", "AddedDate")
    server_timezone: str | None = option("The server's IANA time zone: moves a cursor back over a repeated "
                                         "daylight-saving hour, and gives the units read a cursor.", None,
                                         examples=["Africa/Johannesburg", "Europe/London"])
    available_units: bool | None = option("AvailableUnits criterion: only products with stock to sell.", None)
    barcodes: list[str] = option("ThirdPartyBarcode criterion of the units read (sent pipe-delimited).", [])
    po_numbers: list[str] = option("GetWebSalesOrder: PO numbers to read back.", [])
    po_numbers_file: str | None = option("GetWebSalesOrder: a file with one PO number per line (relative to the "
                                         "pipeline file).", None)
    po_numbers_from: str | None = option("GetWebSalesOrder: read back every order another sync of this pipeline "
                                         "has sent (its keys).", None, examples=["orders"])


def _server_time(text: str) -> datetime:
    """A server timestamp (naive local, optional fraction) as a naive datetime."""
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=None)
    except ValueError:
        raise ConfigError(f"'{text}' is not a server timestamp (YYYY-MM-DDTHH:MM:SS)") from None


def request_start(cursor: str | None, *, start: str, overlap: float, zone: ZoneInfo | None) -> str:
    """The AddedDate a read asks from: the cursor less the overlap, or ``start`` without a cursor.

    In ``zone``, a time inside an hour the clock runs through twice (the autumn change) moves back
    by that hour: the server's naive clock may have stamped later changes with earlier times.
    """
    if cursor is None:
        return start
    at = _server_time(cursor) - timedelta(seconds=overlap)
    if zone is not None:
        early = at.replace(tzinfo=zone, fold=0).utcoffset()
        late = at.replace(tzinfo=zone, fold=1).utcoffset()
        if early is not None and late is not None and early != late:
            at -= abs(early - late)
    return at.strftime(SERVER_TIME)


class ISyncSourceStream:
    """One sync's read."""

    def __init__(self, owner: ISyncSource, options: ISyncSourceOptions, ctx: StreamContext) -> None:
        self.connection = owner.connection
        self.options = options
        self.ctx = ctx
        self.zone: ZoneInfo | None = None
        if options.server_timezone:
            try:
                self.zone = ZoneInfo(options.server_timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"unknown time zone '{options.server_timezone}' (server_timezone)") from None
        self.next_cursor: str | None = None
        self.read_cursor: str | None = None
        self.connection.hold_session(ctx.state_dir)

    # --- the cursor ---------------------------------------------------------------------------------

    def since(self, cursor: str | None) -> str:
        """The AddedDate to ask from (see :func:`request_start`)."""
        return request_start(cursor, start=self.options.start, overlap=self.options.overlap, zone=self.zone)

    # --- reading ------------------------------------------------------------------------------------------

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """The records of the sync's operation."""
        operation = self.options.operation
        self.read_cursor = cursor
        if operation == "GetWebSalesOrder":
            yield from self.orders()
            return
        criteria: dict[str, Any] = {"AddedDate": self.since(cursor)}
        if self.options.available_units is not None:
            criteria["AvailableUnits"] = self.options.available_units
        if operation == "GetProductStockUnits" and self.options.barcodes:
            criteria["ThirdPartyBarcode"] = "|".join(self.options.barcodes)
        self.connection.key()  # logged in: the server's clock is known from an answer received before the read
        clock = self.connection.server_time()
        answer = self.call(operation, criteria, "read")
        records = wire.parse_response(operation, answer.xml) if answer.xml else []
        if operation == "GetProductStockUnits":
            if self.zone is not None and clock is not None:
                self.next_cursor = clock.astimezone(self.zone).replace(tzinfo=None).strftime(SERVER_TIME)
        else:
            self.next_cursor = cursor
        field = self.options.cursor_field
        latest = _server_time(cursor) if cursor and operation != "GetProductStockUnits" else None
        for record in records or []:
            if operation == "GetProductStockCatalogue" and record.get(field):
                at = _server_time(str(record[field]))
                if latest is None or at > latest:
                    latest, self.next_cursor = at, str(record[field])
            yield record

    def orders(self) -> Iterator[dict[str, Any] | RecordError]:
        """Each order of the PO numbers named, read back."""
        for po in self.po_numbers():
            answer = self.call("GetWebSalesOrder", {"PONumber": po}, po, fail_ok=True)
            if not answer.ok:
                yield RecordError(f"iSync: {answer.text}", key=po, raw={"PONumber": po})
                continue
            record = wire.parse_response("GetWebSalesOrder", answer.xml) if answer.xml else None
            if isinstance(record, dict):
                yield record

    def po_numbers(self) -> list[str]:
        """The PO numbers to read back: named, from a file, and those another sync sent; each once."""
        options = self.options
        found = list(options.po_numbers)
        if options.po_numbers_file:
            path = self.ctx.base_dir / options.po_numbers_file
            try:
                found += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except OSError as exc:
                raise ConfigError(f"po_numbers_file: cannot read {path}: {exc.strerror}") from None
        if options.po_numbers_from:
            found += self.ctx.delivered_keys(options.po_numbers_from)
        return list(dict.fromkeys(found))

    def call(self, operation: str, criteria: dict[str, Any], what: str, *, fail_ok: bool = False) -> Answer:
        """One read; a refusal stops the read (it is not one record's fault) unless ``fail_ok``."""
        op = wire.operation(operation)
        xml = wire.write(op.request, criteria, root=op.request_root)
        answer = self.connection.execute(operation, op.action, xml, idempotent=True,
                                         identifier=self.connection.identifier(self.ctx.run.id, self.ctx.sync, what))
        if not answer.ok and not fail_ok:
            from engine.errors import RunFailed

            raise RunFailed(f"iSync {operation} failed: {answer.text[:300]}")
        return answer

    @property
    def whole(self) -> bool:
        """Whether the read was iSync's whole catalogue: no cursor and no filter (orders by PO number never are)."""
        options = self.options
        return (self.read_cursor is None and options.operation != "GetWebSalesOrder" and not options.barcodes
                and not options.available_units)

    def finish(self) -> str | None:
        """The server time the next read starts from (see the module's notes)."""
        return self.next_cursor


@REGISTRY.source("isync", config=ISyncConfig, options=ISyncSourceOptions)
class ISyncSource:
    """iSync's product catalogue, stock units, or sales orders read back by PO number (SOAP)."""

    def __init__(self, config: ISyncConfig, base_dir: Path) -> None:
        self.connection = _connect(config, base_dir)

    def open_stream(self, options: ISyncSourceOptions, ctx: StreamContext) -> ISyncSourceStream:
        """One sync's read."""
        return ISyncSourceStream(self, options, ctx)

    def close(self) -> None:
        """Release the shared connection."""
        _disconnect(self.connection)


# --- the destination -------------------------------------------------------------------------------------


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) or part == "*" else (f".{part}" if out else str(part))
    return out


_PATH_PART = re.compile(r"([^.\[\]]+)|\[([^\]]+)\]")


def _undotted(text: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for name, index in _PATH_PART.findall(text):
        parts.append(name if name else (int(index) if index.isdigit() else index))
    return tuple(parts)


@dataclass(frozen=True)
class ISyncDestinationOptions:
    """What one sync sends to iSync."""

    operation: Literal["PersistWebSalesOrder", "CreateWebCreditNote"] = option(
        "The write: a web sales order (its lines in `LineItems`), or a credit note.")
    on_change: Literal["error", "ignore"] = option(
        "iSync cannot change or delete what was sent: a changed record is a record error (`error`), or is "
        "recorded as done without sending anything (`ignore`).", "error")
    adopt_existing: bool = option("PersistWebSalesOrder: when iSync answers that the PO number exists, read the "
                                  "order back and adopt its SalesOrderID if it is the same order (a retry whose "
                                  "first answer was lost).", True)
    exists_error: str = option("Regular expression that recognises iSync's 'already exists' answer.",
                               r"(?i)already exists")

    def check_output(self, paths: Sequence[tuple[str | int, ...]]) -> list[tuple[tuple[str | int, ...] | None, str]]:
        """The mapping's output against the operation's DataContract (names, required members, shapes)."""
        op = wire.operation(self.operation)
        shown = {_dotted(p): p for p in paths}
        return [(shown.get(at) or _undotted(at) or None, f"{self.operation}: {message}")
                for at, message in wire.check_fields(op.request, paths)]


def _same_order(sent: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether an order read back is the one sent: PO number, tracking number and lines (barcode, units)."""
    def lines(order: dict[str, Any]) -> list[tuple[str, Decimal]]:
        out = []
        for line in order.get("LineItems") or []:
            try:
                units = Decimal(str(line.get("Units"))).normalize()
            except (InvalidOperation, ValueError):
                units = Decimal(-1)
            out.append((str(line.get("ThirdPartyBarcode") or ""), units))
        return sorted(out)

    return (str(sent.get("PONumber")) == str(found.get("PONumber"))
            and str(sent.get("TrackNo") or "") == str(found.get("TrackNo") or "")
            and lines(sent) == lines(found))


class ISyncDestinationStream:
    """One sync's writes: ``concurrency`` requests at once, each outcome reported as it completes."""

    max_batch: int | None = None

    def __init__(self, owner: ISyncDestination, options: ISyncDestinationOptions, ctx: StreamContext) -> None:
        self.connection = owner.connection
        self.owner = owner
        self.options = options
        self.ctx = ctx
        self.op = wire.operation(options.operation)
        self.orders = options.operation == "PersistWebSalesOrder"
        self.at_most_once = not self.orders
        """A credit note cannot be read back, so it is sent at most once (held before it is sent)."""
        self.in_flight = self.connection.config.concurrency
        self.exists = re.compile(options.exists_error)
        self.connection.hold_session(ctx.state_dir)

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Every change, answered in order (the engine prefers :meth:`write_each`)."""
        return in_order(self.write_each(changes), len(changes))

    def write_each(self, changes: Sequence[Change]) -> Iterator[list[tuple[int, Outcome]]]:
        """Send the changes, at most ``concurrency`` in flight, yielding each group of outcomes as it completes.

        A new request leaves only when the engine asks for the next group, which it does once the last
        one is durable: a crash leaves at most ``concurrency`` records in flight.
        """
        if changes:
            yield from each_completed(self.owner.executor(), self.connection.config.concurrency, changes, self.send)

    def send(self, change: Change) -> Outcome:
        """One change's request and what its answer means."""
        if change.action != CREATE:
            return self.changed(change)
        values = change.values or {}
        try:
            xml = wire.write(self.op.request, values, root=self.op.request_root)
        except wire.WireError as exc:
            return Outcome(False, error=f"{self.options.operation}: {exc.message}", field=exc.path or None)
        identifier = self.connection.identifier(self.ctx.run.id, self.ctx.sync, change.key)
        try:
            answer = self.connection.execute(self.op.message_type, self.op.action, xml, identifier=identifier,
                                             idempotent=self.orders)
        except Ambiguous as exc:
            if not self.orders:
                return Outcome(False, unknown=True, error=f"iSync did not answer ({exc}); whether the "
                                                          f"{self.options.operation} was carried out is unknown")
            # An order is safe to send again (a duplicate PO number is refused and read back): a plain failure.
            found = self.adopt(values, change.key) if self.options.adopt_existing else "not looked up"
            if isinstance(found, Outcome):
                return found
            return Outcome(False, error=f"iSync did not answer ({exc}); the order read back: {found}; the next "
                                        "run sends it again")
        if answer.ok:
            remote_id = self.remote_id(answer)
            if remote_id is None and self.orders and self.options.adopt_existing:
                # Stored, but the answer gave no SalesOrderID we could read: read the order back for it, so
                # the state never keeps a sent order without its id.
                log.warning("iSync stored order %s but its answer carried no readable SalesOrderID; reading it "
                            "back", change.key)
                found = self.adopt(values, change.key)
                if isinstance(found, Outcome):
                    return found
            return Outcome(True, remote_id=remote_id)
        if self.orders and self.options.adopt_existing and self.exists.search(answer.text):
            found = self.adopt(values, change.key)
            if isinstance(found, Outcome):
                return found
            return Outcome(False, error=f"iSync: {answer.text}; the order read back: {found}; it was not sent "
                                        "again", field="PONumber")
        return Outcome(False, error=f"iSync: {answer.text}")

    def changed(self, change: Change) -> Outcome:
        """An update or delete of a record already sent: iSync has no operation for it."""
        if self.options.on_change == "ignore":
            return Outcome(True, remote_id=change.remote_id)
        what = "change" if change.values is not None else "delete"
        sent = f" (SalesOrderID {change.remote_id})" if change.remote_id else ""
        return Outcome(False, error=f"iSync has no operation to {what} a {self.options.operation} already sent"
                                    f"{sent}; nothing was sent. Set on_change: ignore to record such changes "
                                    "without sending them")

    def adopt(self, values: dict[str, Any], key: str) -> Outcome | str:
        """Read an order back by its PO number: its SalesOrderID when it is the order sent, else why not."""
        po = values.get("PONumber")
        if po is None:
            return "the record has no PONumber"
        op = wire.operation("GetWebSalesOrder")
        xml = wire.write(op.request, {"PONumber": po}, root=op.request_root)
        identifier = self.connection.identifier(self.ctx.run.id, self.ctx.sync, f"{key}/readback")
        try:
            answer = self.connection.execute(op.message_type, op.action, xml, identifier=identifier,
                                             idempotent=True)
        except Ambiguous as exc:
            return f"no answer ({exc})"
        if not answer.ok or not answer.xml:
            return f"not found ({answer.text[:200]})" if not answer.ok else "an empty answer"
        found = wire.parse_response("GetWebSalesOrder", answer.xml)
        if not isinstance(found, dict) or not _same_order(values, found):
            return ("it differs from this one (PO number, tracking number or lines)"
                    + (f"; SalesOrderID {found.get('SalesOrderID')}" if isinstance(found, dict) else ""))
        sales_order = found.get("SalesOrderID")
        return Outcome(True, remote_id=None if sales_order is None else str(sales_order))

    def remote_id(self, answer: Answer) -> str | None:
        """The SalesOrderID (or the note's id) of a success, when the answer carries one."""
        if not answer.xml:
            return None
        try:
            found = wire.parse_response(self.op.message_type, answer.xml)
        except wire.WireError as exc:
            log.warning("iSync %s: the answer's MessageXml could not be read (%s)", self.options.operation,
                        exc.message)
            return None  # the write succeeded; an answer we cannot read only means no remote id
        if isinstance(found, dict):
            for name in ("SalesOrderID", "CreditNoteID", "ID"):
                if found.get(name) is not None:
                    return str(found[name])
        return None

    def finish(self) -> None:
        """Nothing buffered."""


@REGISTRY.destination("isync", config=ISyncConfig, options=ISyncDestinationOptions)
class ISyncDestination:
    """iSync web sales orders (with their lines) and credit notes (SOAP)."""

    def __init__(self, config: ISyncConfig, base_dir: Path) -> None:
        self.connection = _connect(config, base_dir)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        """The sending threads (one pool per destination, shared by its syncs)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.connection.config.concurrency, thread_name_prefix="isync")
            return self._executor

    def open_stream(self, options: ISyncDestinationOptions, ctx: StreamContext) -> ISyncDestinationStream:
        """One sync's writes."""
        return ISyncDestinationStream(self, options, ctx)

    def close(self) -> None:
        """Stop the threads and release the shared connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        _disconnect(self.connection)
