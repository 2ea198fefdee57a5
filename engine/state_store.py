"""Change tracking state in SQLite: record hashes and remote ids, cursors, runs, dead letters.

Ordering contract (what makes a ``kill -9`` at any instant safe): the engine writes a batch to
the destination, the destination acknowledges it, and only then :meth:`StateStore.commit_batch`
records the new hashes, the run's progress and the batch's dead letters in one transaction. A
crash before that commit makes the next run send the same batch again (the batch in flight); a
crash after it loses nothing. The cursor advances only in :meth:`StateStore.finish_run`.

A destination whose writes must not be repeated blindly (an operation that cannot be read back)
turns that around for its changes: they are recorded as *outcome unknown* dead letters before they
are sent (:meth:`StateStore.hold`), and each answer replaces that row. A crash leaves them held,
so no later run sends them again until someone decides (``dead-letters --mark-sent`` or
``--discard``).

Change detection streams: each batch's (key, hash) pairs go into a temporary table and one join
returns only the new and changed keys, so memory stays bounded whatever the number of records.
The keys seen in a run accumulate in another temporary table (spilling to disk), from which a
snapshot's deletes are computed at the end.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    raw BLOB,
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
    seconds REAL,
    owner TEXT,
    start TEXT,
    start_reason TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_stream ON runs (stream_id, id);
CREATE TABLE IF NOT EXISTS disconnected (
    pipeline TEXT NOT NULL,
    sync TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (pipeline, sync)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    stream_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    action TEXT NOT NULL,
    since TEXT NOT NULL,
    payload TEXT,
    PRIMARY KEY (stream_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    pipeline TEXT NOT NULL,
    sync TEXT NOT NULL,
    owner TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, sync)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_by_token ON leases (token);
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
    state TEXT NOT NULL DEFAULT 'failed',
    hash BLOB,
    PRIMARY KEY (stream_id, key)
) WITHOUT ROWID;
"""

FAILED = "failed"
"""A dead letter's state: the record failed and is retried by the next run or ``retry``."""
UNKNOWN = "unknown"
"""A dead letter's state: sent, but whether the destination carried it out is unknown; held until decided."""

COUNTERS = ("read", "creates", "updates", "deletes", "unchanged", "filtered", "skipped", "errors")
"""What a run counts (one column each in ``runs``), in the order reports show them."""


STALE = b"\xff" * 16
"""The hash of a record whose last delete was accepted but never carried out: no mapped record hashes to it,
so the next run sends the record again, or infers its delete again."""

HeldRow = tuple[str, str | None, str | None, str | None, str, str | None, str | None, bytes]
"""A dead letter whose outcome is unknown: the dead row's fields and the hash of what was sent."""


