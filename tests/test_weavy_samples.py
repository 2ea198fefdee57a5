"""The Weavy samples as shipped: each validates through the CLI, and runs for real against :class:`WeavyServer`.

Each sample folder is copied to a temporary folder and run with ``syncengine`` as a subprocess, as its README
says, against the test server running in this process; the assertions look at what the server stored and was
asked, at the SQLite files the samples write, and at the state the runs left.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, rows, syncengine
from servers.weavy_server import WeavyServer

SAMPLES = REPO / "samples" / "weavy"
PROJECT, USER, PASSWORD = "DEMO", "apiuser", "Weavy-Pa55word"  # the samples' default vars are DEMO and apiuser
WRITES = ("POST /v1/data/{p}/relationalDataset", "POST /v1/data/{p}/{entity}/import",
          "POST /v1/data/{p}/dataset/delete", "POST /v1/data/{p}/exportValidation")


@pytest.fixture
def server() -> Iterator[WeavyServer]:
    """A running test Weavy with the default entities (baseuser, customer, contact, address)."""
    with WeavyServer(project=PROJECT, users={USER: PASSWORD}) as running:
        yield running
        assert running.server_errors == []


def copy_sample(tmp_path: Path, name: str) -> Path:
    """A private copy of ``samples/weavy/<name>``; returns its pipeline file."""
    target = tmp_path / name
    shutil.copytree(SAMPLES / name, target, ignore=shutil.ignore_patterns("out", ".syncengine", "*.db"))
    return target / "pipeline.yml"


def build_erp(pipeline: Path) -> Path:
    """``sqlite3 erp.db < erp.sql`` beside the pipeline, as the sample's README says."""
    db = pipeline.parent / "erp.db"
    con = sqlite3.connect(db)
    try:
        con.executescript((pipeline.parent / "erp.sql").read_text(encoding="utf-8"))
    finally:
        con.close()
    return db


def env_of(server: WeavyServer, password: str = PASSWORD) -> dict[str, str]:
    return {"WEAVY_URL": server.url, "WEAVY_PASSWORD": password}


def apply(pipeline: Path, server: WeavyServer, *args: str) -> dict[str, Any]:
    """``syncengine apply --json``; the report of each sync, failing the test on a non-zero exit."""
    result = syncengine("apply", pipeline, "--json", *args, env=env_of(server))
    assert result.code == 0, result.text
    syncs: dict[str, Any] = json.loads(result.out)["syncs"]
    return syncs


