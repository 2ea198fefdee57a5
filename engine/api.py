"""The Python entry point: validate and run pipelines from code (the CLI is a thin layer on this)."""

from __future__ import annotations

from pathlib import Path

from engine.adapters import register_builtins
from engine.config import Pipeline, load_pipeline
from engine.registry import REGISTRY
from engine.runner import Engine, RunOptions, RunReport


def load(path: str | Path) -> Pipeline:
    """Validate a pipeline file (raises :class:`~engine.errors.PipelineInvalid`)."""
    register_builtins(REGISTRY)
    return load_pipeline(path, REGISTRY)


def run(path: str | Path, options: RunOptions | None = None, *, state: str | None = None) -> RunReport:
    """Validate and run a pipeline; ``options.dry_run`` makes it a plan."""
    options = options or RunOptions()
    pipeline = load(path)
    engine = Engine(pipeline, state_path=state, dry_run=options.dry_run)
    try:
        return engine.run(options)
    finally:
        engine.close()


def apply(path: str | Path, *, full_refresh: bool = False, since: str | None = None, force_deletes: bool = False,
          syncs: tuple[str, ...] = (), state: str | None = None) -> RunReport:
    """Run a pipeline for real."""
    return run(path, RunOptions(syncs=syncs, full_refresh=full_refresh, since=since, force_deletes=force_deletes),
               state=state)


def plan(path: str | Path, *, full_refresh: bool = False, since: str | None = None,
         syncs: tuple[str, ...] = (), state: str | None = None, sample_size: int = 3) -> RunReport:
    """Dry-run a pipeline: counts and samples, nothing written to the destination or the state."""
    return run(path, RunOptions(syncs=syncs, dry_run=True, full_refresh=full_refresh, since=since,
                                sample_size=sample_size), state=state)
