"""The Dsync adapters end to end: the ``syncengine`` command as a real process against a real :class:`DsyncServer`.

The server runs in this process (a background thread), so every assertion can look at what it stored and what
it was asked; the CLI runs as a subprocess, exactly as a user runs it. Covered: 500 products and 1,500 orders
pushed (notifications with the run id, nothing resent, one PUT for one change, a delete the server refuses while
orders reference the product and how it converges), 10 % injected 500s (409s of our own lost writes adopted),
records that break the layout (never sent, dead letters naming the treekey), 202 Accepted (pending until the
mass sync shows it; children wait for their parent), kill -9 and rerun, the mass sync as a source (5,545 items,
deletes inferred only from a whole read), validation against the discovered layout, and a wrong token.

The last three tests pin engine bugs (see each docstring); they fail until the engine is fixed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Result, apply_json, counts, dead_letters_json, rows, syncengine
from servers.dsync_server import DEFAULT_AUTH_TOKEN, DsyncServer

ENV = {"DSYNC_AUTH_TOKEN": DEFAULT_AUTH_TOKEN}
PRODUCTS = "/entity/product"
ORDERS = "/entity/order"
WRITES = ("POST", "PUT", "DELETE")

PRODUCT_SYNC = """\
  products:
    source: products
    destination: {name: hub, entity: product}
    key: sku
    mode: mirror
    mapping:
      fields:
        sku: "{{ record.sku }}"
        name: "{{ record.name }}"
        inventory:
          qty: "{{ record.qty | int }}"
          min_qty: "{{ record.min_qty | int }}"
"""

ORDER_SYNC = """\
  orders:
    source: orders
    destination: {name: hub, entity: order, parents: {product_id: products}}
    key: order_id
    mode: mirror
    mapping:
      fields:
        order_id: "{{ record.order_id }}"
        customer_name: "{{ record.customer }}"
        product_id: "{{ record.sku }}"
        gift_message:
          gift_message_from: "{{ record['from'] | null_if_empty }}"
"""

PRODUCT_COLUMNS = ["sku", "name", "qty", "min_qty"]
ORDER_COLUMNS = ["order_id", "customer", "sku", "from"]


# ---------------------------------------------------------------------------------------------- helpers

@contextmanager
def running(**options: Any) -> Iterator[DsyncServer]:
    """A started server; on the way out it must have had no internal error."""
    with DsyncServer(**options) as server:
        yield server
        assert server.server_errors == []


def hub_block(server: DsyncServer, **settings: Any) -> str:
    """The YAML of a ``dsync`` endpoint named ``hub`` on ``server`` (the token from the environment)."""
    lines = ["  hub:", "    type: dsync", f"    url: {server.url}", '    auth_token: "{{ env.DSYNC_AUTH_TOKEN }}"',
             "    backoff: 0.01", "    max_backoff: 0.05"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def push_pipeline(folder: Path, server: DsyncServer, *, product_sync: str = PRODUCT_SYNC,
                  order_sync: str | None = ORDER_SYNC, **settings: Any) -> Path:
    """CSV products (and orders) pushed to the connector."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "p.yml"
    path.write_text(
        "version: 1\nsources:\n  products: {type: csv, path: products.csv}\n"
        + ("  orders: {type: csv, path: orders.csv}\n" if order_sync else "")
        + "destinations:\n" + hub_block(server, **settings)
        + "syncs:\n" + product_sync + (order_sync or ""), encoding="utf-8")
    return path


def make_products(n: int) -> list[dict[str, str]]:
    """``n`` products P0001...: name, qty and min_qty."""
    return [{"sku": f"P{i:04d}", "name": f"Product {i}", "qty": str(i * 3 % 97), "min_qty": str(i % 5)}
            for i in range(1, n + 1)]


def make_orders(skus: list[str], n: int) -> list[dict[str, str]]:
    """``n`` orders O00001...: the products in turn, every third one with a gift message sender."""
    return [{"order_id": f"O{i:05d}", "customer": f"Customer {i}", "sku": skus[(i - 1) % len(skus)],
             "from": f"Sender {i}" if i % 3 == 0 else ""} for i in range(1, n + 1)]


