"""Held records (outcome unknown, at most once), grouped rows, and destination output checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import memory_adapters as mem
import pytest
from conftest import rows, syncengine
from memory_adapters import World, run

from engine import api
from engine.config import Pipeline, load_pipeline
from engine.state_store import StateStore

PIPELINE = """\
version: 1
sources:
  src: {type: memory, dataset: notes}
destinations:
  dst: {type: memory}
syncs:
  notes:
    source: src
    destination: dst
    key: id
    scope: increment
"""


@pytest.fixture(autouse=True)
def fresh_world() -> Iterator[World]:
    """Each test gets an empty world."""
    mem.WORLD = World()
    yield mem.WORLD


def notes(world: World, *ids: str) -> None:
    world.records["notes"] = [{"id": i, "amount": f"{i}.00"} for i in ids]


def loaded(path: Path) -> Pipeline:
    """The pipeline loaded against the memory adapters (the API takes it loaded)."""
    return load_pipeline(path, mem.REGISTRY)


def state_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    return rows(path.parent / ".syncengine" / "state.db", sql)


def test_an_unknown_outcome_is_held_and_never_sent_again_until_decided(tmp_path: Path, fresh_world: World) -> None:
    path = tmp_path / "p.yml"
    path.write_text(PIPELINE, encoding="utf-8")
    notes(fresh_world, "1", "2", "3")
    fresh_world.unknown = {"2"}
    first = run(path)
    assert first.syncs["notes"].counts["creates"] == 2
    assert first.syncs["notes"].unknown == 1
    assert [w[1] for w in fresh_world.writes] == ["1", "2", "3"]
    assert state_rows(path, "SELECT key, state FROM dead_letters") == [("2", "unknown")]

    fresh_world.unknown = set()
    fresh_world.writes.clear()
    second = run(path)  # the record comes again from the source: it stays held
    assert fresh_world.writes == []
    assert second.syncs["notes"].counts["skipped"] == 1
    assert any("1 record(s) are held" in n for n in second.syncs["notes"].notes)
    retried = api.retry(loaded(path), "notes")  # a retry does not resend it either
    assert fresh_world.writes == [] and retried.syncs["notes"].counts["read"] == 0
    assert [d.state for d in api.dead_letters(loaded(path))] == ["unknown"]
    assert api.status(loaded(path))[0].held == 1


def test_mark_sent_records_the_sent_hash_and_discard_lets_it_be_sent_again(tmp_path: Path,
                                                                          fresh_world: World) -> None:
    path = tmp_path / "p.yml"
    path.write_text(PIPELINE, encoding="utf-8")
    notes(fresh_world, "1", "2")
    fresh_world.unknown = {"1", "2"}
    run(path)
    fresh_world.unknown = set()
    fresh_world.writes.clear()
    with pytest.raises(Exception, match="no held dead letter"):
        api.discard_dead_letters(loaded(path), "notes", ["9"], sent=True)
    assert api.discard_dead_letters(loaded(path), "notes", ["1"], sent=True) == 1
    assert api.discard_dead_letters(loaded(path), "notes", ["2"]) == 1
    report = run(path)
    assert [w[1] for w in fresh_world.writes] == ["2"]  # 1 was marked as sent, 2 is sent again
    assert report.syncs["notes"].counts["unchanged"] == 1
    assert api.dead_letters(loaded(path)) == []


def test_at_most_once_holds_changes_in_flight_when_the_process_dies(tmp_path: Path, fresh_world: World) -> None:
    path = tmp_path / "p.yml"
    path.write_text(PIPELINE, encoding="utf-8")
    notes(fresh_world, "1", "2", "3", "4")
    fresh_world.at_most_once = True
    # The batch (max 3) of 1, 2, 3 goes two at a time (in_flight): 1 and 2 are answered, then the process dies
    # sending 3. Only what was in flight is in doubt, never the whole batch.
    fresh_world.crash_at = "3"
    crashed = run(path)
    assert crashed.syncs["notes"].status == "failed"
    assert sorted(fresh_world.table) == ["1", "2"]
    held = state_rows(path, "SELECT key FROM dead_letters WHERE state = 'unknown' ORDER BY key")
    assert held == [("3",)]
    fresh_world.crash_at = None
    fresh_world.writes.clear()
    run(path)
    assert [w[1] for w in fresh_world.writes] == ["4"]  # nothing in doubt was sent again


def test_answers_replace_the_hold_of_an_at_most_once_destination(tmp_path: Path, fresh_world: World) -> None:
    path = tmp_path / "p.yml"
    path.write_text(PIPELINE, encoding="utf-8")
    notes(fresh_world, "1", "2", "3")
    fresh_world.at_most_once = True
    fresh_world.reject = {"2": "bad amount"}
    report = run(path)
    assert report.syncs["notes"].counts["creates"] == 2
    assert state_rows(path, "SELECT key, state, error LIKE '%bad amount%' FROM dead_letters") == [("2", "failed", 1)]
    fresh_world.reject = {}
    fresh_world.writes.clear()
    run(path)
    assert [w[1] for w in fresh_world.writes] == ["2"]  # a plain failure is retried as usual


def test_older_state_gains_the_dead_letter_state_column(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE dead_letters (stream_id INTEGER NOT NULL, key TEXT NOT NULL, action TEXT, "
                "record TEXT, payload TEXT, error TEXT NOT NULL, field TEXT, location TEXT, attempts INTEGER NOT "
                "NULL DEFAULT 1, first_failed_at TEXT NOT NULL, last_failed_at TEXT NOT NULL, PRIMARY KEY "
                "(stream_id, key)) WITHOUT ROWID")
    con.execute("INSERT INTO dead_letters VALUES (1, 'k', 'create', NULL, NULL, 'boom', NULL, NULL, 1, 't', 't')")
    con.commit()
    con.close()
    store = StateStore(db)
    try:
        assert [d.state for d in store.dead_letters(1)] == ["failed"]
        assert store.held_keys(1) == set()
    finally:
        store.close()


# --- group: ------------------------------------------------------------------------------------------

GROUPED = """\
version: 1
sources:
  files: {type: csv, path: lines.csv}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  orders:
    source: files
    destination: {name: db, table: orders, create_table: true}
    key: PONumber
    mapping:
      fields:
        PONumber: "{{ record.po }}"
        Delivery:
          City: "{{ record.city }}"
      group:
        by: po
        into: Delivery.Lines
        fields:
          Barcode: "{{ record.barcode }}"
          Units: "{{ record.qty | int }}"
