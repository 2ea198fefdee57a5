"""The Dsync samples as shipped: each validates through the CLI, and runs for real.

``samples/dsync/push-products`` is copied to a temporary folder and applied with ``syncengine`` as a subprocess,
as its README says, against :class:`DsyncServer` (the seed's layout, quirks included) running in this process.
``samples/dsync/connector`` is copied likewise and run with ``syncengine serve`` (port 0); a hub-like client speaks
the seed's API to it, and the push-products sample is applied against it too: syncengine on both sides.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import REPO, rows, syncengine
from http_servers import ServeProcess
from servers.dsync_server import DEFAULT_AUTH_TOKEN, DsyncServer

from engine.adapters.dsync_connector import derive_token

SAMPLES = REPO / "samples" / "dsync"
HUB_TOKEN = "9f2c41d07be35a6e8c1f4a2d6b0e7c93a5d8f016"  # what a hub sends the connector sample as Auth-Token
WRITES = ("POST", "PUT", "DELETE")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def server() -> Iterator[DsyncServer]:
    """A running test connector with the seed's layout (``order`` at an absolute endpoint_url, no primary key)."""
    with DsyncServer() as running:
        yield running
        assert running.server_errors == []


def copy_sample(tmp_path: Path, name: str) -> Path:
    """A private copy of ``samples/dsync/<name>``; returns its pipeline file."""
    target = tmp_path / name
    shutil.copytree(SAMPLES / name, target, ignore=shutil.ignore_patterns(".syncengine", "*.db"))
    return target / "pipeline.yml"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, records: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def product_doc(row: dict[str, str]) -> dict[str, Any]:
    """What a connector must hold for a row of products.csv (mappings/dsync/product.yml)."""
    return {"sku": row["sku"], "name": row["name"],
            "inventory": {"qty": int(row["qty"]) if row["qty"] else None,
                          "min_qty": int(row["min_qty"]) if row["min_qty"] else None}}


def order_doc(row: dict[str, str]) -> dict[str, Any]:
    """What a connector must hold for a row of orders.csv (mappings/dsync/order.yml)."""
    gift = {"gift_message_from": row["gift_from"] or None, "gift_message_to": row["gift_to"] or None,
            "gift_message_body": row["gift_body"] or None}
    return {"order_id": row["order_id"], "customer_name": row["customer"], "product_id": row["sku"],
            "gift_message": gift if any(gift.values()) else None}


