"""Shared pieces of the adapters that read local files: the file list, and the stream and source shells."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from engine.errors import RecordError, RunFailed
from engine.interfaces import StreamContext


def expand(base_dir: Path, pattern: str, narrow: str | None = None) -> list[Path]:
    """Files matching ``pattern`` (relative to the pipeline), sorted by name; optionally narrowed by a name glob."""
    full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
    files = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
    if narrow:
        files = [f for f in files if f.match(narrow)]
    if not files and not glob.has_magic(pattern):
        raise RunFailed(f"no such file: {pattern}")
    return files


class LocalFilesStream:
    """One sync's reading of local files: every run reads every file, so every read is whole.

    Subclasses implement :meth:`read_file`; the cursor is not used, nothing needs acknowledging.
    """

    whole = True

    def __init__(self, config: Any, files: list[Path]) -> None:
        self.config = config
        self.files = files

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """Every record of every file, in file-name order."""
        for path in self.files:
            yield from self.read_file(path)

    def read_file(self, path: Path) -> Iterator[dict[str, Any] | RecordError]:
        """The records of one file."""
        raise NotImplementedError

    def finish(self) -> str | None:
        """No cursor."""
        return None


class FileSelection(Protocol):
    """The per-sync options every local-files source has."""

    @property
    def files(self) -> str | None:
        """Only the files whose name matches this glob."""

    @property
    def require_files(self) -> bool:
        """Fail the sync when no file matches."""


class LocalFilesSource:
    """A source of local files named by the config's ``path`` and the sync's ``files`` option."""

    stream_class: type[LocalFilesStream] = LocalFilesStream

    def __init__(self, config: Any, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir

    def open_stream(self, options: FileSelection, ctx: StreamContext) -> LocalFilesStream:
        """Resolve the files now, so a missing file fails before anything is written."""
        files = expand(self.base_dir, self.config.path, options.files)
        if not files:
            message = f"no file matches '{options.files or self.config.path}'"
            if options.require_files:
                raise RunFailed(message)
            ctx.warn(message)
        return self.stream_class(self.config, files)

    def close(self) -> None:
        """Nothing to close."""
