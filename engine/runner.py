"""Run a pipeline's syncs: read, map, detect changes, write in batches, advance state.

Per sync and batch: source records are mapped (one compiled function per record) and hashed;
the state store returns which keys are new or changed; the destination writes those; once it
acknowledged them, one state transaction records their hashes, the batch's dead letters and the
run's progress; then the source is told which records were delivered. A snapshot sync with
``mode: mirror`` then deletes the keys it did not see, behind the mass-delete guard. The cursor
advances only when the whole sync succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from engine import arrow_read
from engine.config import Endpoint, Pipeline, SyncSpec, is_secret_path
from engine.errors import (
    ConfigError,
    ConnectError,
    Disconnected,
    RunFailed,
    Stopped,
    SyncEngineError,
)
from engine.interfaces import (
    Change,
    Destination,
    DestinationStream,
    PushSource,
    ReadsColumns,
    RunInfo,
    Source,
    SourceStream,
    StreamContext,
)
from engine.mapping import (
    AnyMapping,
    CompiledMapping,
    CompiledTemplates,
    GroupedMapping,
    IdentityMapping,
    compile_template,
)
from engine.purity import RawSkip, bare_field, mapping_purity
from engine.retry import Backoff
from engine.schema_errors import did_you_mean
from engine.state_store import StateStore
from engine.sync_loop import DeadLetterSource, SyncLoop
from engine.sync_state import SyncState, new_counts
from engine.templating import RedactingFilter, Redactor, is_template, make_environment
from engine.yaml_source import format_path

log = logging.getLogger("syncengine")



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
    retry: Backoff = field(default_factory=Backoff)
    """How a batch the destination answered with a transient error is retried."""
    strict: bool = False
    """Fail a sync that warned (a source glob that matched no file)."""
    group: str | None = None
    """Run only this group's syncs (``apply --group``)."""
    stop: threading.Event | None = None
    """Set to end the run after the batch in flight is committed (``serve`` on SIGTERM): its syncs end
    ``interrupted``, their cursors stay, the next run goes on from what was committed."""