def _start_ticks(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def process_owner() -> str:
    """Who runs a sync: ``host:pid:start``; stored with each run so a dead owner can be recognised."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def owner_gone(owner: str | None) -> bool:
    """Whether the process that owned a run has ended (only decidable for a process on this host)."""
    if not owner:
        return True  # a run recorded before owners were: nothing can still be running it
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    now = _start_ticks(pid)
    return bool(start and now and now != start)  # the pid was reused by a later process


def utc_now() -> str:
    """Now, as ISO 8601 UTC text."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _has_json(db: sqlite3.Connection) -> bool:
    """Whether the SQLite library has its JSON functions (built in since 3.38; an option before)."""
    try:
        db.execute("SELECT count(*) FROM json_each('[1]')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


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
    state: str = FAILED
    """``failed``, or ``unknown`` (sent without an answer: held, never resent until someone decides)."""


@dataclass(slots=True)
class Known:
    """What the state knows of a key the current batch changed: known at all, its remote id, a tombstone."""

    known: bool
    remote_id: str | None
    tombstone: bool = False


@dataclass(frozen=True)
class Lease:
    """A claim on one sync of a pipeline by one scheduled run (see :meth:`StateStore.acquire_leases`)."""

    pipeline: str
    sync: str
    owner: str
    """The holding process, ``host:pid:start`` (:func:`process_owner`): a lease whose process ended is free."""
    token: str
    """The holding run's own id, so two runs in one process (two jobs sharing a sync) exclude each other too."""
    expires_at: str
    """ISO 8601 UTC; the holder renews it while it runs, so a holder that hangs or vanished elsewhere lets go."""


def _lease_stamp(moment: datetime) -> str:
    """A lease time as text that sorts as it compares (UTC, always with microseconds)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _interrupted_message(owner: str | None) -> str:
    pid = (owner or "").split(":")[1:2]
    return (f"interrupted: the process (pid {pid[0]}) ended without closing the run" if pid and pid[0]
            else "interrupted: the process ended without closing the run") + "; what it acknowledged was kept"


def _honest(run: dict[str, Any]) -> dict[str, Any]:
    """A run shown as it is: ``running`` only while its process lives."""
    if run.get("status") == "running" and owner_gone(run.get("owner")):
        run["status"] = "interrupted"
        run["message"] = _interrupted_message(run.get("owner"))
    return run


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
        self._json = _has_json(self.db)
        if self.read_only and target != ":memory:":
            self._temp_ready = False
            return
        if target != ":memory:":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}
        if "owner" not in columns:  # state made by an earlier version
            self.db.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        pending_columns = {row[1] for row in self.db.execute("PRAGMA table_info(pending)")}
        if "payload" not in pending_columns:  # pending changes recorded before their values were
            self.db.execute("ALTER TABLE pending ADD COLUMN payload TEXT")
        if "start" not in columns:  # runs recorded before their start time was
            self.db.execute("ALTER TABLE runs ADD COLUMN start TEXT")
            self.db.execute("ALTER TABLE runs ADD COLUMN start_reason TEXT")
        dead_columns = {row[1] for row in self.db.execute("PRAGMA table_info(dead_letters)")}
        if "state" not in dead_columns:  # dead letters made before held (outcome unknown) ones existed
            self.db.execute("ALTER TABLE dead_letters ADD COLUMN state TEXT NOT NULL DEFAULT 'failed'")
            self.db.execute("ALTER TABLE dead_letters ADD COLUMN hash BLOB")
        record_columns = {row[1] for row in self.db.execute("PRAGMA table_info(records)")}
        if "raw" not in record_columns:  # records delivered before raw hashes were kept: each is mapped once more
            self.db.execute("ALTER TABLE records ADD COLUMN raw BLOB")
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

    def keys(self, stream_id: int) -> list[str]:
        """The live keys a sync has delivered, in key order (a create accepted but still pending is not; an
        update still pending is: the record was there before)."""
        return [r[0] for r in self.db.execute(
            "SELECT r.key FROM records r WHERE r.stream_id = ? AND r.hash NOT IN (?, ?) AND NOT EXISTS "
            "(SELECT 1 FROM pending p WHERE p.stream_id = r.stream_id AND p.key = r.key AND p.action = 'create') "
            "ORDER BY r.key",
            (stream_id, TOMBSTONE, STALE))]

    def lookup(self, stream_id: int, key: str) -> tuple[bytes, str | None] | None:
        """The stored (hash, remote id) of one key, or ``None``."""
        row = self.db.execute("SELECT hash, remote_id FROM records WHERE stream_id = ? AND key = ?",
                              (stream_id, key)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    # --- change detection ------------------------------------------------------------------------

    def start_seen(self) -> None:
        """Empty the per-run temporary tables."""
        if not self._temp_ready:
            # One batch's keys are unique (the batch is a dict), so `cur` needs no index on them; `pos` is
            # each pair's place in the batch (what the queries return, see load_batch).
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS cur (pos INTEGER PRIMARY KEY, key TEXT, hash BLOB)")
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY) WITHOUT ROWID")
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS gone (key TEXT, remote_id TEXT, memo TEXT)")
            self._temp_ready = True
        self.db.execute("DELETE FROM temp.seen")
        self.db.execute("DELETE FROM temp.gone")

    def changed(self, stream_id: int, keys: Sequence[str], hashes: Sequence[bytes], *,
                everything: bool = False) -> dict[str, Known]:
        """Of a batch's keys and their hashes, the keys that are new or whose hash differs; marks all seen."""
        db = self.db
        db.execute("BEGIN")
        try:
            self.load_batch(keys, hashes)
            db.execute("INSERT OR IGNORE INTO temp.seen (key) SELECT key FROM temp.cur")
            condition = "" if everything else "WHERE r.hash IS NULL OR r.hash <> c.hash"
            rows = db.execute(
                "SELECT c.pos, r.hash IS NOT NULL, r.remote_id, r.hash = ? FROM temp.cur c "
                f"LEFT JOIN records r ON r.stream_id = ? AND r.key = c.key {condition}",
                (TOMBSTONE, stream_id)).fetchall()
        finally:
            db.execute("COMMIT")
        return {keys[pos]: Known(bool(known), remote_id, bool(dead)) for pos, known, remote_id, dead in rows}

    def load_batch(self, keys: Sequence[str], hashes: Sequence[bytes]) -> None:
        """Put a batch's keys and hashes into ``temp.cur``, each pair with its place in the batch as ``pos``.

        The queries return places, not keys, so a key comes back as the very string it went in as.
        Binding two values a row through ``executemany`` costs about 2.7 us a pair (a blob is bound
        through the buffer protocol); handing SQLite the keys as one JSON array and the hashes as one
        blob of 16-byte slices costs about 1 us (``benchmarks/README.md``). Hashes of another size
        take the plain way.
        """
        db = self.db
        db.execute("DELETE FROM temp.cur")
        if not keys:
            return
        if self._json:
            # Non-ASCII text goes in as itself; only control characters are escaped, and SQLite's JSON
            # reading gives each back exactly except NUL, which takes the plain way.
            text = json.dumps(keys if isinstance(keys, list) else list(keys), ensure_ascii=False)
            if min(map(len, hashes)) == 16 == max(map(len, hashes)) and "\\u0000" not in text:
                db.execute("INSERT INTO temp.cur (pos, key, hash) SELECT key, value, substr(?2, key * 16 + 1, 16) "
                           "FROM json_each(?1)", (text, b"".join(hashes)))
                return
        db.executemany("INSERT INTO temp.cur (pos, key, hash) VALUES (?, ?, ?)",
                       zip(range(len(keys)), keys, hashes, strict=True))

    def has_raw(self) -> bool:
        """Whether the records keep raw hashes (a plan reads an older state read-only, without them)."""
        return any(row[1] == "raw" for row in self.db.execute("PRAGMA table_info(records)"))

    def raw_changed(self, stream_id: int, keys: Sequence[str], hashes: Sequence[bytes]) -> list[str]:
        """Of a batch's keys and raw hashes, the keys whose raw hash is not the one stored with their last
        delivery (new, changed, or never hashed raw); the others are marked seen (unchanged, not mapped)."""
        db = self.db
        db.execute("BEGIN")
        try:
            self.load_batch(keys, hashes)
            db.execute("INSERT OR IGNORE INTO temp.seen (key) SELECT c.key FROM temp.cur c JOIN records r "
                       "ON r.stream_id = ? AND r.key = c.key WHERE r.raw = c.hash", (stream_id,))
            rows = db.execute("SELECT c.pos FROM temp.cur c LEFT JOIN records r ON r.stream_id = ? AND r.key = c.key "
                              "WHERE r.raw IS NULL OR r.raw <> c.hash", (stream_id,)).fetchall()
        finally:
            db.execute("COMMIT")
        return [keys[row[0]] for row in rows]

    def refresh_raw(self, stream_id: int, rows: Sequence[tuple[bytes, str, bytes]]) -> None:
        """Keep the raw hash of records whose mapped hash is unchanged: (raw, key, mapped hash) each."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("UPDATE records SET raw = ? WHERE stream_id = ? AND key = ? AND hash = ?",
                           [(raw, stream_id, key, digest) for raw, key, digest in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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

    def begin_run(self, stream_id: int, run_id: str, kind: str, started_at: str, *, start: str | None = None,
                  start_reason: str | None = None) -> int:
        """Record the start of one sync's run (a plan records nothing), with where its read started and why
        (``cursor``, ``since``, ``full-refresh``, ``first``)."""
        if self.read_only:
            return 0
        cur = self.db.execute("INSERT INTO runs (run_id, stream_id, kind, started_at, status, owner, start, "
                              "start_reason) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                              (run_id, stream_id, kind, started_at, process_owner(), start, start_reason))
        return int(cur.lastrowid or 0)

    def close_interrupted(self, stream_id: int) -> list[dict[str, Any]]:
        """Mark the runs of a sync whose process ended without closing them as ``interrupted``; returns them."""
        rows = self.db.execute("SELECT id, run_id, started_at, owner FROM runs WHERE stream_id = ? AND "
                               "status = 'running'", (stream_id,)).fetchall()
        gone = [row for row in rows if owner_gone(row[3])]
        for row_id, _, _, owner in gone:
            self.db.execute("UPDATE runs SET status = 'interrupted', message = ? WHERE id = ? AND status = 'running'",
                            (_interrupted_message(owner), row_id))
        return [{"run_id": run_id, "started_at": started} for _, run_id, started, _ in gone]

    def commit_batch(self, stream_id: int, run_row: int, counts: dict[str, int], *,
                     upserts: Sequence[tuple[str, bytes, str | None, str | None, bytes | None]] = (),
                     deletes: Sequence[str] = (),
                     dead: Sequence[tuple[str, str | None, str | None, str | None, str, str | None, str | None]] = (),
                     resolved: Sequence[str] = (), held: Sequence[HeldRow] = (),
                     pending: Sequence[tuple[str, str, str | None]] = (), settled_pending: Sequence[str] = (),
                     synced: bool = True) -> None:
        """Record an acknowledged batch, its dead letters and the run's progress in one transaction.

        ``synced=False`` commits without waiting for the disk (``synchronous = NORMAL``): the
        transaction survives the process being killed, and the next synced commit makes it (and every
        one before it) survive a power cut too. Per-record destinations use it for their group
        commits, with a synced one every few hundred milliseconds. ``held`` are dead letters whose
        outcome is unknown (a dead row plus the hash of what was sent). ``pending`` are (key, action) of
        changes accepted but not carried out yet; ``settled_pending`` keys are no longer pending.
        """
        db = self.db
        now = utc_now()
        if not synced:
            db.execute("PRAGMA synchronous = NORMAL")
        try:
            self._commit_batch(stream_id, run_row, counts, upserts, deletes, dead, resolved, held, now,
                               pending, settled_pending)
        finally:
            if not synced:
                db.execute("PRAGMA synchronous = FULL")

    def _commit_batch(self, stream_id: int, run_row: int, counts: dict[str, int],
                      upserts: Sequence[tuple[str, bytes, str | None, str | None, bytes | None]],
                      deletes: Sequence[str],
                      dead: Sequence[tuple[str, str | None, str | None, str | None, str, str | None, str | None]],
                      resolved: Sequence[str], held: Sequence[HeldRow], now: str,
                      pending: Sequence[tuple[str, str, str | None]] = (),
                      settled_pending: Sequence[str] = ()) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if settled_pending:
                db.executemany("DELETE FROM pending WHERE stream_id = ? AND key = ?",
                               [(stream_id, k) for k in settled_pending])
            if pending:
                db.executemany("INSERT OR REPLACE INTO pending (stream_id, key, action, since, payload) "
                               "VALUES (?, ?, ?, ?, ?)", [(stream_id, k, a, now, v) for k, a, v in pending])
            if upserts:
                db.executemany("INSERT INTO records (stream_id, key, hash, remote_id, memo, raw) "
                               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id, key) DO UPDATE SET "
                               "hash = excluded.hash, "
                               "remote_id = coalesce(excluded.remote_id, records.remote_id), memo = excluded.memo, "
                               "raw = excluded.raw", [(stream_id, *row) for row in upserts])
            if deletes:
                db.executemany("DELETE FROM records WHERE stream_id = ? AND key = ?", [(stream_id, k) for k in deletes])
            if resolved:
                db.executemany("DELETE FROM dead_letters WHERE stream_id = ? AND key = ?",
                               [(stream_id, k) for k in resolved])
            if dead or held:
                db.executemany(
                    "INSERT INTO dead_letters (stream_id, key, action, record, payload, error, field, location, "
                    "first_failed_at, last_failed_at, state, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (stream_id, key) DO UPDATE SET action = excluded.action, record = "
                    "coalesce(excluded.record, dead_letters.record), payload = excluded.payload, "
                    "error = excluded.error, field = excluded.field, location = excluded.location, "
                    "attempts = dead_letters.attempts + 1, last_failed_at = excluded.last_failed_at, "
                    "state = excluded.state, hash = excluded.hash",
                    [(stream_id, *row, now, now, FAILED, None) for row in dead]
                    + [(stream_id, *row[:7], now, now, UNKNOWN, row[7]) for row in held])
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
            return [_honest(dict(row)) for row in rows]
        finally:
            self.db.row_factory = None

    def last_run(self, stream_id: int) -> dict[str, Any] | None:
        """The latest run of a sync."""
        self.db.row_factory = sqlite3.Row
        try:
            row = self.db.execute("SELECT * FROM runs WHERE stream_id = ? ORDER BY id DESC LIMIT 1",
                                  (stream_id,)).fetchone()
            return None if row is None else _honest(dict(row))
        finally:
            self.db.row_factory = None

    # --- dead letters ---------------------------------------------------------------------------------

    def dead_keys(self, stream_id: int) -> set[str]:
        """Keys with a dead letter in a sync."""
        return {r[0] for r in self.db.execute("SELECT key FROM dead_letters WHERE stream_id = ?", (stream_id,))}

    def dead_letters(self, stream_id: int, keys: Sequence[str] | None = None) -> list[DeadLetter]:
        """A sync's dead letters (all, or those with the given keys)."""
        columns = "key, action, record, payload, error, field, location, attempts, first_failed_at, last_failed_at"
        try:
            rows = self.db.execute(f"SELECT {columns}, state FROM dead_letters WHERE stream_id = ? "
                                   "ORDER BY first_failed_at, key", (stream_id,)).fetchall()
        except sqlite3.OperationalError:  # a state made before held records, opened read-only
            rows = self.db.execute(f"SELECT {columns}, '{FAILED}' FROM dead_letters WHERE stream_id = ? "
                                   "ORDER BY first_failed_at, key", (stream_id,)).fetchall()
        wanted = set(keys) if keys is not None else None
        return [DeadLetter(k, a, json.loads(r) if r else None, json.loads(p) if p else None, e, f, loc, n, t0, t1,
                           st) for k, a, r, p, e, f, loc, n, t0, t1, st in rows if wanted is None or k in wanted]

    # --- disconnected syncs ----------------------------------------------------------------------------

    def disconnected(self, pipeline: str) -> dict[str, str]:
        """The disconnected syncs of a pipeline (a profile's instance included), with since when."""
        try:
            return dict(self.db.execute("SELECT sync, since FROM disconnected WHERE pipeline = ?",
                                        (pipeline,)).fetchall())
        except sqlite3.OperationalError:
            return {}  # a state made before syncs could be disconnected, opened read-only by a plan

    def set_connected(self, pipeline: str, syncs: Sequence[str], connected: bool) -> list[str]:
        """Connect or disconnect syncs; returns those whose state changed."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            before = set(self.disconnected(pipeline))
            if connected:
                db.executemany("DELETE FROM disconnected WHERE pipeline = ? AND sync = ?",
                               [(pipeline, s) for s in syncs])
                changed = [s for s in syncs if s in before]
            else:
                now = utc_now()
                db.executemany("INSERT OR IGNORE INTO disconnected VALUES (?, ?, ?)",
                               [(pipeline, s, now) for s in syncs])
                changed = [s for s in syncs if s not in before]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return changed

    def pending_keys(self, stream_id: int) -> set[str]:
        """Keys of changes accepted but not carried out yet."""
        try:
            return {r[0] for r in self.db.execute("SELECT key FROM pending WHERE stream_id = ?", (stream_id,))}
        except sqlite3.OperationalError:
            return set()  # a state made before pending changes, opened read-only by a plan

    def pending_changes(self, stream_id: int) -> list[tuple[str, str, str | None, str, str | None]]:
        """(key, action, remote id, since, the values sent as JSON) of the pending changes, oldest first."""
        return [(k, a, r, t, v) for k, a, r, t, v in self.db.execute(
            "SELECT p.key, p.action, r.remote_id, p.since, p.payload FROM pending p LEFT JOIN records r ON "
            "r.stream_id = p.stream_id AND r.key = p.key WHERE p.stream_id = ? ORDER BY p.since, p.key",
            (stream_id,))]

    def settle_pending(self, stream_id: int, done: Sequence[str], undone: Sequence[tuple[str, str]]) -> None:
        """Settle pending changes: ``done`` happened; ``undone`` (key, action) did not, so the record is sent
        again: a create or update is forgotten, a delete comes back as a record that must be checked again."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM pending WHERE stream_id = ? AND key = ?",
                           [(stream_id, k) for k in (*done, *(k for k, _ in undone))])
            db.executemany("DELETE FROM records WHERE stream_id = ? AND key = ?",
                           [(stream_id, k) for k, a in undone if a != "delete"])
            db.executemany("INSERT OR REPLACE INTO records (stream_id, key, hash) VALUES (?, ?, ?)",
                           [(stream_id, k, STALE) for k, a in undone if a == "delete"])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def held_keys(self, stream_id: int) -> set[str]:
        """Keys whose last send has no known outcome (held: not sent again until someone decides)."""
        try:
            return {r[0] for r in self.db.execute("SELECT key FROM dead_letters WHERE stream_id = ? AND state = ?",
                                                  (stream_id, UNKNOWN))}
        except sqlite3.OperationalError:
            return set()  # a state made before held records, opened read-only by a plan

    def hold(self, stream_id: int, rows: Sequence[HeldRow]) -> None:
        """Record changes about to be sent as *outcome unknown*, durably, before they leave.

        Each answer later replaces its row (settled, failed, or still unknown); a crash leaves it held.
        """
        if not rows:
            return
        now = utc_now()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO dead_letters (stream_id, key, action, record, payload, error, field, location, "
                "attempts, first_failed_at, last_failed_at, state, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) "
                "ON CONFLICT (stream_id, key) DO UPDATE SET action = excluded.action, record = "
                "coalesce(excluded.record, dead_letters.record), payload = excluded.payload, error = excluded.error, "
                "field = NULL, location = NULL, last_failed_at = excluded.last_failed_at, state = excluded.state, "
                "hash = excluded.hash",
                [(stream_id, *row[:7], now, now, UNKNOWN, row[7]) for row in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def mark_sent(self, stream_id: int, keys: Sequence[str]) -> list[str]:
        """Settle held dead letters as carried out: their sent hash becomes the known record, so nothing is resent.

        All or nothing; returns the keys that have no held dead letter (then nothing changes).
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            wanted = list(dict.fromkeys(keys))
            found = {k: h for k, h in db.execute(
                f"SELECT key, hash FROM dead_letters WHERE stream_id = ? AND state = ? AND key IN "
                f"({','.join('?' * len(wanted))})", (stream_id, UNKNOWN, *wanted))} if wanted else {}
            missing = [k for k in wanted if k not in found or found[k] is None]
            if not missing:
                db.executemany("INSERT INTO records (stream_id, key, hash) VALUES (?, ?, ?) ON CONFLICT "
                               "(stream_id, key) DO UPDATE SET hash = excluded.hash",
                               [(stream_id, k, found[k]) for k in wanted])
                db.executemany("DELETE FROM dead_letters WHERE stream_id = ? AND key = ?",
                               [(stream_id, k) for k in wanted])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return missing

    def drop_dead(self, stream_id: int, keys: Sequence[str]) -> None:
        """Forget dead letters whose record is gone from a snapshot source."""
        self.db.executemany("DELETE FROM dead_letters WHERE stream_id = ? AND key = ?", [(stream_id, k) for k in keys])

    def discard_dead_letters(self, stream_id: int, keys: Sequence[str]) -> list[str]:
        """Forget the named dead letters in one transaction; returns the keys that have none (then none goes)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            unknown = [k for k in dict.fromkeys(keys) if db.execute(
                "SELECT 1 FROM dead_letters WHERE stream_id = ? AND key = ?", (stream_id, k)).fetchone() is None]
            if not unknown:
                db.executemany("DELETE FROM dead_letters WHERE stream_id = ? AND key = ?",
                               [(stream_id, k) for k in dict.fromkeys(keys)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return unknown

    def reset_stream(self, stream_id: int, run_id: str) -> tuple[int, int, str | None]:
        """Forget a sync's records, dead letters and cursor in one transaction, noted in its history as a
        ``reset`` run (the history itself stays); returns the (records, dead letters, cursor) forgotten."""
        db = self.db
        now = utc_now()
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self.cursor(stream_id)
            records = db.execute("DELETE FROM records WHERE stream_id = ?", (stream_id,)).rowcount
            dead = db.execute("DELETE FROM dead_letters WHERE stream_id = ?", (stream_id,)).rowcount
            db.execute("DELETE FROM pending WHERE stream_id = ?", (stream_id,))
            db.execute("UPDATE streams SET cursor = NULL WHERE id = ?", (stream_id,))
            db.execute("INSERT INTO runs (run_id, stream_id, kind, started_at, finished_at, status, message, seconds, "
                       "owner) VALUES (?, ?, 'reset', ?, ?, 'ok', ?, 0, ?)",
                       (run_id, stream_id, now, now, f"state reset: forgot {records} record(s), {dead} dead "
                        f"letter(s) and the cursor", process_owner()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return records, dead, cursor

    # --- leases ----------------------------------------------------------------------------------------

    def acquire_leases(self, pipeline: str, syncs: Sequence[str], token: str, *, seconds: float,
                       now: datetime | None = None, owner: str | None = None) -> list[Lease]:
        """Lease every sync of a scheduled job at once, or none; returns the leases in the way (empty: taken).

        A lease stands in the way while it has not expired and its owner process is alive (a process on
        another host is taken as alive, so there only the expiry frees it). ``BEGIN IMMEDIATE`` makes the
        check and the take one step for every process on this state, so two schedulers cannot both win.
        ``now`` (default: the real clock) is for tests; ``owner`` defaults to this process. A manual
        ``apply`` takes no lease: leases order scheduled runs among themselves.
        """
        moment = now or datetime.now(UTC)
        names = list(dict.fromkeys(syncs))
        if not names:
            return []
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(f"SELECT pipeline, sync, owner, token, expires_at FROM leases WHERE pipeline = ? AND "
                              f"sync IN ({','.join('?' * len(names))})", (pipeline, *names)).fetchall()
            current = _lease_stamp(moment)
            held = [lease for lease in (Lease(*row) for row in rows)
                    if lease.token != token and lease.expires_at > current and not owner_gone(lease.owner)]
            if not held:
                until = _lease_stamp(moment + timedelta(seconds=seconds))
                who = owner or process_owner()
                db.executemany("INSERT INTO leases (pipeline, sync, owner, token, expires_at) VALUES (?, ?, ?, ?, ?) "
                               "ON CONFLICT (pipeline, sync) DO UPDATE SET owner = excluded.owner, "
                               "token = excluded.token, expires_at = excluded.expires_at",
                               [(pipeline, name, who, token, until) for name in names])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return held

    def renew_leases(self, token: str, *, seconds: float, now: datetime | None = None) -> int:
        """Push the expiry of a run's leases ``seconds`` past now; returns how many it still holds (fewer than
        it took means another process took some over, after they expired)."""
        until = _lease_stamp((now or datetime.now(UTC)) + timedelta(seconds=seconds))
        return int(self.db.execute("UPDATE leases SET expires_at = ? WHERE token = ?", (until, token)).rowcount)

    def held_elsewhere(self, pipeline: str, syncs: Sequence[str]) -> list[Lease]:
        """The live leases on these syncs held by another process (a scheduled run in ``serve`` elsewhere)."""
        mine = process_owner()
        current = _lease_stamp(datetime.now(UTC))
        return [lease for lease in self.leases(pipeline) if lease.sync in syncs and lease.owner != mine
                and lease.expires_at > current and not owner_gone(lease.owner)]

    def release_leases(self, token: str) -> int:
        """Give up a run's leases; returns how many it still held."""
        return int(self.db.execute("DELETE FROM leases WHERE token = ?", (token,)).rowcount)

    def leases(self, pipeline: str | None = None) -> list[Lease]:
        """The leases recorded (of one pipeline, or all), expired ones included, by pipeline and sync."""
        where, args = ("WHERE pipeline = ?", (pipeline,)) if pipeline is not None else ("", ())
        try:
            rows = self.db.execute(f"SELECT pipeline, sync, owner, token, expires_at FROM leases {where} "
                                   "ORDER BY pipeline, sync", args).fetchall()
        except sqlite3.OperationalError:
            return []  # a state made before leases, opened read-only by a plan
        return [Lease(*row) for row in rows]
