"""The adapter contract kit: checks that drive a source, destination or receiver through the promises of
:mod:`engine.interfaces`.

An adapter's own tests call these against a real peer (files in a temporary folder, a server on
127.0.0.1): :func:`check_source`, :func:`check_destination` and :func:`check_receiver`. Each raises
:class:`AssertionError` with a message naming the promise that broke, so they work under pytest or any
other runner. They take the adapter's registered name (or its :class:`~engine.registry.AdapterSpec`)
and its config and options as a pipeline gives them (plain data, checked against the adapter's own
schema first) or as the dataclasses themselves. Each starts with :func:`check_registration`: a
summary, frozen config and options dataclasses, and a description for every field.

Like the rest of the core, this module imports no adapter: register them first
(``engine.adapters.register_builtins()`` for the built-in ones, importing your module for yours); a
name that is not registered yet is looked up among the installed plugins' entry points.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator

from engine import arrow_read
from engine.errors import RecordError, RunFailed
from engine.interfaces import (
    CREATE,
    DELETE,
    OK,
    UPDATE,
    Acknowledging,
    Change,
    ColumnBlock,
    Delivery,
    Destination,
    DestinationStream,
    Outcome,
    PushEvent,
    PushSource,
    ReadsColumns,
    ReadsRows,
    RowBlock,
    RunInfo,
    Source,
    SourceStream,
    StreamContext,
    StreamingDestinationStream,
    WholeRead,
)
from engine.mapping import record_key
from engine.registry import REGISTRY, AdapterSpec, Registry, Role
from engine.sync_state import SyncState
from engine.typed_config import build

Holding = Mapping[Any, Mapping[str, Any]] | Iterable[Mapping[str, Any]]
"""What a destination holds, as a check's ``read_back`` returns it: its records (a list, so that a key
held twice is found), or a mapping whose values are the records."""

Send = Callable[[str, PushEvent], int]
"""How a receiver's test sends one record the way its system does: ``send(url, event)`` returns the
status the sender got back (an HTTP status for an HTTP receiver)."""

DEFAULT_RECORDS: tuple[dict[str, Any], ...] = tuple({"id": i, "name": f"thing {i}", "qty": i * 10} for i in range(6))
"""The records :func:`check_destination` writes unless told otherwise (key field ``id``, a number: a delete the
engine infers carries it as the text the state keeps, ``"3"``)."""
DEFAULT_UPDATE: dict[str, Any] = {"id": 1, "name": "renamed", "qty": 11}
"""The new values of the second record in the update :func:`check_destination` sends."""
RUN_START = datetime(2026, 1, 1, tzinfo=UTC)
"""When the checks' runs start; run ``n`` starts ``n`` minutes later, with the id ``run-0n``."""
TIMEOUT = 10.0
"""Seconds a receiver check waits for any one thing (a delivery, an answer, ``serve`` to return)."""
HOLD = 1.0
"""Seconds a receiver check holds the first delivery back, during which its sender must get no answer."""


# --- registration -----------------------------------------------------------------------------------


def adapter_spec(role: Role, adapter: str | AdapterSpec, registry: Registry = REGISTRY) -> AdapterSpec:
    """The registered adapter of a role, by name (installed plugins are loaded when the name is missing)."""
    if isinstance(adapter, AdapterSpec):
        if adapter.role != role:
            raise AssertionError(f"'{adapter.name}' is registered as a {adapter.role}, not as a {role}")
        return adapter
    spec = registry.get(role, adapter)
    if spec is None:
        registry.load_entry_points()
        spec = registry.get(role, adapter)
    if spec is None:
        raise AssertionError(f"no {role} adapter '{adapter}' is registered (registered: "
                             f"{', '.join(registry.names(role)) or 'none'}); import the module that registers "
                             "it, or call engine.adapters.register_builtins() for the built-in ones")
    return spec


