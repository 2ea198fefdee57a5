"""A ``kill -9`` in the middle of a run loses nothing and resends at most the batch in flight."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import rows, syncengine

ROWS = 100_000
BATCH = 1_000

PIPELINE = f"""\
version: 1
name: crash
sources:
  loads: {{type: csv, path: loads.csv}}
destinations:
  db: {{type: sqlite, path: out.db}}
syncs:
  loads:
    source: loads
    destination: {{name: db, table: loads, create_table: true}}
    key: id
    mode: mirror
    scope: snapshot
    batch_size: {BATCH}
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        city: "{{{{ record.city | upper }}}}"
        amount_cents: "{{{{ record.amount | cents }}}}"
"""


def write_source(path: Path, version: int) -> dict[str, tuple[str, int]]:
    """The CSV, and the rows the destination must end with."""
    expected: dict[str, tuple[str, int]] = {}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "city", "amount"])
        for i in range(ROWS):
            key = f"L{i:07d}"
            amount = (i * 7 + version) % 100_000
            writer.writerow([key, f"city{i % 97}", f"{amount / 100:.2f}"])
            expected[key] = (f"CITY{i % 97}", amount)
    return expected


def destination_count(db: Path) -> int:
    """Rows in the destination so far (0 while it does not exist yet)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=5)
    try:
        return int(con.execute("SELECT count(*) FROM loads").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def kill_mid_run(pipeline: Path, db: Path, at_least: int) -> None:
    """Start an apply and SIGKILL it once the destination holds ``at_least`` more rows than at the start."""
    start = destination_count(db)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while destination_count(db) < start + at_least:
            assert proc.poll() is None, "the run finished before it could be killed; raise ROWS"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def state_known(pipeline: Path) -> int:
    """Records the state store holds for the sync."""
    return int(rows(pipeline.parent / ".syncengine" / "state.db", "SELECT count(*) FROM records")[0][0])


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    expected = write_source(tmp_path / "loads.csv", 1)
    db = tmp_path / "out.db"

    kill_mid_run(pipeline, db, at_least=5 * BATCH)
    written, known = destination_count(db), state_known(pipeline)
    assert 0 < known < ROWS
    # Everything the state records is at the destination; at most the batch in flight is there unrecorded.
    assert 0 <= written - known <= BATCH

    resumed = json.loads(syncengine("apply", pipeline, "--json").out)["syncs"]["loads"]
    assert resumed["status"] == "ok"
    # Only what the state did not acknowledge is sent again.
    assert resumed["creates"] + resumed["updates"] == ROWS - known
    assert resumed["unchanged"] == known
    assert {r[0]: (r[1], r[2]) for r in rows(db, "SELECT id, city, amount_cents FROM loads")} == expected

    # A second crash, during a run that updates every row, converges the same way.
    expected = write_source(tmp_path / "loads.csv", 2)
    before = destination_count(db)
    # Updates do not move the row count, so watch the run's acknowledged progress in the state instead.
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        history = pipeline.parent / ".syncengine" / "state.db"
        deadline = time.monotonic() + 60
        while True:
            progress = rows(history, "SELECT updates FROM runs ORDER BY id DESC LIMIT 1")
            if progress and progress[0][0] >= 5 * BATCH:
                break
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert destination_count(db) == before == ROWS
    final = json.loads(syncengine("apply", pipeline, "--json").out)["syncs"]["loads"]
    assert final["status"] == "ok" and final["creates"] == 0 and final["deletes"] == 0
    assert 0 < final["updates"] <= ROWS - 5 * BATCH + BATCH
    assert {r[0]: (r[1], r[2]) for r in rows(db, "SELECT id, city, amount_cents FROM loads")} == expected
