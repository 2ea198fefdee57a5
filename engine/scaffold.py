"""``syncengine init``: a working pipeline, its mapping, mapping tests and a README from a shipped template.

Templates live in ``engine/scaffolds/<name>/`` (package data) and are copied as they are, with one
exception: a file named ``X.db.sql`` is an SQL script that becomes the SQLite database ``X.db``
(sample data of a template that reads a database). Nothing is overwritten without ``force``; the
files that would be are named, and then nothing is written at all.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from engine.errors import ConfigError
from engine.schema_errors import did_you_mean

SEED_SUFFIX = ".db.sql"
"""A template file with this suffix is run into a SQLite database named without ``.sql``."""


@dataclass(frozen=True)
class Template:
    """A shipped template: what it makes, the environment it needs, and what to run next."""

    name: str
    summary: str
    env: tuple[str, ...] = ()
    """Environment variables the pipeline reads (its credentials and addresses)."""


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("files", "CSV files on disk into a SQLite table (mirror: a row gone from the files is deleted)"),
    Template("sqlite", "a SQLite table into another SQLite table, incremental through an updated_at cursor"),
    Template("sftp", "CSV files in an SFTP directory into SQLite; credentials from the environment, host key pinned",
             ("SFTP_HOST", "SFTP_PORT", "SFTP_USER", "SFTP_PASSWORD", "SFTP_HOST_KEY_FINGERPRINT")),
    Template("http", "CSV files to an HTTP endpoint, one JSON request per record, basic auth from the environment",
             ("ENDPOINT_URL", "ENDPOINT_USER", "ENDPOINT_PASSWORD")),
)}
"""Every shipped template, by name."""


def _root() -> Traversable:
    return resources.files("engine").joinpath("scaffolds")


def _walk(folder: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    """(relative path, file) of every file below a template folder, in name order."""
    found: list[tuple[str, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        relative = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.extend(_walk(entry, f"{relative}/"))
        elif entry.is_file():
            found.append((relative, entry))
    return found


def template_files(name: str) -> list[tuple[str, Traversable]]:
    """(path it is written to, relative to the target folder; its source) of each file a template makes."""
    template = TEMPLATES.get(name)
    if template is None:
        raise ConfigError(f"unknown template '{name}'{did_you_mean(name, list(TEMPLATES))}; "
                          f"the templates are: {', '.join(TEMPLATES)}")
    files = _walk(_root().joinpath(name))
    return [(path[:-len(".sql")] if path.endswith(SEED_SUFFIX) else path, source) for path, source in files]


def scaffold(name: str, target: Path, *, force: bool = False) -> list[Path]:
    """Write a template's files below ``target``; returns them. Existing files are a :class:`ConfigError`
    naming them (and nothing is written) unless ``force``."""
    files = template_files(name)
    existing = [path for path, _ in files if (target / path).exists()]
    if existing and not force:
        raise ConfigError(f"{len(existing)} file{'s' if len(existing) != 1 else ''} already exist in {target}: "
                          f"{', '.join(existing)}; nothing was written (use --force to overwrite them)")
    written: list[Path] = []
    for path, source in files:
        destination = target / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
        if source.name.endswith(SEED_SUFFIX):
            _seed(source.read_text(encoding="utf-8"), partial)
        else:
            partial.write_bytes(source.read_bytes())
        # Written aside and renamed, so a file is either the old one or the whole new one.
        os.replace(partial, destination)
        written.append(destination)
    return written


def _seed(script: str, path: Path) -> None:
    """Make a SQLite database from an SQL script."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(str(path))
    try:
        db.executescript(script)
        db.commit()
    finally:
        db.close()
