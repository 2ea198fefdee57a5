"""SQLite as a source (a table or a query, with an optional cursor column) and as a destination
(upsert by key, delete, create the table when asked)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any

from engine.errors import RunFailed, TransientError
from engine.interfaces import DELETE, Change, DiscoveredField, DiscoveredStream, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option

# Values a mapping may produce that sqlite3 does not store by itself: exact text for decimals and
# times (no float rounding, no deprecated default adapters), JSON for nested data.
sqlite3.register_adapter(Decimal, str)
sqlite3.register_adapter(datetime, datetime.isoformat)
sqlite3.register_adapter(date, date.isoformat)
sqlite3.register_adapter(time, time.isoformat)
sqlite3.register_adapter(dict, lambda v: json.dumps(v, default=str, ensure_ascii=False))
sqlite3.register_adapter(list, lambda v: json.dumps(v, default=str, ensure_ascii=False))

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def connect(path: Path) -> sqlite3.Connection:
    """Open a database in autocommit mode (transactions are explicit), failing with one clear line."""
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        return db
    except sqlite3.Error as exc:
        raise RunFailed(f"cannot open SQLite database {path}: {exc}") from exc


def discover_tables(db: sqlite3.Connection) -> list[DiscoveredStream]:
    """Every table and view: columns with their declared types, NOT NULL as required, the primary key."""
    try:
        names = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' "
            "ESCAPE '\\' ORDER BY name")]
        streams = []
        for name in names:
            info = db.execute(f"PRAGMA table_info({quote(name)})").fetchall()
            fields = tuple(DiscoveredField(row[1], row[2] or None, bool(row[3])) for row in info)
            key = tuple(row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            streams.append(DiscoveredStream(name, fields, key))
        return streams
    except sqlite3.Error as exc:
        raise RunFailed(f"cannot read the tables of the database: {exc}") from exc


@dataclass(frozen=True)
class SqliteConfig:
    """A SQLite database file."""

    path: str = option("Database file, relative to the pipeline file.", examples=["out/warehouse.db"])


@dataclass(frozen=True)
class SqliteSourceOptions:
    """What one sync reads from the database."""

    table: str | None = option("Table to read (or give `query`).", None, examples=["customers"])
    query: str | None = option("SELECT statement to read (or give `table`).", None,
                               examples=["SELECT * FROM orders WHERE status <> 'draft'"])
    cursor: str | None = option("Column that grows with every change (a timestamp or a version). Each run "
                                "then reads rows with cursor >= the highest value of the last good run; rows "
                                "at exactly that value are read again and recognised as unchanged.", None,
                                examples=["updated_at"])


class SqliteSourceStream:
    """Rows of a table or query, oldest cursor first."""

    def __init__(self, db: sqlite3.Connection, options: SqliteSourceOptions) -> None:
        if bool(options.table) == bool(options.query):
            raise RunFailed("give exactly one of `table` and `query`")
        self.db = db
        self.options = options
        self.high: Any = None

    def read(self, cursor: str | None) -> Iterator[dict[str, Any]]:
        """Rows as dicts; with a cursor column, only rows at or after ``cursor``."""
        options = self.options
        base = f"SELECT * FROM {quote(options.table)}" if options.table else f"SELECT * FROM ({options.query})"
        params: tuple[Any, ...] = ()
        column = options.cursor
        if column:
            sql = f"SELECT * FROM ({base}) AS t"
            if cursor is not None:
                sql += f" WHERE t.{quote(column)} >= ?"
                params = (_decode_cursor(cursor),)
            sql += f" ORDER BY t.{quote(column)}"
        else:
            sql = base
        try:
            rows = self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise RunFailed(f"source query failed: {exc}") from exc
        names = [d[0] for d in rows.description]
        if column and column not in names:
            raise RunFailed(f"cursor column '{column}' is not in the result ({', '.join(names)})")
        position = names.index(column) if column else -1
        for row in rows:
            if position >= 0 and row[position] is not None:
                self.high = row[position]
            yield dict(zip(names, row, strict=True))

    def finish(self) -> str | None:
        """The highest cursor value read, as JSON text."""
        return None if self.high is None else json.dumps(self.high)


def _decode_cursor(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a --since given on the command line


@REGISTRY.source("sqlite", config=SqliteConfig, options=SqliteSourceOptions)
class SqliteSource:
    """Rows of a SQLite table or query, optionally incremental through a cursor column."""

    def __init__(self, config: SqliteConfig, base_dir: Path) -> None:
        path = base_dir / config.path
        if not path.is_file():
            raise RunFailed(f"no such SQLite database: {config.path}")
        self.db = connect(path)

    def open_stream(self, options: SqliteSourceOptions, ctx: StreamContext) -> SqliteSourceStream:
        """A stream over the table or query."""
        return SqliteSourceStream(self.db, options)

    def discover(self) -> list[DiscoveredStream]:
        """The database's tables and views."""
        return discover_tables(self.db)

    def stream_for(self, options: SqliteSourceOptions) -> str | None:
        """The table a sync reads (``None`` for a query)."""
        return options.table

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


