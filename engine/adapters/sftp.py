"""CSV files in a directory on an SFTP server as a source, such as a morning export uploaded daily.

One SSH connection per pipeline source, opened when the first sync needs it and shared by every
sync; each sync takes the files whose name matches its ``files`` glob. A file is streamed from the
server (prefetched, decoded as it arrives), never loaded whole. The cursor the engine keeps after a
good run is the list of files read, with size and modification time, so an unchanged file is not
read again; a processed file may then be moved to an archive directory.
"""

from __future__ import annotations

import fnmatch
import io
import json
import posixpath
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapters.csv_file import CsvConfig, read_csv
from engine.adapters.sftp_connection import LazySession, SftpConnectionConfig, SftpSession
from engine.errors import RecordError, RunFailed, TransientError
from engine.interfaces import StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option

PREFETCH_LIMIT = 64
"""Outstanding read requests while streaming a file (bounds memory to about 64 x 32 KiB)."""


@dataclass(frozen=True, kw_only=True)
class SftpSourceConfig(SftpConnectionConfig):
    """CSV files in a directory of an SFTP server."""

    directory: str = option("Remote directory holding the files.", ".", examples=["/exports/aljex", "outbound"])
    pattern: str = option("Only files whose name matches this glob (letter case ignored).", "*.csv",
                          examples=["*.csv", "*.CSV"])


@dataclass(frozen=True)
class SftpSourceOptions:
    """Which files one sync reads, and how."""

    files: str = option("Glob of the file names this sync reads (letter case ignored), in name order.",
                        examples=["loads.csv", "Loads*.csv"])
    encoding: str = option("Text encoding. The default also drops a UTF-8 byte-order mark.", "utf-8-sig",
                           examples=["utf-8-sig", "cp1252"])
    delimiter: str = option("Field separator.", ",", minLength=1, maxLength=1)
    quotechar: str = option("Quote character; quoted fields may hold separators, doubled quotes and line breaks.",
                            '"', minLength=1, maxLength=1)
    skip_processed: bool = option(
        "Do not read a file again when its name, size and modification time are those of a file read by the "
        "last good run. The read is then partial, so no deletes are inferred from it; set false to read "
        "every file on every run.", True)
    archive_directory: str | None = option("Move each file read into this remote directory once all of its "
                                           "records were acknowledged.", None, examples=["archive"])
    require_files: bool = option("Fail the sync when no file matches (by default a run without files warns and "
                                 "reads nothing).", False)


@dataclass(frozen=True)
class RemoteFile:
    """A file in the remote directory, as listed."""

    name: str
    size: int
    mtime: int

    @property
    def identity(self) -> list[Any]:
        """What the cursor remembers to recognise the file: [size, mtime]."""
        return [self.size, self.mtime]


