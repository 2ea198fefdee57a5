"""The iSync samples as shipped: each validates through the CLI, and runs for real against :class:`ISyncServer`.

Each sample folder is copied to a temporary folder and run with ``syncengine`` as a subprocess, exactly as
its README says, against the test server running in this process; the assertions look at what the server
stored and was asked, and at the SQLite files the samples write.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, rows, syncengine
from servers.isync_server import ISyncServer

SAMPLES = REPO / "samples" / "isync"
PASSWORD = "s3cret"  # the test server's default user is webstore, the samples' default isync_user
WRITES = ("PersistWebSalesOrder", "CreateWebCreditNote")


@pytest.fixture
def server() -> Iterator[ISyncServer]:
    """A running test iSync (Africa/Johannesburg, compares AddedDate with ``>``)."""
    with ISyncServer() as running:
        yield running


def copy_sample(tmp_path: Path, name: str) -> Path:
    """A private copy of ``samples/isync/<name>``; returns its pipeline file."""
    target = tmp_path / name
    shutil.copytree(SAMPLES / name, target, ignore=shutil.ignore_patterns("out", ".syncengine"))
    return target / "pipeline.yml"


def env_of(server: ISyncServer) -> dict[str, str]:
    return {"ISYNC_URL": server.url, "ISYNC_PASSWORD": PASSWORD}


def apply(pipeline: Path, server: ISyncServer, *args: str) -> dict[str, Any]:
    """``syncengine apply --json``; returns the report of each sync, failing the test on a non-zero exit."""
    result = syncengine("apply", pipeline, "--json", *args, env=env_of(server))
    assert result.code == 0, result.text
    syncs: dict[str, Any] = json.loads(result.out)["syncs"]
    return syncs


def counts(report: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {name: (sync["creates"], sync["updates"], sync["errors"]) for name, sync in report.items()}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", ["catalogue", "orders"])
def test_the_sample_validates(tmp_path: Path, name: str) -> None:
    pipeline = copy_sample(tmp_path, name)
    result = syncengine("validate", pipeline, env={"ISYNC_URL": "https://isync.invalid/SyncAPI/MessageService.svc",
                                                   "ISYNC_PASSWORD": "unused"})
    assert result.code == 0, result.text
    assert "valid" in result.out


def test_catalogue_sample_reads_products_and_units_incrementally(tmp_path: Path, server: ISyncServer) -> None:
    barcodes = [server.add_product(f"6009880{n:06d}")["ThirdPartyBarcode"] for n in range(7)]
    pipeline = copy_sample(tmp_path, "catalogue")

    first = apply(pipeline, server)
    assert counts(first) == {"catalogue": (7, 0, 0), "units": (7, 0, 0)}
    db = pipeline.parent / "out" / "catalogue.db"
    expected = sorted((p["ProductStockID"], p["SKU"], p["ThirdPartyBarcode"], str(p["Units"]))
                      for p in server.products.values())
    assert rows(db, "SELECT product_stock_id, sku, barcode, units FROM products ORDER BY 1") == expected
    assert rows(db, "SELECT product_stock_id, sku, units FROM stock_units ORDER BY 1") == [
        (pid, sku, units) for pid, sku, _, units in expected]
    status = {s["sync"]: s for s in json.loads(syncengine("status", pipeline, "--json", env=env_of(server)).out)}
    newest = max(p["AddedDate"] for p in server.products.values())
    assert status["catalogue"]["cursor"] == newest.strftime("%Y-%m-%dT%H:%M:%S"), "the cursor is iSync's AddedDate"
    assert status["units"]["cursor"] is not None, "with server_timezone, the units read has a cursor"

    second = apply(pipeline, server)
    assert counts(second) == {"catalogue": (0, 0, 0), "units": (0, 0, 0)}, "a rerun wrote something"

    server.touch(barcodes[2], Units=server.products[barcodes[2]]["Units"] + 5)
    third = apply(pipeline, server)
    assert counts(third) == {"catalogue": (0, 1, 0), "units": (0, 1, 0)}
    changed = server.products[barcodes[2]]
    assert rows(db, f"SELECT units FROM stock_units WHERE product_stock_id = {changed['ProductStockID']}") == [
        (str(changed["Units"]),)]
    assert server.calls["GetProductStockCatalogue"] == 3 and server.calls["GetProductStockUnits"] == 3
    assert server.logins == 3, "one login per run: the catalogue and units syncs share the session key"
    assert not any(server.calls[w] for w in WRITES)


def test_orders_sample_sends_orders_and_credit_notes_once_and_reads_them_back(tmp_path: Path,
                                                                             server: ISyncServer) -> None:
    pipeline = copy_sample(tmp_path, "orders")
    lines = csv_rows(pipeline.parent / "order_lines.csv")
    notes = csv_rows(pipeline.parent / "credit_note_lines.csv")
    for barcode in sorted({r["barcode"] for r in lines + notes if r["line_type"] == "0"}):
        server.add_product(barcode)
    orders = {r["po_number"] for r in lines}
    assert (len(lines), len(orders)) == (20, 6)

    first = apply(pipeline, server)
    assert counts(first) == {"orders": (6, 0, 0), "credit_notes": (3, 0, 0)}
    assert set(server.orders) == orders
    for po, stored in server.orders.items():
        sent = [(r["barcode"], int(r["quantity"])) for r in lines if r["po_number"] == po]
        assert sorted((line["ThirdPartyBarcode"], int(line["Units"])) for line in stored["LineItems"]) == sorted(sent)
    assert server.orders["WEB-100233"]["StatusID"] == 1 and server.orders["WEB-100233"]["IsGift"] is True
    assert server.orders["WEB-100232"]["DeliveryDetail"]["Company"] == "Karoo Outfitters"
    assert sorted((n["Reference"], len(n["LineItems"])) for n in server.credit_notes) == [
        ("CN-2024-0001", 1), ("CN-2024-0002", 2), ("CN-2024-0003", 1)]
    assert server.ignored_out_of_order == [] and server.internal_errors == []
    assert dict(server.calls) == {"PersistWebSalesOrder": 6, "CreateWebCreditNote": 3}

    second = apply(pipeline, server)
    assert counts(second) == {"orders": (0, 0, 0), "credit_notes": (0, 0, 0)}
    assert dict(server.calls) == {"PersistWebSalesOrder": 6, "CreateWebCreditNote": 3}, "a rerun sent something"
    assert (len(server.orders), len(server.credit_notes)) == (6, 3)

    # The optional read-back (enabled: false): every order the orders sync sent, with iSync's SalesOrderID.
    status = apply(pipeline, server, "--sync", "order_status")
    assert counts(status) == {"order_status": (6, 0, 0)}
    db = pipeline.parent / "out" / "orders.db"
    assert rows(db, "SELECT po_number, sales_order_id, status_id, lines FROM order_status ORDER BY 1") == sorted(
        (po, o["SalesOrderID"], o["StatusID"], len(o["LineItems"])) for po, o in server.orders.items())
    again = apply(pipeline, server, "--sync", "order_status")
    assert counts(again) == {"order_status": (0, 0, 0)}
    assert server.calls["GetWebSalesOrder"] == 12
    assert (server.calls["PersistWebSalesOrder"], server.calls["CreateWebCreditNote"]) == (6, 3)