@dataclass(frozen=True)
class SqliteDestinationOptions:
    """Where one sync writes in the database."""

    table: str = option("Table to write.", examples=["loads"], pattern=_IDENTIFIER.pattern)
    create_table: bool = option("Create the table, or add missing columns, from the mapping's fields.", False)
    key_column: str = option("Column that holds the key when the sync's key is a template.", "sync_key",
                             pattern=_IDENTIFIER.pattern)


def _sql_type(value: Any) -> str:
    if isinstance(value, bool | int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, bytes):
        return "BLOB"
    return "TEXT"


class SqliteDestinationStream:
    """Upserts and deletes in one transaction per batch."""

    max_batch: int | None = None

    def __init__(self, db: sqlite3.Connection, options: SqliteDestinationOptions, ctx: StreamContext) -> None:
        self.db = db
        self.options = options
        self.table = quote(options.table)
        self.key_columns = ctx.key_fields or (options.key_column,)
        self.use_key_column = not ctx.key_fields
        self.columns: list[str] | None = None
        self.declared = list(ctx.fields) if ctx.fields else None
        self._upsert = ""
        self._delete = ""

    def _existing_columns(self) -> list[str]:
        return [row[1] for row in self.db.execute(f"PRAGMA table_info({self.table})")]

    def _prepare(self, sample: dict[str, Any] | None) -> None:
        wanted = list(self.declared or (sample or {}).keys())
        if self.use_key_column:
            wanted = [self.options.key_column, *[c for c in wanted if c != self.options.key_column]]
        existing = self._existing_columns()
        if not existing:
            if not self.options.create_table:
                raise RunFailed(f"table {self.options.table} does not exist; set create_table: true to create it")
            types = {name: _sql_type((sample or {}).get(name)) for name in wanted}
            if self.use_key_column:
                types[self.options.key_column] = "TEXT"
            cols = ", ".join(f"{quote(c)} {types[c]}" for c in wanted)
            keys = ", ".join(quote(k) for k in self.key_columns)
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({cols}, PRIMARY KEY ({keys}))")
        else:
            missing = [c for c in wanted if c not in existing]
            if missing and not self.options.create_table:
                raise RunFailed(f"table {self.options.table} has no column {', '.join(missing)}; add it, or set "
                                "create_table: true to have it added")
            for name in missing:
                self.db.execute(f"ALTER TABLE {self.table} ADD COLUMN {quote(name)} "
                                f"{_sql_type((sample or {}).get(name))}")
            if not self._has_unique(self.key_columns):
                raise RunFailed(f"table {self.options.table} has no primary key or unique index on "
                                f"({', '.join(self.key_columns)}), which upserts need")
        self.columns = wanted
        cols = ", ".join(quote(c) for c in wanted)
        marks = ", ".join("?" for _ in wanted)
        keys = ", ".join(quote(k) for k in self.key_columns)
        updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in wanted if c not in self.key_columns)
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        self._upsert = f"INSERT INTO {self.table} ({cols}) VALUES ({marks}) ON CONFLICT ({keys}) {conflict}"
        where = " AND ".join(f"{quote(k)} = ?" for k in self.key_columns)
        self._delete = f"DELETE FROM {self.table} WHERE {where}"

    def _has_unique(self, columns: tuple[str, ...]) -> bool:
        want = set(columns)
        pk = {row[1] for row in self.db.execute(f"PRAGMA table_info({self.table})") if row[5]}
        if pk == want:
            return True
        for index in self.db.execute(f"PRAGMA index_list({self.table})").fetchall():
            if index[2]:
                cols = {row[2] for row in self.db.execute(f"PRAGMA index_info({quote(index[1])})")}
                if cols == want:
                    return True
        return False

    def write(self, changes: Sequence[Change]) -> None:
        """Apply the batch in one transaction; it is durable when this returns."""
        if self.columns is None:
            first = next((c.values for c in changes if c.values is not None), None)
            self._prepare(first)
        assert self.columns is not None
        columns = self.columns
        getter = itemgetter(*columns)
        rows: list[tuple[Any, ...]] = []
        doomed: list[tuple[Any, ...]] = []
        for change in changes:
            if change.action == DELETE:
                doomed.append(self._key_values(change))
                continue
            values = change.values or {}
            if self.use_key_column:
                values = {**values, self.options.key_column: change.key}
            try:
                row = getter(values)
            except KeyError:
                row = tuple(values.get(c) for c in columns)
            rows.append(row if len(columns) > 1 else (row,))
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            if rows:
                db.executemany(self._upsert, rows)
            if doomed:
                db.executemany(self._delete, doomed)
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if "locked" in str(exc) or "busy" in str(exc):
                raise TransientError(f"database is busy: {exc}") from exc
            raise RunFailed(f"writing {self.options.table} failed: {exc}") from exc
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise RunFailed(f"writing {self.options.table} failed: {exc}") from exc

    def _key_values(self, change: Change) -> tuple[Any, ...]:
        if self.use_key_column:
            return (change.key,)
        return tuple(change.key_values.get(c) for c in self.key_columns)

    def finish(self) -> None:
        """Create the table of a sync that had nothing to write yet, when asked to."""
        if self.columns is None and self.options.create_table and not self._existing_columns() and self.declared:
            self._prepare(None)


