"""The ``syncengine`` command: parsing and printing over :mod:`engine.api`, where every verb's behaviour lives.

Exit codes: 0 done, 1 done with record errors, 2 invalid pipeline or command line, 3 run failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from engine import api
from engine.adapters import register_builtins
from engine.config import Pipeline, load_pipeline, load_schema
from engine.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    ConfigError,
    Disconnected,
    PipelineInvalid,
    SyncEngineError,
)
from engine.logs import JsonLinesHandler
from engine.logs import configure as configure_logging
from engine.registry import REGISTRY, ROLES
from engine.runner import Engine, RunOptions, RunReport
from engine.schedule import upcoming
from engine.schema_errors import did_you_mean
from engine.schema_export import editor_schema


class _Commands(TyperGroup):
    """The verbs; their ``invoke`` is the one place where an error becomes a message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        """Run the verb; an engine error exits with its class's ``exit_code`` (a Ctrl-C and a bug exit 3)."""
        try:
            return super().invoke(ctx)
        except SyncEngineError as exc:
            raise _fail(exc) from None
        except (KeyboardInterrupt, typer.Abort):  # Abort: Ctrl-C or end of input at a prompt
            _error("interrupted; what was acknowledged is kept", exit_code=EXIT_FAILED)
            raise typer.Exit(EXIT_FAILED) from None
        except (typer.Exit, typer.TyperException):
            raise  # typer's own: usage errors (exit 2), --help, explicit exits
        except Exception as exc:
            # A bug: exit 3, not Python's 1 (which means "record errors" here). The message of an unexpected
            # error may hold anything, so it is shown only in the debug log, which masks secrets.
            logging.getLogger("syncengine").debug("unexpected error", exc_info=True)
            _error(f"unexpected {type(exc).__name__} (a bug; --log-level debug shows the traceback)",
                   exit_code=EXIT_FAILED)
            raise typer.Exit(EXIT_FAILED) from None