def write_csv(path: Path, columns: list[str], records: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(records)


def product_doc(row: dict[str, str]) -> dict[str, Any]:
    """What the server must hold for a product CSV row."""
    return {"sku": row["sku"], "name": row["name"],
            "inventory": {"qty": int(row["qty"]), "min_qty": int(row["min_qty"])}}


def order_doc(row: dict[str, str]) -> dict[str, Any]:
    """What the server must hold for an order CSV row."""
    return {"order_id": row["order_id"], "customer_name": row["customer"], "product_id": row["sku"],
            "gift_message": {"gift_message_from": row["from"] or None}}


def apply(pipeline: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 100) -> tuple[Result, Any]:
    """``syncengine apply PIPELINE --json`` with this module's environment."""
    return apply_json(pipeline, *args, env=env or ENV, timeout=timeout)


def tally(read: int, creates: int = 0, updates: int = 0, deletes: int = 0, unchanged: int = 0,
          errors: int = 0) -> dict[str, int]:
    return {"read": read, "creates": creates, "updates": updates, "deletes": deletes, "unchanged": unchanged,
            "skipped": 0, "errors": errors}


def dead_letters(pipeline: Path) -> list[dict[str, Any]]:
    """``syncengine dead-letters PIPELINE --json`` with this module's environment."""
    return dead_letters_json(pipeline, ENV)


def pending_of(pipeline: Path) -> dict[str, int]:
    """Each sync's ``pending`` in ``status --json``."""
    result = syncengine("status", pipeline, "--json", cwd=REPO, env=ENV)
    assert result.code == 0, result.text
    return {row["sync"]: row["pending"] for row in json.loads(result.out)}


def writes(server: DsyncServer) -> Counter[tuple[str, str, int]]:
    """(method, route, status) of every entity write the server was asked for."""
    return Counter((r.method, r.route, r.status) for r in server.requests if r.method in WRITES
                   and r.route in (PRODUCTS, ORDERS))


def sent_since(server: DsyncServer, start: int) -> list[tuple[str, str, int, str | None]]:
    """(method, route, status, Entity-Id) of the entity writes from request number ``start`` on, in order."""
    return [(r.method, r.route, r.status, r.headers.get("Entity-Id")) for r in server.requests[start:]
            if r.method in WRITES and r.route in (PRODUCTS, ORDERS)]


# ---------------------------------------------------------------------------------------------- 1. push

def test_products_and_orders_land_once_update_and_delete_with_restricted_references(tmp_path: Path) -> None:
    with running() as server:
        products = make_products(500)
        orders = make_orders([p["sku"] for p in products], 1500)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)

        first, report = apply(pipeline)
        assert first.code == 0, first.text
        assert counts(report, "products") == tally(500, creates=500)
        assert counts(report, "orders") == tally(1500, creates=1500)
        assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
        assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}
        assert sum(1 for o in server.records("order").values() if o["gift_message"]["gift_message_from"]) == 500
        assert writes(server) == {("POST", PRODUCTS, 201): 500, ("POST", ORDERS, 201): 1500}
        run_id = report["run_id"]
        assert {r.headers.get("Process-Id") for r in server.requests if r.method in WRITES} == {run_id}
        # One notification per sync, carrying the run id as the process id, and the counts.
        notes = server.notifications
        assert [(n.process_id, n.body["process_id"], n.body["status"], n.body["message"]) for n in notes] == [
            (run_id, run_id, "200", "product: 500 created"), (run_id, run_id, "200", "order: 1500 created")]
        assert all(n.body["data"] == {"notifications": []} for n in notes)
        assert server.jobs == []

        # Nothing changed: nothing is sent, not even a notification.
        before = len(server.requests)
        second, report = apply(pipeline)
        assert second.code == 0, second.text
        assert counts(report, "products") == tally(500, unchanged=500)
        assert counts(report, "orders") == tally(1500, unchanged=1500)
        assert [r.route for r in server.requests[before:]] == ["/datalayout"]
        assert len(server.notifications) == 2

        # One product changed at the source: exactly one PUT, naming it in Entity-Id.
        products[6]["qty"] = "4242"
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        before = len(server.requests)
        third, report = apply(pipeline)
        assert third.code == 0, third.text
        assert counts(report, "products") == tally(500, updates=1, unchanged=499)
        assert counts(report, "orders") == tally(1500, unchanged=1500)
        sent = sent_since(server, before)
        assert sent == [("PUT", PRODUCTS, 200, "P0007")]
        assert server.record("product", "P0007") == {"sku": "P0007", "name": "Product 7",
                                                     "inventory": {"qty": 4242, "min_qty": 2}}
        assert server.notifications[-1].body["message"] == "product: 1 updated"
        assert server.notifications[-1].process_id == report["run_id"]

        # One product removed at the source (mirror): its DELETE is refused, since three orders reference it
        # (the server restricts deletes); the delete is a dead letter with the server's detail.
        gone = products.pop(9)  # P0010, referenced by O00010, O00510 and O01010
        assert gone["sku"] == "P0010"
        referencing = [o["order_id"] for o in orders if o["sku"] == "P0010"]
        assert referencing == ["O00010", "O00510", "O01010"]
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        before = len(server.requests)
        fourth, report = apply(pipeline)
        assert fourth.code == 1, fourth.text
        assert counts(report, "products") == tally(499, unchanged=499, errors=1)
        assert counts(report, "orders") == tally(1500, unchanged=1500)
        sent = sent_since(server, before)
        assert sent == [("DELETE", PRODUCTS, 400, "P0010")]
        assert server.record("product", "P0010") is not None
        letters = dead_letters(pipeline)
        assert len(letters) == 1, letters
        letter = letters[0]
        assert (letter["sync"], letter["key"], letter["action"]) == ("products", "P0010", "delete"), letter
        assert letter["field"] == "order.product_id", letter
        assert "product 'P0010' is referenced by 3 order(s)" in letter["error"], letter
        assert server.notifications[-1].body["status"] == "500"
        assert server.notifications[-1].body["data"]["notifications"][0]["node_id"] == "P0010"

        # Its orders removed at the source too. The syncs run in file order: the product's delete is tried
        # first and refused again (its orders are still there), then the orders sync deletes the three orders;
        # the next run deletes the product. The dead letter is the server's refusal until then.
        orders = [o for o in orders if o["sku"] != "P0010"]
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)
        before = len(server.requests)
        fifth, report = apply(pipeline)
        assert fifth.code == 1, fifth.text
        assert counts(report, "products") == tally(499, unchanged=499, errors=1)
        assert counts(report, "orders") == tally(1497, deletes=3, unchanged=1497)
        sent = sent_since(server, before)
        assert sent[0] == ("DELETE", PRODUCTS, 400, "P0010")
        assert sorted(sent[1:]) == [("DELETE", ORDERS, 200, key) for key in referencing]  # sent concurrently
        assert [(d["key"], d["action"], d["field"]) for d in dead_letters(pipeline)] == [
            ("P0010", "delete", "order.product_id")]
        assert server.record("product", "P0010") is not None
        assert all(server.record("order", key) is None for key in referencing)

        before = len(server.requests)
        sixth, report = apply(pipeline)
        assert sixth.code == 0, sixth.text
        assert counts(report, "products") == tally(499, deletes=1, unchanged=499)
        assert counts(report, "orders") == tally(1497, unchanged=1497)
        assert sent_since(server, before) == [("DELETE", PRODUCTS, 200, "P0010")]
        assert dead_letters(pipeline) == []
        assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
        assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}
        known = rows(tmp_path / ".syncengine" / "state.db", "SELECT s.sync, count(*) FROM records r JOIN streams s "
                                                            "ON s.id = r.stream_id GROUP BY s.sync ORDER BY s.sync")
        assert known == [("orders", 1497), ("products", 499)]
        assert server.count(method="POST", status=409) == 0


