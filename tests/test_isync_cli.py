"""The iSync adapters end to end: the ``syncengine`` command as a real process against a real :class:`ISyncServer`.

The server runs in this process (a background thread), so every assertion can look at what it stored and
what it was asked; the CLI runs as a subprocess, exactly as a user runs it. Covered: the catalogue read
incrementally across ties at the cursor (with the server comparing ``>`` and ``>=``), orders grouped from
CSV lines and their SalesOrderIDs in the state, orders under injected transport failures and after a
``kill -9`` (each order exactly once), business errors as dead letters, two processes contending for one
user's session, credit notes sent at most once (held, then decided), validation of the mapping against the
DataContract, and a wrong password that is never printed.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Result, apply_json, counts, dead_letters_json, rows, syncengine
from servers.isync_server import ISyncServer

PASSWORD = "s3cret"
ENV = {"ISYNC_PASSWORD": PASSWORD}
FIRST_ORDER_ID = 33534  # the server numbers SalesOrderIDs from here, one per order it stores
T0 = datetime(2024, 3, 1, 9, 0, 0)
T1 = datetime(2024, 3, 1, 10, 0, 0)
T2 = datetime(2024, 3, 1, 10, 30, 0)

ORDER_MAPPING = """\
    mapping:
      fields:
        PONumber: "{{ record.po }}"
        TrackNo: "{{ record.track }}"
        RequiredDate: "{{ record.required }}"
        StatusID: 3
        DeliveryDetail:
          AddressLine1: "{{ record.address | null_if_empty }}"
          City: "{{ record.city }}"
      group:
        by: po
        into: LineItems
        fields:
          CNTypeID: 0
          ExRate: 1
          SellingPrice: "{{ record.price }}"
          StatusID: 3
          ThirdPartyBarcode: "{{ record.barcode }}"
          Units: "{{ record.qty | int }}"
"""

NOTE_MAPPING = """\
    mapping:
      fields:
        Comments: "{{ record.comments }}"
        PONumber: "{{ record.po }}"
        Reference: "{{ record.cn }}"
        SalesOrderNumber: "{{ record.so }}"
        TrackNo: "{{ record.track }}"
      group:
        by: cn
        into: LineItems
        fields:
          CNTypeID: 0
          ExRate: 1
          SellingPrice: "{{ record.price }}"
          ThirdPartyBarcode: "{{ record.barcode }}"
          Units: "{{ record.qty }}"
"""

ORDER_COLUMNS = ["po", "track", "required", "address", "city", "barcode", "price", "qty"]
NOTE_COLUMNS = ["cn", "po", "so", "track", "comments", "barcode", "price", "qty"]


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The OS user's session-lock folder of the CLI runs, private to each test (not ~/.cache)."""
    folder = tmp_path / "user-locks"
    monkeypatch.setenv("SYNCENGINE_LOCK_DIR", str(folder))
    return folder


@contextmanager
def running(**options: Any) -> Iterator[ISyncServer]:
    """A started server; on the way out it must have had no internal error."""
    with ISyncServer(**options) as server:
        yield server
        assert server.internal_errors == []


