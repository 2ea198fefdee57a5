"""The ``syncengine`` command. Exit codes: 0 done, 1 done with record errors, 2 invalid pipeline, 3 run failed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.adapters import register_builtins
from engine.config import Pipeline, load_pipeline, load_schema
from engine.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, PipelineInvalid, SyncEngineError
from engine.registry import REGISTRY, ROLES
from engine.runner import Engine, RunOptions, RunReport
from engine.schema_export import editor_schema

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative, change-tracking sync: YAML pipelines, Jinja mappings, pluggable adapters.")
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PipelineArg = Annotated[Path, typer.Argument(help="Pipeline file.", show_default=False)]
StateOpt = Annotated[str | None, typer.Option("--state", help="State database (default: the pipeline's state.path).")]
SyncOpt = Annotated[list[str] | None, typer.Option("--sync", "-s", help="Only this sync (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _load(path: Path) -> Pipeline:
    register_builtins(REGISTRY)
    return load_pipeline(path, REGISTRY, display=str(path))


def _fail(exc: SyncEngineError) -> typer.Exit:
    """The one error handler: print what went wrong, return the exit."""
    if isinstance(exc, PipelineInvalid):
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        err.print(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} found; nothing was run.",
                  markup=False)
    else:
        err.print(f"error: {exc}", markup=False)
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
        err.print(f"error: {report.error}", markup=False)
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
        out.print(f"{name}: {c['creates']} creates, {c['updates']} updates, {c['deletes']} deletes, "
                  f"{c['errors']} errors", markup=False)
        if sync.message:
            out.print(f"{name}: {sync.status}: {sync.message}", markup=False)
        for line in sync.errors:
            out.print(f"{name}: record error: {line}", markup=False)
        for action, samples in sync.samples.items():
            for sample in samples:
                out.print(f"{name}: sample {action} {json.dumps(sample, default=str, ensure_ascii=False)}",
                          markup=False)


def _run(pipeline: Path, options: RunOptions, state: str | None, as_json: bool) -> None:
    try:
        loaded = _load(pipeline)
        engine = Engine(loaded, state_path=state, dry_run=options.dry_run)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    progress = options.progress
    try:
        report = engine.run(options)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    finally:
        if isinstance(progress, _Progress):
            progress.stop()
        engine.close()
    _summary(report, as_json)
    raise typer.Exit(report.exit_code)


@app.command()
def validate(pipeline: PipelineArg) -> None:
    """Check a pipeline: schema, adapter configs, mappings and templates. Nothing is run."""
    try:
        loaded = _load(pipeline)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    out.print(f"{pipeline}: valid ({len(loaded.syncs)} sync{'s' if len(loaded.syncs) != 1 else ''}: "
              f"{', '.join(loaded.syncs)})", markup=False)


@app.command()
def plan(pipeline: PipelineArg, sync: SyncOpt = None, full_refresh: Annotated[bool, typer.Option(
        "--full-refresh", help="Plan as if resending everything.")] = False,
         since: Annotated[str | None, typer.Option(help="Override the cursor for this run.")] = None,
         sample: Annotated[int, typer.Option(help="Rendered records to show per action.")] = 3,
         state: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Dry run through the same path as apply: counts and sample records; nothing is written anywhere."""
    _run(pipeline, RunOptions(syncs=tuple(sync or ()), dry_run=True, full_refresh=full_refresh, since=since,
                              sample_size=sample), state, as_json)