def _undescribed(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Fields of a schema, at any depth, without a description."""
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description"):
            yield prefix + name
        # A nested dataclass, or one as the items or values of a list or mapping.
        for nested in (prop, prop.get("items"), prop.get("additionalProperties")):
            if isinstance(nested, Mapping) and "properties" in nested:
                yield from _undescribed(nested, f"{prefix}{name}.")


def check_registration(spec: AdapterSpec) -> None:
    """The adapter is registered as the boundary expects: a summary, frozen dataclasses, every field described."""
    where = f"{spec.role} '{spec.name}'"
    if not spec.summary.strip():
        raise AssertionError(f"{where}: no summary (give the class a docstring, or pass summary=)")
    if not callable(spec.factory):
        raise AssertionError(f"{where}: the registered factory is not callable")
    for kind, cls in (("config", spec.config_type), ("options", spec.options_type)):
        if not dataclasses.is_dataclass(cls):
            raise AssertionError(f"{where}: the {kind} type {cls.__name__} is not a dataclass")
        # One config object is shared by every sync of the pipeline: it must not change under them.
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise AssertionError(f"{where}: the {kind} dataclass {cls.__name__} is not frozen "
                                 "(use @dataclass(frozen=True))")
    for kind, schema in (("config", spec.config_schema), ("options", spec.options_schema)):
        missing = sorted(set(_undescribed(schema)))
        if missing:
            raise AssertionError(f"{where}: {kind} field(s) without a description: {', '.join(missing)} "
                                 "(declare every field with engine.typed_config.option() or secret())")
    for f in dataclasses.fields(spec.config_type):
        if f.name in spec.secrets:
            if f.default is not None:
                raise AssertionError(f"{where}: the secret field '{f.name}' has a default; a secret comes only "
                                     "from the environment")


def _typed(cls: type, schema: dict[str, Any], value: object, what: str) -> Any:
    """``value`` as an instance of ``cls``: given as one, or plain data that must pass the schema first."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise AssertionError(f"the {what} is a {type(value).__name__}; give a mapping or a {cls.__name__}")
    data = dict(value)
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: [str(p) for p in e.path])
    if errors:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}" for e in errors)
        raise AssertionError(f"the {what} does not match the adapter's schema: {problems}")
    return build(cls, data)


def _make(spec: AdapterSpec, config: object, base_dir: Path, methods: tuple[str, ...]) -> Any:
    """The adapter made from its config, with the methods of its role's protocol."""
    instance = spec.factory(_typed(spec.config_type, spec.config_schema, config, "config"), base_dir)
    missing = [m for m in methods if not callable(getattr(instance, m, None))]
    if missing:
        raise AssertionError(f"{spec.role} '{spec.name}': the adapter has no {', '.join(missing)} (see the "
                             f"{spec.role} protocol in engine.interfaces)")
    return instance


@dataclass(frozen=True)
class _KeyFields:
    key_fields: tuple[str, ...]


def inferred_key_values(record: Mapping[str, Any], key_fields: tuple[str, ...]) -> dict[str, Any]:
    """The ``key_values`` of a delete the engine inferred for ``record``: decoded from the key text the state keeps.

    For one key field that is its value as text (``"3"`` for ``3``); for a composite key, the values JSON
    gives back. A destination must find the record from these as well as from the mapped values.
    """
    text = record_key(record, key_fields, None, None)
    # The very decoding the state applies to the keys it infers deletes for (it reads only key_fields).
    return SyncState.key_values_of(cast("SyncState", _KeyFields(key_fields)), text)


def _close_twice(adapter: Source[Any] | Destination[Any] | PushSource[Any], where: str) -> None:
    adapter.close()
    try:
        adapter.close()
    except Exception as exc:
        # The engine closes every adapter it opened once, but an embedding program may too.
        raise AssertionError(f"{where}: a second close() raised {type(exc).__name__}: {exc}; close must be "
                             "safe to call again") from exc


def _close_quietly(adapter: Source[Any] | Destination[Any] | PushSource[Any]) -> None:
    """Close after a failed check; the check's own error is the one to report."""
    try:
        adapter.close()
    except Exception:  # noqa: BLE001 - the failing assertion matters more than this one
        pass


def stream_context(base_dir: Path, *, run: int = 1, sync: str = "contract", key_fields: tuple[str, ...] = ("id",),
                   fields: tuple[str, ...] | None = None, warnings: list[str] | None = None) -> StreamContext:
    """The context a check's stream gets: run ``n`` is ``run-0n``, started ``n`` minutes after :data:`RUN_START`."""
    info = RunInfo(f"run-{run:02d}", RUN_START + timedelta(minutes=run))
    warn: Callable[[str], None] = warnings.append if warnings is not None else (lambda message: None)
    return StreamContext("contract", sync, base_dir, key_fields, fields, info, logging.getLogger("syncengine.contract"),
                         warn=warn)


def _canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=repr)


