"""The quick start end to end through the CLI: creates, the no-op rerun, one update, one delete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import rows, syncengine


def digest(path: Path) -> str:
    """Content hash of a database file and its write-ahead log."""
    h = hashlib.sha256(path.read_bytes())
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        h.update(wal.read_bytes())
    return h.hexdigest()


def test_first_run_creates_then_rerun_is_a_no_op(quickstart: Path) -> None:
    first = syncengine("apply", quickstart)
    assert first.code == 0, first.text
    assert "customers: 5 creates, 0 updates, 0 deletes, 0 errors" in first.out
    db = quickstart.parent / "out" / "warehouse.db"
    assert rows(db, "SELECT customer_id, country, credit_limit_cents FROM customers ORDER BY 1")[:2] == [
        ("C001", "US", 1500000), ("C002", "CA", 850050)]
    before = digest(db)
    second = syncengine("apply", quickstart)
    assert second.code == 0, second.text
    assert "customers: 0 creates, 0 updates, 0 deletes, 0 errors" in second.out
    assert digest(db) == before, "a run with nothing to do wrote to the destination"


def test_one_edited_row_is_one_update_and_one_removed_row_one_delete(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    csv_file = quickstart.parent / "customers.csv"
    text = csv_file.read_text(encoding="utf-8")
    csv_file.write_text(text.replace("Nordic Haulage", "Nordic Haulage AB"), encoding="utf-8")
    edited = syncengine("apply", quickstart)
    assert "customers: 0 creates, 1 updates, 0 deletes, 0 errors" in edited.out, edited.text
    db = quickstart.parent / "out" / "warehouse.db"
    assert rows(db, "SELECT name FROM customers WHERE customer_id = 'C003'") == [("Nordic Haulage AB",)]
    lines = csv_file.read_text(encoding="utf-8").splitlines(keepends=True)
    csv_file.write_text("".join(line for line in lines if not line.startswith("C005")), encoding="utf-8")
    removed = syncengine("apply", quickstart)
    assert "customers: 0 creates, 0 updates, 1 deletes, 0 errors" in removed.out, removed.text
    assert [r[0] for r in rows(db, "SELECT customer_id FROM customers ORDER BY 1")] == ["C001", "C002", "C003", "C004"]


def test_plan_shows_counts_and_samples_and_writes_nothing(quickstart: Path) -> None:
    result = syncengine("plan", quickstart, "--json")
    assert result.code == 0, result.text
    report = json.loads(result.out)
    sync = report["syncs"]["customers"]
    assert (sync["creates"], sync["updates"], sync["deletes"]) == (5, 0, 0)
    assert sync["samples"]["create"][0]["values"]["customer_id"] == "C001"
    assert not (quickstart.parent / "out").exists(), "plan created the destination"
    assert not (quickstart.parent / ".syncengine").exists(), "plan created the state store"


def test_plan_after_apply_reports_the_pending_change(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    csv_file = quickstart.parent / "customers.csv"
    csv_file.write_text(csv_file.read_text(encoding="utf-8").replace("au,H", "au,A"), encoding="utf-8")
    db = quickstart.parent / "out" / "warehouse.db"
    state = quickstart.parent / ".syncengine" / "state.db"
    before, state_before = digest(db), digest(state)
    report = json.loads(syncengine("plan", quickstart, "--json").out)["syncs"]["customers"]
    assert (report["creates"], report["updates"], report["unchanged"]) == (0, 1, 4)
    assert report["samples"]["update"][0]["values"]["status"] == "Active"
    assert digest(db) == before
    assert digest(state) == state_before, "plan wrote to the state store"
    applied = syncengine("apply", quickstart)
    assert "customers: 0 creates, 1 updates, 0 deletes" in applied.out


def test_full_refresh_resends_everything_without_wiping(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    result = json.loads(syncengine("apply", quickstart, "--full-refresh", "--json").out)["syncs"]["customers"]
    assert (result["creates"], result["updates"], result["deletes"]) == (0, 5, 0)
    db = quickstart.parent / "out" / "warehouse.db"
    assert len(rows(db, "SELECT * FROM customers")) == 5


def test_status_and_history_show_the_runs(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    assert syncengine("apply", quickstart).code == 0
    status = json.loads(syncengine("status", quickstart, "--json").out)
    assert status[0]["sync"] == "customers" and status[0]["known"] == 5 and status[0]["dead_letters"] == 0
    history = json.loads(syncengine("history", quickstart, "--json").out)
    assert [h["creates"] for h in history] == [0, 5]
    assert all(h["status"] == "ok" and h["seconds"] is not None for h in history)
