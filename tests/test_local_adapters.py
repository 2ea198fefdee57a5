"""The CSV, JSON Lines and SQLite adapters through the CLI: real files, real databases."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import csv_to_sqlite, rows, syncengine


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a file and return its path."""
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_with_bom_quotes_line_breaks_accents_and_a_glob(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "a.csv", "\ufeffid,name,note\r\n007,\"Smith, \"\"Jr\"\"\",\"two\r\nlines\"\r\n"
                                     "008,Bélanger,\r\n", "utf-8")
    write(tmp_path / "in" / "b.csv", "id,name,note\n009,Zoë,x\n")
    write(tmp_path / "in" / "ignored.txt", "not csv")
    pipeline = csv_to_sqlite(tmp_path, "people", source='{type: csv, path: "in/*.csv"}')
    result = syncengine("apply", pipeline)
    assert result.code == 0 and "people: 3 creates" in result.out, result.text
    assert rows(tmp_path / "out.db", "SELECT id, name, note FROM people ORDER BY id") == [
        ("007", 'Smith, "Jr"', "two\r\nlines"), ("008", "Bélanger", ""), ("009", "Zoë", "x")]


def test_csv_encoding_and_delimiter_and_a_bad_row(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id;city\n1;Düsseldorf\n2;Köln;extra\n3;Zürich\n", "cp1252")
    pipeline = csv_to_sqlite(tmp_path, "cities", source='{type: csv, path: in.csv, encoding: cp1252, delimiter: ";"}',
                             extra="    mode: mirror\n")
    result = syncengine("apply", pipeline)
    assert result.code == 1, result.text
    assert "cities: 2 creates, 0 updates, 0 deletes, 1 errors" in result.out
    assert "in.csv line 3: 3 fields where the header has 2" in result.out
    assert "deletes skipped" not in result.out  # nothing known yet, so nothing to protect
    assert rows(tmp_path / "out.db", "SELECT city FROM cities ORDER BY id") == [("Düsseldorf",), ("Zürich",)]


def test_wrong_encoding_fails_the_run_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id,city\n1,Düsseldorf\n", "cp1252")
    pipeline = csv_to_sqlite(tmp_path, "cities")
    result = syncengine("apply", pipeline)
    assert result.code == 3
    assert "cities: failed: in.csv: not utf-8-sig text (invalid start byte at byte 11); set encoding" in result.out
    assert not (tmp_path / "out.db").exists()


def test_jsonl_source_keeps_nested_values(tmp_path: Path) -> None:
    write(tmp_path / "orders.jsonl", json.dumps({"po": "P1", "lines": [{"sku": "A", "qty": 2}]}) + "\n\n"
          + "not json\n" + json.dumps({"po": "P2", "lines": []}) + "\n")
    pipeline = write(tmp_path / "p.yml", """\
version: 1
sources:
  feed: {type: jsonl, path: orders.jsonl}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  orders:
    source: feed
    destination: {name: db, table: orders, create_table: true}
    key: po
    mapping:
      fields:
        po: "{{ record.po }}"
        units: "{{ record.lines | sum(attribute='qty') }}"
        lines: "{{ record.lines }}"
""")
    result = syncengine("apply", pipeline)
    assert result.code == 1 and "orders.jsonl line 3: not JSON" in result.out, result.text
    assert rows(tmp_path / "out.db", "SELECT po, units, lines FROM orders ORDER BY po") == [
        ("P1", 2, '[{"sku": "A", "qty": 2}]'), ("P2", 0, "[]")]


def make_source_db(path: Path) -> None:
    """A source database with an updated_at cursor column."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (sku TEXT PRIMARY KEY, qty INTEGER, updated_at TEXT)")
    con.executemany("INSERT INTO items VALUES (?, ?, ?)",
                    [("A", 1, "2026-01-01T00:00"), ("B", 2, "2026-01-02T00:00"), ("C", 3, "2026-01-03T00:00")])
    con.commit()
    con.close()


INCREMENTAL = """\
version: 1
sources:
  shop: {type: sqlite, path: shop.db}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  items:
    source: {name: shop, table: items, cursor: updated_at}
    destination: {name: db, table: stock, create_table: true}
    key: sku
    scope: increment
"""


def test_sqlite_source_reads_from_its_cursor(tmp_path: Path) -> None:
    make_source_db(tmp_path / "shop.db")
    pipeline = write(tmp_path / "p.yml", INCREMENTAL)
    first = json.loads(syncengine("apply", pipeline, "--json").out)["syncs"]["items"]
    assert (first["read"], first["creates"], first["cursor"]) == (3, 3, '"2026-01-03T00:00"')
    con = sqlite3.connect(tmp_path / "shop.db")
    con.execute("UPDATE items SET qty = 9, updated_at = '2026-01-04T00:00' WHERE sku = 'A'")
    con.commit()
    con.close()
    second = json.loads(syncengine("apply", pipeline, "--json").out)["syncs"]["items"]
    # Rows at or after the cursor: C again (unchanged) and A (updated); B is not read at all.
    assert (second["read"], second["updates"], second["unchanged"]) == (2, 1, 1)
    since = json.loads(syncengine("apply", pipeline, "--since", "2026-01-01T00:00", "--json").out)["syncs"]["items"]
    assert (since["read"], since["unchanged"]) == (3, 3)
    assert rows(tmp_path / "out.db", "SELECT sku, qty FROM stock ORDER BY sku") == [("A", 9), ("B", 2), ("C", 3)]
    status = json.loads(syncengine("status", pipeline, "--json").out)
    assert status[0]["cursor"] == '"2026-01-04T00:00"'


def test_sqlite_query_source_and_an_existing_table_without_the_column(tmp_path: Path) -> None:
    make_source_db(tmp_path / "shop.db")
    con = sqlite3.connect(tmp_path / "out.db")
    con.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER)")
    con.close()
    pipeline = write(tmp_path / "p.yml", """\
version: 1
sources:
  shop: {type: sqlite, path: shop.db}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  items:
    source: {name: shop, query: "SELECT sku, qty * 10 AS qty, 'x' AS extra FROM items WHERE qty > 1"}
    destination: {name: db, table: stock}
    key: sku
""")
    result = syncengine("apply", pipeline)
    assert result.code == 3
    assert "items: failed: table stock has no column extra; add it, or set create_table: true to have it added" \
        in result.out
    assert rows(tmp_path / "out.db", "SELECT count(*) FROM stock") == [(0,)]
    pipeline.write_text(pipeline.read_text().replace("{name: db, table: stock}",
                                                     "{name: db, table: stock, create_table: true}"))
    assert syncengine("apply", pipeline).code == 0
    assert rows(tmp_path / "out.db", "SELECT sku, qty, extra FROM stock ORDER BY sku") == [
        ("B", 20, "x"), ("C", 30, "x")]


def test_a_missing_environment_variable_stops_before_anything_runs(tmp_path: Path) -> None:
    pipeline = write(tmp_path / "p.yml", """\
version: 1
sources:
  files: {type: csv, path: "{{ env.SYNCENGINE_TEST_MISSING_INPUT }}"}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  one:
    source: files
    destination: {name: db, table: one, create_table: true}
    key: id
  two:
    source: files
    destination: {name: db, table: two, create_table: true}
    key: id
""")
    result = syncengine("apply", pipeline)
    assert result.code == 2
    assert result.text.splitlines() == [
        f"error: {pipeline}:3:28: sources.files.path: environment variable 'SYNCENGINE_TEST_MISSING_INPUT' is not set"]
    assert not (tmp_path / "out.db").exists() and not (tmp_path / ".syncengine").exists()


def test_a_header_with_a_repeated_column_fails_the_run(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id,name,name\n1,a,b\n")
    pipeline = csv_to_sqlite(tmp_path, "people")
    result = syncengine("apply", pipeline)
    assert result.code == 3 and "people: failed: in.csv: the header names 'name' more than once" in result.out
    assert not (tmp_path / "out.db").exists()