def _same(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]], ordered: bool, where: str) -> None:
    """The same records (in the same order when ``ordered``), or a message naming the differences."""
    a, b = [_canonical(r) for r in got], [_canonical(r) for r in want]
    if (a if ordered else sorted(a)) == (b if ordered else sorted(b)):
        return
    missing = [r for r in b if r not in a][:5]
    extra = [r for r in a if r not in b][:5]
    detail = f"missing {missing}, unexpected {extra}" if missing or extra else "the same records in another order"
    raise AssertionError(f"{where}: got {len(got)} records, expected {len(want)}: {detail}")


# --- sources ----------------------------------------------------------------------------------------


@dataclass
class SourceCheck:
    """What one read of a checked source gave: records, record errors, the cursor ``finish`` returned, ``whole``."""

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    cursor: str | None = None
    whole: bool | None = None
    """The stream's ``whole`` after the read (``None``: the stream does not say; the engine then takes a
    read without a cursor as whole)."""
    warnings: list[str] = field(default_factory=list)
    columnar: bool = False
    """Whether the stream can also be read in columns (:class:`~engine.interfaces.ReadsColumns`)."""


def _zipped(blocks: Iterator[RowBlock | ColumnBlock]) -> Iterator[dict[str, Any] | RecordError]:
    """The records of a :class:`~engine.interfaces.ReadsRows` (or ``ReadsColumns``) read, as the engine makes them."""
    for header, block in blocks:
        if arrow_read.is_batch(block):
            batch: Any = block.batch  # type: ignore[union-attr]
            if batch.num_columns != len(header):
                raise AssertionError(f"read_columns() gave {batch.num_columns} columns under a header of {len(header)}")
            yield from arrow_read.records(header, batch)
            continue
        rows: Iterator[list[str] | RecordError] = block
        for row in rows:
            if isinstance(row, RecordError):
                yield row
            elif len(row) != len(header):
                raise AssertionError(f"read_rows() gave a row of {len(row)} values under a header of {len(header)}")
            else:
                yield dict(zip(header, row, strict=True))


def _read(source: Source[Any], options: object, base_dir: Path, run: int, cursor: str | None,
          key_fields: tuple[str, ...], where: str) -> SourceCheck:
    """One sync's read as the engine does it: open, read, acknowledge what was delivered, finish."""
    result = SourceCheck()
    stream: SourceStream = source.open_stream(options, stream_context(base_dir, run=run, key_fields=key_fields,
                                                                      warnings=result.warnings))
    # The second read of a ReadsRows stream goes through read_rows: its rows, zipped with their headers,
    # must be the records read() gives; a fourth, of a ReadsColumns stream with pyarrow installed, through
    # read_columns.
    result.columnar = isinstance(stream, ReadsColumns) and arrow_read.available()
    rows: Iterator[dict[str, Any] | RecordError]
    if run == 2 and isinstance(stream, ReadsRows):
        rows = _zipped(stream.read_rows(cursor))
    elif run == 4 and result.columnar:
        rows = _zipped(cast(ReadsColumns, stream).read_columns(cursor))
    else:
        rows = stream.read(cursor)
    if not isinstance(rows, Iterator):
        raise AssertionError(f"{where}: read() returned a {type(rows).__name__}; return an iterator (a generator) "
                             "so records stream")
    for item in rows:
        if isinstance(item, RecordError):
            if not str(item).strip():
                raise AssertionError(f"{where}: a RecordError without a message; say what is wrong with the row")
            result.errors.append(item)
            continue
        if not isinstance(item, dict):
            raise AssertionError(f"{where}: read() yielded a {type(item).__name__}; yield dicts or RecordError")
        odd = [k for k in item if not isinstance(k, str)]
        if odd:
            raise AssertionError(f"{where}: a record has field names that are not text: {odd[:3]}")
        result.records.append(item)
    if isinstance(stream, WholeRead):
        whole = stream.whole
        if not isinstance(whole, bool):
            raise AssertionError(f"{where}: whole is a {type(whole).__name__} after the read, not a bool")
        result.whole = whole
    if isinstance(stream, Acknowledging):
        stream.acknowledge(result.records)  # the engine acknowledges what it made durable, failed rows never
    cursor_out = stream.finish()
    if cursor_out is not None and not isinstance(cursor_out, str):
        raise AssertionError(f"{where}: finish() returned a {type(cursor_out).__name__}; return the next cursor as "
                             "text, or None")
    result.cursor = cursor_out
    return result