app = typer.Typer(cls=_Commands, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative, change-tracking sync: YAML pipelines, Jinja mappings, pluggable adapters.")
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PipelineArg = Annotated[Path, typer.Argument(help="Pipeline file.", show_default=False)]
StateOpt = Annotated[str | None, typer.Option("--state", help="State database (default: the pipeline's state.path).")]
SyncOpt = Annotated[list[str] | None, typer.Option("--sync", "-s", help="Only this sync (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
VarOpt = Annotated[list[str] | None, typer.Option(
    "--var", metavar="NAME=VALUE", show_default=False,
    help="Set or override a pipeline var (repeatable); the value is JSON if it parses as JSON, else text.")]
ProfileOpt = Annotated[str | None, typer.Option(
    "--profile", "-p", show_default=False,
    help="Run as this profile of the pipeline (profiles.yml): its vars, environment names and own state.")]
AllProfilesOpt = Annotated[bool, typer.Option("--all-profiles", help="Every enabled profile, one after the other.")]
GroupOpt = Annotated[str | None, typer.Option("--group", "-g", show_default=False,
                                              help="Only this group's syncs (the pipeline's `groups:`).")]
EnvFileOpt = Annotated[Path | None, typer.Option(
    "--env-file", metavar="FILE", show_default=False,
    help="Read environment variables from a dotenv file for this run (variables already set win).")]


class LogLevel(StrEnum):
    """``--log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    """``--log-format``."""

    text = "text"
    json = "json"


def _show_version(value: bool) -> None:
    if value:
        out.print(f"syncengine {api.engine_version()}", markup=False)
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(
        version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                              help="Print the version and exit.")] = False,
        log_level: Annotated[LogLevel | None, typer.Option(
            "--log-level", envvar="SYNCENGINE_LOG_LEVEL", case_sensitive=False, show_default=False,
            help="Log level (default: warning; info with --log-format json; debug with SYNCENGINE_DEBUG=1).")] = None,
        log_format: Annotated[LogFormat, typer.Option(
            "--log-format", envvar="SYNCENGINE_LOG_FORMAT", case_sensitive=False,
            help="Log lines on stderr as text, or as one JSON object a line.")] = LogFormat.text) -> None:
    """Declarative, change-tracking sync: YAML pipelines, Jinja mappings, pluggable adapters."""
    if log_level is None:
        # A JSON log is read by a collector, which wants each sync's counts line (info).
        level = ("debug" if os.environ.get("SYNCENGINE_DEBUG") else
                 "info" if log_format == LogFormat.json else "warning")
    else:
        level = log_level.value
    configure_logging(level, log_format.value)


def _vars(items: list[str] | None) -> dict[str, Any]:
    """``--var`` values as vars (:func:`engine.api.parse_vars`)."""
    return api.parse_vars(items or [])


def _load(path: Path) -> Pipeline:
    register_builtins(REGISTRY)
    return load_pipeline(path, REGISTRY, display=str(path))


def _json_logs() -> bool:
    return any(isinstance(handler, JsonLinesHandler) for handler in logging.getLogger().handlers)


def _error(message: str, **fields: Any) -> None:
    """``error: message`` on stderr; under ``--log-format json`` a JSON log line instead, so stderr stays JSON."""
    if _json_logs():
        logging.getLogger("syncengine.cli").error(message, extra=fields)
    else:
        err.print(f"error: {message}", markup=False)


def _fail(exc: SyncEngineError) -> typer.Exit:
    """The one error handler: print what went wrong, return the exit."""
    if isinstance(exc, PipelineInvalid):
        summary = f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} found; nothing was run."
        if _json_logs():
            logging.getLogger("syncengine.cli").error(summary, extra={"problems": [str(p) for p in exc.problems],
                                                                      "exit_code": exc.exit_code})
        else:
            for problem in exc.problems:
                err.print(str(problem), markup=False)
            err.print(summary, markup=False)
    else:
        _error(str(exc), exit_code=exc.exit_code)
    return typer.Exit(exc.exit_code)


class _Progress:
    """A live progress bar per sync (records read, records/s) on a terminal; silent otherwise."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, sync: str, read: int) -> None:
        if not self.live:
            return
        if self.bar is None:
            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed:,.0f} records"), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), console=err, transient=False)
            self.bar.start()
        if sync not in self.tasks:
            self.tasks[sync] = self.bar.add_task(sync, total=None, rate="", started_at=time.perf_counter())
        task = self.tasks[sync]
        started = self.bar.tasks[task].fields["started_at"]
        elapsed = time.perf_counter() - started
        rate = f"{read / elapsed:,.0f} records/s" if elapsed > 0 else ""
        self.bar.update(task, completed=read, rate=rate)

    def stop(self) -> None:
        """Leave the bars as they ended."""
        if self.bar is not None:
            self.bar.stop()


def _summary(report: RunReport, as_json: bool) -> None:
    if as_json:
        out.print(json.dumps(report.to_dict(), default=str, indent=2), markup=False)
        return
    if report.error:
        _error(report.error, exit_code=report.exit_code)
        return
    title = f"{'plan' if report.dry_run else 'apply'} {report.pipeline} (run {report.run_id})"
    table = Table(title=title, title_justify="left")
    for column in ("sync", "status", "read", "creates", "updates", "deletes", "unchanged", "filtered", "errors",
                   "records/s"):
        table.add_column(column, justify="left" if column in ("sync", "status") else "right")
    for name, sync in report.syncs.items():
        c = sync.counts
        rate = f"{c['read'] / sync.seconds:,.0f}" if sync.seconds > 0 else "-"
        table.add_row(name, sync.status, *(f"{c[k]:,}" for k in ("read", "creates", "updates", "deletes",
                                                                 "unchanged", "filtered", "errors")), rate)
    out.print(table)
    for name, sync in report.syncs.items():
        c = sync.counts
        unmapped = f"; {sync.unmapped:,} unchanged without mapping (raw record unchanged)" if sync.unmapped else ""
        out.print(f"{name}: {c['creates']} creates, {c['updates']} updates, {c['deletes']} deletes, "
                  f"{c['errors']} errors{unmapped}", markup=False)
        if report.dry_run and sync.raw_skip:
            out.print(f"{name}: note: every record is mapped, changed or not: {sync.raw_skip}", markup=False)
        if sync.arrow_rows:
            out.print(f"{name}: read with Arrow (columnar): {sync.arrow_rows:,} rows", markup=False)
        for file, why in sync.columnar.items() if report.dry_run else ():
            if why is not None:  # plan says why a file is not read with Arrow (apply's --json says it too)
                out.print(f"{name}: note: {file} read row by row: {why}", markup=False)
        if sync.message:
            out.print(f"{name}: {sync.status}: {sync.message}", markup=False)
        for line in sync.warnings:
            out.print(f"{name}: warning: {line}", markup=False)
        for line in sync.notes:
            out.print(f"{name}: note: {line}", markup=False)
        for line in sync.errors:
            out.print(f"{name}: record error: {line}", markup=False)
        for action, samples in sync.samples.items():
            for sample in samples:
                out.print(f"{name}: sample {action} {json.dumps(sample, default=str, ensure_ascii=False)}",
                          markup=False)


def _ref(pipeline: Path, var: list[str] | None, profile: str | None) -> api.PipelineRef:
    """The pipeline as a verb works on it: the file, or a profile's instance of it."""
    return api.load(pipeline, variables=_vars(var), profile=profile) if profile else pipeline


def _profiles(pipeline: Path, profile: str | None, all_profiles: bool) -> list[str | None]:
    """The profiles a verb runs for: one, every enabled one, or none (the pipeline itself)."""
    if all_profiles and profile:
        raise ConfigError("use --profile or --all-profiles, not both")
    return list(api.profile_names(pipeline)) if all_profiles else [profile]


def _run(pipeline: Path, options: RunOptions, state: str | None, as_json: bool, var: list[str] | None = None,
         env_file: Path | None = None, profiles: list[str | None] | None = None) -> None:
    progress = options.progress
    worst = 0
    try:
        many = len(profiles or []) > 1
        reports: list[dict[str, Any]] = []
        for profile in profiles or [None]:
            ref = _ref(pipeline, var, profile)
            try:
                report = api.run(ref, options, state=state, variables=None if profile else _vars(var),
                                 env_file=env_file)
            except Disconnected as exc:
                if not many:
                    raise
                # One tenant switched off is no failure: said on stderr, so a --json stdout stays one document.
                err.print(f"{profile}: skipped: {exc}", markup=False)
                if as_json:
                    reports.append({"profile": profile, "skipped": str(exc)})
                continue
            worst = max(worst, report.exit_code)
            if as_json and many:
                reports.append({"profile": profile, **report.to_dict()})
                continue
            _summary(report, as_json)
        if as_json and many:
            out.print(json.dumps(reports, default=str, indent=2), markup=False)
    finally:
        if isinstance(progress, _Progress):
            progress.stop()
    raise typer.Exit(worst)


@app.command()
def validate(pipeline: PipelineArg, var: VarOpt = None, env_file: EnvFileOpt = None) -> None:
    """Check a pipeline: schema, adapter configs, mappings and templates. Nothing is run."""
    result = api.validate(pipeline, variables=_vars(var), env_file=env_file)
    count = len(result.syncs)
    out.print(f"{pipeline}: valid ({count} sync{'s' if count != 1 else ''}: {', '.join(result.syncs)})", markup=False)


@app.command()
def plan(pipeline: PipelineArg, sync: SyncOpt = None, full_refresh: Annotated[bool, typer.Option(
        "--full-refresh", help="Plan as if resending everything.")] = False,
         since: Annotated[str | None, typer.Option(help="Override the cursor for this run.")] = None,
         sample: Annotated[int, typer.Option(help="Rendered records to show per action.")] = 3,
         group: GroupOpt = None, profile: ProfileOpt = None, all_profiles: AllProfilesOpt = False,
         state: StateOpt = None, as_json: JsonOpt = False, var: VarOpt = None, env_file: EnvFileOpt = None) -> None:
    """Dry run through the same path as apply: counts and sample records; nothing is written anywhere."""
    _run(pipeline, RunOptions(syncs=tuple(sync or ()), dry_run=True, full_refresh=full_refresh, since=since,
                              sample_size=sample, group=group), state, as_json, var, env_file,
         _profiles(pipeline, profile, all_profiles))


@app.command()
def apply(pipeline: PipelineArg, sync: SyncOpt = None,
          full_refresh: Annotated[bool, typer.Option(
              "--full-refresh", help="Resend every record (the destination is not wiped).")] = False,
          since: Annotated[str | None, typer.Option(help="Override the cursor (watermark) for this run.")] = None,
          force_deletes: Annotated[bool, typer.Option("--force-deletes",
                                                      help="Allow deletes beyond max_delete_share.")] = False,
          strict: Annotated[bool, typer.Option("--strict", help="Fail a sync that warns (a source glob that "
                                                                "matches no file).")] = False,
          group: GroupOpt = None, profile: ProfileOpt = None, all_profiles: AllProfilesOpt = False,
          state: StateOpt = None, as_json: JsonOpt = False, var: VarOpt = None, env_file: EnvFileOpt = None) -> None:
    """Run the syncs: send creates, updates and deletes since the last good run."""
    progress = None if as_json or _json_logs() else _Progress()  # bars would break a JSON log on stderr
    _run(pipeline, RunOptions(syncs=tuple(sync or ()), full_refresh=full_refresh, since=since,
                              force_deletes=force_deletes, progress=progress, strict=strict, group=group), state,
         as_json, var, env_file, _profiles(pipeline, profile, all_profiles))


@app.command()
def retry(pipeline: PipelineArg, sync: Annotated[str, typer.Option("--sync", "-s", help="The sync.")],
          key: Annotated[list[str] | None, typer.Option("--key", "-k", help="Only this key (repeatable).")] = None,
          profile: ProfileOpt = None, state: StateOpt = None, as_json: JsonOpt = False, var: VarOpt = None,
          env_file: EnvFileOpt = None) -> None:
    """Retry a sync's dead letters now (all, or the given keys)."""
    report = api.retry(_ref(pipeline, var, profile), sync, keys=key, state=state,
                       variables=None if profile else _vars(var), env_file=env_file)
    _summary(report, as_json)
    raise typer.Exit(report.exit_code)


@app.command("dead-letters")
def dead_letters(pipeline: PipelineArg, sync: SyncOpt = None,
                 discard: Annotated[list[str] | None, typer.Option(
                     "--discard", metavar="KEY", show_default=False,
                     help="Forget the dead letter with this key instead of listing (repeatable; needs one --sync). "
                          "A held record (outcome unknown) is then sent again by the next run.")
                 ] = None,
                 mark_sent: Annotated[list[str] | None, typer.Option(
                     "--mark-sent", metavar="KEY", show_default=False,
                     help="A held record (outcome unknown) was carried out: record it as sent, never send it again "
                          "(repeatable; needs one --sync).")
                 ] = None,
                 profile: ProfileOpt = None, state: StateOpt = None, as_json: JsonOpt = False,
                 var: VarOpt = None) -> None:
    """List the records that failed or are held (outcome unknown), or decide about some (--discard, --mark-sent)."""
    if discard or mark_sent:
        if discard and mark_sent:
            raise ConfigError("use --discard or --mark-sent, not both at once")
        if len(sync or []) != 1:
            flag = "--discard" if discard else "--mark-sent"
            raise ConfigError(f"{flag} needs exactly one --sync: the sync the keys belong to")
        name = (sync or [""])[0]
        sent = bool(mark_sent)
        count = api.discard_dead_letters(_ref(pipeline, var, profile), name, mark_sent or discard or [], state=state,
                                         variables=None if profile else _vars(var), sent=sent)
        verb = "marked as sent" if sent else "discarded"
        if as_json:
            out.print(json.dumps({"sync": name, "marked_sent" if sent else "discarded": count}), markup=False)
        else:
            out.print(f"{name}: {verb} {count} dead letter{'s' if count != 1 else ''}", markup=False)
        return
    rows = [d.to_dict() for d in api.dead_letters(_ref(pipeline, var, profile), syncs=sync or (), state=state,
                                                  variables=None if profile else _vars(var))]
    if as_json:
        out.print(json.dumps(rows, indent=2, default=str), markup=False)
        return
    if not rows:
        out.print("no dead letters", markup=False)
    for row in rows:
        held = "[outcome unknown, held] " if row["state"] == "unknown" else ""
        out.print(f"{row['sync']}: {row['key']}: {held}{row['error']} (attempts {row['attempts']}, "
                  f"last {row['last_failed_at']})", markup=False)


_check_syncs = api.check_syncs
"""An unknown ``--sync`` is a configuration error (exit 2) under every verb."""


@app.command()
def status(pipeline: PipelineArg, profile: ProfileOpt = None, all_profiles: AllProfilesOpt = False,
           state: StateOpt = None, as_json: JsonOpt = False, var: VarOpt = None) -> None:
    """Per sync: records known, cursor, dead letters, pending and held records, connected, and the last run."""
    everything = []
    for name in _profiles(pipeline, profile, all_profiles):
        loaded = api.load(pipeline, variables=_vars(var), profile=name)
        result = api.status(loaded, state=state)
        if as_json:
            everything += [{"pipeline": loaded.name, "profile": name, **row.to_dict()} for row in result]
            continue
        table = Table(title=f"status {loaded.name}", title_justify="left")
        for column in ("sync", "known", "cursor", "dead letters", "pending", "last run", "result"):
            table.add_column(column)
        for row in result:
            run = row.last_run or {}
            dead = f"{row.dead_letters} ({row.held} held)" if row.held else str(row.dead_letters)
            outcome = f"disconnected since {row.disconnected}" if row.disconnected else str(run.get("status", "-"))
            table.add_row(row.sync, str(row.known), str(row.cursor or "-"), dead, str(row.pending),
                          str(run.get("started_at", "never")), outcome)
        out.print(table)
    if as_json:
        out.print(json.dumps(everything if all_profiles or profile else [{k: v for k, v in r.items() if k not in (
            "pipeline", "profile")} for r in everything], indent=2, default=str), markup=False)


def _connect(pipeline: Path, connected: bool, sync: list[str] | None, group: str | None, profile: str | None,
             all_profiles: bool, state: str | None, var: list[str] | None) -> None:
    verb = "connected" if connected else "disconnected"
    for name in _profiles(pipeline, profile, all_profiles):
        loaded = api.load(pipeline, variables=_vars(var), profile=name)
        changed = api.set_connected(loaded, connected=connected, syncs=sync or (), group=group, state=state)
        what = ", ".join(changed) if changed else f"nothing (already {verb})"
        out.print(f"{loaded.name}: {verb} {what}", markup=False)


@app.command()
def disconnect(pipeline: PipelineArg, sync: SyncOpt = None, group: GroupOpt = None, profile: ProfileOpt = None,
               all_profiles: AllProfilesOpt = False, state: StateOpt = None, var: VarOpt = None) -> None:
    """Stop syncs from running (every sync, a group's, or those named): the scheduler skips them and apply refuses
    them (exit 5) until `connect`. Their state stays as it is."""
    _connect(pipeline, False, sync, group, profile, all_profiles, state, var)


@app.command()
def connect(pipeline: PipelineArg, sync: SyncOpt = None, group: GroupOpt = None, profile: ProfileOpt = None,
            all_profiles: AllProfilesOpt = False, state: StateOpt = None, var: VarOpt = None) -> None:
    """Let disconnected syncs run again (every sync, a group's, or those named)."""
    _connect(pipeline, True, sync, group, profile, all_profiles, state, var)


@app.command()
def history(pipeline: PipelineArg, limit: Annotated[int, typer.Option(help="How many runs.")] = 20,
            profile: ProfileOpt = None, state: StateOpt = None, as_json: JsonOpt = False,
            var: VarOpt = None) -> None:
    """The latest runs: counts per action, errors, duration, and where each read started and why."""
    loaded = api.load(pipeline, variables=_vars(var), profile=profile)
    rows = api.history(loaded, limit=limit, state=state)
    if as_json:
        out.print(json.dumps(rows, indent=2, default=str), markup=False)
        return
    table = Table(title=f"history {loaded.name}", title_justify="left")
    for column in ("run", "sync", "kind", "started", "read from", "status", "creates", "updates", "deletes",
                   "errors", "seconds"):
        table.add_column(column)
    for r in rows:
        start = f"{r.get('start') or '-'} ({r['start_reason']})" if r.get("start_reason") else "-"
        table.add_row(r["run_id"], r["sync"], r["kind"], r["started_at"], start, r["status"], str(r["creates"]),
                      str(r["updates"]), str(r["deletes"]), str(r["errors"]),
                      f"{r['seconds']:.2f}" if r["seconds"] is not None else "-")
    out.print(table)


@app.command()
def reset(pipeline: PipelineArg,
          sync: Annotated[list[str], typer.Option("--sync", "-s", show_default=False,
                                                  help="The sync whose state to forget (repeatable).")],
          yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
          profile: ProfileOpt = None, state: StateOpt = None, as_json: JsonOpt = False, var: VarOpt = None) -> None:
    """Forget syncs' state (known records, cursor, dead letters): the next run treats every record as new.

    The run history stays, with a 'reset' entry. Nothing is written to any destination.
    """
    loaded = api.load(pipeline, variables=_vars(var), profile=profile)
    api.check_syncs(loaded, sync)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("reset asks for confirmation on a terminal; without one, pass --yes")
        for row in api.status(loaded, state=state):
            if row.sync in sync:
                out.print(f"{row.sync}: {row.known} known records, cursor {row.cursor or '-'}, "
                          f"{row.dead_letters} dead letters", markup=False)
        if not typer.confirm("Forget this state? The next run treats every record as new", default=False):
            out.print("nothing was reset", markup=False)
            return
    results = api.reset(loaded, sync, state=state)
    if as_json:
        out.print(json.dumps([r.to_dict() for r in results], indent=2), markup=False)
        return
    for r in results:
        out.print(f"{r.sync}: forgot {r.records} record{'s' if r.records != 1 else ''}, {r.dead_letters} dead "
                  f"letter{'s' if r.dead_letters != 1 else ''} and the cursor ({r.cursor or '-'})", markup=False)


@app.command()
def schema(mapping: Annotated[bool, typer.Option("--mapping", help="The mapping schema instead.")] = False) -> None:
    """Print the JSON Schema of pipeline files (with every adapter's options) for editors."""
    register_builtins(REGISTRY)
    document = load_schema("mapping.schema.json") if mapping else editor_schema(REGISTRY)
    out.print(json.dumps(document, indent=2), markup=False)


@app.command()
def adapters(name: Annotated[str | None, typer.Argument(help="Show one adapter's configuration.")] = None) -> None:
    """List the registered adapters, or show one's configuration."""
    register_builtins(REGISTRY)
    if name is None:
        table = Table(title="adapters", title_justify="left")
        table.add_column("name")
        table.add_column("role")
        table.add_column("what it does")
        for role in ROLES:
            for adapter_name in REGISTRY.names(role):
                spec = REGISTRY.adapters[role][adapter_name]
                table.add_row(adapter_name, role, spec.summary)
        out.print(table)
        return
    specs = [REGISTRY.adapters[role][name] for role in ROLES if name in REGISTRY.adapters[role]]
    if not specs:
        known = sorted({n for role in ROLES for n in REGISTRY.names(role)})
        err.print(f"error: no adapter named '{name}'{did_you_mean(name, known)}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    for spec in specs:
        out.print(f"{spec.name} ({spec.role}): {spec.summary}", markup=False)
        for title, block in (("configuration", spec.config_schema), ("per-sync options", spec.options_schema)):
            props = block.get("properties", {})
            if not props:
                continue
            out.print(f"  {title}:", markup=False)
            required = set(block.get("required", []))
            for prop, info in props.items():
                flags = ", ".join(f for f in ("required" if prop in required else "",
                                             "secret" if info.get("writeOnly") else "") if f)
                default = f" [default: {info['default']!r}]" if "default" in info else ""
                out.print(f"    {prop}{f' ({flags})' if flags else ''}: {info.get('description', '')}{default}",
                          markup=False)


@app.command()
def serve(pipeline: PipelineArg,
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8080,
          no_schedules: Annotated[bool, typer.Option("--no-schedules", help="Serve the receivers only; run no "
                                                                              "schedule.")] = False,
          max_parallel: Annotated[int, typer.Option("--max-parallel", min=1, metavar="N",
                                                    help="Scheduled jobs running at once at most, across "
                                                         "profiles.")] = 4,
          control: Annotated[bool, typer.Option(
              "--control", help="Also serve the Autofy-compatible control API (/api/v1/: company, profiles, "
                                "schedule, runsync, disconnect); SYNCENGINE_CONTROL_TOKEN and SYNCENGINE_CONTROL_KEY "
                                "from the environment.")] = False,
          templates: Annotated[Path | None, typer.Option(
              "--templates", help="--control: the folder of pipeline files a SyncProfileTemplate names (default: "
                                  "the pipeline's folder).")] = None,
          control_port: Annotated[int, typer.Option("--control-port", help="--control: its port (0 picks a free "
                                                                           "one).")] = 0,
          state: StateOpt = None, var: VarOpt = None, env_file: EnvFileOpt = None) -> None:
    """Run the pipeline's receivers and its schedules (every enabled profile's) until SIGTERM or SIGINT.

    Records pushed to a receiver are mapped and written as they arrive. Each schedule runs its syncs when
    due (`syncengine schedule` lists when), one run of a sync at a time across processes; a run missed
    while serve was down runs once at start. On SIGTERM, runs in flight commit their batch and end
    interrupted, and serve exits 0.
    """
    from engine.push import serve_pipeline

    variables = _vars(var)
    with api.environment(env_file):
        loaded = api.load(pipeline, variables=variables)
        code = serve_pipeline(loaded, host=host, port=port, state_path=state, schedules=not no_schedules,
                              max_parallel=max_parallel, variables=variables, control=control,
                              templates_dir=templates, control_port=control_port)
    raise typer.Exit(code)


def _moment(text: str | None) -> datetime:
    """``--from``: an ISO 8601 moment (UTC when it names no offset), or now."""
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--from {text!r}: expected an ISO 8601 moment such as 2026-03-08T00:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@app.command("schedule")
def schedule_runs(pipeline: PipelineArg,
                  count: Annotated[int, typer.Option("--count", "-n", min=0, max=1000,
                                                     help="Run times to list per schedule.")] = 5,
                  start: Annotated[str | None, typer.Option(
                      "--from", metavar="MOMENT", show_default=False,
                      help="List the runs after this moment (ISO 8601; UTC unless it has an offset) instead of "
                           "after now.")] = None,
                  as_json: JsonOpt = False, var: VarOpt = None) -> None:
    """The schedules `serve` runs: per profile (or the pipeline) and job, the schedule in words, its syncs, and
    the next run times in its time zone and in UTC. Nothing is run; the state is not read."""
    from engine.scheduler import pipeline_jobs, why_empty

    moment = _moment(start)
    loaded = api.load(pipeline, variables=_vars(var))
    jobs = pipeline_jobs(loaded, variables=_vars(var))
    listed = []
    runs_of = [upcoming(job.schedule, moment, count) if job.syncs else [] for job in jobs]
    for job, runs in zip(jobs, runs_of, strict=True):
        listed.append({"pipeline": job.pipeline.name, "profile": job.profile, "group": job.group,
                       "syncs": list(job.syncs), "schedule": job.schedule.describe(),
                       "timezone": job.schedule.zone_name, "spec": job.spec, "location": job.location,
                       "note": None if job.syncs else why_empty(job),
                       "next": [{"local": run.astimezone(job.schedule.zone).isoformat(), "utc": run.isoformat()}
                                for run in runs]})
    if as_json:
        out.print(json.dumps(listed, indent=2, default=str), markup=False)
        return
    if not jobs:
        out.print(f"{pipeline}: no schedules; give the pipeline, a group or a profile a `schedule:` "
                  "(every: 30 minutes, every: 1 day at \"4:00 AM\", cron: ...)", markup=False)
        return
    current = None
    for job, item, runs in zip(jobs, listed, runs_of, strict=True):
        if job.pipeline.name != current:
            current = job.pipeline.name
            out.print(current, markup=False)
        what = f"group {job.group}" if job.group else "pipeline schedule"
        out.print(f"  {what}: {item['schedule']}; syncs: {', '.join(job.syncs) or '-'}", markup=False)
        if not job.syncs:
            out.print(f"    {item['note']}", markup=False)
        for run in runs:
            local = run.astimezone(job.schedule.zone)
            out.print(f"    {local:%Y-%m-%d %H:%M:%S %Z}  ({run:%Y-%m-%d %H:%M:%S} UTC)", markup=False)


@app.command()
def init(template: Annotated[str | None, typer.Argument(help="Template: files, sqlite, sftp or http; none lists "
                                                              "them.", show_default=False)] = None,
         directory: Annotated[Path, typer.Option("--dir", help="Folder to write into (made if missing).")] = Path("."),
         force: Annotated[bool, typer.Option("--force", help="Overwrite files that already exist.")] = False) -> None:
    """Scaffold a pipeline, its mapping, mapping tests and a README from a shipped template."""
    from engine.scaffold import TEMPLATES, scaffold

    if template is None:
        table = Table(title="templates (syncengine init TEMPLATE [--dir DIR])", title_justify="left")
        table.add_column("template")
        table.add_column("what it makes")
        for item in TEMPLATES.values():
            table.add_row(item.name, item.summary)
        out.print(table)
        return
    try:
        written = scaffold(template, directory, force=force)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    for path in written:
        out.print(f"wrote {path}", markup=False)
    pipeline = directory / "pipeline.yml"
    needs = TEMPLATES[template].env
    if needs:
        out.print(f"next: set {', '.join(needs)} (see {directory / 'README.md'}), then", markup=False)
    out.print(f"next: syncengine validate {pipeline} && syncengine test {pipeline} && syncengine apply {pipeline}",
              markup=False)


@app.command("test")
def test_mappings(pipeline: PipelineArg,
                  fixtures: Annotated[list[Path] | None, typer.Argument(
                      help="Fixture files (default: *.test.yml beside the pipeline and under its tests/ folder).",
                      show_default=False)] = None,
                  as_json: JsonOpt = False) -> None:
    """Unit-test the mappings with fixtures: inputs and the records they must give; nothing is read or written."""
    from engine.mapping_tests import find_fixtures, load_suites, report_data, report_lines, run_suites

    try:
        loaded = _load(pipeline)
        files = list(fixtures) if fixtures else find_fixtures(pipeline)
        if not files:
            raise ConfigError(f"no fixtures: no *.test.yml beside {pipeline} or under its tests/ folder")
        suites = load_suites(files, loaded)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    results, redactor = run_suites(loaded, suites)
    if as_json:
        out.print(json.dumps(report_data(results, redactor), indent=2, default=str, ensure_ascii=False), markup=False)
    else:
        for line in report_lines(results, redactor):
            out.print(line, markup=False)
    raise typer.Exit(EXIT_OK if all(r.passed for r in results) else 1)


@app.command()
def discover(pipeline: PipelineArg, as_json: JsonOpt = False,
             no_cache: Annotated[bool, typer.Option("--no-cache", help="Print only; do not write the cache that "
                                                                       "validate reads.")] = False) -> None:
    """Ask the sources and destinations that can describe their data for their streams and fields, and cache it."""
    from engine.discovery import cache_path, discover_pipeline, summary_lines, write_cache

    try:
        loaded = _load(pipeline)
        engine = Engine(loaded, dry_run=True)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    try:
        result = discover_pipeline(loaded, engine)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    finally:
        engine.close()
    cache = None if no_cache else cache_path(loaded.state_path)
    if cache is not None:
        write_cache(cache, loaded.name, result.document)
    if as_json:
        out.print(json.dumps({"pipeline": loaded.name, **result.document, "cache": str(cache) if cache else None,
                              "errors": result.errors, "skipped": result.skipped}, indent=2, ensure_ascii=False),
                  markup=False)
    else:
        for line in summary_lines(result):
            out.print(line, markup=False)
        if cache is not None:
            out.print(f"wrote {cache}", markup=False)
    for line in result.errors:
        err.print(f"error: {line}", markup=False)
    raise typer.Exit(EXIT_FAILED if result.errors else EXIT_OK)


def main() -> None:
    """Console entry point (logging is set up by the top-level options; errors become exits in ``_Commands``)."""
    # The name, not ``python -m engine.cli``, is what usage lines and shell completion scripts use.
    app(prog_name="syncengine")


__all__ = ["EXIT_OK", "app", "main"]


if __name__ == "__main__":
    main()
