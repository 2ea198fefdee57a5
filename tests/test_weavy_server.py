"""The Weavy (Divalto CRM) data API test server, spoken to over real HTTP with ``requests``.

These pin the behaviour later adapter tests and benchmarks rely on: bearer tokens that expire, 1000-row pages,
the ``srvExport``/``srvDateUTC`` change tracking and its optimistic export validation, atomic batch writes with
errors naming entity, row and field, and the per-IP quota.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from servers.weavy_server import EntitySpec, FieldSpec, WeavyServer

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "apiuser", "Weavy-Pa55word"


class Client:
    """A requests session logged in to one server; paths are relative to ``/v1/data/{project}``."""

    def __init__(self, server: WeavyServer) -> None:
        self.server = server
        self.http = requests.Session()
        self.token = self.login().json()["authToken"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def login(self, password: str = PASSWORD, project: str | None = None) -> requests.Response:
        body = {"scope": "API", "projectCode": project or self.server.project, "userName": USER, "password": password}
        return self.http.post(f"{self.server.url}/v1/Authenticate", json=body, timeout=10)

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.server.data_url(path), params=params, timeout=10)

    def post(self, path: str, body: Any, **params: Any) -> requests.Response:
        return self.http.post(self.server.data_url(path), json=body, params=params, timeout=10)

    def put(self, path: str, body: Any) -> requests.Response:
        return self.http.put(self.server.data_url(path), json=body, timeout=10)

    def delete(self, path: str, **params: Any) -> requests.Response:
        return self.http.delete(self.server.data_url(path), params=params, timeout=10)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def server() -> Iterator[WeavyServer]:
    """A server with the default entities (baseuser, customer, contact, address)."""
    with WeavyServer() as srv:
        yield srv
        assert srv.server_errors == []  # a bug in the server answers 500 and is kept here


@pytest.fixture
def api(server: WeavyServer) -> Iterator[Client]:
    """A logged-in client of ``server``."""
    client = Client(server)
    yield client
    client.close()


def codes(rows: list[dict[str, Any]], entity: str = "customer") -> list[str]:
    """The codes of records, in order."""
    return [row[f"{entity}_ID"] for row in rows]


def test_login_and_token_expiry() -> None:
    with WeavyServer(token_ttl=2) as server:
        client = Client(server)
        try:
            refused = client.login(password="wrong-secret-123")
            assert refused.status_code == 401
            assert refused.json()["message"] and "wrong-secret-123" not in refused.text
            assert client.login(project="OTHER").status_code == 401

            logged_in = time.monotonic()
            answer = client.login().json()
            assert answer["expiresIn"] == 2 and answer["authToken"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", answer["generatedTimeUTC"])
            assert client.get("entities").status_code == 200

            bare = requests.get(server.data_url("customer"), timeout=10)
            assert bare.status_code == 401 and bare.json()["status"] == 401
            forged = requests.get(server.data_url("customer"), headers={"Authorization": "Bearer forged"}, timeout=10)
            assert forged.status_code == 401
            other = client.http.get(f"{server.url}/v1/data/OTHER/customer", timeout=10)
            assert other.status_code == 403

            time.sleep(max(0.0, logged_in + 2.05 - time.monotonic()))
            expired = client.get("customer")
            assert expired.status_code == 401 and "expired" in expired.json()["message"]
            client.http.headers["Authorization"] = "Bearer " + client.login().json()["authToken"]
            assert client.get("customer").status_code == 200
            assert server.login_count == 3  # the client's own, the checked one, the renewal
            assert all("password" not in str(r.query) for r in server.requests)
        finally:
            client.close()


def test_discovery_in_the_seed_shape(api: Client) -> None:
    entities = api.get("entities").json()
    assert [e["entityName"] for e in entities] == ["baseuser", "customer", "contact", "address"]
    customer = api.get("entities/customer").json()
    assert {"languageCode": "FR", "text": "Client"} in customer["translations"]
    fields = {f["fieldName"]: f for f in customer["fields"]}
    assert fields["CodeCustomer"]["fieldType"] == "text" and fields["CodeCustomer"]["fieldLength"] == 255
    assert fields["baseuser_ID"]["fieldType"] == "text(foreignkey)" and fields["baseuser_ID"]["fieldLength"] is None
    assert fields["customer_ID"]["isPrimaryKey"] and customer["key"] == "customer_ID"
    assert fields["srvDateUTC"]["readOnly"] and fields["name"]["required"]
    contact = {f["fieldName"]: f for f in api.get("entities/contact").json()["fields"]}
    assert contact["customer_ID"]["foreignEntity"] == "customer" and contact["customer_ID"]["required"]
    assert api.get("entities/nope").status_code == 404


def test_paging_2500_records_in_pages_of_1000(server: WeavyServer, api: Client) -> None:
    seeded = server.seed("customer", 2500)
    pages = [api.get("customer", offset=offset, limit=1000) for offset in (0, 1000, 2000, 3000)]
    assert [len(p.json()) for p in pages] == [1000, 1000, 500, 0]
    assert {p.headers["X-Total-Count"] for p in pages} == {"2500"}
    rows = [row for page in pages for row in page.json()]
    assert codes(rows) == seeded  # seeded in code order, so srvDateUTC order is code order
    dates = [row["srvDateUTC"] for row in rows]
    assert dates == sorted(dates) and len(set(dates)) == 2500  # strictly increasing, even within one second
    assert set(rows[0]) == {"customer_ID", "CodeCustomer", "baseuser_ID", "name", "creditLimit", "employeeCount",
                            "active", "customerSince", "logo", "companyCode", "srvDateUTC", "srvExport", "srvDeleted"}

    assert len(api.get("customer").json()) == 1000  # the default limit
    assert codes(api.get("customer", offset=2498, limit=5).json()) == seeded[2498:]
    too_many = api.get("customer", limit=1001)
    assert too_many.status_code == 400 and too_many.json()["errors"][0]["field"] == "limit"
    assert api.get("customer", limit=0).status_code == 400
    assert api.get("customer", srvDateUtcFrom="2020-01-01T00:00:00").status_code == 400  # misspelt: refused

    server.list_envelope = True
    page = api.get("customer", offset=1000, limit=2).json()
    assert page["offset"] == 1000 and page["limit"] == 2 and page["total"] == 2500
    assert codes(page["data"]) == seeded[1000:1002]


def validate(api: Client, entity: str, rows: list[dict[str, Any]], *, path: str = "exportValidation") -> Any:
    """Export validation of rows read earlier: the answer."""
    doc = {"entityName": entity, "srvExport": True,
           "rows": [{"rowCode": r[f"{entity}_ID"], "srvDateUTC": r["srvDateUTC"]} for r in rows]}
    answer = api.post(path, [doc] if path.endswith("multiple") else doc)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_srv_export_and_srv_date_filters(server: WeavyServer, api: Client) -> None:
    seeded = server.seed("customer", 10)
    rows = api.get("customer").json()
    assert validate(api, "customer", rows[:4])["updatedRow"] == 4
    assert codes(api.get("customer", srvExport=0).json()) == seeded[4:]
    assert codes(api.get("customer", srvExport=1).json()) == seeded[:4]

    changed = server.change("customer", seeded[1], name="renamed")
    assert changed["srvDateUTC"] > rows[-1]["srvDateUTC"] and changed["srvExport"] is False
    assert codes(api.get("customer", srvExport=0).json()) == [*seeded[4:], seeded[1]]  # now last by srvDateUTC
    assert codes(api.get("customer", srvDateUTCFrom=changed["srvDateUTC"]).json()) == [seeded[1]]  # >=
    assert codes(api.get("customer", srvDateUTCFrom=rows[8]["srvDateUTC"]).json()) == [*seeded[8:], seeded[1]]
    whole_seconds = rows[0]["srvDateUTC"][:19]  # the seed's YYYY-MM-DDTHH:MM:SS is accepted too
    assert len(api.get("customer", srvDateUTCFrom=whole_seconds).json()) == 10
    assert api.get("customer", srvDateUTCFrom="yesterday").status_code == 400
    assert api.get("customer", companyCode="02").json() == []


def test_include_deleted(server: WeavyServer, api: Client) -> None:
    seeded = server.seed("customer", 5)
    server.delete("customer", seeded[0])
    assert api.delete(f"customer/{seeded[1]}").json() == {"deletedRow": 1}
    assert codes(api.get("customer").json()) == seeded[2:]
    everything = api.get("customer", includeDeleted="true").json()
    assert codes(everything) == [*seeded[2:], seeded[0], seeded[1]]  # a delete is a change: it moves srvDateUTC
    assert [r["srvDeleted"] for r in everything] == [False, False, False, True, True]
    assert api.get(f"customer/{seeded[0]}").status_code == 404
    assert api.get(f"customer/{seeded[0]}", includeDeleted="true").json()["srvDeleted"] is True
    assert api.delete(f"customer/{seeded[0]}").status_code == 404  # already deleted


def test_export_validation_sets_the_flag_only_while_srv_date_matches(server: WeavyServer, api: Client) -> None:
    seeded = server.seed("customer", 3)
    rows = api.get("customer").json()
    changed = server.change("customer", seeded[1], employeeCount=99)

    answer = validate(api, "customer", [*rows, {"customer_ID": "NOPE", "srvDateUTC": rows[0]["srvDateUTC"]}])
    assert answer["updatedRow"] == 2
    assert answer["conflicts"] == [
        {"entityName": "customer", "rowCode": seeded[1], "srvDateUTC": rows[1]["srvDateUTC"],
         "currentSrvDateUTC": changed["srvDateUTC"], "message": "the record changed on the server since it was read"},
        {"entityName": "customer", "rowCode": "NOPE", "srvDateUTC": rows[0]["srvDateUTC"], "currentSrvDateUTC": None,
         "message": "record not found"}]
    assert server.export_flags("customer") == {seeded[0]: True, seeded[2]: True, seeded[1]: False}
    assert [r["srvDateUTC"] for r in server.records("customer")] == [rows[0]["srvDateUTC"], rows[2]["srvDateUTC"],
                                                                      changed["srvDateUTC"]]  # not a change

    server.seed("contact", 2)
    contacts = api.get("contact").json()
    multiple = api.post("exportValidation/multiple", [
        {"entityName": "customer", "srvExport": True, "rows": [{"rowCode": seeded[1],
                                                                 "srvDateUTC": changed["srvDateUTC"]}]},
        {"entityName": "contact", "srvExport": True,
         "rows": [{"rowCode": c["contact_ID"], "srvDateUTC": c["srvDateUTC"]} for c in contacts]}]).json()
    assert multiple["updatedRow"] == 3 and multiple["conflicts"] == []
    assert all(server.export_flags("contact").values()) and all(server.export_flags("customer").values())

    malformed = api.post("exportValidation", {"entityName": "customer", "srvExport": False,
                                              "rows": [{"rowCode": seeded[0], "srvDateUTC": "soon"}]})
    assert malformed.status_code == 400 and malformed.json()["errors"][0]["field"] == "srvDateUTC"
    assert server.export_flags("customer")[seeded[0]] is True  # nothing set


def test_bulk_import_is_atomic(server: WeavyServer, api: Client) -> None:
    server.upsert("customer", "C1", name="Existing one")
    server.upsert("customer", "C2", name="Existing two")
    before = server.records("customer")
    bad = api.post("customer/import", [
        {"customer_ID": "N1", "name": "fine"},
        {"customer_ID": "N2", "name": "x" * 256, "employeeCount": "twelve"},
        {"customer_ID": "C1", "name": "changed", "baseuser_ID": "GHOST", "customerSince": "2024-02-30T00:00:00"},
        {"name": "no code"}])
    assert bad.status_code == 400
    errors = {(e["entity"], e["rowCode"], e["field"]) for e in bad.json()["errors"]}
    assert errors == {("customer", "N2", "name"), ("customer", "N2", "employeeCount"),
                      ("customer", "C1", "customerSince"), ("customer", None, "customer_ID")}
    assert all(e["message"] for e in bad.json()["errors"])
    assert server.records("customer") == before  # nothing written

    fk = api.post("customer/import", [{"customer_ID": "N1", "name": "fine"},
                                      {"customer_ID": "C1", "baseuser_ID": "GHOST"}])
    assert fk.json()["errors"] == [{"entity": "customer", "rowCode": "C1", "field": "baseuser_ID",
                                    "message": "baseuser_ID references an unknown baseuser 'GHOST'"}]
    assert server.record("customer", "N1") is None

    good = api.post("customer/import", [
        {"customer_ID": "N1", "name": "new one", "creditLimit": 1500.5, "active": True,
         "customerSince": "2016-12-05T08:33:33", "logo": base64.b64encode(b"\x89PNG").decode()},
        {"customer_ID": "N2", "name": "new two"},
        {"customer_ID": "C1", "employeeCount": 12},
        {"customer_ID": "C2", "name": "Existing two"}])
    assert good.status_code == 200, good.text
    answer = good.json()
    assert (answer["addedRow"], answer["updatedRow"], answer["unchangedRow"]) == (2, 1, 1)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{7}", answer["statistics"]["executionDuration"])
    assert server.record("customer", "C1")["name"] == "Existing one"  # an update keeps the fields not sent
    assert server.record("customer", "C2") == before[1]  # unchanged: srvDateUTC did not move
    assert server.record("customer", "N1")["creditLimit"] == 1500.5

    twice = api.post("customer/import", [{"customer_ID": "N3", "name": "a"}, {"customer_ID": "N3", "name": "b"}])
    assert twice.status_code == 400 and twice.json()["errors"][0]["rowCode"] == "N3"
    server.import_row_limit = 3
    over = api.post("customer/import", [{"customer_ID": f"L{i}", "name": "x"} for i in range(4)])
    assert over.status_code == 400 and "limit of 3" in over.json()["message"]


def test_relational_dataset_with_data_relations_and_deletes(server: WeavyServer, api: Client) -> None:
    server.upsert("customer", "C1", name="Old owner")
    server.upsert("address", "A1", customer_ID="C1", city="Lyon")
    server.upsert("contact", "K-OLD", customer_ID="C1", lastName="Gone")
    doc = {"data": [{"entityName": "contact", "rows": [{"contact_ID": "K1", "customer_ID": "C9", "lastName": "Neu"}]},
                    {"entityName": "customer", "rows": [{"customer_ID": "C9", "name": "New owner"}]}],
           "relations": [{"SourceEntityName": "customer", "SourceRowCode": "C9", "TargetEntityName": "address",
                          "TargetRowCode": "A1", "TargetFieldName": "customer_ID"}],
           "deletes": [{"entityName": "contact", "rowCodes": ["K-OLD"]}]}
    answer = api.post("relationalDataset", doc)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["addedRow"], body["updatedRow"], body["deletedRow"]) == (2, 1, 1)
    returned = {d["entityName"]: codes(d["rows"], d["entityName"]) for d in body["data"]}
    assert returned == {"contact": ["K1"], "customer": ["C9"], "address": ["A1"]}
    assert server.record("address", "A1")["customer_ID"] == "C9"
    assert server.record("contact", "K-OLD")["srvDeleted"] is True
    assert server.record("contact", "K1")["customer_ID"] == "C9"  # a row may point at one created in the batch

    before = {e: server.records(e) for e in ("customer", "contact", "address")}
    bad = api.post("relationalDataset", {
        "noResultData": True,
        "data": [{"entityName": "customer", "rows": [{"customer_ID": "C10", "name": "would be new"}]}],
        "relations": [{"SourceEntityName": "customer", "SourceRowCode": "C10", "TargetEntityName": "address",
                       "TargetRowCode": "A1", "TargetFieldName": "city"}],
        "deletes": [{"entityName": "contact", "rowCodes": ["NOPE"]}]})
    assert bad.status_code == 400
    assert {(e["entity"], e["rowCode"], e["field"]) for e in bad.json()["errors"]} == {
        ("address", "A1", "city"), ("contact", "NOPE", None)}
    assert {e: server.records(e) for e in before} == before

    quiet = api.post("relationalDataset", {"noResultData": True, "deletes": [
        {"entityName": "contact", "rowCodes": ["K-OLD"], "deleteMode": "Physical"}]})
    assert quiet.json()["deletedRow"] == 1 and "data" not in quiet.json()
    assert server.record("contact", "K-OLD") is None


def test_dataset_replaces_the_linked_rows_of_the_entities_it_names(server: WeavyServer, api: Client) -> None:
    server.upsert("customer", "C1", name="Main")
    for code in ("K1", "K2"):
        server.upsert("contact", code, customer_ID="C1", lastName=code)
    server.upsert("address", "A1", customer_ID="C1", city="Paris")
    k1 = server.record("contact", "K1")
    answer = api.post("dataset", {"customer": [{"customer_ID": "C1", "name": "Main"}],
                                  "contact": [{"contact_ID": "K1", "customer_ID": "C1", "lastName": "K1"},
                                              {"contact_ID": "K3", "customer_ID": "C1", "lastName": "K3"}]}).json()
    assert (answer["addedRow"], answer["updatedRow"], answer["unchangedRow"], answer["deletedRow"]) == (1, 0, 2, 1)
    assert server.record("contact", "K2")["srvDeleted"] is True  # linked to C1, contact named, K2 not listed
    assert server.record("contact", "K1") == k1  # differential: unchanged rows keep their srvDateUTC
    assert server.record("address", "A1")["srvDeleted"] is False  # address is not named in the document
    two_main = api.post("dataset", {"customer": [{"customer_ID": "C1", "name": "a"}, {"customer_ID": "C2",
                                                                                      "name": "b"}]})
    assert two_main.status_code == 400


def test_dataset_delete(server: WeavyServer, api: Client) -> None:
    server.upsert("customer", "C1", name="Main")
    server.upsert("contact", "K1", customer_ID="C1", lastName="K1")
    server.upsert("contact", "K2", customer_ID="C1", lastName="K2")
    referenced = api.post("dataset/delete", [{"entityName": "customer", "rowCodes": ["C1"]}],
                          deleteMode="Physical")
    assert referenced.status_code == 400 and referenced.json()["errors"][0]["rowCode"] == "C1"
    assert server.record("customer", "C1") is not None
    logical = api.post("dataset/delete", [{"entityName": "contact", "rowCodes": ["K1", "K2"]}]).json()
    assert logical["deletedRow"] == 2 and "statistics" in logical
    assert [r["srvDeleted"] for r in server.records("contact")] == [True, True]
    physical = api.post("dataset/delete", [{"entityName": "contact", "rowCodes": ["K1", "K2"]},
                                           {"entityName": "customer", "rowCodes": ["C1"]}], deleteMode="Physical")
    assert physical.json()["deletedRow"] == 3
    assert server.records("contact") == [] and server.records("customer") == []


def test_quota_answers_429_with_retry_after() -> None:
    with WeavyServer(quota=3, quota_window=2.0) as server:
        client = Client(server)  # the login is the first call
        try:
            assert client.get("customer").status_code == 200
            assert client.get("customer").status_code == 200
            refused = client.get("customer")
            assert refused.status_code == 429 and refused.json()["status"] == 429
            wait = int(refused.headers["Retry-After"])
            assert 1 <= wait <= 2  # when the oldest call leaves the 2 s window
            assert client.login().status_code == 429  # Authenticate counts too
            assert server.throttled_count == 2
            time.sleep(wait)
            assert client.get("customer").status_code == 200
            assert server.route_counts["GET /v1/data/{p}/{entity}"] == 4
            assert [r.status for r in server.requests].count(429) == 2
        finally:
            client.close()


def test_crud_with_physical_delete(server: WeavyServer, api: Client) -> None:
    created = api.post("customer/C1", {"name": "Divalto", "CodeCustomer": "DIV", "active": True})
    assert created.status_code == 200, created.text
    record = created.json()
    assert record["customer_ID"] == "C1" and record["employeeCount"] is None and record["srvExport"] is False
    again = api.post("customer/C1", {"name": "Divalto"})
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "customer_ID"
    assert api.get("customer/C1").json() == record

    updated = api.put("customer/C1", {"employeeCount": 40}).json()
    assert updated["employeeCount"] == 40 and updated["name"] == "Divalto"
    assert updated["srvDateUTC"] > record["srvDateUTC"]
    assert api.put("customer/C1", updated).json() == updated  # a record read can be sent back; nothing changed
    assert api.put("customer/NOPE", {"name": "x"}).status_code == 404
    unknown = api.put("customer/C1", {"colour": "red", "name": None})
    assert {(e["field"], e["rowCode"]) for e in unknown.json()["errors"]} == {("colour", "C1"), ("name", "C1")}
    invalid = api.post("customer/C2", {"name": "ok", "active": "yes", "creditLimit": "69,33", "logo": "not b64!",
                                       "customer_ID": "C3"})
    assert invalid.status_code == 400
    assert {e["field"] for e in invalid.json()["errors"]} == {"active", "creditLimit", "logo", "customer_ID"}
    orphan = api.post("contact/K1", {"customer_ID": "C404", "lastName": "Orphan"})
    assert orphan.json()["errors"][0]["field"] == "customer_ID"
    assert api.post("contact/K1", {"customer_ID": "C1", "lastName": "Ok"}).status_code == 200
    as_text = api.http.post(server.data_url("customer/C5"), data='{"name": "x"}', timeout=10)
    assert as_text.status_code == 415  # the seed asks for Content-Type: application/json

    assert api.delete("customer/C1", deleteMode="Physical").status_code == 400  # contact K1 still points at it
    assert api.delete("contact/K1").status_code == 200
    assert api.get("contact/K1").status_code == 404
    revived = api.post("contact/K1", {"customer_ID": "C1", "lastName": "Back"}).json()
    assert revived["srvDeleted"] is False and revived["firstName"] is None
    assert api.delete("contact/K1", deleteMode="Physical").status_code == 200
    assert server.record("contact", "K1") is None
    assert api.delete("customer/C1", deleteMode="Physical").json() == {"deletedRow": 1}
    assert api.get("customer/C1", includeDeleted="true").status_code == 404


def test_filter_endpoint(server: WeavyServer, api: Client) -> None:
    server.seed("customer", 30)
    body = {"filters": [{"fieldName": "name", "operator": "like", "value": "NAME 1%"},
                        {"fieldName": "employeeCount", "operator": ">=", "value": 12}],
            "orderBy": [{"fieldName": "employeeCount", "direction": "desc"}], "offset": 1, "limit": 3}
    assert [r["employeeCount"] for r in api.post("customer/filter", body).json()] == [18, 17, 16]
    by_code = api.post("customer/filter", {"filters": [{"fieldName": "customer_ID", "operator": "in",
                                                        "value": ["CUS000003", "CUS000001"]}]}).json()
    assert codes(by_code) == ["CUS000001", "CUS000003"]
    assert len(api.post("customer/filter", {"filters": [{"fieldName": "baseuser_ID", "operator": "isNull"}],
                                            "srvExport": False}).json()) == 30
    bad = api.post("customer/filter", {"filters": [{"fieldName": "colour", "operator": "eq", "value": 1},
                                                   {"fieldName": "employeeCount", "operator": "eq", "value": "1"}]})
    assert bad.status_code == 400 and [e["field"] for e in bad.json()["errors"]] == ["colour", "employeeCount"]
    assert api.post("customer/filter", {"limit": 1001}).status_code == 400


def test_custom_entities_latency_and_request_log() -> None:
    product = EntitySpec("product", (FieldSpec("label", length=5, required=True), FieldSpec("price", "decimal")))
    with WeavyServer(entities=[product], latency=0.2, project="P1") as server:
        client = Client(server)
        try:
            started = time.monotonic()
            assert client.post("product/P1", {"label": "toolong"}).json()["errors"][0]["field"] == "label"
            assert time.monotonic() - started >= 0.2
            assert client.post("product/P1", {"label": "ok", "price": 69.33}).status_code == 200
            assert server.route_counts == {"POST /v1/Authenticate": 1, "POST /v1/data/{p}/{entity}/{code}": 2}
            assert [(r.method, r.path, r.status, r.user) for r in server.requests] == [
                ("POST", "/v1/Authenticate", 200, None), ("POST", "/v1/data/P1/product/P1", 400, USER),
                ("POST", "/v1/data/P1/product/P1", 200, USER)]
            assert server.server_errors == []
        finally:
            client.close()


def test_stop_closes_kept_alive_connections(server: WeavyServer, api: Client) -> None:
    assert api.get("customer").status_code == 200  # the session keeps its connection open
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2 and not server._thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        api.get("customer")


def test_runs_as_a_process_until_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.weavy_server", "--port", "0", "--seed", "customer=5",
                             "--seed", "contact=3"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        with requests.Session() as http:
            token = http.post(f"{url}/v1/Authenticate", json={"scope": "API", "projectCode": "DEMO",
                                                                "userName": USER, "password": PASSWORD},
                              timeout=10).json()["authToken"]
            rows = http.get(f"{url}/v1/data/DEMO/contact", headers={"Authorization": f"Bearer {token}"},
                            timeout=10).json()
        assert codes(rows, "contact") == ["CON000001", "CON000002", "CON000003"]
        assert [r["customer_ID"] for r in rows] == ["CUS000001", "CUS000002", "CUS000003"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