"""


def write_lines(folder: Path, lines: list[str]) -> None:
    (folder / "lines.csv").write_text("po,city,barcode,qty\n" + "".join(f"{line}\n" for line in lines),
                                      encoding="utf-8")


def orders(folder: Path) -> dict[str, dict[str, object]]:
    return {po: json.loads(str(delivery)) for po, delivery in rows(folder / "out.db", "SELECT * FROM orders")}


def test_adjacent_rows_become_one_record_with_their_items(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(GROUPED, encoding="utf-8")
    write_lines(tmp_path, ["P1,London,B1,1", "P1,London,B2,2", "P2,Paris,B1,5", "P3,Rome,B3,1"])
    result = syncengine("apply", "p.yml", "--json", cwd=tmp_path)
    assert result.code == 0, result.text
    assert orders(tmp_path) == {
        "P1": {"City": "London", "Lines": [{"Barcode": "B1", "Units": 1}, {"Barcode": "B2", "Units": 2}]},
        "P2": {"City": "Paris", "Lines": [{"Barcode": "B1", "Units": 5}]},
        "P3": {"City": "Rome", "Lines": [{"Barcode": "B3", "Units": 1}]}}
    again = syncengine("apply", "p.yml", "--json", cwd=tmp_path)
    assert json.loads(again.out)["syncs"]["orders"]["unchanged"] == 3
    write_lines(tmp_path, ["P1,London,B1,1", "P1,London,B2,3", "P2,Paris,B1,5", "P3,Rome,B3,1"])
    changed = json.loads(syncengine("apply", "p.yml", "--json", cwd=tmp_path).out)["syncs"]["orders"]
    assert (changed["updates"], changed["unchanged"]) == (1, 2)  # one line changed: only its order is sent


def test_a_bad_item_names_its_index_and_field_and_the_others_land(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(GROUPED, encoding="utf-8")
    write_lines(tmp_path, ["P1,London,B1,1", "P1,London,B2,two", "P2,Paris,B1,5"])
    result = syncengine("apply", "p.yml", cwd=tmp_path)
    assert result.code == 1
    assert "key 'P1', field 'Delivery.Lines[1].Units' (p.yml:" in result.text
    assert list(orders(tmp_path)) == ["P2"]


def test_a_group_split_by_another_is_an_error_not_a_second_record(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(GROUPED, encoding="utf-8")
    write_lines(tmp_path, ["P1,London,B1,1", "P2,Paris,B1,5", "P1,London,B2,2"])
    result = syncengine("apply", "p.yml", cwd=tmp_path)
    assert result.code == 1
    assert "rows of group 'P1' are not together" in result.text and "sort the source by po" in result.text
    assert orders(tmp_path)["P1"]["Lines"] == [{"Barcode": "B1", "Units": 1}]


def test_group_into_an_existing_field_is_a_validation_error(tmp_path: Path) -> None:
    text = GROUPED.replace("        Delivery:\n", "        Lines: x\n        Delivery:\n").replace(
        "into: Delivery.Lines", "into: Lines")
    (tmp_path / "p.yml").write_text(text, encoding="utf-8")
    write_lines(tmp_path, ["P1,London,B1,1"])
    result = syncengine("validate", "p.yml", cwd=tmp_path)
    assert result.code == 2
    assert "'Lines' is both a field and the group's `into`" in result.text
