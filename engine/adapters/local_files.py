"""Shared pieces of the adapters that read local files."""

from __future__ import annotations

import glob
from pathlib import Path

from engine.errors import RunFailed


def expand(base_dir: Path, pattern: str, narrow: str | None = None) -> list[Path]:
    """Files matching ``pattern`` (relative to the pipeline), sorted by name; optionally narrowed by a name glob."""
    full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
    files = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
    if narrow:
        files = [f for f in files if f.match(narrow)]
    if not files and not glob.has_magic(pattern):
        raise RunFailed(f"no such file: {pattern}")
    return files
