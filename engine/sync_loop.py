"""The one loop every record goes through: map, hash, ask the state what changed, write, commit.

A pull sync feeds it the records a source stream reads, a batch at a time (:meth:`SyncLoop.run`);
a receiver feeds it one pushed record at a time (:meth:`SyncLoop.push`) and answers its sender
with what happened. Both take the same path through :meth:`SyncLoop.flush`:

1. the state (:class:`~engine.sync_state.SyncState`) says which records are news;
2. the destination writes them; a streaming destination reports outcomes as they complete;
3. each acknowledged group is committed in one state transaction with the run's progress and the
   dead letters, so a crash resends at most what was in flight;
4. only then is the source told what was delivered.

The loop also keeps the error budget, replays dead letters the read did not bring again, and
infers deletes after a whole read. It holds no SQL (that is the state's) and no Jinja (that is the
mapping's).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import repeat
from typing import TYPE_CHECKING, Any, cast

from engine import arrow_read
from engine.config import SyncSpec
from engine.errors import ErrorBudgetExceeded, RecordError, RunFailed, Stopped, SyncEngineError, TransientError
from engine.interfaces import (
    ACTIONS,
    CREATE,
    DELETE,
    OK,
    UPDATE,
    Acknowledging,
    AtMostOnce,
    Change,
    ColumnBlock,
    Confirming,
    Deleted,
    Delivery,
    DestinationStream,
    Outcome,
    PushEvent,
    ReadsColumns,
    ReadsRows,
    RowBlock,
    RunInfo,
    SourceStream,
    StreamingDestinationStream,
    WholeRead,
)
from engine.mapping import AnyMapping, GroupedMapping, compile_template, source_rows
from engine.purity import RawSkip
from engine.state_store import TOMBSTONE, HeldRow
from engine.sync_state import COUNTER_OF, UNREADABLE, DeadRow, Pending, SyncState

if TYPE_CHECKING:
    from engine.runner import Engine, RunOptions, SyncReport

log = logging.getLogger("syncengine")

MAX_ERRORS_REPORTED = 20
SYNCED_COMMIT_INTERVAL = 0.25
"""Seconds between group commits that wait for the disk (the others survive a killed process, not a power cut)."""
ERROR_BUDGET_SAMPLE = 100
"""Records read before ``max_error_share`` is judged (a shorter read is judged at its end)."""
PAST = {CREATE: "created", UPDATE: "updated", DELETE: "deleted"}

Mapping_ = AnyMapping
Failed = list[tuple[RecordError, dict[str, Any] | None]]

_NAME_KEYS: dict[tuple[str, ...], bytes] = {}


def record_hash(values: Mapping[str, Any]) -> bytes:
    """A 16-byte digest of a mapped record: its field names and order, and its typed values.

    The names key the hash (computed once per set of names) so that only the values are turned
    into text per record.
    """
    names = tuple(values)
    key = _NAME_KEYS.get(names)
    if key is None:
        if len(_NAME_KEYS) > 4096:  # records without a mapping may vary their fields
            _NAME_KEYS.clear()
        key = _NAME_KEYS[names] = hashlib.blake2b(repr(names).encode("utf-8", "surrogatepass"),
                                                  digest_size=16).digest()
    text = repr(tuple(values.values())).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16, person=key).digest()


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation collections while records stream (Python's default is 700)."""
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def relaxed_gc() -> Iterator[None]:
    """Collect the young generation less often while records stream, and restore the thresholds after.

    A batch keeps thousands of rows (lists, dicts) alive; with the default threshold each of them is
    examined by several young collections and promoted before the batch lets it go, which cost about
    a sixth of a rerun's time. Reference counting frees them either way; only cycles wait a little
    longer. Syncs running at once in one process share one relaxed period (the last one out restores).
    """
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            saved = gc.get_threshold()
            if 0 < saved[0] < GC_YOUNG_THRESHOLD:
                _gc_saved = saved
                gc.set_threshold(GC_YOUNG_THRESHOLD, saved[1], saved[2])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