def check_source(adapter: str | AdapterSpec, config: object, options: object,
                 expected: Sequence[Mapping[str, Any]], base_dir: Path, *, registry: Registry = REGISTRY,
                 expected_errors: int = 0, expect_whole: bool | None = None,
                 after_cursor: Sequence[Mapping[str, Any]] | None = None, ordered: bool = False,
                 key_fields: tuple[str, ...] = ("id",), allow_warnings: bool = False) -> SourceCheck:
    """Drive a pull source through the :class:`~engine.interfaces.SourceStream` contract; returns its first read.

    A read without a cursor yields exactly ``expected`` (in that order when ``ordered``) and
    ``expected_errors`` :class:`~engine.errors.RecordError` rows, through an iterator; an
    :class:`~engine.interfaces.Acknowledging` stream accepts the acknowledgement of its records;
    ``finish`` returns text or ``None``; a :class:`~engine.interfaces.WholeRead` stream's ``whole`` is a
    bool (``expect_whole`` when given). A second read, on a second stream of the same adapter (two
    syncs share one), gives the same records. When ``finish`` gave a cursor, a read from it yields
    ``after_cursor`` (or, when not given, only records of ``expected``). ``close`` may be called twice.
    Run it with a config whose read has no side effect on the next one (no archiving).
    """
    spec = adapter_spec("source", adapter, registry)
    check_registration(spec)
    where = f"source '{spec.name}'"
    opts = _typed(spec.options_type, spec.options_schema, options, "options")
    source = cast("Source[Any]", _make(spec, config, base_dir, ("open_stream", "close")))
    try:
        first = _read(source, opts, base_dir, 1, None, key_fields, f"{where}, first read")
        if first.warnings and not allow_warnings:
            raise AssertionError(f"{where}: the read warned: {first.warnings}")
        _same(first.records, expected, ordered, f"{where}, a read without a cursor")
        if len(first.errors) != expected_errors:
            raise AssertionError(f"{where}: {len(first.errors)} record error(s), expected {expected_errors}: "
                                 f"{[str(e) for e in first.errors][:5]}")
        if expect_whole is not None:
            whole = first.whole if first.whole is not None else True  # as the engine reads a stream without it
            if whole != expect_whole:
                raise AssertionError(f"{where}: whole is {whole} after a read without a cursor, not {expect_whole}")
        second = _read(source, opts, base_dir, 2, None, key_fields, f"{where}, second read")
        _same(second.records, first.records, ordered,
              f"{where}: a second read without a cursor differs from the first (a read must not depend on earlier "
              "reads); second read")
        if len(second.errors) != len(first.errors):
            raise AssertionError(f"{where}: the second read had {len(second.errors)} record errors, the first "
                                 f"{len(first.errors)}")
        if second.columnar:
            fourth = _read(source, opts, base_dir, 4, None, key_fields, f"{where}, read in columns")
            _same(fourth.records, first.records, ordered,
                  f"{where}: a read in columns (read_columns) differs from read(); read in columns")
            theirs, ours = [str(e) for e in fourth.errors], [str(e) for e in first.errors]
            if theirs != ours:
                raise AssertionError(f"{where}: a read in columns had other record errors than read(): "
                                     f"{theirs[:3]} against {ours[:3]}")
        if first.cursor is not None:
            third = _read(source, opts, base_dir, 3, first.cursor, key_fields, f"{where}, read from its cursor")
            if after_cursor is not None:
                _same(third.records, after_cursor, ordered, f"{where}, a read from the cursor {first.cursor!r}")
            else:
                known = {_canonical(r) for r in expected}
                stray = [r for r in third.records if _canonical(r) not in known]
                if stray:
                    raise AssertionError(f"{where}: a read from the cursor {first.cursor!r} yielded records it "
                                         f"never had: {stray[:3]}")
    except BaseException:
        _close_quietly(source)
        raise
    _close_twice(source, where)
    return first


# --- destinations -----------------------------------------------------------------------------------