@REGISTRY.destination("sqlite", config=SqliteConfig, options=SqliteDestinationOptions)
class SqliteDestination:
    """A SQLite database: upsert by key, delete, and create the table when asked."""

    def __init__(self, config: SqliteConfig, base_dir: Path) -> None:
        self.path = base_dir / config.path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, opened on first use (a run with nothing to write opens nothing)."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = connect(self.path)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
        return self._db

    def open_stream(self, options: SqliteDestinationOptions, ctx: StreamContext) -> SqliteDestinationStream:
        """A stream writing one table."""
        return _LazyStream(self, options, ctx)  # type: ignore[return-value]

    def discover(self) -> list[DiscoveredStream]:
        """The database's tables and views, read without creating or changing the file (none yet: no tables)."""
        if not self.path.is_file():
            return []
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise RunFailed(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            return discover_tables(db)
        finally:
            db.close()

    def stream_for(self, options: SqliteDestinationOptions) -> str | None:
        """The table a sync writes."""
        return options.table

    def count(self, options: SqliteDestinationOptions) -> int:
        """How many records the sync's table holds (none before it exists)."""
        if not self._table_exists(options.table):
            return 0
        return int(self.db.execute(f"SELECT count(*) FROM {quote(options.table)}").fetchone()[0])

    def rows(self, options: SqliteDestinationOptions, offset: int, limit: int) -> list[dict[str, Any]]:
        """A page of the table's records in insertion order; objects and lists written as JSON come back as such."""
        if not self._table_exists(options.table):
            return []
        cursor = self.db.execute(f"SELECT * FROM {quote(options.table)} ORDER BY rowid LIMIT ? OFFSET ?",
                                 (limit, offset))
        names = [d[0] for d in cursor.description]
        return [{n: _read_back(v) for n, v in zip(names, row, strict=True)} for row in cursor.fetchall()]

    def _table_exists(self, table: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
                               (table,)).fetchone() is not None

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
            self._db = None


def _read_back(value: Any) -> Any:
    """A stored value as it was written: an object or a list was stored as JSON text."""
    if isinstance(value, str) and value[:1] in ("{", "[") and value[-1:] in ("}", "]"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class _LazyStream:
    """Defers connecting until the first write, so an unchanged run touches no file."""

    max_batch: int | None = None

    def __init__(self, owner: SqliteDestination, options: SqliteDestinationOptions, ctx: StreamContext) -> None:
        self.owner = owner
        self.options = options
        self.ctx = ctx
        self._stream: SqliteDestinationStream | None = None

    @property
    def stream(self) -> SqliteDestinationStream:
        if self._stream is None:
            self._stream = SqliteDestinationStream(self.owner.db, self.options, self.ctx)
        return self._stream

    def write(self, changes: Sequence[Change]) -> None:
        """See :meth:`SqliteDestinationStream.write`."""
        self.stream.write(changes)

    def finish(self) -> None:
        """See :meth:`SqliteDestinationStream.finish`."""
        if self._stream is not None or (self.options.create_table and not self.owner.path.exists()):
            self.stream.finish()