def _record(entry: tuple[bytes, Any, Any]) -> dict[str, Any]:
    """A sifted record as the mapping takes it: the record itself, or its row zipped with its header."""
    header = entry[2]
    return entry[1] if header is None else dict(zip(header, entry[1], strict=False))


def _records(entries: list[tuple[bytes, Any, Any]]) -> Iterator[dict[str, Any]]:
    """Sifted records in order; the rows of one Arrow batch (``(index, ArrowRows)``) are taken together."""
    taking: Any = None
    indices: list[int] = []
    for entry in entries:
        payload = entry[2]
        if payload.__class__ is arrow_read.ArrowRows:
            if payload is not taking:
                if indices:
                    yield from arrow_read.taken(taking, indices)
                taking, indices = payload, []
            indices.append(entry[1])
            continue
        if indices:
            yield from arrow_read.taken(taking, indices)
            taking, indices = None, []
        yield _record(entry)
    if indices:
        yield from arrow_read.taken(taking, indices)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class DeadLetterSource:
    """Replays stored source records as a source (``syncengine retry``, and dead letters a read did not bring)."""

    whole = False

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def read(self, cursor: str | None) -> Iterator[dict[str, Any]]:
        """The stored source records."""
        return iter(self.records)

    def finish(self) -> str | None:
        """No cursor."""
        return None