def _write(stream: DestinationStream, changes: list[Change], where: str, *, each: bool) -> list[Outcome]:
    """Send changes as the engine does (``write_each`` for a streaming destination when ``each``); one outcome each."""
    outcomes: list[Outcome] = []
    size = stream.max_batch or len(changes) or 1
    for start in range(0, len(changes), size):
        chunk = changes[start:start + size]
        if each and isinstance(stream, StreamingDestinationStream):
            seen: dict[int, Outcome] = {}
            for group in stream.write_each(chunk):
                if not isinstance(group, list) or not group:
                    raise AssertionError(f"{where}: write_each yielded {group!r}, not a non-empty list of "
                                         "(index, outcome)")
                for index, outcome in group:
                    if not isinstance(index, int) or not 0 <= index < len(chunk):
                        raise AssertionError(f"{where}: write_each reported index {index!r} for {len(chunk)} changes")
                    if index in seen:
                        raise AssertionError(f"{where}: write_each reported change {index} twice")
                    if not isinstance(outcome, Outcome):
                        raise AssertionError(f"{where}: write_each yielded a {type(outcome).__name__}")
                    seen[index] = outcome
            if len(seen) != len(chunk):
                raise AssertionError(f"{where}: write_each answered {len(seen)} of {len(chunk)} changes; every index "
                                     "must appear once")
            outcomes.extend(seen[i] for i in range(len(chunk)))
            continue
        result = stream.write(chunk)
        if result is None:
            outcomes.extend([OK] * len(chunk))
            continue
        answers = list(result)
        if len(answers) != len(chunk):
            raise AssertionError(f"{where}: write returned {len(answers)} outcomes for {len(chunk)} "
                                 "changes; return one per change, in order (or None when all succeeded)")
        if not all(isinstance(o, Outcome) for o in answers):
            raise AssertionError(f"{where}: write returned something else than Outcomes")
        outcomes.extend(answers)
    return outcomes


def _all_ok(changes: Sequence[Change], outcomes: Sequence[Outcome], where: str) -> None:
    failed = [f"{c.action} {c.key_values}: {o.error}" for c, o in zip(changes, outcomes, strict=True) if not o.ok]
    if failed:
        raise AssertionError(f"{where}: the destination refused {len(failed)} change(s): {failed[:3]}")


def _held(read_back: Callable[[], Holding], key_fields: tuple[str, ...], where: str) -> dict[tuple[Any, ...], Any]:
    got = read_back()
    rows = list(got.values()) if isinstance(got, Mapping) else list(got)
    held: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        missing = [f for f in key_fields if f not in row]
        if missing:
            raise AssertionError(f"{where}: a record read back has no key field {missing}: {dict(row)}")
        key = tuple(row[f] for f in key_fields)
        if key in held:
            raise AssertionError(f"{where}: the destination holds the key {key} twice; a batch sent again (after a "
                                 "crash before the state commit) must not create a duplicate")
        held[key] = dict(row)
    return held


def _expect_holding(read_back: Callable[[], Holding], want: Mapping[tuple[Any, ...], Mapping[str, Any]],
                    key_fields: tuple[str, ...], where: str) -> None:
    held = _held(read_back, key_fields, where)
    if held == want:
        return
    missing = [k for k in want if k not in held]
    extra = [k for k in held if k not in want]
    different = {k: (held[k], want[k]) for k in want if k in held and held[k] != want[k]}
    raise AssertionError(f"{where}: the destination holds other records than expected: missing keys {missing}, "
                         f"unexpected keys {extra}, different (held, expected): {dict(list(different.items())[:3])}")