# ---------------------------------------------------------------------------------------------- 2. faults

def test_injected_server_errors_leave_every_record_once_and_adopt_our_own_409s(tmp_path: Path) -> None:
    with running() as server:
        products = make_products(500)
        orders = make_orders([p["sku"] for p in products], 1500)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        # 10 % of the entity writes answer 500, half of those after the write was made (its answer is lost).
        server.inject(rate=0.1, after_share=0.5, seed=3, entities=["product", "order"], methods=WRITES)
        result, report = apply(pipeline)
        if result.code == 1:  # a record whose every retry failed: a dead letter with the 500, sent by the next run
            assert {d["error"].rpartition(": ")[2] for d in dead_letters(pipeline)} <= {
                "the connector answered 500 Internal Server Error"}, result.text
            server.clear_faults()
            result, report = apply(pipeline)
        assert result.code == 0, result.text
        assert report["syncs"]["products"]["errors"] == report["syncs"]["orders"]["errors"] == 0
        assert server.fault_counts["before"] > 0 and server.fault_counts["after"] > 0
        assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
        assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}
        assert dead_letters(pipeline) == []
        for route, n in ((PRODUCTS, 500), (ORDERS, 1500)):
            created = server.count("POST", route, 201)
            conflicts = server.count("POST", route, 409)
            # Every record was made by exactly one POST: answered 201, or made and answered 500 ("after"), in
            # which case the retry was answered 409 (the record exists: our own write)...
            assert created + conflicts == n, (route, created, conflicts)
            lost = [r for r in server.requests if r.route == route and r.method == "POST" and r.fault == "after"]
            assert 0 < conflicts <= len(lost)
            # ...and each 409 was adopted: an update of that record, answered 200 (a retried one included).
            puts = [r for r in server.requests if r.route == route and r.method == "PUT"]
            adopted = [r.headers["Entity-Id"] for r in puts if r.status == 200]
            assert len(adopted) == len(set(adopted)) == conflicts, route
            assert {r.status for r in puts} <= {200, 500}
            assert server.count("DELETE", route) == 0
            assert server.count(route=route, status=400) == server.count(route=route, status=404) == 0
        # Nothing counted twice: the notification says every record was created.
        assert [n.body["message"] for n in server.notifications[-2:]] == ["product: 500 created",
                                                                           "order: 1500 created"]

        server.clear_faults()
        before = len(server.requests)
        again, report = apply(pipeline)
        assert again.code == 0, again.text
        assert counts(report, "products") == tally(500, unchanged=500)
        assert counts(report, "orders") == tally(1500, unchanged=1500)
        assert sent_since(server, before) == []