def _processed(cursor: str | None) -> dict[str, list[Any]]:
    """The files of the last good run, from its cursor (anything else, such as a ``--since``, counts as none)."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except json.JSONDecodeError:
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


class SftpStream:
    """One sync's files: read in name order, remembered, and optionally archived."""

    def __init__(self, owner: SftpSource, options: SftpSourceOptions, files: list[RemoteFile],
                 ctx: StreamContext) -> None:
        self.owner = owner
        self.options = options
        self.files = files
        self.log = ctx.log
        self.csv = CsvConfig(path="", encoding=options.encoding, delimiter=options.delimiter,
                             quotechar=options.quotechar)
        self.remembered: dict[str, list[Any]] = {}
        self.read_files: list[RemoteFile] = []
        self.yielded = 0
        self.acknowledged = 0
        self.whole = False
        """Whether this run read every file of the sync (and there was one): only then may the engine
        take a missing key for a delete. A skipped, already processed file makes the read partial."""

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """Rows of each file that was not already processed, streamed."""
        before = _processed(cursor) if self.options.skip_processed else {}
        skipped = 0
        for remote in self.files:
            if before.get(remote.name) == remote.identity:
                self.remembered[remote.name] = remote.identity
                skipped += 1
                continue
            yield from self._rows(remote)
            self.read_files.append(remote)
            self.remembered[remote.name] = remote.identity
        if skipped:
            self.log.info("%d file(s) already processed, not read again", skipped)
        self.whole = bool(self.files) and not skipped

    def _rows(self, remote: RemoteFile) -> Iterator[dict[str, Any] | RecordError]:
        session = self.owner.session()
        path = posixpath.join(self.owner.config.directory, remote.name)
        try:
            handle = session.sftp.open(path, "rb", bufsize=32768)
        except OSError as exc:
            raise RunFailed(f"{session.where}: cannot open {path}: {exc.strerror or exc}") from exc
        try:
            handle.prefetch(remote.size, max_concurrent_requests=PREFETCH_LIMIT)
            text = io.TextIOWrapper(handle, encoding=self.options.encoding, newline="")
            try:
                for row in read_csv(text, self.csv, remote.name):
                    self.yielded += 1  # an unreadable row counts too: it is never acknowledged
                    yield row
            except UnicodeDecodeError as exc:
                raise RunFailed(f"{remote.name}: not {self.options.encoding} text ({exc.reason}); set encoding") \
                    from exc
            except OSError as exc:
                raise TransientError(f"{session.where}: reading {path} failed: {exc}") from exc
            finally:
                text.detach()
        finally:
            handle.close()

    def acknowledge(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Count what was delivered; archiving waits for :meth:`finish`."""
        self.acknowledged += len(records)

    def finish(self) -> str | None:
        """Archive the files read when every one of their records was acknowledged; return the cursor.

        A record that failed (dead-lettered) keeps the run's files in place, so its row can still be
        read from the server; the cursor still marks them processed, so they are not read again
        unless they change or the sync is run with ``--full-refresh``.
        """
        archive = self.options.archive_directory
        if archive and self.read_files and self.acknowledged < self.yielded:
            self.log.warning("%d record(s) were not delivered: the files read stay in %s, not archived",
                             self.yielded - self.acknowledged, self.owner.config.directory)
        elif archive and self.read_files:
            session = self.owner.session()
            for remote in self.read_files:
                self._archive(session, remote, archive)
                self.remembered.pop(remote.name, None)
        return json.dumps({"files": self.remembered}, sort_keys=True)

    def _archive(self, session: SftpSession, remote: RemoteFile, archive: str) -> None:
        base = self.owner.config.directory
        source = posixpath.join(base, remote.name)
        target = posixpath.join(archive if archive.startswith("/") else posixpath.join(base, archive), remote.name)
        try:
            # posix-rename replaces an archived file of the same name; plain SFTP rename would refuse.
            session.sftp.posix_rename(source, target)
        except OSError as exc:
            raise RunFailed(f"{session.where}: cannot move {source} to {target}: {exc.strerror or exc}") from exc
        self.log.info("archived %s to %s", remote.name, target)


@REGISTRY.source("sftp", config=SftpSourceConfig, options=SftpSourceOptions)
class SftpSource:
    """CSV files on an SFTP server, each routed to its sync by name, streamed, with host-key checking."""

    def __init__(self, config: SftpSourceConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.connection = LazySession(config, base_dir)
        self._listing: list[RemoteFile] | None = None

    def session(self) -> SftpSession:
        """The shared session, connected on first use."""
        return self.connection.get()

    def listing(self) -> list[RemoteFile]:
        """The regular files of the directory that match ``pattern``, listed once per run, by name."""
        if self._listing is None:
            session = self.session()
            try:
                entries = session.sftp.listdir_attr(self.config.directory)
            except OSError as exc:
                raise RunFailed(f"{session.where}: cannot list directory {self.config.directory}: "
                                f"{exc.strerror or exc}") from exc
            pattern = self.config.pattern.lower()
            self._listing = sorted(
                (RemoteFile(e.filename, e.st_size or 0, e.st_mtime or 0) for e in entries
                 if e.st_mode is not None and stat.S_ISREG(e.st_mode) and fnmatch.fnmatchcase(e.filename.lower(),
                                                                                            pattern)),
                key=lambda f: f.name)
        return self._listing

    def open_stream(self, options: SftpSourceOptions, ctx: StreamContext) -> SftpStream:
        """Connect (once) and pick this sync's files now, so a failure comes before anything is written."""
        wanted = options.files.lower()
        files = [f for f in self.listing() if fnmatch.fnmatchcase(f.name.lower(), wanted)]
        if not files:
            message = f"no file matches '{options.files}' in {self.config.directory}"
            if options.require_files:
                raise RunFailed(message)
            ctx.warn(message)
        return SftpStream(self, options, files, ctx)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()