class SyncLoop:
    """One sync's records, from mapped to durable, for a pull run or a receiver."""

    def __init__(self, engine: Engine, sync: SyncSpec, state: SyncState, report: SyncReport,
                 writer: DestinationStream, options: RunOptions) -> None:
        self.engine = engine
        self.sync = sync
        self.state = state
        self.report = report
        self.counts = report.counts
        self.writer = writer
        self.options = options
        self.source: SourceStream | None = None
        self.dry = options.dry_run
        limit = writer.max_batch
        self.size = min(sync.batch_size, limit) if limit else sync.batch_size
        self.unkeyed_errors = 0
        self.last_synced = time.monotonic()
        self.budgeted = True
        self.error_kinds: Counter[str] = Counter()
        self.explain: dict[str, tuple[int, str]] | None = None
        """Per key, the answer a receiver gives its sender (kept only on the push path)."""
        self.last_dead: list[DeadRow] = []
        self.batch: dict[str, Pending] = {}
        """The batch being mapped (:meth:`sift` maps a key again that waits in it)."""
        self.sifted = 0
        self.first_load = False
        """Whether the state knew no record of the sync when the read began (nothing can be unchanged)."""
        """Records read that :meth:`sift` kept from the mapping (unchanged, or replaced by a later row)."""

    # --- a pull run ----------------------------------------------------------------------------------

    def run(self, source: SourceStream, mapping: Mapping_, cursor: str | None, *, replaying: bool,
            skip: RawSkip | None = None, columnar: bool = False) -> None:
        """Read the source, map and write every batch, then replay leftovers and infer deletes.

        With ``skip`` (a pure mapping), records whose raw hash is the one stored with their last
        delivery are counted unchanged without being mapped (:meth:`sift`); with ``columnar`` too, a
        :class:`~engine.interfaces.ReadsColumns` source is read through pyarrow where it says so.
        """
        with relaxed_gc():
            self._run(source, mapping, cursor, replaying=replaying, skip=skip, columnar=columnar)

    def _run(self, source: SourceStream, mapping: Mapping_, cursor: str | None, *, replaying: bool,
             skip: RawSkip | None, columnar: bool) -> None:
        self.source = source
        self.confirm_pending()
        # Retrying dead letters that still fail is what a retry is for: no budget applies to it.
        self.budgeted = not replaying
        known_before = self.state.known_count()
        self.first_load = known_before == 0 and not self.state.dead_keys
        batch: dict[str, Pending] = {}
        self.batch = batch
        passed: list[dict[str, Any]] = []
        failed: Failed = []
        counts = self.counts
        map_record = mapping.map
        size = self.size
        progress = self.options.progress
        read = 0
        records: Iterator[dict[str, Any] | RecordError]
        if isinstance(mapping, GroupedMapping):
            records = mapping.group(source.read(cursor))  # adjacent rows of one group become one record
        elif skip is not None and columnar and isinstance(source, ReadsColumns):
            records = self.sift(None, skip, source.read_columns(cursor))
        elif skip is not None and isinstance(source, ReadsRows):
            records = self.sift(None, skip, source.read_rows(cursor))
        elif skip is not None:
            records = self.sift(source.read(cursor), skip)
        else:
            records = source.read(cursor)
        raw_of = self.state.raw_of
        for record in records:
            read += 1
            if record.__class__ is not dict and isinstance(record, RecordError):
                failed.append((record, None))
                self.record_failed(record, read + self.sifted, len(failed))
                continue
            try:
                mapped = map_record(record)
            except RecordError as exc:
                failed.append((exc, record))
                self.record_failed(exc, read + self.sifted, len(failed))
                if exc.key is not None:
                    batch.pop(exc.key, None)  # a later failure of a key supersedes its earlier success
                mapped = None
            else:
                if mapped is None:
                    passed.append(record)
                    counts["filtered"] += 1
                elif record.__class__ is Deleted:
                    # The source says the record is gone: a delete of its key, carrying only the key's values.
                    batch[mapped.key] = (self.key_values(mapped.values), TOMBSTONE, record, DELETE)
                else:
                    batch[mapped.key] = (mapped.values, record_hash(mapped.values), record, None)
            if len(batch) >= size or len(failed) >= size:
                counts["read"] = read + self.sifted
                self.check_budget(failed, final=False)
                self.flush(batch, passed, failed)
                if raw_of:  # only a sifted read hashes raw records
                    for key in batch:
                        raw_of.pop(key, None)
                batch, passed, failed = {}, [], []
                self.batch = batch
                if progress:
                    progress(self.sync.name, read + self.sifted)
                self.check_stop(read + self.sifted)
        counts["read"] = read + self.sifted
        self.check_budget(failed, final=True)
        self.flush(batch, passed, failed)
        raw_of.clear()
        if progress:
            progress(self.sync.name, read + self.sifted)
        self.check_budget([], final=True)  # the destination's rejections of the last batch count too
        if replaying:
            return
        # Missing keys mean deletes (and gone dead letters) only when the source delivered its whole set.
        whole = source.whole if isinstance(source, WholeRead) else cursor is None
        self.replay_leftovers(mapping, whole)
        if not self.sync.deletes_missing:
            return
        # A partial read (a cursor, no new file) says nothing about a missing key: no deletes, and no
        # message either, since nothing went wrong (`--json` shows deletes_inferred: false).
        self.report.deletes_inferred = whole
        if whole:
            self.delete_missing(known_before)

    def check_stop(self, read: int) -> None:
        """Stop between batches when asked to."""
        if self.options.stop is not None and self.options.stop.is_set():
            raise Stopped(f"stopped after {read} records, every batch sent so far committed; the next run "
                          "goes on from there")

    def sift(self, records: Iterator[dict[str, Any] | RecordError] | None, skip: RawSkip,
             blocks: Iterator[RowBlock | ColumnBlock] | None = None) -> Iterator[dict[str, Any] | RecordError]:
        """The records to map: those whose raw hash differs from the one stored with their key's last delivery.

        Records (or, from a :class:`~engine.interfaces.ReadsRows` source, ``blocks`` of rows as lists)
        are hashed and looked up a batch at a time; the unchanged ones are counted (marked seen, for
        delete inference, and acknowledged to a source that asks) and go no further. A key already
        waiting in the batch being mapped is mapped again, so the last record of a key always wins,
        as without sifting. Only the rows to map become dicts.
        """
        state = self.state
        raw_of = state.raw_of
        counts = self.counts
        report = self.report
        column = skip.column
        size = self.size
        # key -> (raw hash, the record; or the row and its header; or its place in an arrow_read.ArrowRows and that)
        buffer: dict[str, tuple[bytes, Any, Any]] = {}
        progress = self.options.progress
        # A full refresh maps and sends everything, and a first load has nothing to compare with; both keep the
        # raw hashes for the next run.
        everything = self.options.full_refresh or self.first_load
        acknowledging = self.source if isinstance(self.source, Acknowledging) and not self.dry else None
        total = 0

        def drain() -> Iterator[dict[str, Any]]:
            changed = set(buffer) if everything else set(
                state.raw_changed(list(buffer), [entry[0] for entry in buffer.values()]))
            waiting = self.batch
            if waiting:
                changed.update(key for key in buffer if key in waiting)
            unchanged = len(buffer) - len(changed)
            counts["unchanged"] += unchanged
            report.unmapped += unchanged
            self.sifted += unchanged
            if acknowledging is not None and unchanged:
                acknowledging.acknowledge(list(_records([e for key, e in buffer.items() if key not in changed])))
            if changed:
                entries = [entry for key, entry in buffer.items() if key in changed]
                for key, record in zip((k for k in buffer if k in changed), _records(entries), strict=True):
                    # Only now, record by record: the loop may flush (and commit raw hashes) between two of them,
                    # and an earlier record of this key in that flush must not be committed with this one's hash.
                    raw_of[key] = buffer[key][0]
                    yield record
            buffer.clear()

        def full() -> Iterator[dict[str, Any]]:
            yield from drain()
            if progress:
                progress(self.sync.name, total)
            self.check_stop(total)

        if blocks is not None:
            for header, block in blocks:
                if arrow_read.is_batch(block):
                    payload = cast(arrow_read.ArrowRows, block)
                    rows: Any = payload.batch
                    # Columns from Arrow: keys and raw hashes come a batch at a time, rows become dicts only
                    # when they are to be mapped (in drain, a batch's rows at once).
                    if column not in header:
                        for as_dict in arrow_read.records(header, rows):
                            total += 1
                            yield from drain()
                            yield as_dict
                        continue
                    at = header.index(column)
                    hashes = arrow_read.row_hashes(payload, skip.keyed_hash(header), skip.row_hasher(header))
                    keys = rows.column(at).to_pylist()
                    if "" not in keys:
                        # Every row has a key: the batch goes into the buffer a slice at a time (a dict update in
                        # C; a key already there keeps its place and takes the later row, as row by row).
                        n, i = len(keys), 0
                        while i < n:
                            j = min(n, i + size - len(buffer))
                            held = len(buffer)
                            buffer.update(zip(keys[i:j], zip(hashes[i:j], range(i, j), repeat(payload)), strict=True))
                            self.sifted += (j - i) - (len(buffer) - held)  # rows replaced by a later row of their key
                            total += j - i
                            i = j
                            if len(buffer) >= size:
                                yield from full()
                        continue
                    for i, key in enumerate(keys):
                        total += 1
                        if key:
                            if key in buffer:
                                self.sifted += 1
                            buffer[key] = (hashes[i], i, payload)
                            if len(buffer) >= size:
                                yield from full()
                            continue
                        yield from drain()
                        yield from arrow_read.records(header, rows.slice(i, 1))
                    continue
                rows = block
                if column not in header:
                    for row in rows:  # no key column: every row is mapped (and fails there, located)
                        total += 1
                        yield from drain()
                        if isinstance(row, RecordError):
                            yield row
                        else:
                            yield dict(zip(header, row, strict=False))
                    continue
                at = header.index(column)
                row_hash = skip.row_hasher(header)
                for row in rows:
                    total += 1
                    if row.__class__ is list:
                        key = row[at]
                        if key:
                            if key in buffer:
                                self.sifted += 1  # a later row of the same key replaces it (read, never mapped)
                            buffer[key] = (row_hash(row), row, header)
                            if len(buffer) >= size:
                                yield from full()
                            continue
                        yield from drain()
                        yield dict(zip(header, row, strict=False))
                        continue
                    yield from drain()  # an unreadable row, in its place
                    yield row
        else:
            assert records is not None
            raw_hash = skip.hasher()
            for record in records:
                total += 1
                if record.__class__ is dict:
                    value = record.get(column)
                    if value.__class__ is str and value:
                        if value in buffer:
                            self.sifted += 1
                        buffer[value] = (raw_hash(record), record, None)
                        if len(buffer) >= size:
                            yield from full()
                        continue
                # Anything else (an unreadable row, a source's delete, a record without a usable key) is mapped
                # in its place, after the records read before it.
                yield from drain()
                yield record
        yield from drain()

    def key_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """The key fields of a mapped record (all of it when the key is a template)."""
        fields = self.sync.key_fields
        return {f: values.get(f) for f in fields} if fields else values

    def confirm_pending(self) -> None:
        """Ask the destination whether the changes it accepted earlier (202) were carried out."""
        if not self.state.pending or self.dry or not isinstance(self.writer, Confirming):
            return
        pending = self.state.pending_changes()
        actions = {p.key: p.action for p in pending}
        done: list[str] = []
        undone: list[tuple[str, str]] = []
        for key, happened in self.writer.confirm(pending):
            if key not in actions:
                continue
            if happened:
                done.append(key)
            else:
                undone.append((key, actions[key]))
        self.state.settle_pending(done, undone)
        left = len(pending) - len(done) - len(undone)
        self.report.notes.append(f"{len(pending)} change(s) accepted earlier were checked: {len(done)} carried out, "
                                 f"{len(undone)} not (sent again)" + (f", {left} still pending" if left else ""))

    # --- a pushed record -----------------------------------------------------------------------------

    def push(self, event: PushEvent, mapping: Mapping_, key_mapping: Mapping_) -> Delivery:
        """One pushed record through the same path as a batch of one; the answer comes once it is durable."""
        action = event.action or UPDATE
        if action not in ACTIONS:
            return Delivery(400, f"unknown action '{action}'; expected one of: {', '.join(ACTIONS)}")
        self.counts["read"] += 1
        self.explain = {}
        self.last_dead = []
        record = event.record
        try:
            mapped = (key_mapping if action == DELETE else mapping).map(record)
        except RecordError as exc:
            self.record_errors([(exc, record)], action=action)
            return Delivery(422, self.last_dead[0][4])
        if mapped is None:
            self.flush({}, [record], [])
            return Delivery(200, "filtered out by the mapping's filter")
        if event.strict:
            live = self.state.is_live(mapped.key)
            if action == CREATE and live:
                return Delivery(409, f"'{mapped.key}' exists; update it instead")
            if action != CREATE and not live:
                return Delivery(404, f"no record '{mapped.key}'")
        digest = TOMBSTONE if action == DELETE else record_hash(mapped.values)
        try:
            self.flush({mapped.key: (mapped.values, digest, record, action)}, [], [])
        except SyncEngineError as exc:
            error = RecordError(f"the destination failed: {exc}", key=mapped.key)
            self.record_errors([(error, record)], payload=None if action == DELETE else mapped.values,
                               action=action)
            return Delivery(502, self.last_dead[0][4])
        return Delivery(*self.explain.get(mapped.key, (200, "done")))

    # --- one batch ----------------------------------------------------------------------------------

    def flush(self, batch: dict[str, Pending], passed: list[dict[str, Any]], failed: Failed) -> None:
        """Detect changes in a batch, write them, and record each acknowledged group as it comes."""
        if not batch and not failed and not passed:
            return
        # A failure superseded by a later success of the same key in this batch is no longer news.
        failed = [(error, record) for error, record in failed if error.key is None or error.key not in batch]
        counts = self.counts
        state = self.state
        explain = self.explain
        decision = state.decide(batch, everything=self.options.full_refresh, explain=explain is not None)
        counts["unchanged"] += decision.unchanged
        if decision.unchanged and state.raw_of:
            state.refresh_raw(batch, decision.visited)  # mapped, unchanged: next time its raw hash says so
        counts["skipped"] += len(decision.skipped)
        if explain is not None:
            explain.update((k, (200, why)) for k, why in decision.unchanged_why.items())
            explain.update((k, (200, why)) for k, why in decision.skipped.items())
        changes = decision.changes
        rejected: set[str] = set()
        at_most_once = isinstance(self.writer, AtMostOnce) and self.writer.at_most_once and not self.dry
        for group in self.deliver_held(changes, batch) if at_most_once else self.deliver(changes):
            # Each group is what the destination acknowledged since the last one: it is made durable
            # now, so a crash resends at most what was still in flight.
            delivered: list[tuple[Change, bytes, Outcome]] = []
            dead: list[DeadRow] = []
            unknown: list[HeldRow] = []
            for i, outcome in group:
                change = changes[i]
                entry = batch[change.key]
                if outcome.ok:
                    counts[COUNTER_OF[change.action]] += 1
                    delivered.append((change, entry[1], outcome))
                    if outcome.pending:
                        self.report.pending += 1
                    if explain is not None:
                        explain[change.key] = (200, f"{PAST[change.action]} '{change.key}'")
                    continue
                rejected.add(change.key)
                counts["errors"] += 1
                error = RecordError(outcome.error or "rejected by the destination", key=change.key,
                                    field=outcome.field)
                self.count_kind(error)
                if outcome.unknown:
                    unknown.append(self.held_row(error, change, entry))
                    self.report.unknown += 1
                    row: DeadRow = unknown[-1][:7]
                else:
                    row = self.dead_row(error, change.action, entry[2], change.values)
                    dead.append(row)
                if explain is not None:
                    explain[change.key] = (422, row[4])
            self.note_errors([*dead, *(u[:7] for u in unknown)])
            now = time.monotonic()
            synced = now - self.last_synced >= SYNCED_COMMIT_INTERVAL
            state.commit(counts, delivered=delivered, dead=dead, unknown=unknown, synced=synced)
            if synced:
                self.last_synced = now
        # A key with a dead letter that this batch brought and that did not fail again is settled
        # (unchanged since a later success, or skipped by an insert-only sync); a held key is not.
        held = state.held
        settled = [k for k in batch if k not in rejected and k not in held] if state.dead_keys else []
        self.record_errors(failed, settled=settled)
        if isinstance(self.source, Acknowledging) and not self.dry:
            delivered_records = [row for key, entry in batch.items() if key not in rejected and entry[2]
                                 for row in source_rows(entry[2])]
            delivered_records.extend(row for record in passed for row in source_rows(record))
            if delivered_records:
                self.source.acknowledge(delivered_records)

    def record_errors(self, failed: Failed, *, settled: Sequence[str] = (), payload: dict[str, Any] | None = None,
                      action: str | None = None) -> None:
        """Dead-letter records that failed before the destination, and commit the batch's progress."""
        dead = []
        for error, record in failed:
            self.counts["errors"] += 1
            if error.key is None:
                self.unkeyed_errors += 1
            dead.append(self.dead_row(error, action if record is not None else UNREADABLE, record, payload))
        self.note_errors(dead)
        self.last_dead = dead
        if dead:
            # Failed keys (and the stand-in keys of records without one) were present in this run.
            self.state.mark_seen([row[0] for row in dead])
        self.state.commit(self.counts, dead=dead, settled=settled)

    def deliver_held(self, changes: list[Change], batch: dict[str, Pending]) -> Iterator[list[tuple[int, Outcome]]]:
        """:meth:`deliver` for a destination that sends at most once: ``in_flight`` changes at a time are held
        as "outcome unknown" just before they leave, so a crash leaves only those held (never one not sent)."""
        step = max(1, cast(AtMostOnce, self.writer).in_flight)
        for start in range(0, len(changes), step):
            chunk = changes[start:start + step]
            self.state.hold([self.held_row(RecordError(
                "sent, but the run stopped before the destination answered: whether it was carried out is "
                "unknown", key=c.key), c, batch[c.key]) for c in chunk])
            for group in self.deliver(chunk):
                yield [(start + i, outcome) for i, outcome in group]

    def deliver(self, changes: list[Change]) -> Iterator[list[tuple[int, Outcome]]]:
        """Write changes; yields groups of (index, outcome) as the destination acknowledges them.

        A streaming destination reports each group as it completes; any other one answers the
        whole batch at once. A transient error retries (with backoff) what was not yet answered.
        """
        if not changes:
            return
        backoff = self.options.retry
        pending = list(range(len(changes)))
        streaming = isinstance(self.writer, StreamingDestinationStream)
        answered: set[int] = set()
        for attempt in range(backoff.retries + 1):
            todo = [changes[i] for i in pending]
            try:
                if streaming:
                    answered = set()
                    for group in cast(StreamingDestinationStream, self.writer).write_each(todo):
                        answered.update(i for i, _ in group)
                        yield [(pending[i], outcome) for i, outcome in group]
                    if len(answered) != len(todo):
                        raise RunFailed(f"the destination answered {len(answered)} of {len(todo)} changes")
                    return
                outcomes = self.writer.write(todo)
            except TransientError as exc:
                if streaming:
                    pending = [p for j, p in enumerate(pending) if j not in answered]
                if backoff.exhausted(attempt):
                    raise RunFailed(f"the destination kept failing: {exc}") from exc
                wait = backoff.delay(attempt, exc.retry_after)
                log.warning("transient destination error (%s); retrying in %.1fs",
                            self.engine.redactor.text(str(exc)), wait)
                time.sleep(wait)
                continue
            if outcomes is not None and len(outcomes) != len(todo):
                raise RunFailed(f"the destination returned {len(outcomes)} outcomes for {len(todo)} changes")
            yield [(p, OK if outcomes is None else outcomes[j]) for j, p in enumerate(pending)]
            return
        raise AssertionError("unreachable")

    # --- the error budget ------------------------------------------------------------------------------

    def count_kind(self, error: RecordError) -> None:
        """Count an error by what went wrong (not by key), for the budget's 'most common error'."""
        where = f" ({error.location})" if error.location else ""
        self.error_kinds[(f"field '{error.field}': " if error.field else "") + error.message + where] += 1

    def record_failed(self, error: RecordError, read: int, pending: int) -> None:
        """Count an error by kind; stop at once when the first records of the run all fail."""
        self.count_kind(error)
        if not self.budgeted:
            return
        errors = self.counts["errors"] + pending
        if errors == read == ERROR_BUDGET_SAMPLE and self.sync.max_error_share < 1:
            self.trip(errors, read)
        if self.sync.max_errors is not None and errors > self.sync.max_errors:
            self.trip(errors, read)

    def check_budget(self, failed: Failed, *, final: bool) -> None:
        """Before a batch is written: stop the sync when its errors are over budget."""
        read = self.counts["read"]
        errors = self.counts["errors"] + len(failed)
        if not errors or not read or not self.budgeted:
            return
        over_count = self.sync.max_errors is not None and errors > self.sync.max_errors
        judged = final or read >= ERROR_BUDGET_SAMPLE
        if over_count or (judged and errors / read > self.sync.max_error_share):
            self.trip(errors, read)

    def trip(self, errors: int, read: int) -> None:
        """Stop the sync: one line with the counts and the most common error."""
        self.counts["read"] = max(self.counts["read"], read)
        (kind, times), = self.error_kinds.most_common(1) or [("rejected by the destination", errors)]
        limit = (f"max_errors {self.sync.max_errors}" if self.sync.max_errors is not None
                 and errors > self.sync.max_errors else f"max_error_share {self.sync.max_error_share:.0%}")
        raise ErrorBudgetExceeded(self.engine.redactor.text(
            f"error budget exceeded: {errors} of {read} records failed ({limit}); nothing more was written for "
            f"this sync. Most common error ({times}x): {kind}"))

    # --- dead letters -----------------------------------------------------------------------------------

    def dead_row(self, error: RecordError, action: str | None, record: dict[str, Any] | None,
                 payload: dict[str, Any] | None) -> DeadRow:
        """A dead-letter row; the source record, the payload and the message have secrets masked.

        A record without a key gets a stand-in key from its content and its error, so distinct bad
        rows stay distinct and the same bad row keeps its key from run to run. An unreadable source
        row is kept as the raw text the source could give.
        """
        redact = self.engine.redactor
        if record is None and error.raw is not None:
            record = {"raw": error.raw}
        key = error.key
        if key is None:
            seed = f"{error.message}\x00{record!r}".encode("utf-8", "surrogatepass")
            key = "(no key) " + hashlib.blake2b(seed, digest_size=8).hexdigest()
        return (key, action, json.dumps(redact.data(_jsonable(record))) if record is not None else None,
                json.dumps(redact.data(_jsonable(payload))) if payload is not None else None,
                redact.text(error.describe()), error.field, error.location)

    def held_row(self, error: RecordError, change: Change, entry: Pending) -> HeldRow:
        """A dead letter whose outcome is unknown: the dead row and the hash of what was sent."""
        return (*self.dead_row(error, change.action, entry[2], change.values), entry[1])

    def note_errors(self, dead: Sequence[DeadRow]) -> None:
        """Keep the first errors for the run report."""
        for row in dead:
            if len(self.report.errors) < MAX_ERRORS_REPORTED:
                self.report.errors.append(row[4])

    # --- after the stream ----------------------------------------------------------------------------------

    def replay_leftovers(self, mapping: Mapping_, whole: bool) -> None:
        """Retry the dead letters the stream did not bring again (the state says which), from their records."""
        letters = self.state.leftover_dead_letters(whole=whole, snapshot=self.sync.scope == "snapshot")
        if not letters:
            return
        saved = self.source
        self.source = DeadLetterSource([d.record for d in letters if d.record is not None])
        try:
            batch: dict[str, Pending] = {}
            failed: Failed = []
            for record in self.source.read(None):
                try:
                    mapped = mapping.map(record)
                except RecordError as exc:
                    failed.append((exc, record))
                    continue
                if mapped is not None:
                    batch[mapped.key] = (mapped.values, record_hash(mapped.values), record, None)
            self.flush(batch, [], failed)
        finally:
            self.source = saved

    def delete_missing(self, known_before: int) -> None:
        """Delete what the source no longer holds, unless the guard or an unkeyed failure forbids it."""
        if not self.state.missing_count():
            return
        if self.unkeyed_errors:
            self.report.deletes_inferred = False
            self.report.notes.append(f"deletes skipped: {self.unkeyed_errors} record(s) failed before their key "
                                     "was known, so a missing key may not mean a delete")
            return
        for changes in self.state.deletions(known_before=known_before, size=self.size,
                                            max_share=self.sync.max_delete_share,
                                            force=self.options.force_deletes, condition=self.delete_condition()):
            for group in self.deliver(changes):
                ok = [changes[i].key for i, o in group if o.ok]
                accepted = [changes[i].key for i, o in group if o.ok and o.pending]
                self.report.pending += len(accepted)
                dead = [self.dead_row(RecordError(o.error or "delete rejected", key=changes[i].key, field=o.field),
                                      DELETE, None, None) for i, o in group if not o.ok]
                self.counts["deletes"] += len(ok)
                self.counts["errors"] += len(dead)
                self.note_errors(dead)
                self.state.commit(self.counts, deletes=ok, dead=dead, deletes_pending=accepted)

    def delete_condition(self) -> Callable[[str, Mapping[str, Any] | None], bool] | None:
        """``delete_when`` compiled: whether a missing key, by its remembered fields, is a delete."""
        when = self.sync.delete_when
        if when is None:
            return None
        base = {"vars": self.engine.pipeline.vars, "run": RunInfo(self.engine.run_id, self.engine.started_at)}
        render = compile_template(self.engine.env, when[0], context=base)

        def condition(key: str, memo: Mapping[str, Any] | None) -> bool:
            try:
                return bool(render(record=memo))
            except Exception as exc:  # noqa: BLE001 - a condition that cannot decide keeps the record
                log.warning("delete_when could not be evaluated for key %s at %s: %s", key, when[1], exc)
                return False

        return condition
