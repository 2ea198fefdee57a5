"""The mass-delete guard, a template failing on one record, dead letters and their retry."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import rows, syncengine


def keep_rows(csv_file: Path, keep: int) -> None:
    """Keep the header and the first ``keep`` data rows."""
    lines = csv_file.read_text(encoding="utf-8").splitlines(keepends=True)
    csv_file.write_text("".join(lines[: keep + 1]), encoding="utf-8")


def test_mass_delete_guard_stops_before_deleting_unless_forced(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    keep_rows(quickstart.parent / "customers.csv", 2)
    db = quickstart.parent / "out" / "warehouse.db"
    stopped = syncengine("apply", quickstart)
    assert stopped.code == 3, stopped.text
    assert ("customers: failed: would delete 3 of 5 known records (60%), more than the allowed 50%; "
            "nothing was deleted") in stopped.out
    assert len(rows(db, "SELECT * FROM customers")) == 5
    history = json.loads(syncengine("history", quickstart, "--json").out)
    assert history[0]["status"] == "failed" and history[0]["deletes"] == 0
    forced = syncengine("apply", quickstart, "--force-deletes")
    assert forced.code == 0, forced.text
    assert "customers: 0 creates, 0 updates, 3 deletes, 0 errors" in forced.out
    assert len(rows(db, "SELECT * FROM customers")) == 2


def test_guard_share_is_configurable(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    text = quickstart.read_text(encoding="utf-8").replace("    scope: snapshot\n",
                                                          "    scope: snapshot\n    max_delete_share: 0.7\n")
    quickstart.write_text(text, encoding="utf-8")
    keep_rows(quickstart.parent / "customers.csv", 2)
    result = syncengine("apply", quickstart)
    assert result.code == 0 and "3 deletes" in result.out, result.text


def test_a_template_failing_on_one_record_is_dead_lettered_and_the_rest_lands(quickstart: Path) -> None:
    csv_file = quickstart.parent / "customers.csv"
    csv_file.write_text(csv_file.read_text(encoding="utf-8").replace("8,500.50", "lots"), encoding="utf-8")
    result = syncengine("apply", quickstart)
    assert result.code == 1, result.text
    assert "customers: 4 creates, 0 updates, 0 deletes, 1 errors" in result.out
    mapping_line = next(i for i, line in enumerate(
        (Path(__file__).parents[1] / "mappings" / "customers.yml").read_text().splitlines(), 1)
        if line.startswith("  credit_limit_cents:"))
    assert (f"record error: key 'C002', field 'credit_limit_cents' (mappings/customers.yml:{mapping_line}): "
            "'lots' is not a decimal number") in result.out.replace(str(Path(__file__).parents[1]) + "/", "")
    db = quickstart.parent / "out" / "warehouse.db"
    assert [r[0] for r in rows(db, "SELECT customer_id FROM customers ORDER BY 1")] == ["C001", "C003", "C004", "C005"]
    letters = json.loads(syncengine("dead-letters", quickstart, "--json").out)
    assert [(d["key"], d["field"]) for d in letters] == [("C002", "credit_limit_cents")]

    # The next run retries it: still broken, it stays (one more attempt); fixed, it lands and leaves the store.
    again = syncengine("apply", quickstart)
    assert again.code == 1 and "0 creates, 0 updates, 0 deletes, 1 errors" in again.out
    assert json.loads(syncengine("dead-letters", quickstart, "--json").out)[0]["attempts"] == 2
    csv_file.write_text(csv_file.read_text(encoding="utf-8").replace("lots", "8500.50"), encoding="utf-8")
    fixed = syncengine("apply", quickstart)
    assert fixed.code == 0 and "customers: 1 creates, 0 updates, 0 deletes, 0 errors" in fixed.out, fixed.text
    assert json.loads(syncengine("dead-letters", quickstart, "--json").out) == []


def test_a_failed_record_in_a_snapshot_is_not_deleted(quickstart: Path) -> None:
    assert syncengine("apply", quickstart).code == 0
    csv_file = quickstart.parent / "customers.csv"
    csv_file.write_text(csv_file.read_text(encoding="utf-8").replace("au,H", "au,Q"), encoding="utf-8")
    result = syncengine("apply", quickstart)
    assert result.code == 1
    assert "0 deletes, 1 errors" in result.out
    assert "key 'C005', field 'status'" in result.out and "'Q' is not in the value map" in result.out
    db = quickstart.parent / "out" / "warehouse.db"
    assert rows(db, "SELECT status FROM customers WHERE customer_id = 'C005'") == [("On hold",)]


def test_dead_letters_of_a_window_are_retried_from_the_stored_record(tmp_path: Path) -> None:
    data = tmp_path / "orders.jsonl"
    data.write_text('{"id": 1, "total": "10.00"}\n{"id": 2, "total": "oops"}\n', encoding="utf-8")
    pipeline = tmp_path / "orders.yml"
    pipeline.write_text("""\
