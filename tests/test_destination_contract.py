"""Each destination keeps the contract of ``tests/adapter_contract.py`` against a real peer."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from adapter_contract import check_destination
from http_servers import Reply, Request, ScriptedServer


def test_sqlite_keeps_the_destination_contract(tmp_path: Path) -> None:
    def read_back() -> dict[str, dict[str, Any]]:
        con = sqlite3.connect(tmp_path / "out.db")
        try:
            return {r[0]: {"id": r[0], "name": r[1], "qty": r[2]} for r in con.execute("SELECT id, name, qty FROM t")}
        finally:
            con.close()

    check_destination("sqlite", {"path": "out.db"}, {"table": "t", "create_table": True}, read_back, tmp_path)


class JsonStore:
    """A REST-style JSON endpoint: POST creates and returns an id, PUT/DELETE address ``/items/{id}``."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        with self.lock:
            if request.method == "POST" and request.path == "/items":
                record = json.loads(request.body)
                ident = self.by_key.setdefault(record["id"], f"r{len(self.by_key) + 1}")
                self.items[ident] = record
                return Reply(201, json.dumps({"id": ident}).encode(), {"Content-Type": "application/json"})
            ident = request.path.rsplit("/", 1)[-1]
            if request.method == "PUT" and ident in self.items:
                self.items[ident] = json.loads(request.body)
                return Reply(200)
            if request.method == "DELETE":
                return Reply(204) if self.items.pop(ident, None) is not None else Reply(404)
            return Reply(404)

    def holding(self) -> dict[str, dict[str, Any]]:
        """Records by their key."""
        with self.lock:
            return {record["id"]: record for record in self.items.values()}


@pytest.mark.timeout(30)
def test_http_json_keeps_the_destination_contract(tmp_path: Path) -> None:
    store = JsonStore()
    with ScriptedServer(store) as server:
        check_destination("http", {"url": server.url + "/items", "format": "json", "update_method": "PUT",
                                   "concurrency": 2}, {}, store.holding, tmp_path)
