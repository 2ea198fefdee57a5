"""An in-memory source and destination for the core's own tests, registered in a private registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Pipeline, load_pipeline
from engine.errors import TransientError
from engine.interfaces import DELETE, Change, Outcome, StreamContext
from engine.registry import Registry
from engine.retry import NO_WAIT
from engine.runner import Engine, RunOptions, RunReport
from engine.typed_config import option, secret

REGISTRY = Registry()


@dataclass
class World:
    """What the memory adapters read from and write to, per test."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    acknowledged: list[Any] = field(default_factory=list)
    finished_cursor: str | None = None
    cursors_seen: list[str | None] = field(default_factory=list)
    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote_ids: dict[str, str] = field(default_factory=dict)
    writes: list[tuple[str, str, str | None]] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)
    transient_failures: int = 0
    next_id: int = 100
    unknown: set[str] = field(default_factory=set)
    """Keys whose write is carried out but answered with an unknown outcome (a lost reply)."""
    at_most_once: bool = False
    crash_at: str | None = None
    """A key whose write stops the process after the batch's earlier changes were carried out."""


WORLD = World()


@dataclass(frozen=True)
class MemoryConfig:
    """A named in-memory dataset."""

    dataset: str = option("Dataset name.", "default")
    token: str | None = secret("A secret, to test redaction.")


@dataclass(frozen=True)
class MemoryOptions:
    """Per-sync options."""

    cursor_field: str | None = option("Field that acts as a cursor.", None)


class MemoryStream:
    """Yields the dataset; honours a cursor field; records acknowledgements."""

    def __init__(self, dataset: str, options: MemoryOptions) -> None:
        self.dataset = dataset
        self.options = options
        self.high: str | None = None

    def read(self, cursor: str | None) -> Iterator[dict[str, Any]]:
        """The records at or after the cursor."""
        WORLD.cursors_seen.append(cursor)
        for record in WORLD.records.get(self.dataset, []):
            value = record.get(self.options.cursor_field) if self.options.cursor_field else None
            if cursor is not None and value is not None and str(value) < cursor:
                continue
            if value is not None and (self.high is None or str(value) > self.high):
                self.high = str(value)
            yield dict(record)

    def acknowledge(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Remember what was acknowledged."""
        WORLD.acknowledged.extend(r.get("id") for r in records)

    def finish(self) -> str | None:
        """The highest cursor value read."""
        WORLD.finished_cursor = self.high
        return self.high


@REGISTRY.source("memory", config=MemoryConfig, options=MemoryOptions)
class MemorySource:
    """Records from the test's world."""

    def __init__(self, config: MemoryConfig, base_dir: Path) -> None:
        self.config = config

    def open_stream(self, options: MemoryOptions, ctx: StreamContext) -> MemoryStream:
        """A stream over the dataset."""
        return MemoryStream(self.config.dataset, options)

    def close(self) -> None:
        """Nothing to close."""


class MemoryWriter:
    """Applies changes to WORLD.table, assigning remote ids; scripted failures."""

    max_batch: int | None = 3

    in_flight = 2

    @property
    def at_most_once(self) -> bool:
        """Whether the engine must hold each change before it is sent (the world says)."""
        return WORLD.at_most_once

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """One outcome per change."""
        if WORLD.transient_failures:
            WORLD.transient_failures -= 1
            raise TransientError("the server is busy", retry_after=0.0)
        outcomes = []
        for change in changes:
            if change.key == WORLD.crash_at:
                raise RuntimeError("the process died")
            WORLD.writes.append((change.action, change.key, change.remote_id))
            if change.key in WORLD.unknown:
                WORLD.table[change.key] = dict(change.values or {})
                outcomes.append(Outcome(False, error="no answer", unknown=True))
                continue
            if change.key in WORLD.reject:
                outcomes.append(Outcome(False, error=WORLD.reject[change.key], field="name"))
                continue
            if change.action == DELETE:
                WORLD.table.pop(change.key, None)
                outcomes.append(Outcome(True))
                continue
            remote = change.remote_id or f"R{WORLD.next_id}"
            WORLD.next_id += 1
            WORLD.table[change.key] = dict(change.values or {})
            WORLD.remote_ids[change.key] = remote
            outcomes.append(Outcome(True, remote_id=remote))
        return outcomes

    def finish(self) -> None:
        """Nothing to finish."""


@REGISTRY.destination("memory", config=MemoryConfig)
class MemoryDestination:
    """A dict in the test's world."""

    def __init__(self, config: MemoryConfig, base_dir: Path) -> None:
        self.config = config

    def open_stream(self, options: object, ctx: StreamContext) -> MemoryWriter:
        """The writer."""
        return MemoryWriter()

    def close(self) -> None:
        """Nothing to close."""


def run(path: Path, **options: Any) -> RunReport:
    """Load a pipeline against the memory registry and run it."""
    pipeline: Pipeline = load_pipeline(path, REGISTRY)
    engine = Engine(pipeline)
    try:
        return engine.run(RunOptions(retry=NO_WAIT, **options))
    finally:
        engine.close()
