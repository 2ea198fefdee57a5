"""The Aljex live sync end to end: ``syncengine serve`` as a process, posts over real HTTP, SQLite checked."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import requests
from conftest import syncengine
from http_servers import ServeProcess

PASSWORD = "live-s3cret-pw"
AUTH = ("aljex", PASSWORD)
ENV = {"ALJEX_LIVE_PASSWORD": PASSWORD}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

PIPELINE = """
version: 1
name: live_test
sources:
  aljex_live:
    type: aljex_live
    username: aljex
    password: "{{{{ env.ALJEX_LIVE_PASSWORD }}}}"
    allow_ips: {allow}
    max_body_bytes: 4096
    path: /aljex
destinations:
  warehouse:
    type: sqlite
    path: out.db
syncs:
  employees:
    source: {{name: aljex_live, table: employees}}
    destination: {{name: warehouse, table: employees, create_table: true}}
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name | clean }}}}"
        email: "{{{{ record.email | null_if_empty }}}}"
        team: "{{{{ record.team | int }}}}"
        type: "{{{{ record.type }}}}"
        phone: "{{{{ record.phone | digits }}}}"
        status: "{{{{ record.status }}}}"
    key: id
    mode: mirror
    scope: increment
  customers:
    source: {{name: aljex_live, table: customers}}
    destination: {{name: warehouse, table: customers, create_table: true}}
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name | clean }}}}"
        city: "{{{{ record.city }}}}"
    key: id
    mode: mirror
    scope: increment
