"""The contracts between the engine and its adapters.

A pipeline names sources and destinations; each becomes one adapter instance (one connection,
shared by every sync that uses it). Each sync then opens a *stream* on its source and on its
destination with the sync's own options:

    Source.open_stream(options, ctx)       -> SourceStream        pull: read(cursor), acknowledge, finish
    Destination.open_stream(options, ctx)  -> DestinationStream   write(changes) -> outcomes, finish
    PushSource.serve(deliver, stop)                               push: records arrive as they come

These fit the five systems the engine speaks to: a cursor for windowed or incremental pulls
(SQL cursor columns, SOAP ``AddedDate``, paged REST); ``acknowledge`` for sources that must be
told what was delivered (export validation, archiving a processed file); per-record or atomic
batch writes that return the destination's id of each record; and push receivers
(form-encoded live posts, connector callbacks).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from engine.errors import RecordError

OptionsT_contra = TypeVar("OptionsT_contra", contravariant=True)
"""The per-sync options type of an adapter (a frozen dataclass), which its ``open_stream`` takes."""

CREATE = "create"
UPDATE = "update"
DELETE = "delete"
ACTIONS = (CREATE, UPDATE, DELETE)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a template may know about the run: ``run.id``, ``run.started_at``, ``run.watermark``."""

    id: str
    started_at: datetime
    watermark: str | None = None


@dataclass(frozen=True)
class StreamContext:
    """What a stream knows about the sync it serves."""

    pipeline: str
    sync: str
    base_dir: Path
    key_fields: tuple[str, ...]
    fields: tuple[str, ...] | None
    run: RunInfo
    log: logging.Logger
    vars: Mapping[str, Any] = field(default_factory=dict)
    warn: Callable[[str], None] = field(default=lambda message: None)
    """Tell the user something is off without failing the sync (a glob that matched no file)."""
    note: Callable[[str], None] = field(default=lambda message: None)
    """Tell the user what happened that is no fault (rows that changed before they could be acknowledged)."""
    env: Any = None
    """``env`` as the sync's templates see it (a profile's names applied); ``None``: the process environment."""
    state_dir: Path | None = None
    """The folder of the state store: where an adapter keeps a lock file shared by processes on this machine."""
    delivered_keys: Callable[[str], list[str]] = field(default=lambda sync: [])
    """The keys another sync of the pipeline has delivered (a source reading back what a destination sent)."""


class Deleted(dict[str, Any]):
    """A record a pull source says was deleted (a logically deleted row, a tombstone in a change feed).

    Yielded by ``read`` like any record: the mapping gives its key, and it becomes a delete of that
    key (sent only by a sync with ``mode: mirror``, like any delete). Acknowledged like any record.
    """

    __slots__ = ()


@dataclass(slots=True)
class Change:
    """One change for a destination.

    ``values`` is the mapped record (``None`` for a delete); ``key`` is the state's key text (opaque:
    never decode it); ``key_values`` are the key's fields and their values (``{"id": "42"}``, or the
    parts of a composite key), which is what a destination addresses a record by, also for a delete;
    ``remote_id`` is the destination's own id for the record, when it gave one.
    """

    action: str
    key: str
    values: dict[str, Any] | None
    remote_id: str | None = None
    key_values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The destination's answer for one change.

    ``unknown`` (with ``ok`` false) says the destination cannot tell whether the change was carried
    out: the request left but its answer was lost, and the operation can neither be read back nor
    repeated safely. The record is then *held*: a dead letter that no run sends again until
    someone decides (``syncengine dead-letters --mark-sent`` or ``--discard``).
    """

    ok: bool
    remote_id: str | None = None
    error: str | None = None
    field: str | None = None
    unknown: bool = False
    pending: bool = False
    """With ``ok``: accepted but not carried out yet (an HTTP 202). The record counts as sent and is kept
    *pending* in the state until the stream's :class:`Confirming` check says it happened (or did not)."""


OK = Outcome(True)


@runtime_checkable
class Acknowledging(Protocol):
    """A source stream that must be told what was delivered (an optional capability).

    ``acknowledge`` is called with the records whose outcome is durable in the state store
    (written, unchanged, or filtered out), never with failed ones: an export to mark as exported,
    a file to archive once all of its records are in.
    """

    def acknowledge(self, records: Sequence[Mapping[str, Any]]) -> None: ...


@runtime_checkable
class AtMostOnce(Protocol):
    """A destination stream whose writes must never be repeated blindly (an optional capability).

    When ``at_most_once`` is true, the engine hands the stream ``in_flight`` changes at a time and
    records each as *outcome unknown* in the state just before, and each answer replaces that record.
    A crash between the send and the commit of its answer leaves at most ``in_flight`` changes held
    (see :class:`Outcome` ``unknown``) instead of sending them again: for operations with no way to
    read back what was done (an iSync credit note).
    """

    at_most_once: bool
    in_flight: int


