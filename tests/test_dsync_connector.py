"""The Dsync connector receiver: a hub's session against ``syncengine serve`` over real HTTP, SQLite checked.

The hub's side is spoken with ``requests`` as the seed (the Dsync connector API document) has it:
the layout, entity writes with Auth-Token, Entity-Token, Process-Id and Entity-Id, notifications, set_job with
the seed's trailing comma, and the mass sync read back from the destination. Checks that need the receiver's
insides (a destination that cannot be read back, the head refused before the body) run it in this process.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from http_servers import ServeProcess

from engine.adapters import register_builtins
from engine.adapters.dsync_connector import (
    DsyncConnectorConfig,
    DsyncConnectorOptions,
    DsyncConnectorReceiver,
    derive_token,
)
from engine.errors import ConfigError
from engine.interfaces import CREATE, DELETE, UPDATE, Delivery, PushEvent, RouteInfo
from engine.testing import check_receiver, default_events

register_builtins()

AUTH_TOKEN = "080ab6bd49b138594ac9647dc929122adfb983c8"  # the seed's
ENV = {"DSYNC_TEST_AUTH_TOKEN": AUTH_TOKEN}
PRODUCT_TOKEN = derive_token(AUTH_TOKEN, "product")
ORDER_TOKEN = derive_token(AUTH_TOKEN, "order")
UNAUTHORIZED = {"status": 401, "message": "Unauthorized", "detail": {}, "data": {}}
OK = {"status": 200, "message": "OK", "detail": {}, "data": {}}
SEED_NOTIFICATION = {
    "process_id": "123456", "status": "500", "message": "Server error updating entity",
    "data": {"notifications": [{"node_id": "45", "status": "200", "message": "Entity updated"},
                               {"node_id": "46", "status": "500", "message": "Server error updating entity"}]},
}

PIPELINE = """\
version: 1
name: dsync_receiver_test
sources:
  hub:
    type: dsync_connector
    auth_token: "{{ env.DSYNC_TEST_AUTH_TOKEN }}"
    per_page: 2
    max_body_bytes: 4096
destinations:
  warehouse:
    type: sqlite
    path: out.db
syncs:
  product:
    source:
      name: hub
      entity: product
      fields:
        - {name: inventory.qty, type: number, description: The product inventory quantity}
        - {name: inventory.min_qty, type: number}
    destination: {name: warehouse, table: product, create_table: true}
    mapping:
      fields:
        sku: "{{ record.sku }}"
        name: "{{ record.name }}"
        inventory:
          qty: "{{ record.inventory.qty | int }}"
          min_qty: "{{ record.inventory.min_qty | int }}"
    key: sku
    mode: mirror
  order:
    source: {name: hub, entity: order}
    destination: {name: warehouse, table: orders, create_table: true}
    mapping:
      fields:
        order_id: "{{ record.order_id }}"
        customer_name: "{{ record.customer_name }}"
        product_id: "{{ record.product_id }}"
    key: order_id
    mode: mirror