"""


def write_pipeline(folder: Path, allow: list[str]) -> Path:
    path = folder / "pipeline.yml"
    path.write_text(PIPELINE.format(allow=json.dumps(allow)), encoding="utf-8")
    return path


def employee(action: str, ident: str, **fields: str) -> dict[str, str]:
    base = {"web_sync_table_name": "employees", "web_sync_action": action, "id": ident, "name": "Bill Smith",
            "email": "bill.smith@aljex.com", "team": "4", "type": "employee", "phone": "7323578700",
            "status": "good"}
    return {**base, **fields}


def table(db: Path, name: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT * FROM {name} ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def snapshot(folder: Path) -> tuple[object, ...]:
    """Everything a refused post must leave alone: both tables, the known records and dead letters."""
    state = sqlite3.connect(folder / "state.db")
    try:
        known = state.execute("SELECT key, hash FROM records ORDER BY key").fetchall()
        dead = state.execute("SELECT key, attempts FROM dead_letters ORDER BY key").fetchall()
    finally:
        state.close()
    return table(folder / "out.db", "employees"), table(folder / "out.db", "customers"), known, dead


def test_scripted_live_sync_ends_with_the_expected_tables(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, ["127.0.0.1/32"])
    state = tmp_path / "state.db"
    with ServeProcess(pipeline, env=ENV, state=state) as server, requests.Session() as http:
        url = server.url
        assert url.endswith("/aljex")

        def post(data: dict[str, str]) -> requests.Response:
            return http.post(url, data=data, auth=AUTH, timeout=10)

        sequence: list[tuple[dict[str, str], int, str]] = [
            (employee("create", "demo"), 200, "created 'demo'"),
            (employee("update", "demo", email="bsmith@aljex.com", phone="7323578777"), 200, "updated 'demo'"),
            (employee("update", "demo", email="bsmith@aljex.com", phone="7323578777"), 200, "unchanged"),
            (employee("create", "e2", name="Ann  Lee"), 200, "created 'e2'"),
            (employee("create", "e2", name="Ann Lee", status="away"), 200, "updated 'e2'"),  # a repeated create
            (employee("create", "e3"), 200, "created 'e3'"),
            ({"web_sync_table_name": "employees", "web_sync_action": "delete", "id": "e3"}, 200, "deleted 'e3'"),
            (employee("update", "e3", name="Late Update"), 200, "late update"),
            ({"web_sync_table_name": "employees", "web_sync_action": "delete", "id": "e3"}, 200, "already deleted"),
            (employee("create", "e4", name="First Life"), 200, "created 'e4'"),
            (employee("delete", "e4"), 200, "deleted 'e4'"),
            (employee("create", "e4", name="Second Life"), 200, "created 'e4'"),  # a genuine re-creation
            (employee("update", "e5", name="Update First"), 200, "created 'e5'"),  # update before any create
            ({"web_sync_table_name": "employees", "web_sync_action": "delete", "id": "e9"}, 200, "deleted 'e9'"),
            ({"web_sync_table_name": "customers", "web_sync_action": "create", "id": "c1", "name": "Québec  Freight",
              "city": "Montréal"}, 200, "created 'c1'"),
            (employee("create", "bad", team="four"), 422, "key 'bad', field 'team'"),
        ]
        for data, status, text in sequence:
            answer = post(data)
            assert (answer.status_code, text in answer.text) == (status, True), (data, answer.text)

        before = snapshot(tmp_path)
        good = "web_sync_table_name=employees&web_sync_action=create&id=zz&name=Z&email=&team=1&type=t&phone=1&status=s"
        refusals: list[tuple[dict[str, Any], int, str]] = [
            ({"data": {"web_sync_table_name": "employees", "id": "zz"}}, 400, "missing web_sync_action"),
            ({"data": {**employee("create", "zz"), "web_sync_action": "upsert"}}, 400, "unknown web_sync_action"),
            ({"data": {"web_sync_action": "create", "id": "zz"}}, 400, "missing web_sync_table_name"),
            ({"data": {**employee("create", "zz"), "web_sync_table_name": "payroll"}}, 404, "unknown table 'payroll'"),
            ({"data": good.replace("name=Z", "name=\xe9").encode("latin-1")}, 400, "not UTF-8"),
            ({"data": good.replace("name=Z", "name=%FF%FE")}, 400, "not UTF-8"),
            ({"data": good + "&justaname"}, 400, "not form-encoded"),
            ({"data": good + "&id=other"}, 400, "'id' appears more than once"),
            ({"data": good, "auth": ("aljex", "wrong-password")}, 401, "credentials"),
            ({"data": good, "auth": ("someone", PASSWORD)}, 401, "credentials"),
            ({"data": good, "auth": None}, 401, "credentials"),
            ({"data": good, "headers": {"Content-Type": "application/json"}}, 415, "Content-Type"),
            ({"data": good, "headers": {"Content-Type": f"{FORM['Content-Type']}; charset=iso-8859-1"}}, 415,
             "charset"),
            ({"data": good + "&note=" + "x" * 5000}, 413, "over 4096 bytes"),
            ({"data": good, "url": url.replace("/aljex", "/other")}, 404, "posts go to /aljex"),
            ({"data": good, "method": "GET"}, 405, "only POST"),
        ]
        for case, status, text in refusals:
            headers = case.get("headers", FORM if isinstance(case["data"], (str, bytes)) else None)
            answer = http.request(case.get("method", "POST"), case.get("url", url), data=case["data"],
                                  auth=case.get("auth", AUTH), headers=headers, timeout=10)
            assert (answer.status_code, text in answer.text) == (status, True), (case, answer.text)
            if status == 401:
                assert answer.headers["WWW-Authenticate"].startswith("Basic ")
            assert snapshot(tmp_path) == before, f"a refused post ({status}) changed something"
        assert server.terminate() == 0
        assert PASSWORD not in server.stderr

    expected_employees = [
        ("demo", "Bill Smith", "bsmith@aljex.com", 4, "employee", "7323578777", "good"),
        ("e2", "Ann Lee", "bill.smith@aljex.com", 4, "employee", "7323578700", "away"),
        ("e4", "Second Life", "bill.smith@aljex.com", 4, "employee", "7323578700", "good"),
        ("e5", "Update First", "bill.smith@aljex.com", 4, "employee", "7323578700", "good"),
    ]
    assert table(tmp_path / "out.db", "employees") == expected_employees
    assert table(tmp_path / "out.db", "customers") == [("c1", "Québec Freight", "Montréal")]

    history = syncengine("history", pipeline, "--state", state, "--json", env=ENV)
    runs = {row["sync"]: row for row in json.loads(history.out)}
    # One post was rejected (dead-lettered), so the served run closes as partial, as an apply would.
    assert runs["employees"]["kind"] == "serve" and runs["employees"]["status"] == "partial"
    counts = {k: runs["employees"][k] for k in ("read", "creates", "updates", "deletes", "unchanged", "skipped",
                                                "errors")}
    assert counts == {"read": 15, "creates": 6, "updates": 2, "deletes": 3, "unchanged": 2, "skipped": 1,
                      "errors": 1}
    dead = json.loads(syncengine("dead-letters", pipeline, "--state", state, "--json", env=ENV).out)
    assert [(d["key"], d["field"]) for d in dead] == [("bad", "team")]

    # The tombstone outlives the process: a late update after a restart still cannot resurrect e3.
    with ServeProcess(pipeline, env=ENV, state=state) as server, requests.Session() as http:
        late = http.post(server.url, data=employee("update", "e3", name="Later Still"), auth=AUTH, timeout=10)
        again = http.post(server.url, data=employee("create", "e4", name="Second Life"), auth=AUTH, timeout=10)
        assert (late.status_code, again.status_code) == (200, 200)
        assert "deleted" in late.text and "unchanged" in again.text
        assert server.terminate() == 0
    assert table(tmp_path / "out.db", "employees") == expected_employees


def test_an_address_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, ["10.0.0.0/8"])
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server:
        answer = requests.post(server.url, data=employee("create", "demo"), auth=AUTH, timeout=10)
        assert answer.status_code == 403
        assert server.terminate() == 0
    assert table(tmp_path / "out.db", "employees") == []


def test_sigterm_during_traffic_loses_no_acknowledged_record(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, [])
    acknowledged: set[str] = set()
    sent: set[str] = set()
    lock = threading.Lock()
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server:

        def sender(worker: int) -> None:
            with requests.Session() as http:
                for n in range(2000):
                    ident = f"w{worker}-{n}"
                    with lock:
                        sent.add(ident)
                    try:
                        answer = http.post(server.url, data=employee("create", ident), auth=AUTH, timeout=10)
                    except requests.RequestException:
                        return  # the server is gone; this post was never acknowledged
                    if answer.status_code != 200:
                        return
                    with lock:
                        acknowledged.add(ident)

        workers = [threading.Thread(target=sender, args=(i,)) for i in range(6)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        code = server.terminate()
        for w in workers:
            w.join(20)
        assert code == 0
    stored = {row[0] for row in table(tmp_path / "out.db", "employees")}
    assert len(acknowledged) >= 60
    assert acknowledged <= stored, f"acknowledged but missing: {sorted(acknowledged - stored)[:5]}"
    assert stored <= sent


def raw_exchange(url: str, head: str, body: bytes) -> str:
    """Send one hand-written request over a socket and return the whole answer as text."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def test_ambiguous_lengths_and_unauthenticated_expect_continue_are_refused(tmp_path: Path) -> None:
    import base64

    pipeline = write_pipeline(tmp_path, ["127.0.0.1/32"])
    body = b"web_sync_table_name=employees&web_sync_action=create&id=zz&name=Z&email=&team=1&type=t&phone=1&status=s"
    token = base64.b64encode(f"aljex:{PASSWORD}".encode()).decode()
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server:
        path = "/aljex"
        common = (f"POST {path} HTTP/1.1\nHost: x\nAuthorization: Basic {token}\n"
                  "Content-Type: application/x-www-form-urlencoded\n")
        for lengths in ([f"+{len(body)}"], [f"{len(body)}", "10"], [f"{len(body) // 10}_{len(body) % 10}"]):
            head = common + "".join(f"Content-Length: {n}\n" for n in lengths)
            answer = raw_exchange(server.url, head, body)
            assert answer.startswith("HTTP/1.1 400") and "Content-Length must be one plain number" in answer, answer
        sneaky = (f"POST {path} HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\n"
                  f"Content-Length: {len(body)}\nExpect: 100-continue\n")
        answer = raw_exchange(server.url, sneaky, b"")
        assert answer.startswith("HTTP/1.1 401") and "100 Continue" not in answer, answer
        assert server.terminate() == 0
    assert table(tmp_path / "out.db", "employees") == []