@runtime_checkable
class ChecksOutput(Protocol):
    """Destination options that check a mapping's output before any record exists (an optional capability).

    ``check_output`` gets the path of every output leaf (``("DeliveryDetail", "City")``; ``"*"``
    stands for any item of a list a group fills) and returns problems as (path, message), the path
    naming the leaf to point at, or ``None`` for the mapping as a whole. ``syncengine validate``
    reports them at the mapping's lines.
    """

    def check_output(self, paths: Sequence[tuple[str | int, ...]]) -> list[tuple[tuple[str | int, ...] | None, str]]:
        ...


@dataclass(frozen=True, slots=True)
class PendingChange:
    """A change the destination accepted without carrying it out yet (see :class:`Confirming`)."""

    key: str
    action: str
    key_values: dict[str, Any]
    remote_id: str | None
    since: str
    values: dict[str, Any] | None = None
    """What was sent (as JSON gives it back), for a check that compares it with what the system holds."""


@runtime_checkable
class Confirming(Protocol):
    """A destination stream that can tell whether accepted changes were carried out (an optional capability).

    Before a run writes anything, the engine hands ``confirm`` the sync's pending changes (accepted
    earlier with ``Outcome(ok=True, pending=True)``). It yields ``(key, done)`` for those it can
    decide: ``True`` the change happened (no longer pending); ``False`` it did not (the record is
    forgotten, so the run sends it again). A key it does not answer for stays pending.
    """

    def confirm(self, pending: Sequence[PendingChange]) -> Iterator[tuple[str, bool]]: ...


@runtime_checkable
class ReadableDestination(Protocol[OptionsT_contra]):
    """A destination whose current records can be read back, a page at a time (an optional capability).

    A receiver that serves the records it was given (a connector's mass sync) reads them here:
    ``count`` of the records a sync's options address, and ``rows`` from ``offset``, in a stable order.
    """

    def count(self, options: OptionsT_contra) -> int: ...

    def rows(self, options: OptionsT_contra, offset: int, limit: int) -> list[dict[str, Any]]: ...


RowBlock = tuple[list[str], Iterator["list[str] | RecordError"]]
"""One file's rows as :class:`ReadsRows` hands them out: its header and its rows (lists of text, or the
errors of unreadable rows), each row as wide as the header."""


@runtime_checkable
class ReadsRows(Protocol):
    """A source stream that can hand out rows as lists of text under a header (an optional capability).

    A sync whose mapping is pure reads such a source through ``read_rows`` instead of ``read``: an
    unchanged row is recognised from the list itself, and only the rows to map become dicts
    (``dict(zip(header, row))``, exactly what ``read`` would have given).
    """

    def read_rows(self, cursor: str | None) -> Iterator[RowBlock]: ...


ColumnBlock = tuple[list[str], Any]
"""Rows as :class:`ReadsColumns` hands them out beside :data:`RowBlock` s: a header and an
:class:`engine.arrow_read.ArrowRows` (a ``pyarrow.RecordBatch`` of as many text columns, in the header's
order, and its rows joined; the ``arrow`` extra)."""


@runtime_checkable
class ReadsColumns(Protocol):
    """A :class:`ReadsRows` stream that can also hand out rows as Arrow batches (an optional capability).

    ``read_columns`` yields, in reading order, :data:`ColumnBlock` s where Arrow reads the rows exactly
    as ``read`` would, and :data:`RowBlock` s elsewhere; ``columnar`` then says, per file, which and why.
    """

    columnar: dict[str, str | None]
    """Per file read: ``None`` when Arrow read it whole, else why (some of) its rows took the Python reader."""
    arrow_rows: int
    """Rows Arrow read."""

    def read_columns(self, cursor: str | None) -> Iterator[RowBlock | ColumnBlock]: ...


@runtime_checkable
class WholeRead(Protocol):
    """A source stream that says whether its read delivered the source's entire set (an optional capability).

    ``whole`` is read after ``read`` is exhausted: true for a whole snapshot or a whole window,
    which is when missing keys may mean deletes. A stream without it is whole when it was read
    without a cursor. A source that ignores the cursor (a local file) says ``whole = True``.
    """

    @property
    def whole(self) -> bool: ...


class SourceStream(Protocol):
    """One sync's view of a pull source.

    ``read`` yields plain ``dict`` records (or a :class:`~engine.errors.RecordError` for a row it
    could not read, which is dead-lettered). With a ``cursor`` (the value ``finish`` returned after
    the last good run, or ``--since``), it yields only records changed at or after it; a source
    without a notion of change ignores it. ``finish`` is called once after every record was
    acknowledged and returns the cursor the next run starts from (``None`` when the source has
    none); it is not called on a failed run or a plan.

    Optional capabilities, declared by implementing them: :class:`Acknowledging` (told what was
    delivered) and :class:`WholeRead` (says whether the read was the whole set).
    """

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]: ...

    def finish(self) -> str | None: ...


