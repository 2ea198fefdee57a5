"""CSV files as a source: a path or a glob, streamed row by row, never loaded whole."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from engine import arrow_read
from engine.adapters.local_files import LocalFilesSource, LocalFilesStream
from engine.errors import RecordError, RunFailed
from engine.interfaces import ColumnBlock, RowBlock
from engine.registry import REGISTRY
from engine.typed_config import option


@dataclass(frozen=True)
class CsvConfig:
    """Read CSV files from a path or a glob."""

    path: str = option("File or glob, relative to the pipeline file; files are read in name order.",
                       examples=["data/loads.csv", "exports/*.csv"])
    encoding: str = option("Text encoding. The default also drops a UTF-8 byte-order mark.", "utf-8-sig",
                           examples=["utf-8-sig", "cp1252", "latin-1"])
    delimiter: str = option("Field separator.", ",", minLength=1, maxLength=1, examples=[",", ";", "\t", "|"])
    quotechar: str = option("Quote character; quoted fields may hold separators, quotes (doubled) and line "
                            "breaks.", '"', minLength=1, maxLength=1)
    header: list[str] | None = option("Column names, for files without a header row.", None,
                                      examples=[["id", "name", "email"]])


@dataclass(frozen=True)
class CsvOptions:
    """Per-sync options of the CSV source."""

    files: str | None = option("Only the files whose name matches this glob.", None, examples=["loads_*.csv"])
    require_files: bool = option("Fail the sync when no file matches (by default a run without files warns and "
                                 "reads nothing).", False)


def read_csv(lines: Iterator[str], config: CsvConfig, name: str) -> Iterator[dict[str, Any] | RecordError]:
    """Rows of CSV text as dicts keyed by the header (shared by every adapter that reads CSV)."""
    block = csv_rows(lines, config, name)
    if block is None:
        return
    header, rows = block
    for row in rows:
        # A row is a list as wide as the header (checked by csv_rows), or the error of an unreadable one.
        yield dict(zip(header, row, strict=False)) if row.__class__ is list else row  # type: ignore[misc]


def csv_rows(lines: Iterator[str], config: CsvConfig, name: str) -> RowBlock | None:
    """The header of CSV text and its rows as lists (``None`` for an empty text)."""
    reader = csv.reader(lines, delimiter=config.delimiter, quotechar=config.quotechar, strict=True)
    try:
        header = list(config.header) if config.header else next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise RunFailed(f"{name}: unreadable CSV header: {exc}") from exc
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise RunFailed(f"{name}: the header names {', '.join(repr(h) for h in repeated)} more than once")
    return header, _rows(reader, len(header), name)


def _rows(reader: Any, width: int, name: str) -> Iterator[list[str] | RecordError]:
    while True:
        try:
            # A plain loop is the fast path; after an unreadable row the reader goes on from the next one.
            for row in reader:
                if len(row) == width:
                    yield row
                elif row and (len(row) > 1 or row[0]):
                    yield RecordError(f"{name} line {reader.line_num}: {len(row)} fields where the header has "
                                      f"{width}", raw=row)
            return
        except csv.Error as exc:
            yield RecordError(f"{name} line {reader.line_num}: unreadable CSV: {exc}")


class CsvStream(LocalFilesStream):
    """One sync's reading of the CSV files."""

    config: CsvConfig

    def __init__(self, config: Any, files: list[Path]) -> None:
        super().__init__(config, files)
        self.columnar: dict[str, str | None] = {}
        self.arrow_rows = 0

    def read_file(self, path: Path) -> Iterator[dict[str, Any] | RecordError]:
        """The rows of one file."""
        try:
            with self.opened(path) as handle:
                yield from read_csv(handle, self.config, path.name)
        except UnicodeDecodeError as exc:
            raise self.undecodable(path, exc) from exc

    def read_rows(self, cursor: str | None) -> Iterator[RowBlock]:
        """Each file's header and rows as lists (the :class:`~engine.interfaces.ReadsRows` capability)."""
        for path in self.files:
            try:
                with self.opened(path) as handle:
                    block = csv_rows(handle, self.config, path.name)
                    if block is not None:
                        yield block[0], self.decoded(path, block[1])
            except UnicodeDecodeError as exc:
                raise self.undecodable(path, exc) from exc

    def read_columns(self, cursor: str | None) -> Iterator[RowBlock | ColumnBlock]:
        """Each file as Arrow batches where Arrow reads it as the Python reader would, else as rows
        (the :class:`~engine.interfaces.ReadsColumns` capability; :mod:`engine.arrow_read` says where)."""
        self.columnar = {}
        self.arrow_rows = 0
        for path in self.files:
            try:
                yield from self.file_columns(path)
            except UnicodeDecodeError as exc:
                raise self.undecodable(path, exc) from exc

    def file_columns(self, path: Path) -> Iterator[RowBlock | ColumnBlock]:
        """One file: its header from the Python reader, then Arrow's batches, then whatever Arrow refused."""
        config = self.config
        with self.opened(path) as handle:
            block = csv_rows(handle, config, path.name)
            if block is None:
                return
            header = block[0]
            why = arrow_read.columnar_refusal(path, encoding=config.encoding, delimiter=config.delimiter,
                                              quotechar=config.quotechar, width=len(header))
            if why is not None:
                self.columnar[path.name] = why
                yield header, self.decoded(path, block[1])
                return
        given = 0
        try:
            for batch, joined in arrow_read.batches(path, delimiter=config.delimiter, width=len(header),
                                                    has_header=not config.header, quotechar=config.quotechar):
                yield header, arrow_read.ArrowRows(batch, header, joined)
                given += batch.num_rows
                self.arrow_rows += batch.num_rows
        except Exception as exc:
            if not arrow_read.is_arrow_error(exc):
                raise
            # The rest of the file, from the first row not given out, as the Python reader reads it.
            self.columnar[path.name] = (f"Arrow read {given} rows, the Python reader the rest: "
                                        f"{str(exc).splitlines()[0]}")
            with self.opened(path) as handle:
                block = csv_rows(handle, config, path.name)
                if block is not None:
                    yield header, self.decoded(path, islice(block[1], given, None))
            return
        self.columnar[path.name] = None

    def opened(self, path: Path) -> TextIO:
        """The file opened as text for the Python reader (every read of it opens it so)."""
        return path.open("r", encoding=self.config.encoding, newline="")

    def decoded(self, path: Path, rows: Iterator[list[str] | RecordError]) -> Iterator[list[str] | RecordError]:
        """The rows, with a decoding error named as :meth:`read_file` names it."""
        try:
            yield from rows
        except UnicodeDecodeError as exc:
            raise self.undecodable(path, exc) from exc

    def undecodable(self, path: Path, exc: UnicodeDecodeError) -> RunFailed:
        """A file that is not in the configured encoding."""
        return RunFailed(f"{path.name}: not {self.config.encoding} text ({exc.reason} at byte {exc.start}); "
                         "set encoding")


@REGISTRY.source("csv", config=CsvConfig, options=CsvOptions)
class CsvSource(LocalFilesSource):
    """CSV files on the local disk (a path or a glob), streamed."""

    stream_class = CsvStream