def isync_block(server: ISyncServer, name: str = "isync", **settings: Any) -> str:
    """The YAML of an ``isync`` endpoint on ``server`` (the password from the environment)."""
    lines = [f"  {name}:", "    type: isync", f"    url: {server.url}", "    username: webstore",
             '    password: "{{ env.ISYNC_PASSWORD }}"', "    backoff: 0.05", "    max_backoff: 0.2"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def push_pipeline(folder: Path, server: ISyncServer, *, operation: str = "PersistWebSalesOrder",
                  data: str = "lines.csv", state: str | None = None, **settings: Any) -> Path:
    """A pipeline that sends CSV lines, grouped, to iSync: orders (key PONumber) or credit notes (key Reference)."""
    folder.mkdir(parents=True, exist_ok=True)
    orders = operation == "PersistWebSalesOrder"
    sync, key, mapping = ("orders", "PONumber", ORDER_MAPPING) if orders else ("notes", "Reference", NOTE_MAPPING)
    path = folder / "p.yml"
    path.write_text(
        "version: 1\n"
        + (f"state: {{path: {state}}}\n" if state else "")
        + f"sources:\n  files: {{type: csv, path: {data}}}\n"
        + "destinations:\n" + isync_block(server, **settings)
        + f"syncs:\n  {sync}:\n    source: files\n"
        + f"    destination: {{name: isync, operation: {operation}}}\n    key: {key}\n" + mapping,
        encoding="utf-8")
    return path


def make_orders(barcodes: list[str], n: int, *, prefix: str = "PO-", seed: int = 7) -> dict[str, list[dict[str, str]]]:
    """``n`` orders of 2 to 5 lines each, as CSV rows by PO number (rows of one order adjacent)."""
    rng = random.Random(seed)
    orders: dict[str, list[dict[str, str]]] = {}
    for i in range(n):
        po = f"{prefix}{i:04d}"
        orders[po] = [{"po": po, "track": f"TR{seed}-{i:05d}", "required": "2026-12-01T00:00:00",
                       "address": f"{i} Long Street", "city": "Cape Town", "barcode": rng.choice(barcodes),
                       "price": f"{rng.randint(1, 900)}.{rng.randint(0, 99):02d}", "qty": str(rng.randint(1, 5))}
                      for _ in range(rng.randint(2, 5))]
    return orders


def write_csv(path: Path, columns: list[str], groups: dict[str, list[dict[str, str]]]) -> int:
    """Every group's rows, group after group; returns the number of rows."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        count = 0
        for lines in groups.values():
            writer.writerows(lines)
            count += len(lines)
    return count


def apply(pipeline: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> tuple[Result, Any]:
    """``syncengine apply PIPELINE --json`` with this module's environment."""
    return apply_json(pipeline, *args, env=env or ENV, timeout=timeout)


def dead_letters(pipeline: Path) -> list[dict[str, Any]]:
    """``syncengine dead-letters PIPELINE --json`` with this module's environment."""
    return dead_letters_json(pipeline, ENV)


def remote_ids(state: Path, sync: str = "orders") -> dict[str, str | None]:
    """key -> remote_id of a sync's known records in a state database."""
    found = rows(state, "SELECT r.key, r.remote_id FROM records r JOIN streams s ON s.id = r.stream_id "
                        f"WHERE s.sync = '{sync}'")
    return {str(key): None if remote is None else str(remote) for key, remote in found}


def line_items(order: dict[str, Any]) -> list[tuple[str, Decimal, Decimal]]:
    """(barcode, units, price) of each line of an order the server stored."""
    return [(line["ThirdPartyBarcode"], line["Units"], line["SellingPrice"]) for line in order["LineItems"]]


def expected_items(lines: list[dict[str, str]]) -> list[tuple[str, Decimal, Decimal]]:
    """(barcode, units, price) of each CSV line as the server stores it (two decimals)."""
    cents = Decimal("0.01")
    return [(row["barcode"], Decimal(row["qty"]).quantize(cents), Decimal(row["price"]).quantize(cents))
            for row in lines]


def assert_orders_landed(server: ISyncServer, orders: dict[str, list[dict[str, str]]], state: Path,
                         *, first_id: int = FIRST_ORDER_ID) -> None:
    """Every order on the server exactly once, with its lines, and its SalesOrderID in the state."""
    assert sorted(server.orders) == sorted(orders)
    for po, lines in orders.items():
        stored = server.orders[po]
        assert line_items(stored) == expected_items(lines), po
        assert (stored["TrackNo"], stored["DeliveryDetail"]["AddressLine1"]) == (lines[0]["track"],
                                                                                 lines[0]["address"]), po
    # The server numbers each order it stores: n orders stored, no more, means ids first_id .. first_id + n - 1.
    ids = sorted(order["SalesOrderID"] for order in server.orders.values())
    assert ids == list(range(first_id, first_id + len(orders)))
    assert remote_ids(state) == {po: str(server.orders[po]["SalesOrderID"]) for po in orders}


# ---------------------------------------------------------------------------------------------- the catalogue

def catalogue_pipeline(folder: Path, server: ISyncServer) -> Path:
    """The product catalogue, read incrementally into a SQLite table keyed by barcode."""
    path = folder / "p.yml"
    path.write_text(
        "version: 1\nsources:\n" + isync_block(server)
        + "destinations:\n  db: {type: sqlite, path: out.db}\n"
        + "syncs:\n  catalogue:\n"
        + "    source: {name: isync, operation: GetProductStockCatalogue}\n"
        + "    destination: {name: db, table: products, create_table: true}\n"
        + "    key: ThirdPartyBarcode\n    scope: increment\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("comparison", [">", ">="])
def test_catalogue_increment_keeps_a_change_that_ties_the_cursor(tmp_path: Path, comparison: str) -> None:
    with running(timezone="America/New_York", comparison=comparison) as server:
        early = server.add_products(10, at=T0)
        late = server.add_products(20, at=T1)  # the newest stamp, shared by 20 products: the cursor's tie
        pipeline = catalogue_pipeline(tmp_path, server)
        first, report = apply(pipeline)
        assert first.code == 0, first.text
        assert counts(report, "catalogue") == {"read": 30, "creates": 30, "updates": 0, "deletes": 0,
                                               "unchanged": 0, "skipped": 0, "errors": 0}
        assert report["syncs"]["catalogue"]["cursor"] == T1.isoformat()  # the server's own (local, naive) time
        db = tmp_path / "out.db"
        assert rows(db, "SELECT COUNT(*) FROM products") == [(30,)]

        # One product moves in the very second of the cursor (a read with '>' from the cursor would miss it),
        # two move later; nothing else changes.
        server.touch(early[0], at=T1, Units=Decimal("77.00"))
        server.touch(early[1:3], at=T2, Units=Decimal("88.00"), Price=Decimal("1.50"))
        second, report = apply(pipeline)
        assert second.code == 0, second.text
        # Read from a second before the cursor: the 20 products of the tie again (unchanged, not resent),
        # the one that tied and the two later ones (updated).
        assert counts(report, "catalogue") == {"read": 23, "creates": 0, "updates": 3, "deletes": 0,
                                               "unchanged": 20, "skipped": 0, "errors": 0}
        assert report["syncs"]["catalogue"]["cursor"] == T2.isoformat()
        assert rows(db, "SELECT ThirdPartyBarcode, Units, AddedDate FROM products WHERE ThirdPartyBarcode IN "
                        f"('{early[0]}', '{early[1]}', '{early[2]}') ORDER BY ThirdPartyBarcode") == [
            (early[0], "77.00", T1.isoformat()), (early[1], "88.00", T2.isoformat()),
            (early[2], "88.00", T2.isoformat())]
        assert rows(db, f"SELECT Price FROM products WHERE ThirdPartyBarcode = '{early[1]}'") == [("1.50",)]
        assert rows(db, "SELECT COUNT(*) FROM products") == [(30,)]
        assert rows(db, f"SELECT COUNT(*) FROM products WHERE AddedDate = '{T0.isoformat()}'") == [(7,)]
        assert rows(db, f"SELECT COUNT(*) FROM products WHERE AddedDate = '{T1.isoformat()}'") == [(len(late) + 1,)]

        third, report = apply(pipeline)  # nothing moved: the overlap re-reads, nothing is written
        assert third.code == 0, third.text
        assert counts(report, "catalogue") == {"read": 2, "creates": 0, "updates": 0, "deletes": 0,
                                               "unchanged": 2, "skipped": 0, "errors": 0}
        assert server.calls["GetProductStockCatalogue"] == 3
        assert server.logins == 3


# ---------------------------------------------------------------------------------------------- orders

def test_orders_from_csv_lines_land_once_with_their_sales_order_ids(tmp_path: Path) -> None:
    with running() as server:
        barcodes = server.add_products(40, at=T0)
        orders = make_orders(barcodes, 200)
        lines = write_csv(tmp_path / "lines.csv", ORDER_COLUMNS, orders)
        assert 400 <= lines <= 1000
        pipeline = push_pipeline(tmp_path, server)
        first, report = apply(pipeline)
        assert first.code == 0, first.text
        assert counts(report, "orders") == {"read": 200, "creates": 200, "updates": 0, "deletes": 0,
                                            "unchanged": 0, "skipped": 0, "errors": 0}
        assert_orders_landed(server, orders, tmp_path / ".syncengine" / "state.db")
        assert server.calls == {"PersistWebSalesOrder": 200}

        second, report = apply(pipeline)
        assert second.code == 0, second.text
        assert counts(report, "orders") == {"read": 200, "creates": 0, "updates": 0, "deletes": 0,
                                            "unchanged": 200, "skipped": 0, "errors": 0}
        assert server.calls == {"PersistWebSalesOrder": 200}  # nothing was sent, nothing was even read back
        assert len(server.orders) == 200


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kinds", [("http500", "html503", "reset"), ("reset",)], ids=["all-kinds", "resets"])
def test_orders_under_injected_failures_land_exactly_once(tmp_path: Path, kinds: tuple[str, ...]) -> None:
    with running() as server:
        barcodes = server.add_products(40, at=T0)
        orders = make_orders(barcodes, 200, seed=11)
        write_csv(tmp_path / "lines.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        server.inject("PersistWebSalesOrder", rate=0.1, after_share=0.5, seed=5, kinds=kinds)
        result, report = apply(pipeline, timeout=180)
        assert result.code == 0, result.text
        assert counts(report, "orders") == {"read": 200, "creates": 200, "updates": 0, "deletes": 0,
                                            "unchanged": 0, "skipped": 0, "errors": 0}
        # The injection did bite, both ways and in every form.
        assert server.injected_failures["before"] > 0 and server.injected_failures["after"] > 0
        assert {f.kind for f in server.injected_log} == set(kinds)
        assert {f.message_type for f in server.injected_log} == {"PersistWebSalesOrder"}
        assert_orders_landed(server, orders, tmp_path / ".syncengine" / "state.db")
        # A call that failed "before" never reached the operation; each one that failed "after" stored the order
        # (the first time) or was refused as existing, and was repeated: every repeat after a stored order is
        # refused as existing, so the handled calls are the 200 stores plus one per "after" failure...
        assert server.calls["PersistWebSalesOrder"] == 200 + server.injected_failures["after"]
        # ...and an "already exists" answer is read back once per order concerned, and adopted.
        assert 1 <= server.calls["GetWebSalesOrder"] <= server.injected_failures["after"]
        assert dead_letters(pipeline) == []

        server.clear_faults()
        again, report = apply(pipeline)
        assert again.code == 0, again.text
        assert counts(report, "orders")["unchanged"] == 200 and len(server.orders) == 200


def test_rejected_orders_are_dead_letters_with_the_servers_text(tmp_path: Path) -> None:
    with running() as server:
        barcodes = server.add_products(20, at=T0)
        orders = make_orders(barcodes, 40, seed=3)
        unknown = {"PO-0005": "NOPE-5", "PO-0017": "NOPE-17", "PO-0033": "NOPE-33"}
        for po, barcode in unknown.items():
            orders[po][1]["barcode"] = barcode  # the second line of the order
        for row in orders["PO-0021"]:
            row["address"] = ""
        write_csv(tmp_path / "lines.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        result, report = apply(pipeline)
        assert result.code == 1, result.text
        assert counts(report, "orders") == {"read": 40, "creates": 36, "updates": 0, "deletes": 0,
                                            "unchanged": 0, "skipped": 0, "errors": 4}
        letters = {letter["key"]: letter for letter in dead_letters(pipeline)}
        assert sorted(letters) == sorted([*unknown, "PO-0021"])
        assert {letter["state"] for letter in letters.values()} == {"failed"}
        for po, barcode in unknown.items():
            assert f"Unknown ThirdPartyBarcode '{barcode}' on line 2" in letters[po]["error"], letters[po]
        # A blank address is null (null_if_empty) and refused before sending, at its field.
        blank = letters["PO-0021"]
        assert blank["field"] == "DeliveryDetail.AddressLine1", blank
        assert "PersistWebSalesOrder: required member is None" in blank["error"], blank
        good = {po: lines for po, lines in orders.items() if po not in letters}
        assert_orders_landed(server, good, tmp_path / ".syncengine" / "state.db")
        assert server.calls == {"PersistWebSalesOrder": 39}

        # Corrected at the source, the dead letters are sent by the next run, and nothing else is.
        for po in unknown:
            orders[po][1]["barcode"] = barcodes[0]
        for row in orders["PO-0021"]:
            row["address"] = "21 Long Street"
        write_csv(tmp_path / "lines.csv", ORDER_COLUMNS, orders)
        fixed, report = apply(pipeline)
        assert fixed.code == 0, fixed.text
        assert counts(report, "orders") == {"read": 40, "creates": 4, "updates": 0, "deletes": 0,
                                            "unchanged": 36, "skipped": 0, "errors": 0}
        assert sorted(server.orders) == sorted(orders)
        for po in [*unknown, "PO-0021"]:
            assert line_items(server.orders[po]) == expected_items(orders[po])
        assert server.orders["PO-0021"]["DeliveryDetail"]["AddressLine1"] == "21 Long Street"
        assert server.calls == {"PersistWebSalesOrder": 43}
        assert remote_ids(tmp_path / ".syncengine" / "state.db") == {
            po: str(order["SalesOrderID"]) for po, order in server.orders.items()}
        assert dead_letters(pipeline) == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("states", ["one-folder", "own-folders"])
def test_two_processes_share_a_user_by_waiting_for_the_session_lock(tmp_path: Path, states: str) -> None:
    with running(latency=0.05) as server:
        barcodes = server.add_products(30, at=T0)
        batches = {name: make_orders(barcodes, 100, prefix=f"{name.upper()}-", seed=seed)
                   for name, seed in (("a", 1), ("b", 2))}
        pipelines = {}
        for name, orders in batches.items():
            folder = tmp_path / name
            folder.mkdir()
            write_csv(folder / "lines.csv", ORDER_COLUMNS, orders)
            # Separate state databases, in one folder (the lock beside the state is shared) or each beside its
            # pipeline (only the OS user's lock folder is shared).
            state = f"../shared/{name}.db" if states == "one-folder" else f"state/{name}.db"
            pipelines[name] = push_pipeline(folder, server, state=state, lock_timeout=120)
        procs = {name: subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(path), "--json"],
                                        cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for name, path in pipelines.items()}
        outputs = {}
        try:
            for name, proc in procs.items():
                outputs[name] = proc.communicate(timeout=150)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        for name, proc in procs.items():
            assert proc.returncode == 0, outputs[name]
            report = json.loads(outputs[name][0])
            assert counts(report, "orders")["creates"] == 100
        waited = [name for name, (_, err) in outputs.items() if "waiting for pid" in err]
        assert len(waited) == 1, outputs
        assert "holds the iSync session of user 'webstore'" in outputs[waited[0]][1]
        # One login each: neither voided the other's key while it was working.
        assert server.logins == 2
        assert sorted(server.orders) == sorted([*batches["a"], *batches["b"]])
        for name, orders in batches.items():
            ids = remote_ids(tmp_path / "shared" / f"{name}.db" if states == "one-folder"
                             else tmp_path / name / "state" / f"{name}.db")
            assert ids == {po: str(server.orders[po]["SalesOrderID"]) for po in orders}
            for po, lines in orders.items():
                assert line_items(server.orders[po]) == expected_items(lines)
        assert server.calls["PersistWebSalesOrder"] == 200
        assert sorted(o["SalesOrderID"] for o in server.orders.values()) == list(
            range(FIRST_ORDER_ID, FIRST_ORDER_ID + 200))


@pytest.mark.timeout(180)
def test_a_killed_order_run_resumes_without_duplicates(tmp_path: Path) -> None:
    with running(latency=0.05) as server:
        barcodes = server.add_products(40, at=T0)
        orders = make_orders(barcodes, 200, seed=23)
        write_csv(tmp_path / "lines.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        log = (tmp_path / "killed.out").open("w")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline)], cwd=REPO,
                                    env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while len(server.orders) < 30 and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert proc.poll() is None, "the run ended before it could be killed"
                assert len(server.orders) >= 30
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
        finally:
            log.close()
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.3)  # requests in flight when the client died finish on the server (latency 0.05 s)
        stored_at_kill = len(server.orders)
        assert stored_at_kill < 200
        state = tmp_path / ".syncengine" / "state.db"
        recorded = len(remote_ids(state))
        assert recorded <= stored_at_kill

        result, report = apply(pipeline)
        assert result.code == 0, result.text
        c = counts(report, "orders")
        assert (c["read"], c["creates"], c["unchanged"], c["errors"]) == (200, 200 - recorded, recorded, 0)
        assert any("was interrupted" in note for note in report["syncs"]["orders"]["notes"]), report
        try:
            assert_orders_landed(server, orders, state)
        except AssertionError as exc:  # what both runs said, to tell a lost SalesOrderID's story
            killed = (tmp_path / "killed.out").read_text(encoding="utf-8", errors="replace")[-4000:]
            raise AssertionError(f"{exc}\n--- killed run ---\n{killed}\n--- rerun ---\n{result.text[-4000:]}") from None
        # Orders stored but not recorded when the client died were refused as existing and adopted after a
        # read back, each exactly once; every other order was sent once.
        readback = server.calls["GetWebSalesOrder"]
        assert readback == stored_at_kill - recorded
        assert server.calls["PersistWebSalesOrder"] == 200 + readback


# ---------------------------------------------------------------------------------------------- credit notes

def make_notes(barcodes: list[str], n: int) -> dict[str, list[dict[str, str]]]:
    """``n`` credit notes of one or two lines, as CSV rows by note number."""
    notes: dict[str, list[dict[str, str]]] = {}
    for i in range(n):
        cn = f"CN-{i:03d}"
        notes[cn] = [{"cn": cn, "po": f"ON/{2000 + i}", "so": f"SO-{5000 + i:08d}", "track": "WEBCUSTOMER",
                      "comments": "returned", "barcode": barcodes[(i + j) % len(barcodes)], "price": "29.95",
                      "qty": "1"} for j in range(1 + i % 2)]
    return notes


def notes_by_reference(server: ISyncServer) -> dict[str, int]:
    """How many notes the server created for each Reference."""
    found: dict[str, int] = {}
    for note in server.credit_notes:
        found[note["Reference"]] = found.get(note["Reference"], 0) + 1
    return found


def status_of(pipeline: Path, sync: str) -> dict[str, Any]:
    """The ``status --json`` row of one sync."""
    result = syncengine("status", pipeline, "--json", cwd=REPO, env=ENV)
    assert result.code == 0, result.text
    row: dict[str, Any] = next(r for r in json.loads(result.out) if r["sync"] == sync)
    return row


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("decision", "kind"), [("mark-sent", "reset"), ("discard", "html503")])
def test_a_credit_note_whose_answer_was_lost_is_held_until_decided(tmp_path: Path, decision: str, kind: str) -> None:
    with running() as server:
        barcodes = server.add_products(5, at=T0)
        notes = make_notes(barcodes, 6)
        write_csv(tmp_path / "notes.csv", NOTE_COLUMNS, notes)
        pipeline = push_pipeline(tmp_path, server, operation="CreateWebCreditNote", data="notes.csv")
        server.fail_next(1, when="after", kind=kind, message_type="CreateWebCreditNote")
        first, report = apply(pipeline)
        assert first.code == 1, first.text
        assert server.injected_failures["after"] == 1
        assert notes_by_reference(server) == dict.fromkeys(notes, 1)  # all six made, one without an answer
        assert server.calls["CreateWebCreditNote"] == 6  # the lost one was not repeated
        c = counts(report, "notes")
        assert (c["read"], c["creates"], c["errors"]) == (6, 5, 1)
        assert report["syncs"]["notes"]["unknown"] == 1
        letters = dead_letters(pipeline)
        assert len(letters) == 1 and letters[0]["state"] == "unknown", letters
        held = letters[0]["key"]
        assert held in notes
        assert "unknown" in letters[0]["error"]
        listing = syncengine("dead-letters", pipeline, cwd=REPO, env=ENV)
        assert listing.code == 0 and f"notes: {held}: [outcome unknown, held]" in listing.out, listing.text

        # Neither a run nor a retry sends a held note again.
        second, report = apply(pipeline)
        assert second.code == 0, second.text
        c = counts(report, "notes")
        assert (c["read"], c["creates"], c["unchanged"], c["skipped"], c["errors"]) == (6, 0, 5, 1, 0)
        assert any("held" in note for note in report["syncs"]["notes"]["notes"]), report
        retried = syncengine("retry", pipeline, "--sync", "notes", "--json", cwd=REPO, env=ENV)
        assert retried.code == 0, retried.text
        assert server.calls["CreateWebCreditNote"] == 6 and len(server.credit_notes) == 6
        assert status_of(pipeline, "notes")["held"] == 1

        flag = f"--{decision}"
        decided = syncengine("dead-letters", pipeline, "--sync", "notes", flag, held, cwd=REPO, env=ENV)
        assert decided.code == 0, decided.text
        assert dead_letters(pipeline) == []
        third, report = apply(pipeline)
        assert third.code == 0, third.text
        c = counts(report, "notes")
        if decision == "mark-sent":
            assert (c["creates"], c["unchanged"], c["skipped"]) == (0, 6, 0)
            assert notes_by_reference(server) == dict.fromkeys(notes, 1)
        else:
            # Discarded: the next run sends it again -- and iSync then holds two notes for it, as documented.
            assert (c["creates"], c["unchanged"], c["skipped"]) == (1, 5, 0)
            assert notes_by_reference(server) == {**dict.fromkeys(notes, 1), held: 2}
        assert server.calls["CreateWebCreditNote"] == (6 if decision == "mark-sent" else 7)
        assert not any("held" in note for note in report["syncs"]["notes"]["notes"]), report


# ---------------------------------------------------------------------------------------------- validation

def line_of(path: Path, text: str) -> int:
    """The 1-based number of the one line of ``path`` that contains ``text``."""
    found = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


def validate(pipeline: Path) -> Result:
    return syncengine("validate", pipeline, cwd=REPO, env=ENV)


def test_validate_checks_the_mapping_against_the_data_contract(tmp_path: Path) -> None:
    with running() as server:
        pipeline = push_pipeline(tmp_path, server)
        (tmp_path / "lines.csv").write_text(",".join(ORDER_COLUMNS) + "\n", encoding="utf-8")
        assert validate(pipeline).code == 0, validate(pipeline).text
        original = pipeline.read_text(encoding="utf-8")

        # A misspelt member: its line, its name, and what was meant.
        pipeline.write_text(original.replace("key: PONumber", "key: PONumbr").replace(
            'PONumber: "{{ record.po }}"', 'PONumbr: "{{ record.po }}"'), encoding="utf-8")
        result = validate(pipeline)
        assert result.code == 2, result.text
        at = line_of(pipeline, "PONumbr: ")
        assert re.search(rf"p\.yml:{at}:\d+: PONumbr: .*unknown member of WebSalesOrder; did you mean 'PONumber'",
                         result.err), result.err
        assert "PONumber: PersistWebSalesOrder: required member is missing" in result.err

        # A required member left out is named.
        pipeline.write_text(original.replace('        TrackNo: "{{ record.track }}"\n', ""), encoding="utf-8")
        result = validate(pipeline)
        assert result.code == 2, result.text
        assert re.search(r"p\.yml:\d+:\d+: TrackNo: PersistWebSalesOrder: required member is missing", result.err)
        assert "1 problem found" in result.err

        # An unknown member of a group item, at its own line.
        pipeline.write_text(original.replace('          ExRate: 1\n', '          ExRate: 1\n          Rebate: 2\n'),
                            encoding="utf-8")
        result = validate(pipeline)
        assert result.code == 2, result.text
        at = line_of(pipeline, "Rebate: 2")
        assert re.search(rf"p\.yml:{at}:\d+: LineItems\.\*\.Rebate: .*unknown member of WebSalesOrderDetail",
                         result.err), result.err
        assert "1 problem found" in result.err
        assert server.logins == 0 and sum(server.calls.values()) == 0  # validate talks to nobody


def test_a_missing_header_member_of_a_grouped_mapping_points_at_the_header(tmp_path: Path) -> None:
    with running() as server:
        pipeline = push_pipeline(tmp_path, server)
        (tmp_path / "lines.csv").write_text(",".join(ORDER_COLUMNS) + "\n", encoding="utf-8")
        pipeline.write_text(pipeline.read_text(encoding="utf-8").replace('        TrackNo: "{{ record.track }}"\n', ""),
                            encoding="utf-8")
        result = validate(pipeline)
        assert result.code == 2, result.text
        found = re.search(r"p\.yml:(\d+):\d+: TrackNo: ", result.err)
        assert found, result.err
        # TrackNo belongs to the order (the mapping's fields), not to its lines (the group block).
        header = range(line_of(pipeline, "    mapping:"), line_of(pipeline, "      group:"))
        assert int(found.group(1)) in header, (result.err, pipeline.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- login

def test_a_wrong_password_fails_the_run_in_one_line_without_the_password(tmp_path: Path) -> None:
    wrong = "hunter2-Wr0ng!"
    with running() as server:
        barcodes = server.add_products(5, at=T0)
        write_csv(tmp_path / "lines.csv", ORDER_COLUMNS, make_orders(barcodes, 3))
        pipeline = push_pipeline(tmp_path, server)
        result = syncengine("apply", pipeline, cwd=REPO, env={"ISYNC_PASSWORD": wrong})
        assert result.code == 3, result.text
        assert wrong not in result.text
        lines = [line for line in result.text.splitlines() if line.strip()]
        assert len(lines) == 1, result.text
        assert "'webstore'" in lines[0] and "Invalid username or password" in lines[0], lines
        refused = server.failed_logins
        assert refused >= 1 and server.orders == {}
        assert sum(server.calls.values()) == 0
        as_json, report = apply(pipeline, env={"ISYNC_PASSWORD": wrong})
        assert as_json.code == 3 and wrong not in as_json.text
        assert report["exit_code"] == 3
        assert server.orders == {} and server.logins == 0
        # A refused login is not tried again by every sending thread: servers lock accounts after a few.
        assert refused == 1, f"one run tried the wrong password {refused} times"