class DestinationStream(Protocol):
    """One sync's view of a destination.

    ``write`` applies a batch and returns only when the changes are durable. It returns one
    :class:`Outcome` per change, in order, or ``None`` when every change succeeded and the
    destination assigns no ids. A rejected record is a failed outcome (it is dead-lettered); an
    atomic destination that rejects the whole batch returns a failed outcome for each change.
    Raise :class:`~engine.errors.TransientError` to have the whole batch retried with backoff,
    :class:`~engine.errors.RunFailed` to stop the run. ``max_batch`` caps the batch size.
    ``finish`` is called after the last batch of a successful run.
    """

    max_batch: int | None

    def write(self, changes: Sequence[Change]) -> Sequence[Outcome] | None: ...

    def finish(self) -> None: ...


@runtime_checkable
class StreamingDestinationStream(DestinationStream, Protocol):
    """A per-record destination that reports each outcome as it completes (an optional capability).

    ``write_each`` sends the changes and yields, as they complete, groups of ``(index, outcome)``
    pairs (``index`` into ``changes``); every index appears exactly once over the whole iteration.
    Each group holds what completed since the previous one, so the engine commits one group per
    state transaction: a crash then resends at most the records in flight. Retries happen inside
    (a retried record is rescheduled, not slept on); raising :class:`~engine.errors.RunFailed`
    stops the run, and every outcome yielded before it stays valid.
    """

    def write_each(self, changes: Sequence[Change]) -> Iterator[list[tuple[int, Outcome]]]: ...


@dataclass(frozen=True, slots=True)
class DiscoveredField:
    """One field a discoverable adapter reports: its name, type as the system says it, and whether it is required."""

    name: str
    type: str | None = None
    required: bool = False


@dataclass(frozen=True, slots=True)
class DiscoveredStream:
    """One stream (table, entity, file kind) a discoverable adapter reports, with its fields and key."""

    name: str
    fields: tuple[DiscoveredField, ...]
    key: tuple[str, ...] = ()
    closed: bool = False
    """A destination stream that takes only these fields (a connector's layout), so ``validate`` checks a
    mapping's output names against them; nested fields are named with dots (``inventory.qty``)."""


@runtime_checkable
class Discoverable(Protocol[OptionsT_contra]):
    """An adapter that can describe its data (an optional capability, used by ``syncengine discover``).

    ``discover`` lists the streams the system holds; ``stream_for`` names the one a sync's options
    select (``None`` when the options do not name one), so ``validate`` can check the source fields a
    mapping reads, or the output fields a destination accepts, against the discovered ones.
    """

    def discover(self) -> list[DiscoveredStream]: ...

    def stream_for(self, options: OptionsT_contra) -> str | None: ...


class Source(Protocol[OptionsT_contra]):
    """A configured pull source; ``close`` releases its connection."""

    def open_stream(self, options: OptionsT_contra, ctx: StreamContext) -> SourceStream: ...

    def close(self) -> None: ...


class Destination(Protocol[OptionsT_contra]):
    """A configured destination; ``close`` releases its connection."""

    def open_stream(self, options: OptionsT_contra, ctx: StreamContext) -> DestinationStream: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PushEvent:
    """A record that arrived on its own: ``route`` picks the sync, ``action`` may force a delete.

    ``strict`` asks for the answers of an entity API instead of the forgiving rules of a live feed:
    a create of a key that exists is refused (409), and an update or a delete of a key that does not
    exist is refused (404).
    """

    route: str
    action: str | None
    record: dict[str, Any]
    strict: bool = False


@dataclass(frozen=True)
class RouteInfo:
    """What a receiver is told about one of its routes before it serves (see :class:`DescribesRoutes`).

    ``fields`` are the source fields the sync's mapping reads (dotted for nested ones: ``inventory.qty``),
    ``key`` the source fields that give its key (when the key is a plain copy of them), and ``read``
    the destination's records, when the destination can be read back (``count()`` and ``rows(offset,
    limit)``), for a receiver that serves them again.
    """

    route: str
    sync: str
    fields: tuple[str, ...]
    key: tuple[str, ...]
    count: Callable[[], int] | None = None
    rows: Callable[[int, int], list[dict[str, Any]]] | None = None


@runtime_checkable
class DescribesRoutes(Protocol):
    """A receiver that wants to know its routes' fields and records before it serves (an optional capability)."""

    def describe_routes(self, routes: Sequence[RouteInfo]) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the engine did with a pushed record; ``status`` is an HTTP-like code for the sender."""

    status: int
    message: str


class PushSource(Protocol[OptionsT_contra]):
    """A receiver: ``serve`` blocks, handing each arriving record to ``deliver`` until ``stop`` is set.

    ``bind`` opens the listening socket (port 0 picks a free one) and returns the URL it serves;
    ``route`` names the route a sync's source options select (an Aljex table name). ``deliver``
    returns only once the write and the state are durable, so a receiver answers its sender after
    it returns and never before.
    """

    def bind(self, host: str, port: int) -> str: ...

    def route(self, options: OptionsT_contra) -> str: ...

    def serve(self, deliver: Callable[[PushEvent], Delivery], stop: threading.Event) -> None: ...

    def close(self) -> None: ...