# ---------------------------------------------------------------------------------------------- 3. layout checks

CHECKED_SYNC = """\
  products:
    source: products
    destination: {name: hub, entity: product, job_id: a123456}
    key: "{{ record.line }}"
    mapping:
      fields:
        sku: "{{ record.sku | null_if_empty }}"
        name: "{{ record.name }}"
        inventory:
          qty: "{{ record.qty | int if record.qty.isdigit() else record.qty }}"
          min_qty: "{{ record.min_qty | int }}"
"""


def test_records_that_break_the_layout_never_leave_and_name_the_treekey(tmp_path: Path) -> None:
    with running() as server:
        products = [{"line": f"L{i:02d}", **p} for i, p in enumerate(make_products(30), 1)]
        products[3]["qty"] = "lots"  # L04: text for a number
        products[7]["sku"] = ""  # L08: no sku, which the layout requires
        columns = ["line", *PRODUCT_COLUMNS]
        write_csv(tmp_path / "products.csv", columns, products)
        pipeline = push_pipeline(tmp_path, server, product_sync=CHECKED_SYNC, order_sync=None)
        result, report = apply(pipeline)
        assert result.code == 1, result.text
        assert counts(report, "products") == tally(30, creates=28, errors=2)
        good = [p for p in products if p["line"] not in ("L04", "L08")]
        assert server.records("product") == {p["sku"]: product_doc(p) for p in good}
        # Only the 28 good records were sent: no request for the bad ones, so no refusal either.
        assert writes(server) == {("POST", PRODUCTS, 201): 28}
        letters = {d["key"]: d for d in dead_letters(pipeline)}
        assert sorted(letters) == ["L04", "L08"]
        assert letters["L04"]["field"] == "product.inventory.qty"
        assert "'product.inventory.qty' takes a number, not text ('lots')" in letters["L04"]["error"]
        assert letters["L04"]["payload"]["inventory"] == {"qty": "lots", "min_qty": 4}
        assert letters["L08"]["field"] == "product.sku"
        assert "'product.sku' is required" in letters["L08"]["error"]
        assert {d["action"] for d in letters.values()} == {"create"}
        # The run's notification names both, with the layout's reasons.
        note = server.notifications[-1].body
        assert (note["status"], note["message"]) == ("500", "product: 28 created, 2 failed")
        assert sorted((n["node_id"], n["status"]) for n in note["data"]["notifications"]) == [
            ("L04", "400"), ("L08", "400")]
        assert [(j.entity, j.job_id) for j in server.jobs] == [("product", "a123456")]

        # Corrected at the source: the next run sends those two, and nothing else.
        products[3]["qty"] = "12"
        products[7]["sku"] = "P0008"
        write_csv(tmp_path / "products.csv", columns, products)
        fixed, report = apply(pipeline)
        assert fixed.code == 0, fixed.text
        assert counts(report, "products") == tally(30, creates=2, unchanged=28)
        assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
        assert writes(server) == {("POST", PRODUCTS, 201): 30}
        assert dead_letters(pipeline) == []
        assert [j.job_id for j in server.jobs] == ["a123456"] * 2


# ---------------------------------------------------------------------------------------------- 4. 202 Accepted

