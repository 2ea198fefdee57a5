"""The Python entry point: every command as a function returning plain data (the CLI only parses and prints).

For an orchestrator's task (Airflow, Dagster) or a script::

    from engine import api

    report = api.apply("pipeline.yml", variables={"window_start": "2024-01-01"}, env_file="prod.env")
    if report.exit_code == 3:
        raise RuntimeError(report.to_dict())

Errors are raised as the engine's own (:mod:`engine.errors`), each with the ``exit_code`` the
command line exits with: :class:`~engine.errors.ConfigError` (2) for an invalid pipeline, an unknown
sync or a missing state database, :class:`~engine.errors.RunFailed` (3) when a run cannot go on. A run
that went wrong per sync is no exception: it is in the returned report (``report.exit_code``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from engine.adapters import register_builtins
from engine.config import Pipeline, SyncSpec, load_pipeline
from engine.errors import ConfigError, RunFailed
from engine.logs import log_context
from engine.registry import REGISTRY
from engine.runner import DeadLetterSource, Engine, RunOptions, RunReport, SyncReport
from engine.schema_errors import did_you_mean
from engine.state_store import UNKNOWN, StateStore

ENV_FILE_LIMIT = 1024 * 1024
"""The largest ``--env-file`` read (bytes); a larger one is refused unread."""
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
_run_log = logging.getLogger("syncengine.run")


# --- versions, variables and environment files ----------------------------------------------------


def engine_version() -> str:
    """The version of the running engine: the installed package's, else the source checkout's ``pyproject.toml``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syncengine")
    except PackageNotFoundError:
        pass
    pyproject = Path(engine.__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            project = {}
        if project.get("name") == "syncengine" and isinstance(project.get("version"), str):
            return str(project["version"])
    return engine.__version__


def _not_a_constant(name: str) -> Any:
    raise ValueError(name)


def parse_vars(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` texts (``--var``) as vars: a value is JSON when it parses as JSON, else the text itself.

    ``n=5`` is the number 5, ``on=true`` a boolean, ``ids=[1,2]`` a list, ``code=007`` and ``tz=UTC`` text;
    ``s="5"`` is the text 5. A later ``NAME`` wins. A value is never shown in an error (it may be a secret).
    """
    result: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not _VAR_NAME.fullmatch(name):
            shown = f"'{name}'" if sep else "an argument without '='"
            raise ConfigError(f"--var needs NAME=VALUE with NAME a letter or _ then letters, digits or _ (got {shown})")
        try:
            # NaN and Infinity are not JSON, whatever Python's parser accepts: they stay text.
            result[name] = json.loads(text, parse_constant=_not_a_constant)
        except ValueError:
            result[name] = text
    return result


def _closing(body: str, quote: str) -> int | None:
    """Where the closing quote of a quoted value is (a double-quoted value may escape one with ``\\``)."""
    i = 0
    while i < len(body):
        if body[i] == "\\" and quote == '"':
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return None


def read_env_file(path: str | Path) -> dict[str, str]:
    """The variables of a dotenv file: ``NAME=value``, ``export NAME=value``, quotes, ``#`` comments.

    An unquoted value ends at `` #``; a single-quoted one is literal; a double-quoted one may span lines
    and knows the escapes ``\\n \\t \\r \\" \\\\ \\$``. ``${OTHER}`` is not expanded. A malformed line is a
    :class:`ConfigError` naming the file and line, never the value.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--env-file {path}: no such file")
    try:
        if file.stat().st_size > ENV_FILE_LIMIT:
            raise ConfigError(f"--env-file {path}: larger than {ENV_FILE_LIMIT // 1024} KB; not read")
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--env-file {path}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    values: dict[str, str] = {}
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line)
        if match is None:
            raise ConfigError(f"{path}:{number}: expected NAME=value (or export NAME=value)")
        name, rest = match.group(1), match.group(2).strip()
        if rest[:1] in ('"', "'"):
            quote, body = rest[0], rest[1:]
            end = _closing(body, quote)
            while end is None and quote == '"' and i < len(lines):
                body += "\n" + lines[i]
                i += 1
                end = _closing(body, quote)
            if end is None:
                raise ConfigError(f"{path}:{number}: {name}: the quoted value has no closing {quote}")
            after = body[end + 1:].strip()
            if after and not after.startswith("#"):
                raise ConfigError(f"{path}:{number}: {name}: unexpected text after the closing quote")
            value = body[:end]
            if quote == '"':
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), value, flags=re.DOTALL)
        else:
            value = re.split(r"\s#", rest, maxsplit=1)[0].rstrip()
        values[name] = value
    return values


@contextmanager
def environment(env_file: str | Path | None) -> Iterator[dict[str, str]]:
    """Inside the block, a dotenv file's variables are in ``os.environ``; yields those it added.

    A variable already set in the environment (even to an empty value) wins over the file's, so an
    operator's override or an orchestrator's secret is never replaced. What was added is removed on
    leaving, so the next run in the same process starts from the same environment. ``os.environ`` is
    the process's: runs in threads of one process share it.
    """
    if env_file is None:
        yield {}
        return
    added = {k: v for k, v in read_env_file(env_file).items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield added
    finally:
        for name, value in added.items():
            if os.environ.get(name) == value:
                del os.environ[name]


# --- pipelines -------------------------------------------------------------------------------------


def load(path: str | Path, *, variables: Mapping[str, Any] | None = None, profile: str | None = None) -> Pipeline:
    """Validate a pipeline file (raises :class:`~engine.errors.PipelineInvalid`); ``variables`` set ``vars``;
    ``profile`` loads that profile's instance (its vars, environment names and state namespace)."""
    register_builtins(REGISTRY)
    return load_pipeline(path, REGISTRY, overrides=dict(variables) if variables else None, profile=profile)


def profile_names(path: str | Path, *, enabled_only: bool = True) -> list[str]:
    """The profiles of a pipeline's profiles file (the enabled ones by default); none is a configuration error."""
    from engine.profiles import load_profiles, profiles_path
    from engine.yaml_source import load_located

    file = Path(path)
    found = profiles_path(file, load_located(file).data) if file.is_file() else None
    if found is None:
        raise ConfigError(f"{path}: no profiles file (profiles.yml beside the pipeline, or a `profiles:` key)")
    return [name for name, p in load_profiles(found).items() if p.enabled or not enabled_only]


def set_connected(path: PipelineRef, *, connected: bool, syncs: Sequence[str] = (), group: str | None = None,
                  state: str | Path | None = None, variables: Mapping[str, Any] | None = None) -> list[str]:
    """Disconnect (or connect again) syncs: those named, a group's, or every sync; returns those that changed.

    A disconnected sync is skipped by the scheduler and refused by ``apply`` when asked for by name."""
    pipeline = _pipeline(path, variables)
    check_syncs(pipeline, syncs)
    chosen = list(dict.fromkeys([*syncs, *(pipeline.group_syncs(group) if group else ())])) or list(pipeline.syncs)
    store = StateStore(_state_file(pipeline, state))
    try:
        return store.set_connected(pipeline.name, chosen, connected)
    finally:
        store.close()


def check_syncs(pipeline: Pipeline, names: Sequence[str] | None) -> None:
    """An unknown sync name is a configuration error (exit 2) with a did-you-mean, whatever the command."""
    for name in names or ():
        if name not in pipeline.syncs:
            raise ConfigError(f"unknown sync '{name}'{did_you_mean(name, list(pipeline.syncs))}; the pipeline has: "
                              f"{', '.join(pipeline.syncs)}")


PipelineRef = str | Path | Pipeline
"""A pipeline file, or a pipeline loaded once with :func:`load` (then ``variables`` are those it was loaded with)."""


def _pipeline(source: PipelineRef, variables: Mapping[str, Any] | None) -> Pipeline:
    return source if isinstance(source, Pipeline) else load(source, variables=variables)


@dataclass(frozen=True)
class Validation:
    """A valid pipeline (``syncengine validate``)."""

    path: str
    pipeline: str
    syncs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"path": self.path, "pipeline": self.pipeline, "syncs": list(self.syncs)}


def validate(path: str | Path, *, variables: Mapping[str, Any] | None = None,
             env_file: str | Path | None = None) -> Validation:
    """Check a pipeline: schema, adapter configs, mappings and templates; nothing is opened or run."""
    with environment(env_file):
        pipeline = load(path, variables=variables)
    return Validation(str(path), pipeline.name, tuple(pipeline.syncs))


class _Engine(Engine):
    """The engine as the API runs it: the run and the end of each sync are logged with their counts."""

    def run(self, options: RunOptions) -> RunReport:
        """Run the selected syncs, every log line inside naming the run."""
        with log_context(run_id=self.run_id, pipeline=self.pipeline.name):
            report = super().run(options)
            _run_log.info("%s %s finished: exit %d", "plan" if options.dry_run else "run", self.run_id,
                         report.exit_code, extra={"exit_code": report.exit_code, "dry_run": options.dry_run,
                                                  "error": report.error})
        return report

    def run_sync(self, sync: SyncSpec, options: RunOptions, *,
                 replay: DeadLetterSource | None = None) -> SyncReport:
        """Run one sync; at its end one line (info) with its status, counts and first errors."""
        with log_context(run_id=self.run_id, pipeline=self.pipeline.name, sync=sync.name):
            report = super().run_sync(sync, options, replay=replay)
            c = report.counts
            # Info, not warning, for every status: the summary on stdout already shows a failure, and a
            # text log at the default level stays as quiet as before.
            _run_log.info("%s: %s: %d creates, %d updates, %d deletes, %d errors", sync.name, report.status,
                         c["creates"], c["updates"], c["deletes"], c["errors"],
                         extra={"status": report.status, "counts": dict(c), "errors": list(report.errors),
                                "error": report.message, "seconds": round(report.seconds, 3),
                                "kind": "plan" if options.dry_run else ("retry" if replay else "apply")})
        return report


def run(path: PipelineRef, options: RunOptions | None = None, *, state: str | Path | None = None,
        variables: Mapping[str, Any] | None = None, env_file: str | Path | None = None) -> RunReport:
    """Validate and run a pipeline; ``options.dry_run`` makes it a plan."""
    options = options or RunOptions()
    with environment(env_file):
        pipeline = _pipeline(path, variables)
        check_syncs(pipeline, options.syncs)
        runner = _Engine(pipeline, state_path=str(state) if state is not None else None, dry_run=options.dry_run)
        try:
            return runner.run(options)
        finally:
            runner.close()


def apply(path: PipelineRef, *, full_refresh: bool = False, since: str | None = None, force_deletes: bool = False,
          strict: bool = False, syncs: Sequence[str] = (), state: str | Path | None = None,
          variables: Mapping[str, Any] | None = None, env_file: str | Path | None = None,
          progress: Callable[[str, int], None] | None = None) -> RunReport:
    """Run a pipeline for real: send creates, updates and deletes since the last good run."""
    return run(path, RunOptions(syncs=tuple(syncs), full_refresh=full_refresh, since=since,
                                force_deletes=force_deletes, strict=strict, progress=progress),
               state=state, variables=variables, env_file=env_file)


def plan(path: PipelineRef, *, full_refresh: bool = False, since: str | None = None, syncs: Sequence[str] = (),
         state: str | Path | None = None, sample_size: int = 3, variables: Mapping[str, Any] | None = None,
         env_file: str | Path | None = None) -> RunReport:
    """Dry-run a pipeline: counts and samples, nothing written to the destination or the state."""
    return run(path, RunOptions(syncs=tuple(syncs), dry_run=True, full_refresh=full_refresh, since=since,
                                sample_size=sample_size), state=state, variables=variables, env_file=env_file)


def retry(path: PipelineRef, sync: str, *, keys: Sequence[str] | None = None, state: str | Path | None = None,
          variables: Mapping[str, Any] | None = None, env_file: str | Path | None = None) -> RunReport:
    """Retry a sync's dead letters now (all, or those with the given keys) from their stored records."""
    with environment(env_file):
        pipeline = _pipeline(path, variables)
        check_syncs(pipeline, [sync])
        runner = _Engine(pipeline, state_path=str(state) if state is not None else None)
        try:
            with log_context(run_id=runner.run_id, pipeline=pipeline.name):
                stream = runner.store.stream_id(pipeline.name, sync)
                letters = runner.store.dead_letters(stream, list(keys) if keys is not None else None)
                # A held record (sent, outcome unknown) is never resent by a retry: someone decides first.
                records = [d.record for d in letters if d.record is not None and d.state != UNKNOWN]
                result = runner.run_sync(pipeline.syncs[sync], RunOptions(), replay=DeadLetterSource(records))
            return RunReport(pipeline.name, runner.run_id, False, {sync: result})
        finally:
            runner.close()


def serve(path: PipelineRef, *, host: str = "127.0.0.1", port: int = 8080, state: str | Path | None = None,
          variables: Mapping[str, Any] | None = None, env_file: str | Path | None = None) -> int:
    """Serve the pipeline's receivers until SIGTERM or SIGINT; returns the exit code."""
    from engine.push import serve_pipeline

    with environment(env_file):
        pipeline = _pipeline(path, variables)
        return serve_pipeline(pipeline, host=host, port=port, state_path=str(state) if state is not None else None)


# --- state ---------------------------------------------------------------------------------------------


def _state_file(pipeline: Pipeline, state: str | Path | None) -> Path:
    """The state database; one named explicitly must exist (a typo is an error, not an empty state)."""
    if state is None:
        return pipeline.state_path
    if not Path(state).is_file():
        raise ConfigError(f"--state {state}: no state database there (check the path)")
    return Path(state)


@contextmanager
def _reading(pipeline: Pipeline, state: str | Path | None) -> Iterator[StateStore]:
    """The state, read-only (a pipeline never run reads as empty, and no file is made)."""
    store = StateStore(_state_file(pipeline, state), read_only_plan=True)
    try:
        yield store
    finally:
        store.close()


@dataclass(frozen=True)
class SyncStatus:
    """What the state holds for one sync (``syncengine status``)."""

    sync: str
    known: int
    cursor: str | None
    dead_letters: int
    last_run: dict[str, Any] | None
    held: int = 0
    """Dead letters whose outcome is unknown (not sent again until someone decides)."""
    disconnected: str | None = None
    """Since when the sync is disconnected, or ``None``."""
    pending: int = 0
    """Changes accepted by the destination and not yet confirmed as carried out."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``status --json`` prints it."""
        return {"sync": self.sync, "known": self.known, "cursor": self.cursor, "dead_letters": self.dead_letters,
                "held": self.held, "pending": self.pending, "disconnected": self.disconnected,
                "last_run": self.last_run}


def status(path: PipelineRef, *, state: str | Path | None = None,
           variables: Mapping[str, Any] | None = None) -> list[SyncStatus]:
    """Per sync: records known, cursor, dead letters and the last run."""
    pipeline = _pipeline(path, variables)
    rows: list[SyncStatus] = []
    with _reading(pipeline, state) as store:
        off = store.disconnected(pipeline.name)
        for name in pipeline.syncs:
            stream = store.find_stream(pipeline.name, name)
            if stream is None:
                rows.append(SyncStatus(name, 0, None, 0, None, disconnected=off.get(name)))
                continue
            rows.append(SyncStatus(name, store.known_count(stream), store.cursor(stream),
                                   len(store.dead_keys(stream)), store.last_run(stream), len(store.held_keys(stream)),
                                   off.get(name), len(store.pending_keys(stream))))
    return rows


def history(path: PipelineRef, *, limit: int = 20, state: str | Path | None = None,
            variables: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The latest runs of the pipeline's syncs, newest first: kind, status, counts, message, seconds."""
    pipeline = _pipeline(path, variables)
    with _reading(pipeline, state) as store:
        return store.history(pipeline.name, limit)


@dataclass(frozen=True)
class DeadLetterEntry:
    """One record that failed and waits for a retry (``syncengine dead-letters``)."""

    sync: str
    key: str
    action: str | None
    error: str
    field: str | None
    location: str | None
    attempts: int
    last_failed_at: str
    payload: Any
    """The rendered record, secrets masked."""
    state: str = "failed"
    """``failed`` (retried by the next run), or ``unknown``: sent without a known outcome, held until decided."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``dead-letters --json`` prints it."""
        return {"sync": self.sync, "key": self.key, "state": self.state, "action": self.action, "error": self.error,
                "field": self.field, "location": self.location, "attempts": self.attempts,
                "last_failed_at": self.last_failed_at, "payload": self.payload}


def dead_letters(path: PipelineRef, *, syncs: Sequence[str] = (), state: str | Path | None = None,
                 variables: Mapping[str, Any] | None = None) -> list[DeadLetterEntry]:
    """The dead letters of the given syncs (all syncs when none is given)."""
    pipeline = _pipeline(path, variables)
    check_syncs(pipeline, syncs)
    rows: list[DeadLetterEntry] = []
    with _reading(pipeline, state) as store:
        for name in syncs or list(pipeline.syncs):
            stream = store.find_stream(pipeline.name, name)
            for d in store.dead_letters(stream) if stream is not None else []:
                rows.append(DeadLetterEntry(name, d.key, d.action, d.error, d.field, d.location, d.attempts,
                                            d.last_failed_at, d.payload, d.state))
    return rows


def discard_dead_letters(path: PipelineRef, sync: str, keys: str | Sequence[str], *, state: str | Path | None = None,
                         variables: Mapping[str, Any] | None = None, sent: bool = False) -> int:
    """Forget dead letters of a sync by key (they are not retried again); returns how many.

    With ``sent``, the keys must be held ones (outcome unknown) and are settled as carried out: what was
    sent becomes the known record, so it is never sent again. Without it, a held record's dead letter is
    forgotten and the next run sends the record again.

    All or nothing: a key without a dead letter is a :class:`ConfigError` naming it, and then none is forgotten.
    """
    wanted = list(dict.fromkeys([keys] if isinstance(keys, str) else keys))
    verb = "mark as sent" if sent else "discard"
    if not wanted:
        raise ConfigError(f"name the key of at least one dead letter to {verb}")
    pipeline = _pipeline(path, variables)
    check_syncs(pipeline, [sync])
    target = _state_file(pipeline, state)
    unknown, have = wanted, []
    if target.is_file():  # never run: no dead letters, and no state file is made for nothing
        store = StateStore(target)
        try:
            stream = store.find_stream(pipeline.name, sync)
            if stream is not None:
                unknown = store.mark_sent(stream, wanted) if sent else store.discard_dead_letters(stream, wanted)
                have = sorted(store.held_keys(stream) if sent else store.dead_keys(stream)) if unknown else []
        finally:
            store.close()
    if unknown:
        hint = did_you_mean(unknown[0], have) if len(unknown) == 1 else ""
        kind = "held dead letter (outcome unknown)" if sent else "dead letter"
        raise ConfigError(f"sync '{sync}' has no {kind} with key {', '.join(repr(k) for k in unknown)}{hint}; "
                          f"nothing was {'marked as sent' if sent else 'discarded'}")
    return len(wanted)


@dataclass(frozen=True)
class ResetResult:
    """What a reset forgot of one sync."""

    sync: str
    records: int
    dead_letters: int
    cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"sync": self.sync, "records": self.records, "dead_letters": self.dead_letters, "cursor": self.cursor}


def reset(path: PipelineRef, syncs: str | Sequence[str], *, state: str | Path | None = None,
          variables: Mapping[str, Any] | None = None) -> list[ResetResult]:
    """Forget syncs' state: known records, cursor and dead letters; the next run treats every record as new.

    The run history stays, with a ``reset`` entry saying what was forgotten. A sync whose run is in
    progress is refused (:class:`RunFailed`) before anything is forgotten; nothing is written to any
    destination.
    """
    names = list(dict.fromkeys([syncs] if isinstance(syncs, str) else syncs))
    if not names:
        raise ConfigError("name the sync(s) to reset (--sync)")
    pipeline = _pipeline(path, variables)
    check_syncs(pipeline, names)
    target = _state_file(pipeline, state)
    if not target.is_file():
        return [ResetResult(name, 0, 0, None) for name in names]  # never run: nothing to forget
    store = StateStore(target)
    try:
        streams = {name: store.find_stream(pipeline.name, name) for name in names}
        for name, stream in streams.items():
            last = store.last_run(stream) if stream is not None else None
            if last is not None and last.get("status") == "running":
                raise RunFailed(f"sync '{name}' is running now (run {last['run_id']}); nothing was reset")
        run_id = uuid.uuid4().hex[:12]
        results = []
        for name, stream in streams.items():
            if stream is None:
                results.append(ResetResult(name, 0, 0, None))
            else:
                results.append(ResetResult(name, *store.reset_stream(stream, run_id)))
        return results
    finally:
        store.close()


__all__ = ["DeadLetterEntry", "ResetResult", "RunOptions", "RunReport", "SyncStatus", "Validation", "apply",
           "check_syncs", "dead_letters", "discard_dead_letters", "engine_version", "environment", "history", "load",
           "parse_vars", "plan", "read_env_file", "reset", "retry", "run", "serve", "status", "validate"]
