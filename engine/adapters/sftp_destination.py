"""An SFTP directory as a destination: each run's changes of a sync become one CSV file, placed atomically.

Durability. A batch is *durable* when it is appended to a staging file in a local outbox
(``outbox``, beside the pipeline) and synced to disk; ``write`` returns then, and the engine
commits the batch's state. ``finish`` (after the last batch of a good run) uploads each staged file
under a temporary name, ``<directory>/.<name>.part``, renames it to its final name and only then
removes the local copy. If the upload fails, or the run stops earlier, the staged file stays in the
outbox and the next run of the sync appends to it (same name) or uploads it first (another name),
so no acknowledged change is lost and a reader never sees a half-written file. Waiting for the
upload before acknowledging would instead mean one remote file per batch, or none until the end.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from engine.adapters.sftp_connection import LazySession, SftpConnectionConfig, SftpSession
from engine.errors import RunFailed, TransientError
from engine.interfaces import DELETE, Change, StreamContext
from engine.mapping import compile_template
from engine.registry import REGISTRY
from engine.templating import EnvView, make_environment
from engine.typed_config import option

QUOTING: dict[str, Literal[0, 1, 2, 3]] = {
    "minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "nonnumeric": csv.QUOTE_NONNUMERIC}


@dataclass(frozen=True, kw_only=True)
class SftpDestinationConfig(SftpConnectionConfig):
    """CSV files written to an SFTP server."""

    outbox: str = option("Local folder, relative to the pipeline file, where a run's rows are staged until "
                         "they are uploaded.", ".syncengine/outbox")


@dataclass(frozen=True)
class SftpDestinationOptions:
    """Where and how one sync's file is written."""

    filename: str = option("Name of the file a run writes; a template over `run`, `vars` and `env`.",
                           examples=["loads_{{ run.started_at | date('%Y%m%d') }}.csv",
                                     "loads_{{ run.id }}.csv"])
    directory: str = option("Remote directory the file goes to (it must exist).", ".", examples=["/inbound"])
    columns: list[str] | None = option("Columns, in order; by default the mapping's output fields.", None,
                                       examples=[["pro", "status", "rate"]])
    header: bool = option("Write a header row.", True)
    quoting: Literal["minimal", "all", "nonnumeric"] = option(
        "Which fields are quoted: only those that need it, all, or all but numbers.", "minimal")
    delimiter: str = option("Field separator.", ",", minLength=1, maxLength=1)
    encoding: str = option("Text encoding of the file.", "utf-8", examples=["utf-8", "utf-8-sig", "cp1252"])
    action_column: str | None = option("Add this column holding create, update or delete, so deletes can be "
                                       "written (as the key columns only). Without it, a delete stops the run.",
                                       None, examples=["action"])
    overwrite: bool = option("Replace a remote file of the same name; otherwise the upload stops with an error "
                             "and the file stays staged.", False)
    empty_file: bool = option("Upload a file (a header only) when a run has no changes.", False)