def test_accepted_writes_are_pending_until_the_mass_sync_shows_them(tmp_path: Path) -> None:
    accepted = {"P0003", "P0005"}
    with running(accept_later={"product": accepted}) as server:
        products = make_products(10)
        orders = make_orders([p["sku"] for p in products], 20)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        waiting = sorted(o["order_id"] for o in orders if o["sku"] in accepted)
        assert waiting == ["O00003", "O00005", "O00013", "O00015"]

        first, report = apply(pipeline)
        assert first.code == 1, first.text  # the orders of the pending products wait
        products_run = report["syncs"]["products"]
        assert counts(report, "products") == tally(10, creates=10)
        assert products_run["pending"] == 2
        assert "2 change(s) were accepted but not yet carried out (pending); the next run checks them" in \
            products_run["notes"]
        assert sorted(w.key for w in server.pending) == sorted(accepted)
        assert writes(server) == {("POST", PRODUCTS, 201): 8, ("POST", PRODUCTS, 202): 2, ("POST", ORDERS, 201): 16}
        assert server.notifications[0].body["message"] == "product: 8 created, 2 accepted"
        # An order whose product was only accepted waits, as a dead letter naming its parent; it was not sent.
        assert counts(report, "orders") == tally(20, creates=16, errors=4)
        letters = {d["key"]: d for d in dead_letters(pipeline)}
        assert sorted(letters) == waiting
        for key, letter in letters.items():
            sku = next(o["sku"] for o in orders if o["order_id"] == key)
            assert letter["sync"] == "orders" and letter["field"] == "order.product_id", letter
            assert f"waits for its product '{sku}', which sync 'products' has not delivered" in letter["error"]
        assert pending_of(pipeline) == {"products": 2, "orders": 0}

        # Not carried out yet: the next run reads the mass sync, finds neither, and keeps them pending (the
        # pending_timeout is an hour); nothing is resent, the orders still wait.
        before = len(server.requests)
        second, report = apply(pipeline)
        assert second.code == 1, second.text
        assert report["syncs"]["products"]["notes"] == [
            "2 change(s) accepted earlier were checked: 0 carried out, 0 not (sent again), 2 still pending"]
        assert counts(report, "products") == tally(10, unchanged=10)
        assert counts(report, "orders") == tally(20, unchanged=16, errors=4)
        assert sent_since(server, before) == []
        assert [r.route for r in server.requests[before:] if r.route.startswith("/api/sync")] == [
            "/api/sync/total", "/api/sync/items/"]
        assert pending_of(pipeline) == {"products": 2, "orders": 0}

        # The connector carries them out: the next run confirms them, resends nothing, and sends the orders.
        assert server.apply_pending() == 2
        assert server.deferred_failures == []
        before = len(server.requests)
        third, report = apply(pipeline)
        assert third.code == 0, third.text
        assert report["syncs"]["products"]["notes"] == [
            "2 change(s) accepted earlier were checked: 2 carried out, 0 not (sent again)"]
        assert report["syncs"]["products"]["pending"] == 0
        assert counts(report, "products") == tally(10, unchanged=10)
        assert counts(report, "orders") == tally(20, creates=4, unchanged=16)
        assert [r[:3] for r in sent_since(server, before)] == [("POST", ORDERS, 201)] * 4
        assert pending_of(pipeline) == {"products": 0, "orders": 0}
        assert dead_letters(pipeline) == []
        assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
        assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}


# ---------------------------------------------------------------------------------------------- 5. kill -9

@pytest.mark.timeout(240)
def test_a_killed_run_resumes_with_nothing_lost_and_nothing_twice(tmp_path: Path) -> None:
    with running(latency=0.02) as server:
        products = make_products(500)
        orders = make_orders([p["sku"] for p in products], 1500)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        with (tmp_path / "killed.out").open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline)], cwd=REPO,
                                    env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while server.count("POST", PRODUCTS, 201) < 200 and proc.poll() is None \
                        and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert proc.poll() is None, "the run ended before it could be killed"
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.5)  # requests in flight when the client died finish on the server
        stored = len(server.records("product"))
        assert 200 <= stored < 500 and server.records("order") == {}
        state = tmp_path / ".syncengine" / "state.db"
        recorded = rows(state, "SELECT count(*) FROM records r JOIN streams s ON s.id = r.stream_id "
                               "WHERE s.sync = 'products'")[0][0]
        assert isinstance(recorded, int)
        # Acknowledged writes were durable at once; at most `concurrency` (8) were in flight, unrecorded.
        assert stored - 8 <= recorded <= stored

        server.latency = 0.0
        before = len(server.requests)
        result, report = apply(pipeline)
        assert result.code == 0, result.text
        assert counts(report, "products") == tally(500, creates=500 - recorded, unchanged=recorded)
        assert counts(report, "orders") == tally(1500, creates=1500)
        assert any("was interrupted" in note for note in report["syncs"]["products"]["notes"]), report
        assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
        assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}
        # The records made but not recorded when the client died were answered 409 and adopted (one PUT each);
        # every other one was created once: 2000 creates in all.
        resent = sent_since(server, before)
        conflicts = [r for r in resent if r[:3] == ("POST", PRODUCTS, 409)]
        adopted = [r[3] for r in resent if r[:3] == ("PUT", PRODUCTS, 200)]
        assert len(conflicts) == len(adopted) == len(set(adopted)) == stored - recorded
        assert server.count("POST", status=201) == 2000
        assert {r[2] for r in resent} <= {201, 409, 200}
        assert len(resent) == 500 - recorded + len(adopted) + 1500
        assert dead_letters(pipeline) == []