@dataclass
class SyncReport:
    """What one sync did."""

    name: str
    status: str = "ok"
    counts: dict[str, int] = field(default_factory=new_counts)
    errors: list[str] = field(default_factory=list)
    message: str | None = None
    seconds: float = 0.0
    samples: dict[str, list[Any]] = field(default_factory=dict)
    cursor: str | None = None
    stops_run: bool = False
    warnings: list[str] = field(default_factory=list)
    """Things that are off but did not fail the sync (fail it with ``--strict``)."""
    notes: list[str] = field(default_factory=list)
    """What a user should know about the run (a previous run was interrupted, deletes were skipped)."""
    deletes_inferred: bool | None = None
    """Whether missing keys were checked for deletes (``None``: the sync does not delete)."""
    unknown: int = 0
    """Records sent in this run whose outcome is unknown (held until someone decides)."""
    pending: int = 0
    """Changes the destination accepted in this run without carrying them out yet (confirmed by a later run)."""
    unmapped: int = 0
    """Unchanged records recognised by their raw hash, without running the mapping (part of ``unchanged``)."""
    raw_skip: str | None = None
    """Why unchanged records were mapped anyway (``None`` when the sync skips them, or maps nothing)."""
    path: str = "row"
    """``arrow`` when pyarrow read (some of) the source's rows, else ``row``."""
    arrow_rows: int = 0
    """Rows pyarrow read."""
    columnar: dict[str, str | None] = field(default_factory=dict)
    """Per file, where the source says: ``None`` when Arrow read it whole, else why (some of) it was read by rows."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        out: dict[str, Any] = {"status": self.status, **self.counts, "seconds": round(self.seconds, 3),
                               "errors_detail": self.errors, "message": self.message, "cursor": self.cursor,
                               "warnings": self.warnings, "notes": self.notes,
                               "deletes_inferred": self.deletes_inferred, "unknown": self.unknown,
                               "pending": self.pending, "unmapped": self.unmapped, "raw_skip": self.raw_skip,
                               "path": self.path, "arrow_rows": self.arrow_rows, "columnar": self.columnar}
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
        """0 done, 1 done with record errors, 3 a sync failed (disconnected syncs skipped are no failure)."""
        if self.error or any(s.status in ("failed", "interrupted") for s in self.syncs.values()):
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


def _section(endpoint: Endpoint) -> str:
    """The pipeline section an endpoint is declared in."""
    return "destinations" if endpoint.role == "destination" else "sources"


def _render_failure(exc: Exception, secret: bool) -> str:
    """Why a config template failed, without ever showing a secret value."""
    message = getattr(exc, "message", None) or str(exc)
    if message.startswith("environment variable "):
        return message  # names the variable, never a value
    if secret:
        return "could not be rendered (the value is secret, so it is not shown)"
    return message


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
        env = pipeline.env()
        self.redactor = Redactor({v for n in pipeline.secret_env if (v := env.get(n))})
        self.env = make_environment(pipeline.base_dir, on_secret=self.redactor.add)
        # Every log line (the debug log of the HTTP and SSH libraries too) goes through the redactor.
        self._log_filter = RedactingFilter(self.redactor)
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._log_filter)
        self._open: dict[tuple[str, str], object] = {}
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
                cast("Source[object]", adapter).close()  # every role has close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the run's own result
                log.warning("closing an adapter failed: %s", self.redactor.text(str(exc)))
        self._open.clear()
        if self._store is not None:
            self._store.close()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._log_filter)

    # --- adapters ----------------------------------------------------------------------------------

    def render_config(self, endpoint: Endpoint) -> Any:
        """The endpoint's config with every template rendered, at any depth (secrets are remembered for redaction).

        Nested dicts, lists and dataclasses (``slots`` ones too) are rendered; a value under a
        secret field, or under an entry named like a secret (an ``Authorization`` header), is added
        to the redactor. A failure names the field's own line and, for an unset environment
        variable, the variable; a secret value is never shown.
        """
        context = {"vars": self.pipeline.vars, "env": self.pipeline.env()}
        secrets = endpoint.spec.secrets

        def render(value: Any, path: tuple[str | int, ...]) -> Any:
            if isinstance(value, str):
                if not is_template(value):
                    if is_secret_path(path, secrets):
                        self.redactor.add(value)
                    return value
                try:
                    rendered = compile_template(self.env, value, context=context, text=True)()
                except SyncEngineError:
                    raise
                except Exception as exc:
                    raise ConfigError(self.redactor.text(
                        f"{endpoint.locations.get(path, endpoint.location)}: "
                        f"{format_path((_section(endpoint), endpoint.name, *path))}: "
                        f"{_render_failure(exc, is_secret_path(path, secrets))}"
                    )) from None
                if is_secret_path(path, secrets):
                    self.redactor.add(rendered)
                return rendered
            if isinstance(value, dict):
                items = {k: render(v, (*path, k)) for k, v in value.items()}
                return value if all(items[k] is value[k] for k in value) else items
            if isinstance(value, (list, tuple)):
                rendered_items = [render(v, (*path, i)) for i, v in enumerate(value)]
                if all(a is b for a, b in zip(rendered_items, value, strict=True)):
                    return value
                return type(value)(rendered_items)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                changes = {}
                for f in dataclasses.fields(value):
                    before = getattr(value, f.name)
                    after = render(before, (*path, f.name))
                    if after is not before:
                        changes[f.name] = after
                return dataclasses.replace(value, **changes) if changes else value
            return value

        config = render(endpoint.config, ())
        self.redactor.add_credentials(getattr(config, "username", None), getattr(config, "password", None))
        return config

    def adapter(self, endpoint: Endpoint) -> object:
        """The adapter instance for an endpoint, opened on first use."""
        slot = (endpoint.role, endpoint.name)
        if slot not in self._open:
            config = self._configs.get(slot) or self.render_config(endpoint)
            self._open[slot] = endpoint.spec.factory(config, self.pipeline.base_dir)
        return self._open[slot]

    # The registry checked, at registration, that each adapter keeps its role's protocol for its own
    # options type; a sync's options were built from that same type. So the one unchecked step of
    # the boundary is here: pairing an adapter with options it was registered for.

    def source(self, sync: SyncSpec) -> Source[object]:
        """The pull source a sync reads, typed for its options."""
        endpoint = self.pipeline.sources[sync.source]
        assert isinstance(sync.source_options, endpoint.spec.options_type)
        return cast("Source[object]", self.adapter(endpoint))

    def destination(self, sync: SyncSpec) -> Destination[object]:
        """The destination a sync writes, typed for its options."""
        endpoint = self.pipeline.destinations[sync.destination]
        assert isinstance(sync.destination_options, endpoint.spec.options_type)
        return cast("Destination[object]", self.adapter(endpoint))

    def receiver(self, name: str) -> PushSource[object]:
        """A receiver source by name."""
        endpoint = self.pipeline.sources[name]
        assert endpoint.role == "receiver"
        return cast("PushSource[object]", self.adapter(endpoint))

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

    def mapping(self, sync: SyncSpec, run: RunInfo) -> AnyMapping:
        """The sync's mapping compiled for this run."""
        context = {"vars": self.pipeline.vars, "env": self.pipeline.env(), "run": run}
        if sync.fields is None:
            key_fn = compile_template(self.env, sync.key_template[0], context=context) if sync.key_template else None
            return IdentityMapping(sync.key_fields, key_fn)
        header = CompiledMapping(self.env, list(sync.fields), key_fields=sync.key_fields,
                                 key_template=sync.key_template, filter_template=sync.filter_template,
                                 context=context)
        group = sync.group
        if group is None:
            return header
        items = CompiledTemplates(self.env, group.fields, context=context)
        by = compile_template(self.env, group.by, context=context) if group.by_is_template else None
        return GroupedMapping(header, items, by=group.by, by_template=by, into=group.into, location=group.location)

    def raw_skip(self, sync: SyncSpec, run: RunInfo) -> tuple[RawSkip | None, str]:
        """Whether the sync's unchanged raw records may skip its mapping, and if not, why."""
        if sync.fields is None:
            return None, "the sync has no mapping"
        if sync.group is not None:
            return None, "the mapping groups rows"
        if len(sync.key_fields) != 1:
            return None, "the key is not a single field"
        key_field = next((f for f in sync.fields if f.path == (sync.key_fields[0],)), None)
        column = bare_field(key_field.source) if key_field is not None and key_field.is_template else None
        if column is None:
            return None, f"the key field '{sync.key_fields[0]}' is not a source column copied as it is"
        sources = [str(f.source) for f in sync.fields if f.is_template]
        sources.extend(t[0] for t in (sync.key_template, sync.filter_template) if t is not None)
        context = {"vars": self.pipeline.vars, "env": self.pipeline.env(), "run": run}
        verdict = mapping_purity(self.env, sources, context)
        if verdict.version is None:
            return None, f"the mapping is not pure ({verdict.reason})"
        return RawSkip(verdict.version, column), ""

    def stream_context(self, sync: SyncSpec, mapping: AnyMapping, run: RunInfo,
                       warn: Callable[[str], None] = lambda message: None,
                       note: Callable[[str], None] = lambda message: None) -> StreamContext:
        """What the sync's streams are told about it."""
        return StreamContext(self.pipeline.name, sync.name, self.pipeline.base_dir, sync.key_fields,
                             mapping.output_names, run, log.getChild(sync.name), self.pipeline.vars, warn=warn,
                             note=note, env=self.pipeline.env(),
                             state_dir=Path(self._state_path).resolve().parent if str(self._state_path) != ":memory:"
                             else None, delivered_keys=self.delivered_keys)

    def delivered_keys(self, sync: str) -> list[str]:
        """The keys a sync of this pipeline has delivered, in key order (read back by another sync's source)."""
        if sync not in self.pipeline.syncs:
            raise ConfigError(f"unknown sync '{sync}'" + did_you_mean(sync, list(self.pipeline.syncs)))
        stream = self.store.find_stream(self.pipeline.name, sync)
        return [] if stream is None else self.store.keys(stream)

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
        wanted = set(options.syncs) | set(self.pipeline.group_syncs(options.group) if options.group else ())
        selected = [sync for name, sync in self.pipeline.syncs.items()
                    if (name in wanted if wanted else sync.enabled)
                    # records of a receiver arrive by themselves, under `syncengine serve`
                    and self.pipeline.sources[sync.source].role != "receiver"]
        selected = self.connected(selected, explicit=bool(wanted), report=report, dry_run=options.dry_run)
        if selected and not options.dry_run and self._store_exists():
            busy = self.store.held_elsewhere(self.pipeline.name, [s.name for s in selected])
            if busy:
                pid = (busy[0].owner.split(":") + ["", ""])[1]
                raise RunFailed(f"sync '{busy[0].sync}' is being run by a scheduled job right now (serve, pid {pid}); "
                                "nothing ran. Two runs of one sync at once are never started: try again when it ends")
        self.prepare(selected, destinations=not options.dry_run)
        for sync in selected:
            name = sync.name
            result = report.syncs[name] = self.run_sync(sync, options)
            if result.stops_run:
                report.error = result.message
                break
        return report

    def _store_exists(self) -> bool:
        """Whether there is a state to ask (asking makes no file where there is none)."""
        return self._store is not None or str(self._state_path) == ":memory:" or Path(self._state_path).exists()

    def connected(self, selected: list[SyncSpec], *, explicit: bool, report: RunReport,
                  dry_run: bool) -> list[SyncSpec]:
        """The selected syncs that are not disconnected; asking for a disconnected one by name (or finding
        every selected sync disconnected) is refused with one line, nothing run."""
        if not self._store_exists():
            return selected  # no state yet: nothing was ever disconnected, and no file is made for asking
        off = self.store.disconnected(self.pipeline.name)
        if not off:
            return selected
        stopped = [s.name for s in selected if s.name in off]
        if stopped and (explicit or len(stopped) == len(selected)):
            first = stopped[0]
            where = f" --profile {self.pipeline.profile}" if self.pipeline.profile else ""
            raise Disconnected(
                f"{'syncs ' + ', '.join(stopped) + ' are' if len(stopped) > 1 else 'sync ' + first + ' is'} "
                f"disconnected (since {off[first]}); nothing ran. `syncengine connect {self.pipeline.path.name}"
                f"{where} --sync {first}` lets it run again")
        for name in stopped:
            report.syncs[name] = SyncReport(name, status="disconnected", message=f"disconnected since {off[name]}")
        return [s for s in selected if s.name not in off]

    def run_sync(self, sync: SyncSpec, options: RunOptions, *,
                 replay: DeadLetterSource | None = None) -> SyncReport:
        """Run one sync; returns its report (status ``failed`` with a message when it stopped)."""
        report = SyncReport(sync.name)
        started = time.perf_counter()
        state = SyncState(self.store, self.pipeline.name, sync.name, mode=sync.mode, key_fields=sync.key_fields,
                          memo_fields=sync.memo_fields, dry=options.dry_run)
        cursor = options.since if options.since else (None if options.full_refresh else state.cursor())
        reason = ("since" if options.since else "full-refresh" if options.full_refresh else
                  "cursor" if cursor is not None else "first")
        run = RunInfo(self.run_id, self.started_at, cursor)
        kind = "plan" if options.dry_run else ("retry" if replay else "apply")
        report.notes.extend(state.begin(kind, self.run_id, self.started_at.isoformat(timespec="seconds"),
                                        start=cursor, start_reason=None if replay else reason))
        if state.held and not replay:
            report.notes.append(f"{len(state.held)} record(s) are held: sent earlier without a known outcome, they "
                                "are not sent again until decided (syncengine dead-letters --sync "
                                f"{sync.name}, then --mark-sent KEY or --discard KEY)")

        def warn(message: str) -> None:
            text = self.redactor.text(message)
            report.warnings.append(text)
            log.warning("%s: %s", sync.name, text)

        try:
            mapping = self.mapping(sync, run)
            ctx = self.stream_context(sync, mapping, run, warn, lambda text: report.notes.append(
                self.redactor.text(text)))
            source: SourceStream = replay or self.source(sync).open_stream(sync.source_options, ctx)
            writer: DestinationStream
            if options.dry_run:
                writer = PlanWriter(report, options.sample_size, self.redactor)
            else:
                writer = self.destination(sync).open_stream(sync.destination_options, ctx)
            skip = None
            if replay is None and state.keeps_raw:
                skip, why = self.raw_skip(sync, run)
                report.raw_skip = why or None
            columnar = (skip is not None and sync.arrow and isinstance(source, ReadsColumns)
                        and arrow_read.available())
            try:
                SyncLoop(self, sync, state, report, writer, options).run(source, mapping, cursor,
                                                                         replaying=replay is not None, skip=skip,
                                                                         columnar=columnar)
            finally:
                if columnar:  # what was read how, however the sync ended
                    read_by = cast(ReadsColumns, source)
                    report.columnar = dict(read_by.columnar)
                    report.arrow_rows = read_by.arrow_rows
                    report.path = "arrow" if read_by.arrow_rows else "row"
            if not options.dry_run:
                writer.finish()  # before the source's finish, which may archive what was read
            if options.strict and report.warnings:
                raise RunFailed(f"--strict: {report.warnings[0]}")
            report.cursor = None if options.dry_run or replay else source.finish()
            status = "partial" if report.counts["errors"] else "ok"
            if report.pending:
                report.notes.append(f"{report.pending} change(s) were accepted but not yet carried out (pending); "
                                    "the next run checks them")
            if report.unknown:
                report.notes.append(f"{report.unknown} record(s) were sent without a known outcome and are held "
                                    f"(syncengine dead-letters --sync {sync.name})")
        except Stopped as exc:
            status, report.message, report.stops_run = "interrupted", self.redactor.text(str(exc)), True
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
        state.finish(report.counts, status=status, message=report.message, seconds=report.seconds,
                     cursor=report.cursor, advance_cursor=status not in ("failed", "interrupted") and replay is None)
        return report


__all__ = ["DeadLetterSource", "Engine", "PlanWriter", "RunOptions", "RunReport", "SyncReport"]
