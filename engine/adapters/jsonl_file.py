"""JSON Lines files as a source: one JSON object per line, streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapters.local_files import LocalFilesSource, LocalFilesStream
from engine.errors import RecordError
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
    require_files: bool = option("Fail the sync when no file matches (by default a run without files warns and "
                                 "reads nothing).", False)


class JsonlStream(LocalFilesStream):
    """One sync's reading of the files."""

    config: JsonlConfig

    def read_file(self, path: Path) -> Iterator[dict[str, Any] | RecordError]:
        """Every object of one file; a line that is not a JSON object is a record error."""
        with path.open("r", encoding=self.config.encoding) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield RecordError(f"{path.name} line {number}: not JSON: {exc.msg}", raw=line.rstrip("\n"))
                    continue
                if isinstance(value, dict):
                    yield value
                else:
                    yield RecordError(f"{path.name} line {number}: a JSON object was expected",
                                      raw=line.rstrip("\n"))


@REGISTRY.source("jsonl", config=JsonlConfig, options=JsonlOptions)
class JsonlSource(LocalFilesSource):
    """JSON Lines files on the local disk (a path or a glob), streamed."""

    stream_class = JsonlStream