# ---------------------------------------------------------------------------------------------- 6. the source

def pull_pipeline(folder: Path, server: DsyncServer) -> Path:
    """The connector's products, read by its mass sync into a SQLite table (mode mirror)."""
    path = folder / "pull.yml"
    path.write_text(
        "version: 1\nsources:\n" + hub_block(server)
        + "destinations:\n  db: {type: sqlite, path: out.db}\n"
        + "syncs:\n  products:\n    source: {name: hub, entity: product}\n"
        + "    destination: {name: db, table: products, create_table: true}\n"
        + "    key: sku\n    mode: mirror\n    mapping:\n      fields:\n"
        + '        sku: "{{ record.sku }}"\n        name: "{{ record.name }}"\n'
        + '        qty: "{{ record.inventory.qty }}"\n        min_qty: "{{ record.inventory.min_qty }}"\n',
        encoding="utf-8")
    return path


def table(db: Path) -> list[tuple[object, ...]]:
    return rows(db, "SELECT sku, name, qty, min_qty FROM products ORDER BY sku")


def expected_table(server: DsyncServer) -> list[tuple[object, ...]]:
    return sorted((r["sku"], r["name"], r["inventory"]["qty"], r["inventory"]["min_qty"])
                  for r in server.records("product").values())


@pytest.mark.timeout(180)
def test_the_mass_sync_pulls_every_page_and_infers_deletes_only_from_a_whole_read(tmp_path: Path) -> None:
    with running() as server:
        keys = server.seed("product", 5545, make=lambda i: {"name": f"Product {i}"})  # name: a field off the layout
        assert (keys[0], keys[-1]) == ("PRO000001", "PRO005545")
        pipeline = pull_pipeline(tmp_path, server)
        db = tmp_path / "out.db"

        first, report = apply(pipeline)
        assert first.code == 0, first.text
        assert counts(report, "products") == tally(5545, creates=5545)
        assert report["syncs"]["products"]["deletes_inferred"] is True
        assert table(db) == expected_table(server)
        assert len(table(db)) == 5545
        assert rows(db, "SELECT name, qty, min_qty FROM products WHERE sku = 'PRO004321'") == [
            ("Product 4321", (4321 * 7 + 3) % 500, (4321 * 7 + 7) % 500)]
        assert server.count("GET", "/api/sync/items/") == 56  # 55 full pages of 100, then 45
        assert server.count("GET", "/api/sync/total") == 1

        for key in ("PRO000100", "PRO002000", "PRO005545"):
            assert server.delete("product", key)
        second, report = apply(pipeline)
        assert second.code == 0, second.text
        assert counts(report, "products") == tally(5542, deletes=3, unchanged=5542)
        assert table(db) == expected_table(server)
        assert rows(db, "SELECT count(*) FROM products WHERE sku IN ('PRO000100', 'PRO002000', 'PRO005545')") == [
            (0,)]

        # An item of page 1 is deleted while the read is at page 10: every later item moves a place earlier,
        # so one is not read. The pass is not whole: no deletes are inferred, and the notes say why.
        server.latency = 0.02
        pages_before = server.count("GET", "/api/sync/items/")
        done = threading.Event()

        def delete_mid_read() -> None:
            deadline = time.monotonic() + 60
            while server.count("GET", "/api/sync/items/") - pages_before < 10 and time.monotonic() < deadline:
                time.sleep(0.002)
            done.set()
            server.delete("product", "PRO000001")

        thread = threading.Thread(target=delete_mid_read, daemon=True)
        thread.start()
        try:
            third, report = apply(pipeline)
        finally:
            thread.join(70)
        assert done.is_set()
        assert third.code == 0, third.text
        run = report["syncs"]["products"]
        assert server.count("GET", "/api/sync/items/") - pages_before == 56  # 5542 then 5541 items: 56 pages
        # 5542 items less the one deleted (already read, on page 1) and the one that slipped onto page 10.
        assert counts(report, "products") == tally(5541, unchanged=5541)
        assert run["deletes_inferred"] is False
        [note] = [n for n in run["notes"] if "changed during the read" in n]
        assert note.startswith("the connector's 'product' items changed during the read (")
        assert note.endswith("s): no deletes are inferred from this pass"), note
        assert len(table(db)) == 5542

        server.latency = 0.0
        fourth, report = apply(pipeline)
        assert fourth.code == 0, fourth.text
        assert counts(report, "products") == tally(5541, deletes=1, unchanged=5541)
        assert report["syncs"]["products"]["deletes_inferred"] is True
        assert not [n for n in report["syncs"]["products"]["notes"] if "changed during the read" in n]
        assert table(db) == expected_table(server)
        assert rows(db, "SELECT count(*) FROM products WHERE sku = 'PRO000001'") == [(0,)]
        assert server.count(method="POST") == server.count(method="PUT") == server.count(method="DELETE") == 0


