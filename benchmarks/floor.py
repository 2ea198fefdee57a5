"""The floor: the benchmark job written by hand with ``csv`` and ``sqlite3`` only.

It does what the engine's pipeline does, with nothing general: read the export, map each row in
plain Python, hash it, compare with a per-row hash table kept in its own state database, upsert the
new and changed rows with ``executemany`` in one transaction, delete the ids the export no longer
holds, then record the new hashes. Both databases use the engine's durability settings (WAL,
``synchronous = FULL``), so the two differ in the code that runs, not in what the disk is asked to do.
"""

from __future__ import annotations

import csv
import hashlib
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

COLUMNS = ("id", "customer", "carrier", "status", "origin_city", "origin_state", "dest_city", "dest_state",
           "shipped_on", "delivered_on", "amount_cents", "weight", "updated_at", "lane")
TYPES = ("TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "INTEGER", "INTEGER",
         "TEXT", "TEXT")
CHUNK = 5000
_HUNDRED = Decimal(100)


def map_row(row: list[str]) -> tuple[Any, ...]:
    """One CSV row (in the export's column order) to the destination row."""
    (id_, customer, carrier, status, origin_city, origin_state, dest_city, dest_state, ship_date,
     delivery_date, amount, weight, updated_at) = row
    origin, dest = origin_state.upper(), dest_state.upper()
    return (id_, customer, carrier, status, origin_city, origin, dest_city, dest, ship_date,
            delivery_date or None, int(Decimal(amount) * _HUNDRED), int(weight), updated_at, f"{origin}-{dest}")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


def _create(db: sqlite3.Connection) -> None:
    cols = ", ".join(f"{name} {kind}" for name, kind in zip(COLUMNS, TYPES, strict=True))
    db.execute(f"CREATE TABLE IF NOT EXISTS loads ({cols}, PRIMARY KEY (id))")


def run(input_path: Path, db_path: Path, state_path: Path) -> dict[str, int]:
    """Sync the export into ``db_path``; returns creates, updates, deletes and unchanged counts."""
    state = _connect(state_path)
    state.execute("CREATE TABLE IF NOT EXISTS hashes (id TEXT PRIMARY KEY, hash BLOB NOT NULL) WITHOUT ROWID")
    known: dict[str, bytes] = dict(state.execute("SELECT id, hash FROM hashes"))
    counts = {"read": 0, "creates": 0, "updates": 0, "deletes": 0, "unchanged": 0}
    new_hashes: list[tuple[str, bytes]] = []
    db: sqlite3.Connection | None = None
    upsert = (f"INSERT INTO loads ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
              f"ON CONFLICT (id) DO UPDATE SET "
              + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:]))
    remember = ("INSERT INTO hashes (id, hash) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET hash = excluded.hash")
    pending: list[tuple[Any, ...]] = []
    blake = hashlib.blake2b

    def flush() -> sqlite3.Connection:
        # Open the destination only once there is something to write; each database keeps one
        # transaction, and the hashes commit after the destination did.
        nonlocal db, pending, new_hashes
        if db is None:
            db = _connect(db_path)
            _create(db)
            db.execute("BEGIN IMMEDIATE")
            state.execute("BEGIN IMMEDIATE")
        db.executemany(upsert, pending)
        state.executemany(remember, new_hashes)
        pending, new_hashes = [], []
        return db

    with input_path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            counts["read"] += 1
            mapped = map_row(row)
            key = mapped[0]
            digest = blake(repr(mapped).encode(), digest_size=16).digest()
            old = known.pop(key, None)
            if old == digest:
                counts["unchanged"] += 1
                continue
            counts["updates" if old is not None else "creates"] += 1
            new_hashes.append((key, digest))
            pending.append(mapped)
            if len(pending) >= CHUNK:
                flush()
    gone = [(k,) for k in known]  # what is left in the table was not in the export
    counts["deletes"] = len(gone)
    if pending or gone or db is not None:
        target = flush()
        target.executemany("DELETE FROM loads WHERE id = ?", gone)
        target.execute("COMMIT")
        target.close()
        state.executemany("DELETE FROM hashes WHERE id = ?", gone)
        state.execute("COMMIT")
    state.close()
    return counts