def counts(report: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """(creates, updates, deletes, errors) per sync."""
    return {name: (s["creates"], s["updates"], s["deletes"], s["errors"]) for name, s in report.items()}


def sent(server: WeavyServer, route: str) -> int:
    """How many requests of a route (see ``WeavyServer.route_counts``) the server answered."""
    return server.route_counts[route]


def erp_execute(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db)
    try:
        for statement in statements:
            con.execute(statement)
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("name", ["crm-to-sqlite", "erp-to-crm"])
def test_the_sample_validates(tmp_path: Path, name: str) -> None:
    pipeline = copy_sample(tmp_path, name)
    result = syncengine("validate", pipeline, env={"WEAVY_URL": "https://weavy.invalid", "WEAVY_PASSWORD": "unused"})
    assert result.code == 0, result.text
    assert "valid" in result.out


# --- crm-to-sqlite -------------------------------------------------------------------------------------------


def test_crm_to_sqlite_exports_acknowledges_and_mirrors_logical_deletes(tmp_path: Path,
                                                                       server: WeavyServer) -> None:
    customers = server.seed("customer", 12)
    contacts = server.seed("contact", 20)
    server.delete("customer", customers[-1])  # deleted in the CRM before it was ever exported
    pipeline = copy_sample(tmp_path, "crm-to-sqlite")
    db = pipeline.parent / "out" / "crm.db"

    first = apply(pipeline, server)
    assert counts(first) == {"customers": (11, 0, 1, 0), "contacts": (20, 0, 0, 0)}
    assert [r[0] for r in rows(db, "SELECT code FROM customers ORDER BY code")] == customers[:-1]
    assert rows(db, "SELECT COUNT(*) FROM contacts") == [(20,)]
    stored = server.record("customer", customers[2])
    assert stored is not None
    assert rows(db, f"SELECT name, credit_limit, employee_count, active, customer_since, company, crm_changed_at "
                    f"FROM customers WHERE code = '{customers[2]}'") == [
        (stored["name"], str(stored["creditLimit"]), stored["employeeCount"], int(stored["active"]),
         stored["customerSince"], "01", stored["srvDateUTC"])]
    assert rows(db, f"SELECT customer_code FROM contacts WHERE code = '{contacts[0]}'") == [(customers[0],)]
    # Every row read, the logically deleted one included, is marked exported on Weavy.
    assert all(server.export_flags("customer").values()) and all(server.export_flags("contact").values())
    assert sent(server, "POST /v1/data/{p}/exportValidation") == 2
    assert server.login_count == 1, "one login per run: the syncs share the source's token"

    server.change("customer", customers[2], name="Renamed in the CRM")
    server.upsert("customer", "CUS000100", name="Created in the CRM", active=True)
    server.delete("contact", contacts[4])
    second = apply(pipeline, server)
    assert counts(second) == {"customers": (1, 1, 0, 0), "contacts": (0, 0, 1, 0)}
    assert {s: second[s]["read"] for s in second} == {"customers": 2, "contacts": 1}
    assert rows(db, f"SELECT name FROM customers WHERE code = '{customers[2]}'") == [("Renamed in the CRM",)]
    assert rows(db, "SELECT name, active FROM customers WHERE code = 'CUS000100'") == [("Created in the CRM", 1)]
    assert rows(db, f"SELECT COUNT(*) FROM contacts WHERE code = '{contacts[4]}'") == [(0,)]
    assert rows(db, "SELECT COUNT(*) FROM contacts") == [(19,)]
    assert all(server.export_flags("customer").values()) and all(server.export_flags("contact").values())

    server.reset_log()
    third = apply(pipeline, server)
    assert counts(third) == {"customers": (0, 0, 0, 0), "contacts": (0, 0, 0, 0)}
    assert {s: third[s]["read"] for s in third} == {"customers": 0, "contacts": 0}
    assert not any(sent(server, route) for route in WRITES), server.route_counts
    assert {r.route for r in server.requests} == {"POST /v1/Authenticate", "GET /v1/data/{p}/{entity}"}


class EditedWhileExporting(WeavyServer):
    """A CRM user edits one customer right after the sample's first read of customers, before its acknowledgement."""

    def __init__(self, code: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.code = code
        self.edited = False

    def _answer(self, method: str, target: str, headers: Any, body: bytes, ip: str) -> Any:
        reply = super()._answer(method, target, headers, body, ip)
        if not self.edited and method == "GET" and target.split("?")[0].endswith("/customer") and reply.status == 200:
            self.edited = True
            self.change("customer", self.code, name="Edited during the export")
        return reply


def test_crm_to_sqlite_a_row_changed_before_its_acknowledgement_is_a_conflict_read_again(tmp_path: Path) -> None:
    with EditedWhileExporting("CUS000003", project=PROJECT, users={USER: PASSWORD}) as server:
        server.seed("customer", 5)
        pipeline = copy_sample(tmp_path, "crm-to-sqlite")
        db = pipeline.parent / "out" / "crm.db"

        first = apply(pipeline, server, "--sync", "customers")
        assert counts(first) == {"customers": (5, 0, 0, 0)}
        assert any("1 row(s) of 'customer' changed on Weavy after they were read" in n
                   for n in first["customers"]["notes"]), first["customers"]["notes"]
        flags = server.export_flags("customer")
        assert [code for code, done in flags.items() if not done] == ["CUS000003"]
        assert rows(db, "SELECT name FROM customers WHERE code = 'CUS000003'") == [("name 3",)]  # as it was read

        second = apply(pipeline, server, "--sync", "customers")
        assert counts(second) == {"customers": (0, 1, 0, 0)} and second["customers"]["read"] == 1
        assert rows(db, "SELECT name FROM customers WHERE code = 'CUS000003'") == [("Edited during the export",)]
        assert all(server.export_flags("customer").values())
        assert server.server_errors == []


def test_crm_to_sqlite_reads_an_envelope_too(tmp_path: Path) -> None:
    with WeavyServer(project=PROJECT, users={USER: PASSWORD}, list_envelope=True) as server:
        server.seed("customer", 3)
        pipeline = copy_sample(tmp_path, "crm-to-sqlite")
        assert counts(apply(pipeline, server, "--sync", "customers")) == {"customers": (3, 0, 0, 0)}
        assert all(server.export_flags("customer").values())


def test_crm_to_sqlite_discovery_checks_the_fields_a_mapping_reads(tmp_path: Path, server: WeavyServer) -> None:
    pipeline = copy_sample(tmp_path, "crm-to-sqlite")
    found = syncengine("discover", pipeline, env=env_of(server))
    assert found.code == 0, found.text
    assert "contact: contact_ID (text, key, required), customer_ID (text(foreignkey), required)" in found.out
    # A mapping beside the pipeline wins over the shipped one: the same with a misspelt field.
    shipped = (REPO / "mappings" / "weavy" / "contact.yml").read_text(encoding="utf-8")
    (pipeline.parent / "weavy").mkdir()
    (pipeline.parent / "weavy" / "contact.yml").write_text(shipped.replace("record.lastName", "record.lastname"),
                                                          encoding="utf-8")
    checked = syncengine("validate", pipeline, env=env_of(server))
    assert checked.code == 2
    assert "record.lastname: no field 'lastname' in the stream 'contact'" in checked.out + checked.err
    assert "did you mean 'lastName'?" in checked.text


def test_crm_to_sqlite_a_refused_login_names_the_user_never_the_password(tmp_path: Path,
                                                                         server: WeavyServer) -> None:
    pipeline = copy_sample(tmp_path, "crm-to-sqlite")
    result = syncengine("apply", pipeline, env=env_of(server, password="Wrong-Pa55word-42"))
    assert result.code == 3, result.text
    assert f"Weavy refused the login of user '{USER}' to project '{PROJECT}' (HTTP 401)" in result.text
    assert "Wrong-Pa55word-42" not in result.text


# --- erp-to-crm ----------------------------------------------------------------------------------------------


def test_erp_to_crm_sends_relational_datasets_and_deletes_removed_children(tmp_path: Path,
                                                                           server: WeavyServer) -> None:
    pipeline = copy_sample(tmp_path, "erp-to-crm")
    erp = build_erp(pipeline)
    state = pipeline.parent / ".syncengine" / "state.db"

    first = apply(pipeline, server)
    assert counts(first) == {"sales_reps": (3, 0, 0, 0), "customers": (5, 0, 0, 0)}
    assert first["sales_reps"]["notes"] == ["1 request(s) to Weavy for 'baseuser'"]
    assert first["customers"]["notes"] == ["5 request(s) to Weavy for 'customer'"]
    assert sent(server, "POST /v1/data/{p}/{entity}/import") == 1
    assert sent(server, "POST /v1/data/{p}/relationalDataset") == 5

    def live(entity: str) -> dict[str, dict[str, Any]]:
        return {r[f"{entity}_ID"]: r for r in server.records(entity) if not r["srvDeleted"]}

    assert set(live("baseuser")) == {"REP01", "REP02", "REP03"}
    assert set(live("customer")) == {"C1001", "C1002", "C1003", "C1004", "C1005"}
    # Each child landed with its parent link, as the ERP has it.
    assert {code: r["customer_ID"] for code, r in live("contact").items()} == dict(
        rows(erp, "SELECT contact_no, cust_no FROM contact"))
    assert {code: r["customer_ID"] for code, r in live("address").items()} == dict(
        rows(erp, "SELECT address_no, cust_no FROM address"))
    customer = live("customer")["C1002"]
    assert (customer["CodeCustomer"], customer["name"], customer["creditLimit"], customer["employeeCount"],
            customer["active"], customer["customerSince"], customer["baseuser_ID"]) == (
        "411BELANGER", "Bélanger Transport", 8500.5, 120, True, "2018-07-02T00:00:00", "REP02")
    assert live("customer")["C1003"]["active"] is False and live("customer")["C1005"]["baseuser_ID"] is None
    assert live("contact")["K2001"]["birthDate"] == "1981-04-12T00:00:00"
    assert live("address")["A3003"]["zipCode"] == "H3A 1H6"
    # The children's codes sent with each customer are its remote id, for the deletes of the next send.
    remote = dict(rows(state, "SELECT r.key, r.remote_id FROM records r JOIN streams s ON s.id = r.stream_id "
                              "WHERE s.sync = 'customers'"))
    assert json.loads(remote["C1001"]) == {"address": ["A3001", "A3002"], "contact": ["K2001", "K2002", "K2003"]}
    assert json.loads(remote["C1005"]) == {"address": ["A3006"]}

    untouched = {code: r["srvDateUTC"] for code, r in live("contact").items()}
    erp_execute(erp, "DELETE FROM contact WHERE contact_no = 'K2002'",
                "UPDATE address SET city = 'Basel' WHERE address_no = 'A3002'",
                "DELETE FROM address WHERE cust_no = 'C1005'", "DELETE FROM customer WHERE cust_no = 'C1005'",
                "UPDATE sales_rep SET email = 'jonas.keller@erp.example' WHERE rep_code = 'REP03'")
    server.reset_log()
    second = apply(pipeline, server)
    assert counts(second) == {"sales_reps": (0, 1, 0, 0), "customers": (0, 1, 1, 0)}
    assert sent(server, "POST /v1/data/{p}/relationalDataset") == 2  # C1001 changed, C1005 deleted
    assert sent(server, "POST /v1/data/{p}/{entity}/import") == 1
    contact = server.record("contact", "K2002")
    assert contact is not None and contact["srvDeleted"] is True, "a child removed in the ERP is deleted"
    assert set(live("contact")) == set(untouched) - {"K2002"}
    assert all(live("contact")[code]["srvDateUTC"] == untouched[code] for code in live("contact")), \
        "the other children were not written again"
    assert live("address")["A3002"]["city"] == "Basel"
    assert "C1005" not in live("customer") and "A3006" not in live("address"), "a deleted customer takes its children"
    assert live("baseuser")["REP03"]["email"] == "jonas.keller@erp.example"
    remote = dict(rows(state, "SELECT r.key, r.remote_id FROM records r JOIN streams s ON s.id = r.stream_id "
                              "WHERE s.sync = 'customers'"))
    assert json.loads(remote["C1001"])["contact"] == ["K2001", "K2003"]

    server.reset_log()
    third = apply(pipeline, server)
    assert counts(third) == {"sales_reps": (0, 0, 0, 0), "customers": (0, 0, 0, 0)}
    assert not any(sent(server, route) for route in WRITES), server.route_counts
    assert {r.method for r in server.requests if r.route != "POST /v1/Authenticate"} == {"GET"}, "only reads"