def _text(value: Any) -> Any:
    """A value as the CSV module should see it: numbers stay numbers (for `nonnumeric`), the rest text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


class SftpFileStream:
    """Stages one sync's changes locally, then places them on the server as one file."""

    max_batch: int | None = None

    def __init__(self, owner: SftpDestination, options: SftpDestinationOptions, ctx: StreamContext,
                 filename: str) -> None:
        self.owner = owner
        self.options = options
        self.ctx = ctx
        self.filename = filename
        self.staging = owner.outbox / ctx.pipeline / ctx.sync
        self.columns: list[str] | None = list(options.columns or ctx.fields or []) or None

    def _header(self) -> list[str]:
        assert self.columns is not None
        action = self.options.action_column
        return [*self.columns, action] if action else self.columns

    def write(self, changes: Sequence[Change]) -> None:
        """Append the batch to the staging file and sync it to disk; it is durable when this returns."""
        options = self.options
        if self.columns is None:
            first = next((c.values for c in changes if c.values is not None), None)
            self.columns = list(first or self.ctx.key_fields)
        keys = self.ctx.key_fields
        rows: list[list[Any]] = []
        for change in changes:
            if change.action == DELETE:
                if not options.action_column:
                    raise RunFailed(f"sync {self.ctx.sync} deletes key {change.key}, which a CSV file can only "
                                    "carry in an action column; set action_column on its sftp destination")
                values = change.key_values if keys else {}
            else:
                values = change.values or {}
            row = [_text(values.get(c)) for c in self.columns]
            rows.append([*row, change.action] if options.action_column else row)
        self._append(rows)

    def _append(self, rows: list[list[Any]]) -> None:
        path = self.staging / self.filename
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            with path.open("a", encoding=self.options.encoding, newline="") as handle:
                writer = csv.writer(handle, delimiter=self.options.delimiter,
                                    quoting=QUOTING[self.options.quoting], lineterminator="\r\n")
                if new and self.options.header:
                    writer.writerow(self._header())
                writer.writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
        except UnicodeEncodeError as exc:
            raise RunFailed(f"a value cannot be written as {self.options.encoding}: {exc.reason}; set encoding") \
                from exc
        except OSError as exc:
            raise RunFailed(f"cannot stage {path}: {exc.strerror or exc}") from exc

    def finish(self) -> None:
        """Upload every staged file of the sync (leftovers of earlier runs first, in name order)."""
        if self.options.empty_file and not (self.staging / self.filename).exists():
            if self.columns is None:
                self.columns = list(self.ctx.key_fields)
            self._append([])
        if not self.staging.is_dir():
            return
        staged = sorted(p for p in self.staging.iterdir() if p.is_file())
        if not staged:
            return
        session = self.owner.session()
        for path in staged:
            self._upload(session, path)

    def _upload(self, session: SftpSession, path: Path) -> None:
        directory = self.options.directory
        final = posixpath.join(directory, path.name)
        part = posixpath.join(directory, f".{path.name}.part")
        sftp = session.sftp
        try:
            if not self.options.overwrite and _exists(sftp, final):
                raise RunFailed(f"{session.where}: {final} already exists; it stays staged in {path.parent} (put "
                                "run.id or a time in filename, or set overwrite: true)")
            with path.open("rb") as local:
                sftp.putfo(local, part, file_size=path.stat().st_size, confirm=True)
            if self.options.overwrite:
                sftp.posix_rename(part, final)
            else:
                sftp.rename(part, final)
        except OSError as exc:
            _remove_quietly(sftp, part)
            raise TransientError(f"{session.where}: uploading {final} failed: {exc.strerror or exc}; the file stays "
                                 f"staged and is uploaded by the next run") from exc
        path.unlink()
        self.ctx.log.info("uploaded %s", final)


def _exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


def _remove_quietly(sftp: Any, path: str) -> None:
    """Drop a partial upload; a failure here only leaves a hidden ``.part`` file behind."""
    try:
        sftp.remove(path)
    except OSError:
        pass


@REGISTRY.destination("sftp", config=SftpDestinationConfig, options=SftpDestinationOptions)
class SftpDestination:
    """CSV files on an SFTP server: one per run and sync, uploaded under a temporary name, then renamed."""

    def __init__(self, config: SftpDestinationConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.outbox = base_dir / config.outbox
        self.connection = LazySession(config, base_dir)
        self.env = make_environment(base_dir)

    def session(self) -> SftpSession:
        """The shared session, connected on first use."""
        return self.connection.get()

    def open_stream(self, options: SftpDestinationOptions, ctx: StreamContext) -> SftpFileStream:
        """Name the run's file and check the server now, so a refusal comes before anything is staged."""
        context = {"run": ctx.run, "vars": getattr(ctx, "vars", {}), "env": ctx.env or EnvView()}
        try:
            filename = compile_template(self.env, options.filename, context=context, text=True)().strip()
        except Exception as exc:  # noqa: BLE001 - any template failure is a configuration problem of this sync
            raise RunFailed(f"filename template of sync {ctx.sync}: {getattr(exc, 'message', None) or exc}") from exc
        if not filename or "/" in filename or filename.startswith("."):
            raise RunFailed(f"filename of sync {ctx.sync} renders to '{filename}', which is not a plain file name")
        session = self.session()
        try:
            session.sftp.stat(options.directory)
        except OSError as exc:
            raise RunFailed(f"{session.where}: remote directory {options.directory}: {exc.strerror or exc}") from exc
        return SftpFileStream(self, options, ctx, filename)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()