def apply(pipeline: Path, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """``syncengine apply --json``: (each sync's report, the run id), failing the test on a non-zero exit."""
    result = syncengine("apply", pipeline, "--json", env=env)
    assert result.code == 0, result.text
    report = json.loads(result.out)
    return report["syncs"], report["run_id"]


def counts(report: dict[str, Any]) -> dict[str, tuple[int, int, int, int, int, int]]:
    """(read, creates, updates, deletes, unchanged, errors) per sync."""
    return {name: (s["read"], s["creates"], s["updates"], s["deletes"], s["unchanged"], s["errors"])
            for name, s in report.items()}


def writes(server: DsyncServer, start: int = 0) -> Counter[tuple[str, str, int]]:
    """(method, route, status) of the entity writes from request number ``start`` on."""
    return Counter((r.method, r.route, r.status) for r in server.requests[start:]
                   if r.method in WRITES and r.route.startswith("/entity/"))


def test_the_connector_sample_validates(tmp_path: Path) -> None:
    pipeline = copy_sample(tmp_path, "connector")
    result = syncengine("validate", pipeline, env={"DSYNC_AUTH_TOKEN": HUB_TOKEN})
    assert result.code == 0, result.text
    assert "valid (2 syncs: product, order)" in result.out


def test_push_products_validates_against_the_seeds_layout(tmp_path: Path, server: DsyncServer) -> None:
    """The shipped mappings fit the seed's layout: discover it, then validate checks the mappings against it."""
    pipeline = copy_sample(tmp_path, "push-products")
    env = {"DSYNC_URL": server.url, "DSYNC_AUTH_TOKEN": DEFAULT_AUTH_TOKEN}
    found = syncengine("discover", pipeline, env=env)
    assert found.code == 0, found.text
    assert "product: sku (text, key, required), inventory (object), inventory.qty (number), inventory.min_qty " \
           "(number)" in found.out
    assert "order: order_id (text, key, required), customer_name (text), product_id (text), gift_message " \
           "(object)" in found.out
    checked = syncengine("validate", pipeline, env=env)
    assert checked.code == 0, checked.text
    assert "valid (2 syncs: products, orders)" in checked.out
    assert [r.route for r in server.requests] == ["/datalayout"]  # validate reads the discovered layout


# --- push-products against the test connector ------------------------------------------------------------------


def test_push_products_lands_once_and_a_second_apply_sends_nothing(tmp_path: Path, server: DsyncServer) -> None:
    pipeline = copy_sample(tmp_path, "push-products")
    env = {"DSYNC_URL": server.url, "DSYNC_AUTH_TOKEN": DEFAULT_AUTH_TOKEN}
    products = read_csv(pipeline.parent / "products.csv")
    orders = read_csv(pipeline.parent / "orders.csv")
    assert (len(products), len(orders)) == (20, 40)

    first, run_id = apply(pipeline, env)
    assert counts(first) == {"products": (20, 20, 0, 0, 0, 0), "orders": (40, 40, 0, 0, 0, 0)}
    assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
    assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}
    # The seed's order endpoint_url is absolute (http://dsync.connector.example/entity/order): its path was
    # used on the configured URL, so every order reached this server.
    assert writes(server) == {("POST", "/entity/product", 201): 20, ("POST", "/entity/order", 201): 40}
    assert {r.headers.get("Process-Id") for r in server.requests if r.method in WRITES} == {run_id}
    # A quoted multi-line gift message, one without a body, and an order without any.
    stored = server.records("order")
    assert stored["100000119"]["gift_message"] == {"gift_message_from": "Sven", "gift_message_to": "Ingrid",
                                                   "gift_message_body": "Merry Christmas,\nlove from all of us"}
    assert stored["100000124"]["gift_message"]["gift_message_body"] is None
    assert stored["100000101"]["gift_message"] is None
    assert sum(1 for o in stored.values() if o["gift_message"]) == 8
    assert server.record("product", "hde013") == {"sku": "hde013", "name": "Madison Screen Protector",
                                                  "inventory": {"qty": 410, "min_qty": None}}
    assert [(n.process_id, n.body["status"], n.body["message"]) for n in server.notifications] == [
        (run_id, "200", "product: 20 created"), (run_id, "200", "order: 40 created")]

    # Nothing changed: nothing is sent, not even a notification; only the layout is read.
    before = len(server.requests)
    second, _ = apply(pipeline, env)
    assert counts(second) == {"products": (20, 0, 0, 0, 20, 0), "orders": (40, 0, 0, 0, 40, 0)}
    assert [r.route for r in server.requests[before:]] == ["/datalayout"]
    assert len(server.notifications) == 2

    # One quantity changed, a product without orders and one order removed (mode: mirror).
    products[0]["qty"] = "41"
    gone_product = products.pop(17)
    gone_order = orders.pop()
    assert (gone_product["sku"], gone_order["order_id"]) == ("hde018", "100000140")
    write_csv(pipeline.parent / "products.csv", products)
    write_csv(pipeline.parent / "orders.csv", orders)
    before = len(server.requests)
    third, run_id = apply(pipeline, env)
    assert counts(third) == {"products": (19, 0, 1, 1, 18, 0), "orders": (39, 0, 0, 1, 39, 0)}
    assert writes(server, before) == {("PUT", "/entity/product", 200): 1, ("DELETE", "/entity/product", 200): 1,
                                      ("DELETE", "/entity/order", 200): 1}
    assert {r.headers.get("Entity-Id") for r in server.requests[before:] if r.method in ("PUT", "DELETE")} == {
        "hde001", "hde018", "100000140"}
    assert server.records("product") == {p["sku"]: product_doc(p) for p in products}
    assert server.records("order") == {o["order_id"]: order_doc(o) for o in orders}
    assert [n.body["message"] for n in server.notifications[-2:]] == ["product: 1 updated, 1 deleted",
                                                                      "order: 1 deleted"]


# --- the connector sample under `syncengine serve` -------------------------------------------------------------


class Hub:
    """What a Dsync hub sends the connector: Auth-Token always; entity writes add Entity-Token and Process-Id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.headers["Auth-Token"] = HUB_TOKEN
        self.tokens: dict[str, str] = {}

    def layout(self) -> dict[str, Any]:
        answer = self.http.get(f"{self.url}/datalayout", timeout=10)
        assert answer.status_code == 200, answer.text
        entities = {e["entity_name"]: e for e in answer.json()["data"]["data_layout"]}
        self.tokens = {name: e["entity_token"] for name, e in entities.items()}
        return entities

    def create(self, entity: str, body: dict[str, Any]) -> requests.Response:
        return self.http.post(f"{self.url}/entity/{entity}", json=body, timeout=10,
                              headers={"Entity-Token": self.tokens[entity], "Process-Id": "123456"})

    def read_all(self, entity: str) -> list[dict[str, Any]]:
        """The mass sync: the total, then every page."""
        headers = {"Entity-Token": self.tokens[entity]}
        total = self.http.get(f"{self.url}/api/sync/total", headers=headers, timeout=10).json()["data"]
        items: list[dict[str, Any]] = []
        page = 1
        while len(items) < total["total"]:
            answer = self.http.get(f"{self.url}/api/sync/items/", params={"page": page}, headers=headers,
                                   timeout=10)
            assert answer.status_code == 200 and answer.headers["Total"] == str(total["total"]), answer.text
            got = answer.json()["data"]["items"]
            assert got, "a page before the end holds no items"
            items += got
            page += 1
        return items

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[tuple[ServeProcess, Hub, Path]]:
    """The connector sample served on a free port; yields the process, a hub and the sample's folder."""
    pipeline = copy_sample(tmp_path, "connector")
    with ServeProcess(pipeline, env={"DSYNC_AUTH_TOKEN": HUB_TOKEN}) as served:
        hub = Hub(served.url)
        try:
            yield served, hub, pipeline.parent
        finally:
            hub.close()


