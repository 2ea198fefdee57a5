"""An example adapter: JSON files as a destination and as a source (docs/adapters.md walks through it).

The destination keeps one file per sync, a JSON list of records addressed by the sync's key fields.
Each batch is written whole to a temporary file, synced to disk and renamed over the old file, so
the batch is durable, and the file never half-written, when ``write`` returns. The source reads
such a file whole.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import RecordError, RunFailed, TransientError
from engine.interfaces import DELETE, Change, Outcome, StreamContext
from engine.mapping import key_string
from engine.registry import REGISTRY
from engine.typed_config import option

# --- configuration: one frozen dataclass per block, every field described -------------------------


@dataclass(frozen=True)
class JsonFileConfig:
    """A folder of JSON files, one per sync."""

    directory: str = option("Folder of the files, relative to the pipeline file.", examples=["out"])


@dataclass(frozen=True)
class JsonFileDestinationConfig(JsonFileConfig):
    """A folder of JSON files, one per sync, rewritten by each batch."""

    indent: int | None = option("Indent the JSON by this many spaces; null writes one line.", 2, minimum=0)


@dataclass(frozen=True)
class JsonFileOptions:
    """The file one sync writes or reads."""

    file: str = option("File name in the folder.", examples=["customers.json"], pattern=r"^[^/\\]+\.json$")


# --- the destination ------------------------------------------------------------------------------


class JsonFileStream:
    """One sync's file: each batch is applied to the records and the file replaced atomically."""

    max_batch: int | None = None  # the whole file is rewritten per batch whatever its size

    def __init__(self, path: Path, key_fields: tuple[str, ...], indent: int | None) -> None:
        self.path = path
        self.key_fields = key_fields
        self.indent = indent

    def address(self, key_values: Mapping[str, Any]) -> str:
        """Where a record sits, made from its key fields' values (``Change.key`` is opaque: never decode it).

        ``key_string`` writes values as the state keeps them, so a record read back from the file, a
        change from the mapping and a delete the engine inferred (whose one key value comes as text,
        ``"42"`` for ``42``) all meet at the same address.
        """
        return key_string(tuple(key_values.get(name) for name in self.key_fields))

    def load(self) -> dict[str, dict[str, Any]]:
        """The file's records by address (a file not written yet holds none)."""
        try:
            records = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RunFailed(f"cannot read {self.path.name}: {exc}") from exc
        return {self.address(record): record for record in records}

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply the batch and replace the file; one outcome per change, in order, durable on return."""
        records = self.load()
        outcomes = []
        for change in changes:
            where = self.address(change.key_values)
            if change.action == DELETE:
                records.pop(where, None)  # deleting what is already gone is done, not an error
                outcomes.append(Outcome(True))
                continue
            try:
                json.dumps(change.values, allow_nan=False, default=str)
            except ValueError as exc:
                # This record is wrong, not the run: a failed outcome dead-letters it, the batch goes on.
                outcomes.append(Outcome(False, error=f"not valid JSON: {exc}"))
                continue
            records[where] = dict(change.values or {})
            outcomes.append(Outcome(True))
        self.replace([records[where] for where in sorted(records)])
        return outcomes

    def replace(self, records: list[dict[str, Any]]) -> None:
        """Write a temporary file beside the target, sync it, and rename it over the target."""
        text = json.dumps(records, indent=self.indent, ensure_ascii=False, default=str) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                # Another process holds the folder for a moment: the engine retries the batch with backoff.
                raise TransientError(f"{self.path.name} is busy: {exc.strerror}") from exc
            raise RunFailed(f"cannot write {self.path.name}: {exc.strerror or exc}") from exc

    def finish(self) -> None:
        """Nothing is buffered: every batch is already in the file."""


@REGISTRY.destination("json_file", config=JsonFileDestinationConfig, options=JsonFileOptions)
class JsonFileDestination:
    """JSON files, one per sync: records created, updated and deleted by the sync's key fields."""

    def __init__(self, config: JsonFileDestinationConfig, base_dir: Path) -> None:
        self.config = config
        self.folder = base_dir / config.directory

    def open_stream(self, options: JsonFileOptions, ctx: StreamContext) -> JsonFileStream:
        """The sync's file; a sync keyed by a template is refused before anything is written."""
        if not ctx.key_fields:
            raise RunFailed(f"sync {ctx.sync}: json_file addresses records by key fields; set `key` to output fields")
        return JsonFileStream(self.folder / options.file, ctx.key_fields, self.config.indent)

    def close(self) -> None:
        """Nothing stays open between batches."""


# --- the source -----------------------------------------------------------------------------------


class JsonFileSourceStream:
    """The records of one file, which is read whole every time."""

    whole = True  # WholeRead: each read is the entire set, so a record missing from it was deleted

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """Each object of the file's list (the cursor is ignored); any other item is a record error."""
        try:
            items = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunFailed(f"cannot read {self.path.name}: {exc}") from exc
        if not isinstance(items, list):
            raise RunFailed(f"{self.path.name} holds no JSON list")
        for number, item in enumerate(items, 1):
            if isinstance(item, dict):
                yield item
            else:
                yield RecordError(f"{self.path.name} item {number}: an object was expected", raw=item)

    def finish(self) -> str | None:
        """No cursor: the next run reads the whole file again."""
        return None


@REGISTRY.source("json_file", config=JsonFileConfig, options=JsonFileOptions)
class JsonFileSource:
    """JSON files (a list of objects each), read whole."""

    def __init__(self, config: JsonFileConfig, base_dir: Path) -> None:
        self.folder = base_dir / config.directory

    def open_stream(self, options: JsonFileOptions, ctx: StreamContext) -> JsonFileSourceStream:
        """A stream over the sync's file."""
        return JsonFileSourceStream(self.folder / options.file)

    def close(self) -> None:
        """Nothing to close."""
