"""JSON Lines files as a source: one JSON object per line, streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapters.local_files import expand
from engine.errors import RecordError
from engine.interfaces import StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option


@dataclass(frozen=True)
class JsonlConfig:
    """Read JSON Lines files from a path or a glob."""

    path: str = option("File or glob, relative to the pipeline file; files are read in name order.",
                       examples=["data/orders.jsonl", "events/*.jsonl"])
    encoding: str = option("Text encoding.", "utf-8")


@dataclass(frozen=True)
class JsonlOptions:
    """Per-sync options of the JSON Lines source."""

    files: str | None = option("Only the files whose name matches this glob.", None)


class JsonlStream:
    """One sync's reading of the files."""

    whole = True  # every run reads every file: the cursor is not used

    def __init__(self, config: JsonlConfig, files: list[Path]) -> None:
        self.config = config
        self.files = files

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """Every object of every file; a line that is not a JSON object is a record error."""
        for path in self.files:
            with path.open("r", encoding=self.config.encoding) as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield RecordError(f"{path.name} line {number}: not JSON: {exc.msg}")
                        continue
                    if isinstance(value, dict):
                        yield value
                    else:
                        yield RecordError(f"{path.name} line {number}: a JSON object was expected")

    def acknowledge(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Local files need no acknowledgement."""

    def finish(self) -> str | None:
        """No cursor."""
        return None


@REGISTRY.source("jsonl", config=JsonlConfig, options=JsonlOptions)
class JsonlSource:
    """JSON Lines files on the local disk (a path or a glob), streamed."""

    def __init__(self, config: JsonlConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir

    def open_stream(self, options: JsonlOptions, ctx: StreamContext) -> JsonlStream:
        """Resolve the files now."""
        return JsonlStream(self.config, expand(self.base_dir, self.config.path, options.files))

    def close(self) -> None:
        """Nothing to close."""
