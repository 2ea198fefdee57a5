"""Change tracking state in SQLite: record hashes and remote ids, cursors, runs, dead letters.

Ordering contract (what makes a ``kill -9`` at any instant safe): the engine writes a batch to
the destination, the destination acknowledges it, and only then :meth:`StateStore.commit_batch`
records the new hashes, the run's progress and the batch's dead letters in one transaction. A
crash before that commit makes the next run send the same batch again (the batch in flight); a
crash after it loses nothing. The cursor advances only in :meth:`StateStore.finish_run`.

Change detection streams: each batch's (key, hash) pairs go into a temporary table and one join
returns only the new and changed keys, so memory stays bounded whatever the number of records.
The keys seen in a run accumulate in another temporary table (spilling to disk), from which a
snapshot's deletes are computed at the end.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
TOMBSTONE = bytes(16)
"""The hash of a key a receiver was told to delete (no mapped record hashes to sixteen zero bytes)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    pipeline TEXT NOT NULL,
    sync TEXT NOT NULL,
    cursor TEXT,
    UNIQUE (pipeline, sync)
);
CREATE TABLE IF NOT EXISTS records (
    stream_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    hash BLOB NOT NULL,
    remote_id TEXT,
    memo TEXT,
    PRIMARY KEY (stream_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    creates INTEGER NOT NULL DEFAULT 0,
    updates INTEGER NOT NULL DEFAULT 0,
    deletes INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    filtered INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    seconds REAL
);
CREATE INDEX IF NOT EXISTS runs_by_stream ON runs (stream_id, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    stream_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    action TEXT,
    record TEXT,
    payload TEXT,
    error TEXT NOT NULL,
    field TEXT,
    location TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    first_failed_at TEXT NOT NULL,
    last_failed_at TEXT NOT NULL,
    PRIMARY KEY (stream_id, key)
) WITHOUT ROWID;
"""

COUNTERS = ("read", "creates", "updates", "deletes", "unchanged", "filtered", "skipped", "errors")


def utc_now() -> str:
    """Now, as ISO 8601 UTC text."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class DeadLetter:
    """One record that failed, kept for retry."""

    key: str
    action: str | None
    record: dict[str, Any] | None
    payload: Any
    error: str
    field: str | None
    location: str | None
    attempts: int
    first_failed_at: str
    last_failed_at: str


@dataclass
class Known:
    """What the state knows of a key the current batch changed."""

    known: bool
    remote_id: str | None


class StateStore:
    """The state database of one pipeline file (it may hold several pipelines' streams)."""

    def __init__(self, path: Path | str, *, read_only_plan: bool = False) -> None:
        self.path = path
        self.read_only = read_only_plan
        target = str(path)
        if read_only_plan and (target == ":memory:" or not Path(target).exists()):
            target = ":memory:"  # a plan of a never-run pipeline: everything is new, nothing is created
        elif target != ":memory:" and not read_only_plan:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        if read_only_plan and target != ":memory:":
            # A plan reads the state but must not change it: the file is opened read-only.
            self.db = sqlite3.connect(f"{Path(target).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                      check_same_thread=False)
        else:
            self.db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.execute("PRAGMA temp_store = FILE")
        if self.read_only and target != ":memory:":
            self._temp_ready = False
            return
        if target != ":memory:":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._temp_ready = False

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # --- streams and cursors -------------------------------------------------------------------

    def stream_id(self, pipeline: str, sync: str) -> int:
        """The id of a pipeline's sync, created on first use (a plan gets -1 for a sync never run)."""
        if self.read_only:
            found = self.find_stream(pipeline, sync)
            return -1 if found is None else found
        self.db.execute("INSERT OR IGNORE INTO streams (pipeline, sync) VALUES (?, ?)", (pipeline, sync))
        row = self.db.execute("SELECT id FROM streams WHERE pipeline = ? AND sync = ?", (pipeline, sync)).fetchone()
        return int(row[0])

    def find_stream(self, pipeline: str, sync: str) -> int | None:
        """The id of a sync that has state, else ``None``."""
        row = self.db.execute("SELECT id FROM streams WHERE pipeline = ? AND sync = ?", (pipeline, sync)).fetchone()
        return None if row is None else int(row[0])

    def cursor(self, stream_id: int) -> str | None:
        """The cursor the last good run ended with."""
        row = self.db.execute("SELECT cursor FROM streams WHERE id = ?", (stream_id,)).fetchone()
        return None if row is None else row[0]

    def known_count(self, stream_id: int) -> int:
        """How many live records the state knows for a sync (tombstones are not counted)."""
        return int(self.db.execute("SELECT count(*) FROM records WHERE stream_id = ? AND hash <> ?",
                                   (stream_id, TOMBSTONE)).fetchone()[0])

    def lookup(self, stream_id: int, key: str) -> tuple[bytes, str | None] | None:
        """The stored (hash, remote id) of one key, or ``None``."""
        row = self.db.execute("SELECT hash, remote_id FROM records WHERE stream_id = ? AND key = ?",
                              (stream_id, key)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    # --- change detection ------------------------------------------------------------------------

    def start_seen(self) -> None:
        """Empty the per-run temporary tables."""
        if not self._temp_ready:
            # One batch's keys are unique (the batch is a dict), so `cur` needs no index of its own.
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS cur (key TEXT, hash BLOB)")
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY) WITHOUT ROWID")
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS gone (key TEXT, remote_id TEXT, memo TEXT)")
            self._temp_ready = True
        self.db.execute("DELETE FROM temp.seen")
        self.db.execute("DELETE FROM temp.gone")

    def changed(self, stream_id: int, pairs: Sequence[tuple[str, bytes]], *,
                everything: bool = False) -> dict[str, Known]:
        """Of a batch's (key, hash) pairs, the keys that are new or whose hash differs; marks all seen."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM temp.cur")
            db.executemany("INSERT INTO temp.cur (key, hash) VALUES (?, ?)", pairs)
            db.execute("INSERT OR IGNORE INTO temp.seen (key) SELECT key FROM temp.cur")
            condition = "" if everything else "WHERE r.hash IS NULL OR r.hash <> c.hash"
            rows = db.execute(
                "SELECT c.key, r.hash IS NOT NULL, r.remote_id FROM temp.cur c "
                f"LEFT JOIN records r ON r.stream_id = ? AND r.key = c.key {condition}", (stream_id,)).fetchall()
        finally:
            db.execute("COMMIT")
        return {key: Known(bool(known), remote_id) for key, known, remote_id in rows}

    def mark_seen(self, keys: Sequence[str]) -> None:
        """Count keys as present in this run (records that failed, so a snapshot does not delete them)."""
        self.db.executemany("INSERT OR IGNORE INTO temp.seen (key) VALUES (?)", [(k,) for k in keys])

    def collect_missing(self, stream_id: int) -> int:
        """Gather the known keys this run did not see; returns how many."""
        self.db.execute("DELETE FROM temp.gone")
        self.db.execute(
            "INSERT INTO temp.gone (key, remote_id, memo) SELECT r.key, r.remote_id, r.memo FROM records r "
            "WHERE r.stream_id = ? AND NOT EXISTS (SELECT 1 FROM temp.seen s WHERE s.key = r.key)", (stream_id,))
        return int(self.db.execute("SELECT count(*) FROM temp.gone").fetchone()[0])

    def missing(self, size: int) -> Iterator[list[tuple[str, str | None, str | None]]]:
        """The gathered missing keys with their remote ids and memos, in batches."""
        last = 0
        while True:
            rows = self.db.execute("SELECT rowid, key, remote_id, memo FROM temp.gone WHERE rowid > ? ORDER BY rowid "
                                   "LIMIT ?", (last, size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [(key, remote_id, memo) for _, key, remote_id, memo in rows]

    def was_seen(self, key: str) -> bool:
        """Whether this run saw ``key``."""
        return self.db.execute("SELECT 1 FROM temp.seen WHERE key = ?", (key,)).fetchone() is not None

    # --- runs --------------------------------------------------------------------------------------

    def begin_run(self, stream_id: int, run_id: str, kind: str, started_at: str) -> int:
        """Record the start of one sync's run (a plan records nothing)."""
        if self.read_only:
            return 0
        cur = self.db.execute("INSERT INTO runs (run_id, stream_id, kind, started_at, status) VALUES (?, ?, ?, ?, "
                              "'running')", (run_id, stream_id, kind, started_at))
        return int(cur.lastrowid or 0)

    def commit_batch(self, stream_id: int, run_row: int, counts: dict[str, int], *,
                     upserts: Sequence[tuple[str, bytes, str | None, str | None]] = (),
                     deletes: Sequence[str] = (),
                     dead: Sequence[tuple[str, str | None, str | None, str | None, str, str | None, str | None]] = (),
                     resolved: Sequence[str] = ()) -> None:
        """Record an acknowledged batch, its dead letters and the run's progress in one transaction."""
        db = self.db
        now = utc_now()
        db.execute("BEGIN IMMEDIATE")
        try:
            if upserts:
                db.executemany("INSERT INTO records (stream_id, key, hash, remote_id, memo) VALUES (?, ?, ?, ?, ?) "
                               "ON CONFLICT (stream_id, key) DO UPDATE SET hash = excluded.hash, "
                               "remote_id = coalesce(excluded.remote_id, records.remote_id), memo = excluded.memo",
                               [(stream_id, k, h, r, m) for k, h, r, m in upserts])
            if deletes:
                db.executemany("DELETE FROM records WHERE stream_id = ? AND key = ?", [(stream_id, k) for k in deletes])
            if resolved:
                db.executemany("DELETE FROM dead_letters WHERE stream_id = ? AND key = ?",
                               [(stream_id, k) for k in resolved])
            if dead:
                db.executemany(
                    "INSERT INTO dead_letters (stream_id, key, action, record, payload, error, field, location, "
                    "first_failed_at, last_failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (stream_id, key) DO UPDATE SET action = excluded.action, record = "
                    "coalesce(excluded.record, dead_letters.record), payload = excluded.payload, "
                    "error = excluded.error, field = excluded.field, location = excluded.location, "
                    "attempts = dead_letters.attempts + 1, last_failed_at = excluded.last_failed_at",
                    [(stream_id, *row, now, now) for row in dead])
            self._progress(run_row, counts, "running", None, None)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _progress(self, run_row: int, counts: dict[str, int], status: str, message: str | None,
                  seconds: float | None) -> None:
        sets = ", ".join(f"{name} = ?" for name in COUNTERS)
        finished = utc_now() if status != "running" else None
        self.db.execute(f"UPDATE runs SET {sets}, status = ?, message = ?, seconds = ?, finished_at = ? WHERE id = ?",
                        (*(counts.get(n, 0) for n in COUNTERS), status, message, seconds, finished, run_row))

    def finish_run(self, stream_id: int, run_row: int, counts: dict[str, int], *, status: str,
                   message: str | None, seconds: float, cursor: str | None = None,
                   advance_cursor: bool = False) -> None:
        """Close a run; on success the cursor advances in the same transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if advance_cursor:
                self.db.execute("UPDATE streams SET cursor = ? WHERE id = ?", (cursor, stream_id))
            self._progress(run_row, counts, status, message, seconds)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def history(self, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs of a pipeline, newest first."""
        self.db.row_factory = sqlite3.Row
        try:
            rows = self.db.execute(
                "SELECT runs.*, streams.sync FROM runs JOIN streams ON streams.id = runs.stream_id "
                "WHERE streams.pipeline = ? ORDER BY runs.id DESC LIMIT ?", (pipeline, limit)).fetchall()
            return [dict(row) for row in rows]
        finally:
            self.db.row_factory = None

    def last_run(self, stream_id: int) -> dict[str, Any] | None:
        """The latest run of a sync."""
        self.db.row_factory = sqlite3.Row
        try:
            row = self.db.execute("SELECT * FROM runs WHERE stream_id = ? ORDER BY id DESC LIMIT 1",
                                  (stream_id,)).fetchone()
            return None if row is None else dict(row)
        finally:
            self.db.row_factory = None

    # --- dead letters ---------------------------------------------------------------------------------

    def dead_keys(self, stream_id: int) -> set[str]:
        """Keys with a dead letter in a sync."""
        return {r[0] for r in self.db.execute("SELECT key FROM dead_letters WHERE stream_id = ?", (stream_id,))}

    def dead_letters(self, stream_id: int, keys: Sequence[str] | None = None) -> list[DeadLetter]:
        """A sync's dead letters (all, or those with the given keys)."""
        rows = self.db.execute(
            "SELECT key, action, record, payload, error, field, location, attempts, first_failed_at, "
            "last_failed_at FROM dead_letters WHERE stream_id = ? ORDER BY first_failed_at, key",
            (stream_id,)).fetchall()
        wanted = set(keys) if keys is not None else None
        return [DeadLetter(k, a, json.loads(r) if r else None, json.loads(p) if p else None, e, f, loc, n, t0, t1)
                for k, a, r, p, e, f, loc, n, t0, t1 in rows if wanted is None or k in wanted]

    def drop_dead(self, stream_id: int, keys: Sequence[str]) -> None:
        """Forget dead letters whose record is gone from a snapshot source."""
        self.db.executemany("DELETE FROM dead_letters WHERE stream_id = ? AND key = ?", [(stream_id, k) for k in keys])
