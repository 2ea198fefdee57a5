"""Run a pipeline's syncs: read, map, detect changes, write in batches, advance state.

Per sync and batch: source records are mapped (one compiled function per record) and hashed;
the state store returns which keys are new or changed; the destination writes those; once it
acknowledged them, one state transaction records their hashes, the batch's dead letters and the
run's progress; then the source is told which records were delivered. A snapshot sync with
``mode: mirror`` then deletes the keys it did not see, behind the mass-delete guard. The cursor
advances only when the whole sync succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from engine.config import Endpoint, Pipeline, SyncSpec
from engine.errors import (
    ConfigError,
    ConnectError,
    DeleteGuardTripped,
    RecordError,
    RunFailed,
    SyncEngineError,
    TransientError,
)
from engine.interfaces import (
    CREATE,
    DELETE,
    OK,
    UPDATE,
    Change,
    DestinationStream,
    Outcome,
    RunInfo,
    SourceStream,
    StreamContext,
)
from engine.mapping import CompiledMapping, IdentityMapping, compile_native
from engine.state_store import StateStore
from engine.templating import EnvView, Redactor, is_template, make_environment

log = logging.getLogger("syncengine")

MAX_ERRORS_REPORTED = 20
UNREADABLE = "unreadable"
"""The dead-letter action of a source row that could not be read into a record."""
DeadRow = tuple[str, str | None, str | None, str | None, str, str | None, str | None]
"""(key, action, source record JSON, redacted payload JSON, message, field, template location)"""
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


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


@dataclass
class RunOptions:
    """How to run: which syncs, dry run, full refresh, cursor override, delete guard override."""

    syncs: tuple[str, ...] = ()
    dry_run: bool = False
    full_refresh: bool = False
    since: str | None = None
    force_deletes: bool = False
    sample_size: int = 3
    progress: Callable[[str, int], None] | None = None
    retry_delays: tuple[float, ...] = RETRY_DELAYS


@dataclass
class SyncReport:
    """What one sync did."""

    name: str
    status: str = "ok"
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("read", "creates", "updates", "deletes", "unchanged", "filtered", "skipped", "errors"), 0))
    errors: list[str] = field(default_factory=list)
    message: str | None = None
    seconds: float = 0.0
    samples: dict[str, list[Any]] = field(default_factory=dict)
    cursor: str | None = None
    stops_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        out: dict[str, Any] = {"status": self.status, **self.counts, "seconds": round(self.seconds, 3),
                               "errors_detail": self.errors, "message": self.message, "cursor": self.cursor}
        if self.samples:
            out["samples"] = self.samples
        return out


@dataclass
class RunReport:
    """What a run of a pipeline did."""

    pipeline: str
    run_id: str
    dry_run: bool
    syncs: dict[str, SyncReport] = field(default_factory=dict)
    error: str | None = None
    """Why the run stopped before its last sync (a server that could not be reached or refused us)."""

    @property
    def exit_code(self) -> int:
        """0 done, 1 done with record errors, 3 a sync failed."""
        if self.error or any(s.status == "failed" for s in self.syncs.values()):
            return 3
        if any(s.counts["errors"] for s in self.syncs.values()):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"pipeline": self.pipeline, "run_id": self.run_id, "dry_run": self.dry_run,
                "exit_code": self.exit_code, "error": self.error,
                "syncs": {n: s.to_dict() for n, s in self.syncs.items()}}


class PlanWriter:
    """The destination of a dry run: it accepts every change and keeps a few samples."""

    max_batch: int | None = None

    def __init__(self, report: SyncReport, sample_size: int, redactor: Redactor) -> None:
        self.report = report
        self.sample_size = sample_size
        self.redactor = redactor

    def write(self, changes: Sequence[Change]) -> None:
        """Keep samples (secrets masked); write nothing."""
        for change in changes:
            samples = self.report.samples.setdefault(change.action, [])
            if len(samples) < self.sample_size:
                samples.append({"key": change.key, "values": self.redactor.data(_jsonable(change.values))})

    def finish(self) -> None:
        """Nothing to finish."""


class DeadLetterSource:
    """Replays a sync's dead letters as a source (``syncengine retry``)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def read(self, cursor: str | None) -> Iterator[dict[str, Any]]:
        """The stored source records."""
        return iter(self.records)

    def acknowledge(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Nothing to tell anyone."""

    def finish(self) -> str | None:
        """No cursor."""
        return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class Engine:
    """Runs one validated pipeline; adapters are opened once and shared by its syncs."""

    def __init__(self, pipeline: Pipeline, *, state_path: str | None = None, dry_run: bool = False) -> None:
        self.pipeline = pipeline
        self.started_at = datetime.now(UTC)
        self.run_id = uuid.uuid4().hex[:12]
        self._state_path = state_path or pipeline.state_path
        self._dry_run = dry_run
        self._store: StateStore | None = None
        self.redactor = Redactor({v for n in pipeline.secret_env if (v := EnvView().get(n))})
        self.env = make_environment(pipeline.base_dir, on_secret=self.redactor.add)
        self._open: dict[tuple[str, str], Any] = {}
        self._configs: dict[tuple[str, str], Any] = {}

    @property
    def store(self) -> StateStore:
        """The state store, opened on first use (a run refused before it starts creates none)."""
        if self._store is None:
            self._store = StateStore(self._state_path, read_only_plan=self._dry_run)
        return self._store

    def close(self) -> None:
        """Close every adapter and the state store."""
        for adapter in self._open.values():
            try:
                adapter.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the run's own result
                log.warning("closing an adapter failed: %s", self.redactor.text(str(exc)))
        self._open.clear()
        if self._store is not None:
            self._store.close()

    # --- adapters ----------------------------------------------------------------------------------

    def render_config(self, endpoint: Endpoint) -> Any:
        """The endpoint's config with its templates rendered (secrets are remembered for redaction)."""
        config = endpoint.config
        context = {"vars": self.pipeline.vars, "env": EnvView()}
        changes: dict[str, Any] = {}
        for name, value in vars(config).items() if hasattr(config, "__dict__") else []:
            if isinstance(value, str) and is_template(value):
                try:
                    rendered = self.env.from_string(value).render(context)
                except SyncEngineError:
                    raise
                except Exception as exc:
                    reason = ("could not be rendered (the value is secret, so it is not shown)"
                              if name in endpoint.spec.secrets else getattr(exc, "message", None) or str(exc))
                    raise ConfigError(self.redactor.text(
                        f"{endpoint.location}: {endpoint.role}s.{endpoint.name}.{name}: {reason}")) from None
                changes[name] = rendered
        for name in endpoint.spec.secrets:
            self.redactor.add(changes.get(name, getattr(config, name, None)))
        return replace(config, **changes) if changes else config

    def adapter(self, endpoint: Endpoint) -> Any:
        """The adapter instance for an endpoint, opened on first use."""
        slot = (endpoint.role, endpoint.name)
        if slot not in self._open:
            config = self._configs.get(slot) or self.render_config(endpoint)
            self._open[slot] = endpoint.spec.factory(config, self.pipeline.base_dir)
        return self._open[slot]

    def prepare(self, syncs: list[SyncSpec], *, destinations: bool = True) -> None:
        """Render the configs the syncs use before any runs, so a missing variable fails once, up front."""
        for sync in syncs:
            endpoints = [self.pipeline.sources[sync.source]]
            if destinations:
                endpoints.append(self.pipeline.destinations[sync.destination])
            for endpoint in endpoints:
                slot = (endpoint.role, endpoint.name)
                if slot not in self._configs:
                    self._configs[slot] = self.render_config(endpoint)

    def mapping(self, sync: SyncSpec, run: RunInfo) -> CompiledMapping | IdentityMapping:
        """The sync's mapping compiled for this run."""
        context = {"vars": self.pipeline.vars, "env": EnvView(), "run": run}
        if sync.fields is None:
            key_fn = compile_native(self.env, sync.key_template[0]) if sync.key_template else None
            return IdentityMapping(sync.key_fields, key_fn, context)
        return CompiledMapping(self.env, list(sync.fields), key_fields=sync.key_fields,
                               key_template=sync.key_template, filter_template=sync.filter_template,
                               context=context)

    def stream_context(self, sync: SyncSpec, mapping: CompiledMapping | IdentityMapping, run: RunInfo) -> StreamContext:
        """What the sync's streams are told about it."""
        return StreamContext(self.pipeline.name, sync.name, self.pipeline.base_dir, sync.key_fields,
                             mapping.output_names, run, log.getChild(sync.name), self.pipeline.vars)

    # --- running -------------------------------------------------------------------------------------

    def run(self, options: RunOptions) -> RunReport:
        """Run the selected syncs in file order; a failed sync does not stop the others."""
        report = RunReport(self.pipeline.name, self.run_id, options.dry_run)
        unknown = [s for s in options.syncs if s not in self.pipeline.syncs]
        if unknown:
            raise ConfigError(f"unknown sync '{unknown[0]}'; the pipeline has: {', '.join(self.pipeline.syncs)}")
        for name in options.syncs:
            source = self.pipeline.sources[self.pipeline.syncs[name].source]
            if source.role == "receiver":
                raise ConfigError(f"sync '{name}' is fed by the receiver '{source.name}'; run "
                                  "`syncengine serve` for it")
        selected = [sync for name, sync in self.pipeline.syncs.items()
                    if (name in options.syncs if options.syncs else sync.enabled)
                    # records of a receiver arrive by themselves, under `syncengine serve`
                    and self.pipeline.sources[sync.source].role != "receiver"]
        self.prepare(selected, destinations=not options.dry_run)
        for sync in selected:
            name = sync.name
            result = report.syncs[name] = self.run_sync(sync, options)
            if result.stops_run:
                report.error = result.message
                break
        return report

    def run_sync(self, sync: SyncSpec, options: RunOptions, *,
                 replay: DeadLetterSource | None = None) -> SyncReport:
        """Run one sync; returns its report (status ``failed`` with a message when it stopped)."""
        report = SyncReport(sync.name)
        started = time.perf_counter()
        store = self.store
        stream_id = store.stream_id(self.pipeline.name, sync.name)
        cursor = options.since if options.since else (None if options.full_refresh else store.cursor(stream_id))
        run = RunInfo(self.run_id, self.started_at, cursor)
        kind = "plan" if options.dry_run else ("retry" if replay else "apply")
        run_row = store.begin_run(stream_id, self.run_id, kind, self.started_at.isoformat(timespec="seconds"))
        try:
            mapping = self.mapping(sync, run)
            ctx = self.stream_context(sync, mapping, run)
            source: SourceStream = replay or self.adapter(self.pipeline.sources[sync.source]).open_stream(
                sync.source_options, ctx)
            writer: DestinationStream
            if options.dry_run:
                writer = PlanWriter(report, options.sample_size, self.redactor)
            else:
                writer = self.adapter(self.pipeline.destinations[sync.destination]).open_stream(
                    sync.destination_options, ctx)
            batcher = _SyncBatcher(self, sync, stream_id, run_row, report, source, writer, options)
            batcher.run(mapping, cursor, replay is not None)
            if not options.dry_run:
                writer.finish()  # before the source's finish, which may archive what was read
            report.cursor = None if options.dry_run or replay else source.finish()
            status = "ok"
        except ConnectError as exc:
            # A server that cannot be reached or refuses us would fail every later sync the same
            # way: the run ends after this one, with one line, instead of repeating it per sync.
            status, report.message, report.stops_run = "failed", self.redactor.text(str(exc)), True
        except SyncEngineError as exc:
            status, report.message = "failed", self.redactor.text(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still close the run record, not leave it 'running'
            log.debug("unexpected error in sync %s", sync.name, exc_info=True)
            status = "failed"
            report.message = self.redactor.text(f"unexpected {type(exc).__name__}: {exc} "
                                                "(set SYNCENGINE_DEBUG=1 for the traceback)")
        report.status = status
        report.seconds = time.perf_counter() - started
        if not options.dry_run:
            store.finish_run(stream_id, run_row, report.counts, status=status, message=report.message,
                             seconds=report.seconds, cursor=report.cursor,
                             advance_cursor=status == "ok" and replay is None)
        return report


class _SyncBatcher:
    """The per-batch loop of one sync (kept apart so :class:`Engine` stays about orchestration)."""

    def __init__(self, engine: Engine, sync: SyncSpec, stream_id: int, run_row: int, report: SyncReport,
                 source: SourceStream, writer: DestinationStream, options: RunOptions) -> None:
        self.engine = engine
        self.sync = sync
        self.stream_id = stream_id
        self.run_row = run_row
        self.report = report
        self.counts = report.counts
        self.source = source
        self.writer = writer
        self.options = options
        self.store = engine.store
        self.dry = options.dry_run
        limit = getattr(writer, "max_batch", None)
        self.size = min(sync.batch_size, limit) if limit else sync.batch_size
        self.dead_keys = self.store.dead_keys(stream_id)
        self.unkeyed_errors = 0
        fields = sync.memo_fields
        self.memo: Callable[[dict[str, Any] | None], str] | None = (
            (lambda values: json.dumps({f: (values or {}).get(f) for f in fields}, default=str))
            if sync.delete_when else None)

    # --- the stream ------------------------------------------------------------------------------------

    def run(self, mapping: CompiledMapping | IdentityMapping, cursor: str | None, replaying: bool) -> None:
        store = self.store
        store.start_seen()
        known_before = store.known_count(self.stream_id)
        batch: dict[str, tuple[dict[str, Any], bytes, dict[str, Any]]] = {}
        passed: list[dict[str, Any]] = []
        failed: list[tuple[RecordError, dict[str, Any] | None]] = []
        counts = self.counts
        map_record = mapping.map
        size = self.size
        progress = self.options.progress
        read = 0
        for record in self.source.read(cursor):
            read += 1
            if record.__class__ is not dict and isinstance(record, RecordError):
                failed.append((record, None))
                continue
            try:
                mapped = map_record(record)
            except RecordError as exc:
                failed.append((exc, record))
                if exc.key is not None:
                    batch.pop(exc.key, None)  # a later failure of a key supersedes its earlier success
                mapped = None
            else:
                if mapped is None:
                    passed.append(record)
                    counts["filtered"] += 1
                else:
                    batch[mapped.key] = (mapped.values, record_hash(mapped.values), record)
            if len(batch) >= size or len(failed) >= size:
                counts["read"] = read
                self.flush(batch, passed, failed)
                batch, passed, failed = {}, [], []
                if progress:
                    progress(self.sync.name, read)
        counts["read"] = read
        self.flush(batch, passed, failed)
        if progress:
            progress(self.sync.name, read)
        if replaying:
            return
        # Missing keys mean deletes (and gone dead letters) only when the source delivered its whole set.
        whole = bool(getattr(self.source, "whole", cursor is None))
        self.leftover_dead_letters(mapping, whole)
        if not self.sync.deletes_missing:
            return
        if whole:
            self.delete_missing(known_before)
        else:
            self.report.errors.append("deletes skipped: the source read only part of its records this run "
                                      "(a cursor or no new file), so a missing key is not a delete")

    def flush(self, batch: dict[str, tuple[dict[str, Any], bytes, dict[str, Any]]],
              passed: list[dict[str, Any]], failed: list[tuple[RecordError, dict[str, Any] | None]]) -> None:
        """Detect changes in a batch, write them, then record the outcome in one state transaction."""
        if not batch and not failed and not passed:
            return
        # A failure superseded by a later success of the same key in this batch is no longer news.
        failed = [(error, record) for error, record in failed if error.key is None or error.key not in batch]
        counts = self.counts
        changed = self.store.changed(self.stream_id, [(key, entry[1]) for key, entry in batch.items()],
                                     everything=self.options.full_refresh)
        counts["unchanged"] += len(batch) - len(changed)
        changes: list[Change] = []
        for key, known in changed.items():
            if known.known and self.sync.mode == "insert":
                counts["skipped"] += 1
                continue
            changes.append(Change(UPDATE if known.known else CREATE, key, batch[key][0], known.remote_id))
        outcomes = self.write(changes)
        upserts: list[tuple[str, bytes, str | None, str | None]] = []
        memo = self.memo
        dead: list[DeadRow] = []
        rejected: set[str] = set()
        for i, change in enumerate(changes):
            outcome = OK if outcomes is None else outcomes[i]
            entry = batch[change.key]
            if outcome.ok:
                counts["creates" if change.action == CREATE else "updates"] += 1
                upserts.append((change.key, entry[1], outcome.remote_id, memo(change.values) if memo else None))
            else:
                rejected.add(change.key)
                error = RecordError(outcome.error or "rejected by the destination", key=change.key,
                                    field=outcome.field)
                dead.append(self.dead_row(error, change.action, entry[2], change.values))
        counts["errors"] += len(rejected)
        for error, record in failed:
            counts["errors"] += 1
            if error.key is None:
                self.unkeyed_errors += 1
            dead.append(self.dead_row(error, None if record is not None else UNREADABLE, record, None))
        self.note_errors(dead)
        if failed:
            # Failed keys (and the stand-in keys of records without one) were present in this run.
            self.store.mark_seen([row[0] for row in dead])
        if self.dry:
            return
        resolved = [k for k in batch if k in self.dead_keys and k not in rejected] if self.dead_keys else []
        self.store.commit_batch(self.stream_id, self.run_row, counts, upserts=upserts, dead=dead,
                                resolved=resolved)
        self.dead_keys.difference_update(resolved)
        self.dead_keys.update(row[0] for row in dead)
        delivered = [entry[2] for key, entry in batch.items() if key not in rejected]
        delivered.extend(passed)
        if delivered:
            self.source.acknowledge(delivered)

    def dead_row(self, error: RecordError, action: str | None, record: dict[str, Any] | None,
                 payload: dict[str, Any] | None) -> DeadRow:
        """A dead-letter row; the payload has secrets masked.

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

    def note_errors(self, dead: list[DeadRow]) -> None:
        """Keep the first errors for the run report."""
        for row in dead:
            if len(self.report.errors) < MAX_ERRORS_REPORTED:
                self.report.errors.append(row[4])

    def write(self, changes: list[Change]) -> Sequence[Outcome] | None:
        """Write with retries on transient errors; outcomes align with ``changes``."""
        if not changes:
            return None
        delays = self.options.retry_delays
        for attempt in range(len(delays) + 1):
            try:
                outcomes = self.writer.write(changes)
            except TransientError as exc:
                if attempt >= len(delays):
                    raise RunFailed(f"the destination kept failing: {exc}") from exc
                wait = max(delays[attempt], exc.retry_after or 0.0)
                log.warning("transient destination error (%s); retrying in %.1fs", self.engine.redactor.text(str(exc)),
                            wait)
                time.sleep(wait)
                continue
            if outcomes is not None and len(outcomes) != len(changes):
                raise RunFailed(f"the destination returned {len(outcomes)} outcomes for {len(changes)} changes")
            return outcomes
        raise AssertionError("unreachable")

    # --- after the stream ------------------------------------------------------------------------------------

    def leftover_dead_letters(self, mapping: CompiledMapping | IdentityMapping, whole: bool) -> None:
        """Retry dead letters the stream did not bring again; a whole snapshot drops those that are gone.

        A snapshot read only in part (a cursor, a file already processed) says nothing about a key it
        did not bring, so its dead letters are replayed from the stored record like a window's.
        An unreadable source row cannot be replayed: it stays listed until a whole read no longer has it.
        """
        if not self.dead_keys or self.dry:
            return
        unseen = [k for k in self.dead_keys if not self.store.was_seen(k)]
        if not unseen:
            return
        if self.sync.scope == "snapshot" and whole:
            self.store.drop_dead(self.stream_id, unseen)
            self.dead_keys.difference_update(unseen)
            return
        letters = [d for d in self.store.dead_letters(self.stream_id, unseen)
                   if d.record and d.action != UNREADABLE]
        saved = self.source
        self.source = DeadLetterSource([d.record for d in letters if d.record is not None])
        try:
            batch: dict[str, tuple[dict[str, Any], bytes, dict[str, Any]]] = {}
            failed: list[tuple[RecordError, dict[str, Any] | None]] = []
            for record in self.source.read(None):
                try:
                    mapped = mapping.map(record)
                except RecordError as exc:
                    failed.append((exc, record))
                    continue
                if mapped is not None:
                    batch[mapped.key] = (mapped.values, record_hash(mapped.values), record)
            self.flush(batch, [], failed)
        finally:
            self.source = saved

    def delete_missing(self, known_before: int) -> None:
        """Delete what the source no longer holds, unless the guard or an unkeyed failure forbids it.

        For a snapshot every missing key is a delete; for a window, only the missing keys whose last
        known values make ``delete_when`` true (the record should still be inside the window).
        """
        store = self.store
        if not store.collect_missing(self.stream_id):
            return
        if self.unkeyed_errors:
            self.report.errors.append(f"deletes skipped: {self.unkeyed_errors} record(s) failed before their key "
                                      "was known, so a missing key may not mean a delete")
            return
        condition = self.delete_condition()
        doomed = sum(len([r for r in rows if condition(r)]) for rows in store.missing(self.size))
        if not doomed:
            return
        share = doomed / known_before if known_before else 1.0
        if share > self.sync.max_delete_share and not self.options.force_deletes:
            raise DeleteGuardTripped(
                f"would delete {doomed} of {known_before} known records ({share:.0%}), more than the allowed "
                f"{self.sync.max_delete_share:.0%}; nothing was deleted. Check the source, then rerun with "
                "--force-deletes, or raise max_delete_share")
        for rows in store.missing(self.size):
            changes = [Change(DELETE, row[0], None, row[1]) for row in rows if condition(row)]
            if not changes:
                continue
            outcomes = self.write(changes)
            results = outcomes if outcomes is not None else [OK] * len(changes)
            ok = [c.key for c, o in zip(changes, results, strict=True) if o.ok]
            dead = [self.dead_row(RecordError(o.error or "delete rejected", key=c.key, field=o.field), DELETE,
                                  None, None) for c, o in zip(changes, results, strict=True) if not o.ok]
            self.counts["deletes"] += len(ok)
            self.counts["errors"] += len(dead)
            self.note_errors(dead)
            if not self.dry:
                store.commit_batch(self.stream_id, self.run_row, self.counts, deletes=ok, dead=dead,
                                   resolved=[k for k in ok if k in self.dead_keys])

    def delete_condition(self) -> Callable[[tuple[str, str | None, str | None]], bool]:
        """Whether a missing (key, remote id, memo) row is a delete."""
        when = self.sync.delete_when
        if when is None:
            return lambda row: True
        render = compile_native(self.engine.env, when[0])
        base = {"vars": self.engine.pipeline.vars, "run": RunInfo(self.engine.run_id, self.engine.started_at)}

        def condition(row: tuple[str, str | None, str | None]) -> bool:
            memo = json.loads(row[2]) if row[2] else None
            if memo is None:
                return False  # remembered before delete_when existed: keep rather than guess
            try:
                return bool(render({**base, "record": memo}))
            except Exception as exc:  # noqa: BLE001 - a condition that cannot decide keeps the record
                log.warning("delete_when could not be evaluated for key %s at %s: %s", row[0], when[1], exc)
                return False

        return condition