version: 1
sources:
  feed: {type: jsonl, path: orders.jsonl}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  orders:
    source: feed
    destination: {name: db, table: orders, create_table: true}
    scope: increment
    key: id
    mapping:
      fields:
        id: "{{ record.id }}"
        total_cents: "{{ record.total | cents }}"
""", encoding="utf-8")
    first = syncengine("apply", pipeline)
    assert first.code == 1 and "1 creates, 0 updates, 0 deletes, 1 errors" in first.out, first.text
    # The increment moves on: the next file no longer holds order 2. Its dead letter is retried from the
    # stored record (and fails again, as the data is the same); the retry command reports it too.
    data.write_text('{"id": 3, "total": "5"}\n', encoding="utf-8")
    second = syncengine("apply", pipeline)
    assert "1 creates, 0 updates, 0 deletes, 1 errors" in second.out, second.text
    letters = json.loads(syncengine("dead-letters", pipeline, "--json").out)
    assert [(d["key"], d["attempts"]) for d in letters] == [("2", 2)]
    retried = syncengine("retry", pipeline, "--sync", "orders")
    assert retried.code == 1 and "key '2', field 'total_cents'" in retried.out
    assert rows(tmp_path / "out.db", "SELECT id, total_cents FROM orders ORDER BY id") == [(1, 1000), (3, 500)]


def test_dead_letters_survive_a_snapshot_read_from_a_cursor(tmp_path: Path) -> None:
    import sqlite3

    con = sqlite3.connect(tmp_path / "src.db")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, amount TEXT, ver INTEGER)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, "10", 1), (2, "oops", 2), (3, "30", 3)])
    con.commit()
    con.close()
    pipeline = tmp_path / "p.yml"
    pipeline.write_text("""\
version: 1
sources:
  src: {type: sqlite, path: src.db}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  s:
    source: {name: src, table: t, cursor: ver}
    destination: {name: db, table: t, create_table: true}
    key: id
    mapping:
      fields:
        id: "{{ record.id }}"
        amount: "{{ record.amount | decimal(2) }}"
""", encoding="utf-8")
    assert "2 creates, 0 updates, 0 deletes, 1 errors" in syncengine("apply", pipeline).out
    # The next read starts at the cursor and no longer brings row 2: its dead letter is replayed, not dropped.
    again = syncengine("apply", pipeline)
    assert "1 errors" in again.out, again.text
    letters = json.loads(syncengine("dead-letters", pipeline, "--json").out)
    assert [(d["key"], d["attempts"]) for d in letters] == [("2", 2)]


def test_unreadable_rows_are_dead_lettered_apart_and_dropped_once_gone(quickstart: Path) -> None:
    csv_file = quickstart.parent / "customers.csv"
    good = csv_file.read_text(encoding="utf-8")
    csv_file.write_text(good + "C006,Broken,row\nC007,Also,broken,row,here\n", encoding="utf-8")
    first = syncengine("apply", quickstart)
    assert first.code == 1 and "5 creates, 0 updates, 0 deletes, 2 errors" in first.out, first.text
    letters = json.loads(syncengine("dead-letters", quickstart, "--json").out)
    assert len({d["key"] for d in letters}) == 2 and all(d["key"].startswith("(no key) ") for d in letters)
    assert sorted(d["action"] for d in letters) == ["unreadable", "unreadable"]
    again = syncengine("apply", quickstart)
    assert "2 errors" in again.out
    assert sorted(d["attempts"] for d in json.loads(syncengine("dead-letters", quickstart, "--json").out)) == [2, 2]
    csv_file.write_text(good, encoding="utf-8")
    fixed = syncengine("apply", quickstart)
    assert fixed.code == 0, fixed.text
    assert json.loads(syncengine("dead-letters", quickstart, "--json").out) == []


def test_plan_samples_mask_secrets(quickstart: Path) -> None:
    text = quickstart.read_text(encoding="utf-8").replace(
        'source_system: "quickstart-csv"', 'source_system: "quickstart-{{ env.QS_API_TOKEN }}"')
    quickstart.write_text(text, encoding="utf-8")
    result = syncengine("plan", quickstart, env={"QS_API_TOKEN": "s3cret-value-42"})
    assert result.code == 0, result.text
    assert "s3cret-value-42" not in result.text and '"source_system": "quickstart-***"' in result.out