def test_the_connector_sample_takes_a_hubs_writes_and_serves_them_back(
        connector: tuple[ServeProcess, Hub, Path]) -> None:
    served, hub, folder = connector
    entities = hub.layout()
    assert list(entities) == ["product", "order"]
    assert hub.tokens == {"product": derive_token(HUB_TOKEN, "product"), "order": derive_token(HUB_TOKEN, "order")}

    def shape(fields: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(f["treekey"], f["type"], f["required"], f.get("primary_key", False), shape(f.get("fields", [])))
                for f in fields]

    assert shape(entities["product"]["fields"]) == [
        ("product.sku", "text", True, True, []),
        ("product.inventory", "object", False, False, [("product.inventory.min_qty", "number", False, False, []),
                                                       ("product.inventory.qty", "number", False, False, [])]),
        ("product.name", "text", True, False, [])]
    assert shape(entities["order"]["fields"]) == [
        ("order.order_id", "text", True, True, []),
        ("order.customer_name", "text", False, False, []),
        ("order.gift_message", "object", False, False, [
            ("order.gift_message.gift_message_from", "text", False, False, []),
            ("order.gift_message.gift_message_to", "text", False, False, []),
            ("order.gift_message.gift_message_body", "text", False, False, [])]),
        ("order.product_id", "text", False, False, [])]

    # The seed's create (fields the mapping does not read are not kept), then an order with a gift message.
    product = {"sku": "hde012", "name": "Madison 8GB Digital Media Player", "color": "Black",
               "inventory": {"qty": 9, "min_qty": 5}}
    created = hub.create("product", product)
    assert (created.status_code, created.json()) == (201, {"status": 201, "message": "Created", "detail": {},
                                                           "data": {"sku": "hde012"}})
    order = {"order_id": "100000109", "customer_name": "Ines Castro", "product_id": "hde012",
             "gift_message": {"gift_message_from": "Ines", "gift_message_to": "Pablo",
                              "gift_message_body": 'For the long drive "home"'}}
    created = hub.create("order", order)
    assert (created.status_code, created.json()["data"]) == (201, {"order_id": "100000109"})
    again = hub.create("product", product)
    assert (again.status_code, again.json()["detail"]["treekey"]) == (409, "product.sku")
    refused = hub.create("product", {"sku": "hde099", "name": "Bad stock", "inventory": {"qty": "lots"}})
    assert (refused.status_code, refused.json()["detail"]["treekey"]) == (400, "product.inventory.qty")

    # Read back through the mass sync, nested objects as objects, and stored in SQLite.
    assert hub.read_all("product") == [{"sku": "hde012", "name": "Madison 8GB Digital Media Player",
                                        "inventory": {"qty": 9, "min_qty": 5}}]
    assert hub.read_all("order") == [order]
    db = folder / "connector.db"
    assert rows(db, "SELECT sku, name, inventory FROM products") == [
        ("hde012", "Madison 8GB Digital Media Player", '{"qty": 9, "min_qty": 5}')]
    assert [(i, c, p, json.loads(g)) for i, c, p, g in rows(db, "SELECT * FROM orders")] == [
        ("100000109", "Ines Castro", "hde012", order["gift_message"])]

    assert served.terminate() == 0
    assert served.lines.get(timeout=5).strip() == "stopped"
    assert HUB_TOKEN not in served.stderr and hub.tokens["product"] not in served.stderr


def test_push_products_into_the_connector_sample(tmp_path: Path, connector: tuple[ServeProcess, Hub, Path]) -> None:
    """syncengine on both sides: the push sample's dsync destination writes into the connector sample."""
    served, hub, folder = connector
    pipeline = copy_sample(tmp_path, "push-products")
    env = {"DSYNC_URL": served.url, "DSYNC_AUTH_TOKEN": HUB_TOKEN}
    products = read_csv(pipeline.parent / "products.csv")
    orders = read_csv(pipeline.parent / "orders.csv")

    first, _ = apply(pipeline, env)
    assert counts(first) == {"products": (20, 20, 0, 0, 0, 0), "orders": (40, 40, 0, 0, 0, 0)}

    # An update (the whole record, by Entity-Id) and two deletes, which the connector's strict writes take.
    products[0]["qty"] = "41"
    products.pop(17)
    orders.pop()
    write_csv(pipeline.parent / "products.csv", products)
    write_csv(pipeline.parent / "orders.csv", orders)
    second, _ = apply(pipeline, env)
    assert counts(second) == {"products": (19, 0, 1, 1, 18, 0), "orders": (39, 0, 0, 1, 39, 0)}

    hub.layout()
    by_sku = {p["sku"]: p for p in hub.read_all("product")}
    assert by_sku == {p["sku"]: product_doc(p) for p in products}
    # The connector's order mapping keeps what it reads; an order without a gift message holds null.
    assert {o["order_id"]: o for o in hub.read_all("order")} == {o["order_id"]: order_doc(o) for o in orders}
    assert rows(folder / "connector.db", "SELECT count(*) FROM orders") == [(39,)]
    assert served.terminate() == 0