"""


class Hub:
    """What a Dsync hub sends: the Auth-Token always; entity writes add the entity's token and a Process-Id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.headers["Auth-Token"] = AUTH_TOKEN

    @staticmethod
    def headers(entity: str, entity_id: str | None = None, **extra: str) -> dict[str, str]:
        headers = {"Entity-Token": PRODUCT_TOKEN if entity == "product" else ORDER_TOKEN, "Process-Id": "123456"}
        if entity_id is not None:
            headers["Entity-Id"] = entity_id
        return {**headers, **extra}

    def create(self, entity: str, body: Any) -> requests.Response:
        return self.http.post(f"{self.url}/entity/{entity}", json=body, headers=self.headers(entity), timeout=10)

    def update(self, entity: str, entity_id: str, body: Any) -> requests.Response:
        return self.http.put(f"{self.url}/entity/{entity}", json=body, headers=self.headers(entity, entity_id),
                             timeout=10)

    def delete(self, entity: str, entity_id: str) -> requests.Response:
        return self.http.delete(f"{self.url}/entity/{entity}", json={}, headers=self.headers(entity, entity_id),
                                timeout=10)

    def total(self, token: str) -> requests.Response:
        return self.http.get(f"{self.url}/api/sync/total", headers={"Entity-Token": token}, timeout=10)

    def page(self, token: str, page: Any = None) -> requests.Response:
        params = {} if page is None else {"page": page}
        return self.http.get(f"{self.url}/api/sync/items/", params=params, headers={"Entity-Token": token},
                             timeout=10)

    def read_all(self, token: str) -> list[dict[str, Any]]:
        """Every item, page by page, as a hub's mass sync reads them (checking the headers on the way)."""
        total = self.total(token).json()["data"]
        pages = -(-total["total"] // total["per_page"])
        items: list[dict[str, Any]] = []
        for number in range(1, pages + 2):  # one page past the end: empty
            answer = self.page(token, number)
            assert answer.status_code == 200, answer.text
            assert (answer.headers["Total"], answer.headers["Per-Page"]) == (str(total["total"]),
                                                                             str(total["per_page"]))
            got = answer.json()["data"]["items"]
            assert len(got) == (0 if number > pages else min(total["per_page"], total["total"] - len(items)))
            items += got
        return items

    def close(self) -> None:
        self.http.close()


def product(sku: str, name: str, qty: Any, min_qty: Any = 1) -> dict[str, Any]:
    return {"sku": sku, "name": name, "inventory": {"qty": qty, "min_qty": min_qty}}


def order(order_id: str, customer: str, product_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "customer_name": customer, "product_id": product_id}


def table(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def snapshot(folder: Path) -> tuple[object, ...]:
    """Everything a refused request must leave alone: both tables, the known records and the dead letters."""
    return (table(folder / "out.db", "SELECT * FROM product ORDER BY sku"),
            table(folder / "out.db", "SELECT * FROM orders ORDER BY order_id"),
            table(folder / "state.db", "SELECT key, hash FROM records ORDER BY key"),
            table(folder / "state.db", "SELECT key, attempts FROM dead_letters ORDER BY key"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServeProcess, Hub]]:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server:
        hub = Hub(server.url)
        try:
            yield server, hub
        finally:
            hub.close()


def test_a_hub_session_lands_in_sqlite_and_reads_back(served: tuple[ServeProcess, Hub], tmp_path: Path) -> None:
    server, hub = served
    url = server.url

    # --- the layout -------------------------------------------------------------------------------
    layout = hub.http.get(f"{url}//datalayout", timeout=10)  # the seed's own URIs have the double slash
    assert layout.status_code == 200 and layout.headers["Content-Type"] == "application/json"
    document = layout.json()
    assert {k: document[k] for k in ("status", "message", "detail")} == {"status": 200, "message": "OK", "detail": {}}
    entities = {e["entity_name"]: e for e in document["data"]["data_layout"]}
    assert list(entities) == ["product", "order"]
    products = entities["product"]
    assert (products["treekey"], products["endpoint_url"], products["entity_token"]) == (
        "product", "/entity/product", PRODUCT_TOKEN)
    assert entities["order"]["entity_token"] == ORDER_TOKEN != PRODUCT_TOKEN
    sku, inventory, name = products["fields"]
    assert sku == {"treekey": "product.sku", "name": "sku", "description": "", "required": True, "multiple": False,
                   "type": "text", "primary_key": True}
    assert {k: inventory[k] for k in ("treekey", "name", "type", "multiple")} == {
        "treekey": "product.inventory", "name": "inventory", "type": "object", "multiple": False}
    assert {f["treekey"]: (f["type"], f["required"], f["description"]) for f in inventory["fields"]} == {
        "product.inventory.min_qty": ("number", False, ""),
        "product.inventory.qty": ("number", False, "The product inventory quantity")}
    assert (name["treekey"], name["type"], "primary_key" in name) == ("product.name", "text", False)
    assert [(f["treekey"], f.get("primary_key", False)) for f in entities["order"]["fields"]] == [
        ("order.order_id", True), ("order.customer_name", False), ("order.product_id", False)]

    # --- writes, as a hub sends them ----------------------------------------------------------------
    for i in range(1, 6):
        created = hub.create("product", product(f"p{i}", f"Product {i}", i * 10))
        assert (created.status_code, created.json()) == (201, {"status": 201, "message": "Created", "detail": {},
                                                               "data": {"sku": f"p{i}"}})
    for i, sku_of in ((1, "p1"), (2, "p2"), (3, "p2")):
        assert hub.create("order", order(f"o{i}", f"Customer {i}", sku_of)).json()["data"] == {"order_id": f"o{i}"}

    duplicate = hub.create("product", product("p1", "Again", 1))
    assert duplicate.status_code == 409
    assert duplicate.json()["message"] == "Conflict"
    assert duplicate.json()["detail"]["treekey"] == "product.sku"
    assert "'p1' exists" in duplicate.json()["detail"]["message"]

    # An update names its record by Entity-Id; the body may leave the key out.
    updated = hub.update("product", "p2", {"name": "Product 2 renamed", "inventory": {"qty": 25, "min_qty": 5}})
    assert (updated.status_code, updated.json()) == (200, {"status": 200, "message": "Created", "detail": {},
                                                           "data": {}})
    with_key = hub.update("order", "o3", order("o3", "Customer 3b", "p3"))
    assert with_key.status_code == 200, with_key.text
    deleted = hub.delete("product", "p4")
    assert (deleted.status_code, deleted.json()) == (200, OK)
    assert hub.delete("order", "o1").status_code == 200

    unknown = hub.update("product", "nope", product("nope", "X", 1))
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == {"header": "Entity-Id", "message": "no record 'nope'"}
    gone = hub.delete("product", "p4")
    assert (gone.status_code, gone.json()["detail"]["header"]) == (404, "Entity-Id")

    # A record the mapping refuses: 400 naming the field by its treekey (and dead-lettered by the engine).
    rejected = hub.create("product", product("p9", "Bad stock", "lots"))
    assert rejected.status_code == 400
    assert rejected.json()["message"] == "Bad Request"
    assert rejected.json()["detail"]["treekey"] == "product.inventory.qty"
    assert "'lots'" in rejected.json()["detail"]["message"]
    assert "pipeline.yml" not in rejected.text  # the hub is not told where the pipeline file lives
    partial = hub.update("product", "p1", {"color": "White"})  # the seed's partial update: no name to map
    assert partial.status_code == 400 and partial.json()["detail"]["treekey"] == "product.name"

    # The seed's notification, and set_job with the seed's trailing comma.
    noted = hub.http.post(f"{url}/notification", json=SEED_NOTIFICATION, headers={"Process-Id": "123456"},
                          timeout=10)
    assert (noted.status_code, noted.json()) == (200, OK)
    job = hub.http.post(f"{url}/entity/product/set_job", data=b'{\n    "job_id" : "a123456",\n}',
                        headers={"Content-Type": "application/json"}, timeout=10)
    assert (job.status_code, job.json()) == (200, OK)

    # --- refusals, each changing nothing -----------------------------------------------------------
    before = snapshot(tmp_path)
    good = product("p7", "Never stored", 7)
    entity_url = f"{url}/entity/product"
    refusals: list[tuple[str, str, dict[str, Any], int, dict[str, Any] | None]] = [
        ("POST", entity_url, {"json": good, "headers": {**hub.headers("product"), "Auth-Token": "wrong"}}, 401,
         UNAUTHORIZED),
        ("POST", entity_url, {"json": good, "headers": {**hub.headers("product"), "Auth-Token": ""}}, 401,
         UNAUTHORIZED),
        ("GET", f"{url}/datalayout", {"headers": {"Auth-Token": AUTH_TOKEN[:-1]}}, 401, UNAUTHORIZED),
        ("POST", entity_url, {"json": good, "headers": hub.headers("product", **{"Entity-Token": ORDER_TOKEN})},
         401, UNAUTHORIZED),
        ("POST", entity_url, {"json": good, "headers": {"Process-Id": "1"}}, 401, UNAUTHORIZED),
        ("GET", f"{url}/api/sync/total", {"headers": {"Entity-Token": "x" * 64}}, 401, UNAUTHORIZED),
        ("POST", entity_url, {"data": b'{"sku": "p7", ', "headers": hub.headers("product")}, 400, None),
        ("POST", entity_url, {"data": b'{"sku": "p7",}', "headers": hub.headers("product")}, 400, None),
        ("POST", entity_url, {"data": b'{"sku": NaN}', "headers": hub.headers("product")}, 400, None),
        ("POST", entity_url, {"json": [good], "headers": hub.headers("product")}, 400, None),
        ("POST", entity_url, {"data": b"\xff\xfe", "headers": hub.headers("product")}, 400, None),
        ("POST", entity_url, {"json": {"name": "no key"}, "headers": hub.headers("product")}, 400,
         {"treekey": "product.sku", "message": "required"}),
        ("POST", entity_url, {"json": {**good, "sku": ["p7"]}, "headers": hub.headers("product")}, 400,
         {"treekey": "product.sku", "message": "must be text"}),
        ("POST", entity_url, {"json": good, "headers": {**hub.headers("product"), "Process-Id": ""}}, 400,
         {"header": "Process-Id", "message": "required"}),
        ("PUT", entity_url, {"json": good, "headers": hub.headers("product")}, 400,
         {"header": "Entity-Id", "message": "required"}),
        ("PUT", entity_url, {"json": good, "headers": hub.headers("product", "p1")}, 400,
         {"treekey": "product.sku", "message": "differs from Entity-Id 'p1'"}),
        ("POST", f"{url}/entity/customer", {"json": good, "headers": hub.headers("product")}, 404, None),
        ("POST", f"{url}/elsewhere", {"json": good}, 404, None),
        ("PATCH", entity_url, {"json": good, "headers": hub.headers("product")}, 405, None),
        ("POST", entity_url, {"json": {**good, "name": "x" * 5000}, "headers": hub.headers("product")}, 413, None),
        ("POST", f"{url}/entity/product/set_job", {"json": {"job": "a1"}}, 400,
         {"field": "job_id", "message": "required"}),
        ("POST", f"{url}/entity/product/set_job", {"json": {"job_id": "a1"}, "headers": {"Entity-Token": "x"}},
         401, UNAUTHORIZED),
        ("POST", f"{url}/notification", {"json": {**SEED_NOTIFICATION, "process_id": "9"},
                                         "headers": {"Process-Id": "123456"}}, 400, None),
        ("GET", f"{url}/api/sync/items/", {"params": {"page": "0"}, "headers": {"Entity-Token": PRODUCT_TOKEN}},
         400, {"query": "page", "message": "must be a whole number from 1"}),
    ]
    for method, target, kwargs, status, detail in refusals:
        answer = hub.http.request(method, target, timeout=10, **kwargs)
        body = answer.json()
        assert (answer.status_code, body["status"]) == (status, status), (method, target, kwargs, answer.text)
        assert set(body) == {"status", "message", "detail", "data"} and body["data"] == {}
        if detail is not None:
            assert (body if status == 401 else body["detail"]) == detail, answer.text
        else:
            assert body["detail"]["message"], answer.text
        if status == 405:
            assert answer.headers["Allow"] == "POST, PUT, DELETE"
        assert snapshot(tmp_path) == before, f"a refused request ({status}) changed something"

    # --- the destination holds exactly what the hub made it hold ------------------------------------
    expected_products = [
        {"sku": "p1", "name": "Product 1", "inventory": {"qty": 10, "min_qty": 1}},
        {"sku": "p2", "name": "Product 2 renamed", "inventory": {"qty": 25, "min_qty": 5}},
        {"sku": "p3", "name": "Product 3", "inventory": {"qty": 30, "min_qty": 1}},
        {"sku": "p5", "name": "Product 5", "inventory": {"qty": 50, "min_qty": 1}},
    ]
    expected_orders = [order("o2", "Customer 2", "p2"), order("o3", "Customer 3b", "p3")]
    stored = table(tmp_path / "out.db", "SELECT sku, name, inventory FROM product ORDER BY sku")
    assert [{"sku": s, "name": n, "inventory": json.loads(i)} for s, n, i in stored] == expected_products
    assert table(tmp_path / "out.db", "SELECT order_id, customer_name, product_id FROM orders ORDER BY order_id") \
        == [tuple(o.values()) for o in expected_orders]

    # --- and the mass sync serves exactly those records, nested inventory as objects ------------------
    assert hub.total(PRODUCT_TOKEN).json() == {"status": 200, "message": "OK", "detail": {},
                                               "data": {"total": 4, "per_page": 2}}
    assert sorted(hub.read_all(PRODUCT_TOKEN), key=lambda r: r["sku"]) == expected_products
    assert sorted(hub.read_all(ORDER_TOKEN), key=lambda r: r["order_id"]) == expected_orders
    assert hub.page(PRODUCT_TOKEN).json()["data"]["items"] == hub.page(PRODUCT_TOKEN, 1).json()["data"]["items"]

    assert server.terminate() == 0
    assert server.lines.get(timeout=5).strip() == "stopped"
    for secret in (AUTH_TOKEN, PRODUCT_TOKEN, ORDER_TOKEN):
        assert secret not in server.stderr


def test_concurrent_writes_and_mass_sync_reads_agree(served: tuple[ServeProcess, Hub], tmp_path: Path) -> None:
    """Hub threads write while another pages through: every answer is a success and every page is consistent."""
    server, hub = served
    stop = threading.Event()
    problems: list[str] = []

    def read() -> int:
        reads = 0
        with requests.Session() as http:
            http.headers.update({"Auth-Token": AUTH_TOKEN, "Entity-Token": ORDER_TOKEN})
            while not stop.is_set() or reads == 0:
                answer = http.get(f"{server.url}/api/sync/items/", params={"page": 1}, timeout=10)
                items = answer.json()["data"]["items"]
                if answer.status_code != 200 or len(items) != min(2, int(answer.headers["Total"])):
                    problems.append(answer.text)
                reads += 1
        return reads

    def write(worker: int) -> list[int]:
        client = Hub(server.url)
        try:
            return [client.create("order", order(f"w{worker}-{i}", "C", "p")).status_code for i in range(8)]
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=5) as pool:
        reader = pool.submit(read)
        writers = [pool.submit(write, worker) for worker in range(4)]
        statuses = [status for future in writers for status in future.result(timeout=60)]
        stop.set()
        assert reader.result(timeout=60) > 0
    assert statuses == [201] * 32 and problems == []
    assert hub.total(ORDER_TOKEN).json()["data"]["total"] == 32
    assert len(hub.read_all(ORDER_TOKEN)) == 32
    assert server.terminate() == 0


# --- the receiver in this process ----------------------------------------------------------------------------


def status_as_delivered(answer: requests.Response) -> int:
    """The seed's answer as the engine's status: 201 is the engine's 2xx, a 400 carrying its message its 422."""
    if answer.status_code == 201:
        return 200
    if answer.status_code == 400 and answer.json()["detail"].get("message") == "refused by the contract check":
        return 422
    return answer.status_code


def push(url: str, event: PushEvent) -> int:
    """One event as a Dsync hub sends it to the entity ``things`` (key ``id``)."""
    headers = {"Auth-Token": AUTH_TOKEN, "Entity-Token": derive_token(AUTH_TOKEN, "things"), "Process-Id": "7"}
    if event.action != CREATE:
        headers["Entity-Id"] = str(event.record["id"])
    method = {CREATE: "POST", UPDATE: "PUT", DELETE: "DELETE"}[str(event.action)]
    body = {} if event.action == DELETE else event.record
    return status_as_delivered(requests.request(method, f"{url}/entity/things", json=body, headers=headers,
                                                timeout=10))


@pytest.mark.timeout(60)
def test_the_receiver_keeps_the_receiver_contract(tmp_path: Path) -> None:
    events = [PushEvent(e.route, e.action, e.record, strict=True) for e in default_events("things")]
    check_receiver("dsync_connector", {"auth_token": AUTH_TOKEN},
                   {"entity": "things", "fields": [{"name": "id", "primary_key": True}]}, push, route="things",
                   base_dir=tmp_path, events=events)


def running(receiver: DsyncConnectorReceiver, deliver: Callable[[PushEvent], Delivery]) -> Callable[[], None]:
    """Serve ``receiver`` in a thread; returns what stops it (and waits for it)."""
    stop = threading.Event()
    thread = threading.Thread(target=receiver.serve, args=(deliver, stop), daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()

    return halt


def receiver_for(tmp_path: Path, *routes: RouteInfo, **config: Any) -> DsyncConnectorReceiver:
    receiver = DsyncConnectorReceiver(DsyncConnectorConfig(auth_token=AUTH_TOKEN, **config), tmp_path)
    for info in routes:
        assert receiver.route(DsyncConnectorOptions(entity=info.route)) == info.route
    receiver.describe_routes(routes)
    return receiver


def test_a_destination_that_cannot_be_read_back_answers_501_and_heads_are_refused_early(tmp_path: Path) -> None:
    delivered: list[PushEvent] = []

    def deliver(event: PushEvent) -> Delivery:
        delivered.append(event)
        return Delivery(200, "done")

    receiver = receiver_for(tmp_path, RouteInfo("product", "product", ("name", "sku"), ("sku",)))
    url = receiver.bind("127.0.0.1", 0)
    halt = running(receiver, deliver)
    try:
        headers = {"Auth-Token": AUTH_TOKEN, "Entity-Token": PRODUCT_TOKEN}
        total = requests.get(f"{url}/api/sync/total", headers=headers, timeout=10)
        assert total.status_code == 501 and "cannot be read back" in total.json()["detail"]["message"]
        assert requests.get(f"{url}/api/sync/items/", headers=headers, timeout=10).status_code == 501

        # A body over the limit is refused from the head alone: the answer comes though no byte of it was sent.
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"POST /entity/product HTTP/1.1\r\nHost: x\r\nAuth-Token: {AUTH_TOKEN}\r\n"
                         f"Entity-Token: {PRODUCT_TOKEN}\r\nProcess-Id: 1\r\nContent-Length: 99999999\r\n\r\n".encode())
            head = ""
            while '"status": 413' not in head:  # the head and the body may come in two writes
                data = sock.recv(65536)
                if not data:
                    break
                head += data.decode("latin-1")
        assert head.startswith("HTTP/1.1 413 ") and '"status": 413' in head

        def chunks() -> Iterator[bytes]:
            yield b'{"sku": "a1"}'

        chunked = requests.post(f"{url}/entity/product", data=chunks(), headers={**headers, "Process-Id": "1"},
                                timeout=10)
        assert chunked.status_code == 411 and chunked.json()["status"] == 411
        assert delivered == []
    finally:
        halt()
    receiver.close()


def test_layout_and_routes_are_checked_before_serving(tmp_path: Path) -> None:
    # A sync whose key is not one plain top-level field cannot be addressed by Entity-Id ...
    with pytest.raises(ConfigError, match="declare that field in the source's fields with primary_key"):
        receiver_for(tmp_path, RouteInfo("line", "lines", ("order", "line"), ("order", "line")))
    with pytest.raises(ConfigError, match="key is a template"):
        receiver_for(tmp_path, RouteInfo("line", "lines", ("order",), ()))
    # ... unless the options name it.
    receiver = DsyncConnectorReceiver(DsyncConnectorConfig(auth_token=AUTH_TOKEN), tmp_path)
    receiver.route(DsyncConnectorOptions(entity="line", fields=[{"name": "code", "primary_key": True},
                                                               {"name": "meta.tags", "multiple": True}]))
    receiver.describe_routes([RouteInfo("line", "lines", ("order",), ())])
    fields = receiver.entities["line"].layout["fields"]
    assert [(f["treekey"], f["type"], f["required"]) for f in fields] == [
        ("line.code", "text", True), ("line.order", "text", False), ("line.meta", "object", False)]
    assert fields[2]["fields"][0]["multiple"] is True
    # A leaf declared under a field declared as text is a contradiction.
    contradiction = DsyncConnectorReceiver(DsyncConnectorConfig(auth_token=AUTH_TOKEN), tmp_path)
    with pytest.raises(ConfigError, match="must be of type object"):
        contradiction.route(DsyncConnectorOptions(entity="x", fields=[{"name": "a", "type": "text"},
                                                                      {"name": "a.b"}]))
    # Configured entity tokens: used as given, and one for an entity no sync receives is a mistake.
    mine = receiver_for(tmp_path, RouteInfo("product", "product", ("sku",), ("sku",)),
                        entity_tokens={"product": "source-1-product-462705796aa4d94d3a35d7254637a943"})
    assert mine.entities["product"].layout["entity_token"] == "source-1-product-462705796aa4d94d3a35d7254637a943"
    with pytest.raises(ConfigError, match="entity_tokens names typo"):
        receiver_for(tmp_path, RouteInfo("product", "product", ("sku",), ("sku",)), entity_tokens={"typo": "t"})
    with pytest.raises(ConfigError, match="auth_token"):
        DsyncConnectorReceiver(DsyncConnectorConfig(), tmp_path)
    # Derived tokens: stable, per entity, and keyed by the Auth-Token.
    assert derive_token(AUTH_TOKEN, "product") == PRODUCT_TOKEN != derive_token("other", "product")
    assert len(PRODUCT_TOKEN) == 64 and PRODUCT_TOKEN != ORDER_TOKEN