# ---------------------------------------------------------------------------------------------- 7. validation

def test_validate_checks_mappings_against_the_discovered_layout(tmp_path: Path) -> None:
    with running() as server:
        pipeline = push_pipeline(tmp_path, server)
        plain = syncengine("validate", pipeline, cwd=REPO, env=ENV)
        assert plain.code == 0, plain.text  # without a discovered layout nothing is known to check against
        found = syncengine("discover", pipeline, cwd=REPO, env=ENV)
        assert found.code == 0, found.text
        assert "product: sku (text, key, required), inventory (object), inventory.qty (number), " \
               "inventory.min_qty (number)" in found.out
        assert "order: order_id (text, key, required), customer_name (text), product_id (text), gift_message " \
               "(object), gift_message.gift_message_from (text)" in found.out
        assert (tmp_path / ".syncengine" / "discovery.json").is_file()
        good = syncengine("validate", pipeline, cwd=REPO, env=ENV)
        assert good.code == 0, good.text
        assert [r.route for r in server.requests] == ["/datalayout"]  # validate reads the cache, not the server

        def line_of(text: str) -> int:
            return next(i for i, line in enumerate(pipeline.read_text().splitlines(), 1) if text in line)

        push_pipeline(tmp_path, server, product_sync=PRODUCT_SYNC.replace("qty: ", "qtty: ", 1),
                      order_sync=ORDER_SYNC.replace("customer_name:", "custmer_name:"))
        bad = syncengine("validate", pipeline, cwd=REPO, env=ENV)
        assert bad.code == 2, bad.text
        lines = bad.err.strip().splitlines()
        assert lines[-1] == "2 problems found; nothing was run.", bad.text
        assert f"p.yml:{line_of('qtty:')}:" in lines[0] and lines[0].endswith(
            "syncs.products.mapping.fields.inventory.qtty: 'inventory.qtty' is not a field of 'product' in the "
            "layout of destination 'hub' (did you mean 'inventory.qty'?)"), bad.text
        assert f"p.yml:{line_of('custmer_name:')}:" in lines[1] and lines[1].endswith(
            "syncs.orders.mapping.fields.custmer_name: 'custmer_name' is not a field of 'order' in the layout of "
            "destination 'hub' (did you mean 'customer_name'?)"), bad.text

        # A mapping that never makes the required sku (the sync keyed by a template, so only the layout knows).
        push_pipeline(tmp_path, server, order_sync=ORDER_SYNC, product_sync=PRODUCT_SYNC.replace(
            "key: sku", 'key: "{{ record.sku }}"').replace('        sku: "{{ record.sku }}"\n', ""))
        missing = syncengine("validate", pipeline, cwd=REPO, env=ENV)
        assert missing.code == 2, missing.text
        lines = missing.err.strip().splitlines()
        assert len(lines) == 2 and lines[-1] == "1 problem found; nothing was run.", missing.text
        assert lines[0].endswith("syncs.products.mapping: the layout of 'product' requires 'sku', which the "
                                 "mapping does not make"), missing.text
        where = int(lines[0].split("p.yml:", 1)[1].split(":", 1)[0])
        assert line_of("  products:") < where <= line_of("min_qty:"), missing.text  # within the sync
        assert [r.route for r in server.requests] == ["/datalayout"]


# ---------------------------------------------------------------------------------------------- 8. wrong token