def check_destination(adapter: str | AdapterSpec, config: object, options: object,
                      read_back: Callable[[], Holding], base_dir: Path, *, registry: Registry = REGISTRY,
                      records: Sequence[Mapping[str, Any]] = DEFAULT_RECORDS,
                      updated: Mapping[str, Any] = DEFAULT_UPDATE, key_fields: tuple[str, ...] = ("id",),
                      deletes: bool = True, rejected: Mapping[str, Any] | None = None) -> None:
    """Drive a destination through the :class:`~engine.interfaces.DestinationStream` contract, run by run.

    ``read_back()`` returns what the destination holds (see :data:`Holding`); it is read after each
    run's ``finish``, since a destination may stage durable changes until then. The runs:

    1. the first five ``records`` are created, then the process "dies" before the state commit: no
       ``finish``, and the adapter is closed;
    2. a new adapter sends the same creates again (as the next run does) and finishes: each record is
       held once, and the remote ids the outcomes gave are distinct;
    3. one batch: an update of the second record to ``updated`` (addressed by the remote id of run 2 and
       ``key_values``), deletes of the fourth (as the engine infers one, its key values from the state's
       text: see :func:`inferred_key_values`) and the fifth (as a receiver pushes one), a create of the sixth;
    4. run 3's update and a delete of the fifth sent again (a crash after the write): done, nothing changes;
    5. the second record updated back, with the remote id run 4's outcome gave (the state keeps what an
       outcome says), and, with ``rejected``, a create of a record the destination must refuse: its
       outcome fails with a message, and the rest of the batch is written (or, for an atomic
       destination, every outcome fails and nothing is);
    6. a run with nothing to write: ``finish`` alone is safe.

    Every ``write`` returns one :class:`~engine.interfaces.Outcome` per change in order, or ``None``; a
    streaming destination's ``write_each`` reports every change exactly once (runs 4 and 5 use plain
    ``write``). ``Change.key`` is given an opaque value unlike the key fields', so a destination that
    decodes it instead of reading ``key_values`` fails. With ``deletes=False`` (a destination that cannot
    carry deletes) a delete must raise :class:`~engine.errors.RunFailed` instead. ``close`` may be called twice.
    """
    spec = adapter_spec("destination", adapter, registry)
    check_registration(spec)
    where = f"destination '{spec.name}'"
    rows = [dict(r) for r in records]
    if len(rows) < 6:
        raise AssertionError("check_destination needs six records")
    fields = tuple(rows[0])
    opts = _typed(spec.options_type, spec.options_schema, options, "options")

    def key_of(record: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(record[f] for f in key_fields)

    def key_values(record: Mapping[str, Any]) -> dict[str, Any]:
        return {f: record[f] for f in key_fields}

    def key_text(record: Mapping[str, Any]) -> str:
        # The state's key text is opaque to a destination: this one is deliberately unlike the key's value.
        return "contract:" + json.dumps(list(key_of(record)), default=str)

    if len({key_of(r) for r in rows}) != len(rows):
        raise AssertionError("the records' keys must differ")
    if key_of(updated) != key_of(rows[1]):
        raise AssertionError("`updated` must have the key of the second record")
    ids: dict[str, str | None] = {}

    def create(record: Mapping[str, Any]) -> Change:
        return Change(CREATE, key_text(record), dict(record), None, key_values(record))

    def update(record: Mapping[str, Any], remote: Mapping[str, str | None]) -> Change:
        return Change(UPDATE, key_text(record), dict(record), remote.get(key_text(record)), key_values(record))

    def delete(record: Mapping[str, Any], remote: Mapping[str, str | None], *, inferred: bool = True) -> Change:
        # An inferred delete knows the key only from the state's text; a pushed one has the mapped key fields.
        values = inferred_key_values(record, key_fields) if inferred else key_values(record)
        return Change(DELETE, key_text(record), None, remote.get(key_text(record)), values)

    def remember(changes: Sequence[Change], outcomes: Sequence[Outcome]) -> None:
        # What the state records: the remote id each acknowledged outcome carries (an update's too).
        for change, outcome in zip(changes, outcomes, strict=True):
            if outcome.ok:
                if change.action == DELETE:
                    ids.pop(change.key, None)
                else:
                    ids[change.key] = outcome.remote_id

    run = 0

    def open_run(destination: Destination[Any]) -> DestinationStream:
        nonlocal run
        run += 1
        stream = destination.open_stream(opts, stream_context(base_dir, run=run, key_fields=key_fields, fields=fields))
        limit = getattr(stream, "max_batch", "missing")
        if limit is not None and not (isinstance(limit, int) and limit > 0):
            raise AssertionError(f"{where}: the stream's max_batch is {limit!r}; give None or a positive number")
        return stream

    creates = [create(r) for r in rows[:5]]
    first = cast("Destination[Any]", _make(spec, config, base_dir, ("open_stream", "close")))
    try:
        stream = open_run(first)
        _all_ok(creates, _write(stream, creates, f"{where}, run 1", each=True), f"{where}, run 1")
    except BaseException:
        _close_quietly(first)
        raise
    first.close()  # the process is gone: the state never learnt of run 1, and finish was never called

    destination = cast("Destination[Any]", _make(spec, config, base_dir, ("open_stream", "close")))
    try:
        label = f"{where}, run 2 (run 1's creates sent again, as after a crash)"
        stream = open_run(destination)
        outcomes = _write(stream, creates, label, each=True)
        _all_ok(creates, outcomes, label)
        remember(creates, outcomes)
        given = [i for i in ids.values() if i is not None]
        if len(set(given)) != len(given):
            raise AssertionError(f"{label}: two records got the same remote id ({given}); outcomes must follow "
                                 "the changes' order")
        stream.finish()
        want = {key_of(r): r for r in rows[:5]}
        _expect_holding(read_back, want, key_fields, label)
        after_creates = dict(ids)

        label = f"{where}, run 3 (an update, deletes and a create in one batch)"
        stream = open_run(destination)
        batch = [update(updated, ids), *([delete(rows[3], ids)] if deletes else []), create(rows[5]),
                 *([delete(rows[4], ids, inferred=False)] if deletes else [])]
        outcomes = _write(stream, batch, label, each=True)
        _all_ok(batch, outcomes, label)
        remember(batch, outcomes)
        stream.finish()
        want[key_of(updated)] = dict(updated)
        want[key_of(rows[5])] = rows[5]
        if deletes:
            del want[key_of(rows[3])], want[key_of(rows[4])]
        _expect_holding(read_back, want, key_fields, label)

        if not deletes:
            label = f"{where}, run 3b (a delete, which this destination cannot carry)"
            stream = open_run(destination)
            try:
                _write(stream, [delete(rows[3], ids)], label, each=True)
            except RunFailed:
                pass
            else:
                raise AssertionError(f"{label}: the delete was accepted; a destination that cannot carry deletes "
                                     "raises RunFailed")
            _expect_holding(read_back, want, key_fields, label)

        label = f"{where}, run 4 (run 3's update and a delete of what is gone, sent again)"
        stream = open_run(destination)
        batch = [update(updated, after_creates), *([delete(rows[4], after_creates)] if deletes else [])]
        outcomes = _write(stream, batch, label, each=False)
        _all_ok(batch, outcomes, label)
        remember(batch, outcomes)
        stream.finish()
        _expect_holding(read_back, want, key_fields, label)

        label = f"{where}, run 5 (an update by the remote id the last outcome gave" + \
            (", and a record the destination refuses)" if rejected is not None else ")")
        stream = open_run(destination)
        batch = [*([create(rejected)] if rejected is not None else []), update(rows[1], ids)]
        outcomes = _write(stream, batch, label, each=False)
        if rejected is not None:
            refused = outcomes[0]
            if refused.ok:
                raise AssertionError(f"{label}: the record {dict(rejected)} was accepted; it should have been refused")
            if not isinstance(refused.error, str) or not refused.error.strip():
                raise AssertionError(f"{label}: a refused record's outcome carries no error message to dead-letter")
        rest = list(zip(batch, outcomes, strict=True))[1 if rejected is not None else 0:]
        atomic = rejected is not None and not any(o.ok for _, o in rest)
        if not atomic:
            _all_ok([c for c, _ in rest], [o for _, o in rest], label)
            want[key_of(rows[1])] = rows[1]
        remember(batch, outcomes)
        stream.finish()
        _expect_holding(read_back, want, key_fields, label)

        label = f"{where}, run 6 (nothing to write)"
        stream = open_run(destination)
        stream.finish()
        _expect_holding(read_back, want, key_fields, label)
    except BaseException:
        _close_quietly(destination)
        raise
    _close_twice(destination, where)


# --- receivers --------------------------------------------------------------------------------------


def default_events(route: str) -> list[PushEvent]:
    """A create, an update and a delete of one record pushed on ``route`` (text values, as a form carries)."""
    return [PushEvent(route, CREATE, {"id": "k1", "name": "thing 1", "qty": "1"}),
            PushEvent(route, UPDATE, {"id": "k1", "name": "renamed", "qty": "10"}),
            PushEvent(route, DELETE, {"id": "k1"})]


def check_receiver(adapter: str | AdapterSpec, config: object, options: object, send: Send, *, route: str,
                   base_dir: Path, events: Sequence[PushEvent] | None = None, registry: Registry = REGISTRY,
                   host: str = "127.0.0.1", timeout: float = TIMEOUT) -> None:
    """Drive a receiver through the :class:`~engine.interfaces.PushSource` contract over a real socket.

    ``route(options)`` names ``route``; ``bind(host, 0)`` returns a URL with the port it picked;
    ``serve(deliver, stop)`` hands each record ``send`` pushes to ``deliver`` exactly once, as the
    event that was sent (``events``, by default :func:`default_events`), and answers the sender only
    after ``deliver`` returned, with the status ``deliver`` gave (the last one is refused with 422);
    setting ``stop`` ends ``serve`` and frees the port; ``close`` may be called twice.
    """
    spec = adapter_spec("receiver", adapter, registry)
    check_registration(spec)
    where = f"receiver '{spec.name}'"
    opts = _typed(spec.options_type, spec.options_schema, options, "options")
    sent = list(events) if events is not None else default_events(route)
    if not sent:
        raise AssertionError("check_receiver needs at least one event")
    answers = [Delivery(200, "done")] * (len(sent) - 1) + [Delivery(422, "refused by the contract check")]
    receiver = cast("PushSource[Any]", _make(spec, config, base_dir, ("bind", "route", "serve", "close")))
    stop = threading.Event()
    release = threading.Event()
    entered = threading.Event()
    delivered: list[PushEvent] = []
    failures: list[BaseException] = []

    def deliver(event: PushEvent) -> Delivery:
        delivered.append(event)
        entered.set()
        if not release.wait(timeout):
            return Delivery(500, "the contract check timed out")
        return answers[min(len(delivered), len(answers)) - 1]

    def serve() -> None:
        try:
            receiver.serve(deliver, stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the check, in its own thread
            failures.append(exc)

    server = threading.Thread(target=serve, name=f"contract-{spec.name}", daemon=True)
    try:
        named = receiver.route(opts)
        if named != route:
            raise AssertionError(f"{where}: route(options) is {named!r}, expected {route!r}")
        url = receiver.bind(host, 0)
        if not isinstance(url, str):
            raise AssertionError(f"{where}: bind() returned a {type(url).__name__}, not the URL it serves")
        port = urlsplit(url).port
        if not port:
            raise AssertionError(f"{where}: bind(host, 0) returned {url!r}, which does not name the port it picked")
        server.start()
        for index, event in enumerate(sent):
            status: list[int | BaseException] = []

            def post(event: PushEvent = event, status: list[int | BaseException] = status) -> None:
                try:
                    status.append(send(url, event))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    status.append(exc)

            sender = threading.Thread(target=post, name="contract-sender", daemon=True)
            entered.clear()
            if index == 0:
                release.clear()
                sender.start()
                if not entered.wait(timeout) and not failures:
                    raise AssertionError(f"{where}: the first record was not delivered within {timeout:.0f} s "
                                         f"({status or 'no answer'})")
                if failures:
                    raise AssertionError(f"{where}: serve raised {failures[0]!r}")
                sender.join(HOLD)
                if not sender.is_alive():
                    raise AssertionError(f"{where}: the sender got its answer ({status}) before deliver returned; a "
                                         "receiver answers only once deliver returned, when the record is durable")
                release.set()
            else:
                sender.start()
            sender.join(timeout)
            if sender.is_alive():
                raise AssertionError(f"{where}: no answer to record {index + 1} within {timeout:.0f} s")
            answer = status[0]
            if isinstance(answer, BaseException):
                raise AssertionError(f"{where}: sending record {index + 1} failed: {answer!r}") from answer
            if len(delivered) != index + 1:
                raise AssertionError(f"{where}: after {index + 1} record(s) sent, deliver was called "
                                     f"{len(delivered)} time(s)")
            if delivered[index] != event:
                raise AssertionError(f"{where}: delivered {delivered[index]}, but {event} was sent")
            if answer != answers[index].status:
                raise AssertionError(f"{where}: the sender got {answer}, but deliver answered {answers[index].status}")
        stop.set()
        server.join(timeout)
        if server.is_alive():
            raise AssertionError(f"{where}: serve did not return within {timeout:.0f} s of stop being set")
        if failures:
            raise AssertionError(f"{where}: serve raised {failures[0]!r}")
        try:
            probe = socket.create_connection((urlsplit(url).hostname or host, port), timeout=1)
        except OSError:
            pass  # refused: the listening socket is closed
        else:
            probe.close()
            raise AssertionError(f"{where}: {url} still accepts connections after serve returned")
    except BaseException:
        stop.set()
        release.set()
        if server.is_alive():
            server.join(timeout)
        _close_quietly(receiver)
        raise
    _close_twice(receiver, where)


__all__ = ["DEFAULT_RECORDS", "DEFAULT_UPDATE", "Holding", "Send", "SourceCheck", "adapter_spec", "check_destination",
           "check_receiver", "check_registration", "check_source", "default_events", "inferred_key_values",
           "stream_context"]