@app.command()
def apply(pipeline: PipelineArg, sync: SyncOpt = None,
          full_refresh: Annotated[bool, typer.Option(
              "--full-refresh", help="Resend every record (the destination is not wiped).")] = False,
          since: Annotated[str | None, typer.Option(help="Override the cursor (watermark) for this run.")] = None,
          force_deletes: Annotated[bool, typer.Option("--force-deletes",
                                                      help="Allow deletes beyond max_delete_share.")] = False,
          state: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Run the syncs: send creates, updates and deletes since the last good run."""
    progress = None if as_json else _Progress()
    _run(pipeline, RunOptions(syncs=tuple(sync or ()), full_refresh=full_refresh, since=since,
                              force_deletes=force_deletes, progress=progress), state, as_json)


@app.command()
def retry(pipeline: PipelineArg, sync: Annotated[str, typer.Option("--sync", "-s", help="The sync.")],
          key: Annotated[list[str] | None, typer.Option("--key", "-k", help="Only this key (repeatable).")] = None,
          state: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Retry a sync's dead letters now (all, or the given keys)."""
    from engine.runner import DeadLetterSource

    try:
        loaded = _load(pipeline)
        if sync not in loaded.syncs:
            raise SyncEngineError(f"unknown sync '{sync}'")
        engine = Engine(loaded, state_path=state)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    try:
        stream = engine.store.stream_id(loaded.name, sync)
        letters = engine.store.dead_letters(stream, key)
        records = [d.record for d in letters if d.record is not None]
        result = engine.run_sync(loaded.syncs[sync], RunOptions(), replay=DeadLetterSource(records))
        report = RunReport(loaded.name, engine.run_id, False, {sync: result})
    finally:
        engine.close()
    _summary(report, as_json)
    raise typer.Exit(report.exit_code)


@app.command("dead-letters")
def dead_letters(pipeline: PipelineArg, sync: SyncOpt = None, state: StateOpt = None, as_json: JsonOpt = False) -> None:
    """List the records that failed and wait for a retry."""
    loaded, engine = _open_state(pipeline, state)
    try:
        rows: list[dict[str, Any]] = []
        for name in sync or list(loaded.syncs):
            stream = engine.store.find_stream(loaded.name, name)
            for d in engine.store.dead_letters(stream) if stream is not None else []:
                rows.append({"sync": name, "key": d.key, "action": d.action, "error": d.error, "field": d.field,
                             "location": d.location, "attempts": d.attempts, "last_failed_at": d.last_failed_at,
                             "payload": d.payload})
    finally:
        engine.close()
    if as_json:
        out.print(json.dumps(rows, indent=2, default=str), markup=False)
        return
    if not rows:
        out.print("no dead letters", markup=False)
    for row in rows:
        out.print(f"{row['sync']}: {row['key']}: {row['error']} (attempts {row['attempts']}, "
                  f"last {row['last_failed_at']})", markup=False)


def _open_state(pipeline: Path, state: str | None) -> tuple[Pipeline, Engine]:
    try:
        loaded = _load(pipeline)
        return loaded, Engine(loaded, state_path=state, dry_run=True)
    except SyncEngineError as exc:
        raise _fail(exc) from None


@app.command()
def status(pipeline: PipelineArg, state: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Per sync: records known, cursor, dead letters and the last run."""
    loaded, engine = _open_state(pipeline, state)
    rows = []
    try:
        for name in loaded.syncs:
            stream = engine.store.find_stream(loaded.name, name)
            last = engine.store.last_run(stream) if stream is not None else None
            rows.append({"sync": name,
                         "known": engine.store.known_count(stream) if stream is not None else 0,
                         "cursor": engine.store.cursor(stream) if stream is not None else None,
                         "dead_letters": len(engine.store.dead_keys(stream)) if stream is not None else 0,
                         "last_run": last})
    finally:
        engine.close()
    if as_json:
        out.print(json.dumps(rows, indent=2, default=str), markup=False)
        return
    table = Table(title=f"status {loaded.name}", title_justify="left")
    for column in ("sync", "known", "cursor", "dead letters", "last run", "result"):
        table.add_column(column)
    for row in rows:
        run = row["last_run"] if isinstance(row["last_run"], dict) else {}
        table.add_row(str(row["sync"]), str(row["known"]), str(row["cursor"] or "-"), str(row["dead_letters"]),
                      str(run.get("started_at", "never")), str(run.get("status", "-")))
    out.print(table)


@app.command()
def history(pipeline: PipelineArg, limit: Annotated[int, typer.Option(help="How many runs.")] = 20,
            state: StateOpt = None, as_json: JsonOpt = False) -> None:
    """The latest runs: counts per action, errors and duration."""
    loaded, engine = _open_state(pipeline, state)
    try:
        rows = engine.store.history(loaded.name, limit)
    finally:
        engine.close()
    if as_json:
        out.print(json.dumps(rows, indent=2, default=str), markup=False)
        return
    table = Table(title=f"history {loaded.name}", title_justify="left")
    for column in ("run", "sync", "kind", "started", "status", "creates", "updates", "deletes", "errors", "seconds"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["run_id"], r["sync"], r["kind"], r["started_at"], r["status"], str(r["creates"]),
                      str(r["updates"]), str(r["deletes"]), str(r["errors"]),
                      f"{r['seconds']:.2f}" if r["seconds"] is not None else "-")
    out.print(table)


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
        from engine.schema_errors import did_you_mean

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
          state: StateOpt = None) -> None:
    """Run the pipeline's receivers: records pushed to them are mapped and written as they arrive."""
    from engine.push import serve_pipeline

    try:
        loaded = _load(pipeline)
        code = serve_pipeline(loaded, host=host, port=port, state_path=state)
    except SyncEngineError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


def main() -> None:
    """Console entry point."""
    import logging
    import os

    logging.basicConfig(level=logging.DEBUG if os.environ.get("SYNCENGINE_DEBUG") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_FAILED)


__all__ = ["EXIT_OK", "app", "main"]


if __name__ == "__main__":
    main()