def test_a_wrong_auth_token_stops_the_run_in_one_line_without_printing_it(tmp_path: Path) -> None:
    with running() as server:
        products = make_products(10)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, make_orders([p["sku"] for p in products], 20))
        pipeline = push_pipeline(tmp_path, server)
        wrong = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"
        env = {"DSYNC_AUTH_TOKEN": wrong}
        result = syncengine("apply", pipeline, cwd=REPO, env=env)
        assert result.code == 3, result.text
        assert result.out == ""
        assert result.err.count("\n") == 1 and result.err.endswith("\n"), result.err
        assert result.err == "error: the connector refused the Auth-Token or Entity-Token (HTTP 401) on GET " \
                             "/datalayout\n"
        debug = syncengine("--log-level", "debug", "apply", pipeline, "--json", cwd=REPO, env=env)
        assert debug.code == 3, debug.text
        report = json.loads(debug.out)
        assert report["exit_code"] == 3 and list(report["syncs"]) == ["products"]  # the run stopped there
        for text in (result.text, debug.text):
            assert wrong not in text and DEFAULT_AUTH_TOKEN not in text
        assert wrong.encode() not in b"".join(p.read_bytes() for p in (tmp_path / ".syncengine").rglob("*")
                                               if p.is_file())
        # One request per run, refused before anything was written.
        assert [(r.method, r.status, r.authorized) for r in server.requests] == [("GET", 401, False)] * 2
        assert server.records("product") == {} and server.notifications == []


# ---------------------------------------------------------------------------------------------- engine bugs

def test_a_pending_update_does_not_hold_back_the_orders_of_a_product_that_exists(tmp_path: Path) -> None:
    """Only a product's UPDATE is pending (202): the product exists on the connector, so a new order of it can go."""
    with running(accept_later=lambda write: write.method == "PUT") as server:
        products = make_products(5)
        orders = make_orders([p["sku"] for p in products], 8)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders[:5])
        pipeline = push_pipeline(tmp_path, server)
        first, report = apply(pipeline)
        assert first.code == 0, first.text

        products[2]["qty"] = "999"  # P0003's update is answered 202
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)  # O00006..O00008; O00008 is of P0003
        second, report = apply(pipeline)
        assert report["syncs"]["products"]["pending"] == 1
        assert server.record("product", "P0003") is not None  # the parent is there, only its change waits
        assert dead_letters(pipeline) == []
        assert counts(report, "orders") == tally(8, creates=3, unchanged=5)
        assert second.code == 0, second.text
        assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}


def test_a_refused_delete_keeps_counting_its_attempts(tmp_path: Path) -> None:
    """A delete the connector refuses twice is one dead letter that says it was tried twice."""
    with running() as server:
        products = make_products(3)
        orders = make_orders([p["sku"] for p in products], 3)
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products)
        write_csv(tmp_path / "orders.csv", ORDER_COLUMNS, orders)
        pipeline = push_pipeline(tmp_path, server)
        assert apply(pipeline)[0].code == 0
        write_csv(tmp_path / "products.csv", PRODUCT_COLUMNS, products[1:])  # P0001, still referenced by O00001
        state = tmp_path / ".syncengine" / "state.db"
        first, _ = apply(pipeline)
        assert first.code == 1, first.text
        [(first_failed, attempts)] = rows(state, "SELECT first_failed_at, attempts FROM dead_letters")
        assert attempts == 1
        time.sleep(1.1)  # the stamps are to the second
        second, _ = apply(pipeline)
        assert second.code == 1, second.text
        assert sent_since(server, 0)[-2:] == [("DELETE", PRODUCTS, 400, "P0001")] * 2
        [letter] = dead_letters(pipeline)
        assert (letter["key"], letter["action"], letter["field"]) == ("P0001", "delete", "order.product_id")
        assert rows(state, "SELECT first_failed_at FROM dead_letters") == [(first_failed,)]
        assert letter["attempts"] == 2, letter


def test_a_failed_discover_keeps_the_layout_validate_checks_against(tmp_path: Path) -> None:
    """A discover refused by the connector (wrong token) must not wipe the layout an earlier discover cached."""
    with running() as server:
        pipeline = push_pipeline(tmp_path, server)
        assert syncengine("discover", pipeline, cwd=REPO, env=ENV).code == 0
        refused = syncengine("discover", pipeline, cwd=REPO, env={"DSYNC_AUTH_TOKEN": "not-the-token"})
        assert refused.code == 3, refused.text
        push_pipeline(tmp_path, server, product_sync=PRODUCT_SYNC.replace("qty: ", "qtty: ", 1))
        bad = syncengine("validate", pipeline, cwd=REPO, env=ENV)
        assert bad.code == 2, bad.text
        assert "did you mean 'inventory.qty'?" in bad.err
