"""The Weavy (Divalto CRM) adapters end to end: the ``syncengine`` command as a real process against a real
:class:`WeavyServer`.

The server runs in this process (a background thread), so every assertion can look at what it stored and what it
was asked; the CLI runs as a subprocess, exactly as a user runs it. Covered: an acknowledged pull of several pages
within the quota and across a token renewal, a row changed between its read and its acknowledgement (a conflict,
delivered by the next run), a bulk import whose bad rows are found client-side and server-side (dead letters
naming their field, few requests), a relational import from an ERP's SQLite tables (a child removed at the source
is deleted, and only that child), ``kill -9`` during an acknowledged pull, a logical delete carried to a mirror,
discovery feeding ``validate``, and a wrong password that is never printed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import REPO, Result, apply_json, counts, dead_letters_json, rows, syncengine
from servers.weavy_server import WeavyServer, _Reply

PASSWORD = "Weavy-Pa55word"
ENV = {"WEAVY_PASSWORD": PASSWORD}
READ = "GET /v1/data/{p}/{entity}"
ACK = "POST /v1/data/{p}/exportValidation"
LOGIN = "POST /v1/Authenticate"
IMPORT = "POST /v1/data/{p}/{entity}/import"
RELATIONAL = "POST /v1/data/{p}/relationalDataset"


# ---------------------------------------------------------------------------------------------- helpers

@contextmanager
def running(**options: Any) -> Iterator[WeavyServer]:
    """A started server (the default entities, user apiuser); it must end with no internal error."""
    with WeavyServer(users={"apiuser": PASSWORD}, **options) as server:
        yield server
        assert server.server_errors == []


def crm_block(server: WeavyServer, name: str = "crm", **settings: Any) -> str:
    """The YAML of a ``weavy`` endpoint on ``server`` (the password from the environment)."""
    lines = [f"  {name}:", "    type: weavy", f"    url: {json.dumps(server.url)}", "    project: DEMO",
             "    username: apiuser", '    password: "{{ env.WEAVY_PASSWORD }}"', "    calls_per_minute: 60"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


PULL_MAPPING = """\
    mapping:
      fields:
        customer_ID: "{{ record.customer_ID }}"
        name: "{{ record.name }}"
        creditLimit: "{{ record.creditLimit }}"
"""


def pull_pipeline(folder: Path, server: WeavyServer, *, source: str = "", mapping: str = PULL_MAPPING,
                  batch_size: int = 1000, **settings: Any) -> Path:
    """Customers pulled from Weavy (``mode: export``, acknowledged) into a SQLite table, mirrored."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "p.yml"
    path.write_text(
        "version: 1\nsources:\n" + crm_block(server, **settings)
        + "destinations:\n  db: {type: sqlite, path: out.db}\n"
        + "syncs:\n  customers:\n"
        + f"    source: {{name: crm, entity: customer{source}}}\n"
        + "    destination: {name: db, table: customers, create_table: true}\n"
        + "    key: customer_ID\n    scope: increment\n    mode: mirror\n"
        + f"    batch_size: {batch_size}\n" + mapping,
        encoding="utf-8")
    return path


def apply(pipeline: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> tuple[Result, Any]:
    """``syncengine apply PIPELINE --json`` with this module's environment."""
    return apply_json(pipeline, *args, env=env or ENV, timeout=timeout)


def dead_letters(pipeline: Path) -> list[dict[str, Any]]:
    """``syncengine dead-letters PIPELINE --json`` with this module's environment."""
    return dead_letters_json(pipeline, ENV)


def known_keys(state: Path, sync: str) -> list[str]:
    """The live keys a sync's state knows (each delivered record; not the tombstones of deletes), sorted."""
    found = rows(state, "SELECT r.key FROM records r JOIN streams s ON s.id = r.stream_id "
                        f"WHERE s.sync = '{sync}' AND r.hash <> zeroblob(16) ORDER BY r.key")
    return [str(key) for (key,) in found]


def table_rows(db: Path) -> dict[str, tuple[Any, ...]]:
    """customer_ID -> (name, creditLimit) of the pulled table; asserts each code is there once."""
    found = rows(db, "SELECT customer_ID, name, creditLimit FROM customers")
    by_code = {str(code): (name, credit) for code, name, credit in found}
    assert len(by_code) == len(found)
    return by_code


def expected_rows(server: WeavyServer) -> dict[str, tuple[Any, ...]]:
    """What the table should hold: every live customer on the server."""
    return {r["customer_ID"]: (r["name"], r["creditLimit"]) for r in server.records("customer", include_deleted=False)}


def line_of(path: Path, text: str) -> int:
    """The 1-based number of the one line of ``path`` that contains ``text``."""
    found = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


# ---------------------------------------------------------------------------------------------- pulls

def test_an_acknowledged_pull_lands_once_within_the_quota_across_a_token_renewal(tmp_path: Path) -> None:
    # A token of 6 s is renewed 3 s ahead (half its life, for a short-lived token). Every call takes 0.7 s on the
    # server, so the last of the six calls after the first login starts 5 * 0.7 = 3.5 s after it at the earliest:
    # past the renewal whatever the client's own speed. The second token comes 3.7 s after the first at the
    # earliest and is renewed 3 s later: a third login would take the client 2.5 s of its own in one run.
    with running(quota=60, quota_window=60, token_ttl=6, latency=0.7) as server:
        server.seed("customer", 2500)
        pipeline = pull_pipeline(tmp_path, server)
        result, report = apply(pipeline)
        assert result.code == 0, result.text
        assert counts(report, "customers") == {"read": 2500, "creates": 2500, "updates": 0, "deletes": 0,
                                               "unchanged": 0, "skipped": 0, "errors": 0}
        assert report["syncs"]["customers"]["notes"] == []
        assert table_rows(tmp_path / "out.db") == expected_rows(server)
        assert len(table_rows(tmp_path / "out.db")) == 2500
        assert server.export_flags("customer") == dict.fromkeys(expected_rows(server), True)
        assert server.throttled_count == 0
        assert server.login_count == 2
        # 1000 + 1000 + 500 rows: three reads, each acknowledged once delivered; two logins; nothing else.
        assert dict(server.route_counts) == {LOGIN: 2, READ: 3, ACK: 3}
        reads = [r for r in server.requests if r.route == READ]
        assert [r.query.get("srvExport") for r in reads] == ["0", "0", "0"]
        assert [r.query["offset"] for r in reads] == ["0", "0", "0"]  # keyset paging, never a growing offset
        assert "srvDateUTCFrom" not in reads[0].query and all("srvDateUTCFrom" in r.query for r in reads[1:])
        assert {r.status for r in server.requests} == {200}

        # Nothing is left to export: the next run reads one empty page and logs in once more.
        server.reset_log()
        again, report = apply(pipeline)
        assert again.code == 0, again.text
        assert counts(report, "customers")["read"] == 0
        assert dict(server.route_counts) == {LOGIN: 1, READ: 1}


def test_a_row_changed_between_read_and_acknowledgement_is_a_conflict_read_again(tmp_path: Path) -> None:
    # Every call waits 0.5 s on the server before it is handled. A watcher changes one row the moment the read
    # was answered: the acknowledgement, which comes after the delivery and then waits its own 0.5 s, finds the
    # row's srvDateUTC moved.
    with running(latency=0.5) as server:
        codes = server.seed("customer", 10)
        victim = codes[3]
        pipeline = pull_pipeline(tmp_path, server)
        changed: list[dict[str, Any]] = []
        acks_before_change: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                with server.lock:
                    if server.route_counts[READ] >= 1:
                        acks_before_change.append(server.route_counts[ACK])
                        changed.append(server.change("customer", victim, name="Renamed after the read"))
                        return
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result, report = apply(pipeline)
        finally:
            stop.set()
            watcher.join(5)
        assert result.code == 0, result.text
        assert len(changed) == 1 and acks_before_change == [0]
        assert counts(report, "customers") == {"read": 10, "creates": 10, "updates": 0, "deletes": 0,
                                               "unchanged": 0, "skipped": 0, "errors": 0}
        notes = report["syncs"]["customers"]["notes"]
        assert len(notes) == 1 and "conflict" in notes[0] and notes[0].startswith("1 row(s) of 'customer'"), notes
        db = tmp_path / "out.db"
        assert table_rows(db)[victim] == ("name 4", 5.0)  # the values read, delivered before the change
        flags = server.export_flags("customer")
        assert flags == {**dict.fromkeys(codes, True), victim: False}
        assert dict(server.route_counts) == {LOGIN: 1, READ: 1, ACK: 1}

        # The next run reads the changed row alone, delivers its new values and acknowledges it.
        server.reset_log()
        again, report = apply(pipeline)
        assert again.code == 0, again.text
        assert counts(report, "customers") == {"read": 1, "creates": 0, "updates": 1, "deletes": 0,
                                               "unchanged": 0, "skipped": 0, "errors": 0}
        assert report["syncs"]["customers"]["notes"] == []
        assert table_rows(db)[victim] == ("Renamed after the read", 5.0)
        assert table_rows(db) == expected_rows(server)
        assert server.export_flags("customer") == dict.fromkeys(codes, True)
        assert dict(server.route_counts) == {LOGIN: 1, READ: 1, ACK: 1}


class KillingServer(WeavyServer):
    """A server that kills its client (``victim``) when the ``kill_at``-th export validation arrives, before
    handling it: the batch it acknowledges was delivered and recorded, and is never marked exported."""

    def __init__(self, *, kill_at: int, **options: Any) -> None:
        super().__init__(**options)
        self.kill_at = kill_at
        self.victim: subprocess.Popen[bytes] | None = None
        self.validations = 0
        self.killed = threading.Event()

    def _answer(self, method: str, target: str, headers: Any, body: bytes, ip: str) -> _Reply:
        if method == "POST" and target.split("?")[0].endswith("/exportValidation") and self.victim is not None:
            with self.lock:
                self.validations += 1
                now = self.validations == self.kill_at
            if now:
                os.kill(self.victim.pid, signal.SIGKILL)
                self.killed.set()
                return _Reply(503, {"status": 503, "message": "the client was killed", "errors": []})
        return super()._answer(method, target, headers, body, ip)


def test_a_pull_killed_mid_run_resumes_without_delivering_twice(tmp_path: Path) -> None:
    total, page = 2000, 200
    with KillingServer(kill_at=4, users={"apiuser": PASSWORD}, latency=0.05) as server:
        server.seed("customer", total)
        # 200 rows a page and a batch: the run is killed when it sends its 4th acknowledgement, that is after the
        # 4th batch was delivered to the table and recorded in the state, but before Weavy marked it exported.
        pipeline = pull_pipeline(tmp_path, server, page_size=page, batch_size=page)
        log = (tmp_path / "killed.out").open("w")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline)], cwd=REPO,
                                    env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
            server.victim = proc
            try:
                proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
        finally:
            log.close()
        assert server.killed.is_set(), (tmp_path / "killed.out").read_text(encoding="utf-8")
        assert proc.returncode == -signal.SIGKILL
        server.victim = None
        assert dict(server.route_counts) == {LOGIN: 1, READ: 4, ACK: 3}  # some pages, not all
        db = tmp_path / "out.db"
        state = tmp_path / ".syncengine" / "state.db"
        exported = sorted(code for code, done in server.export_flags("customer").items() if done)
        committed = known_keys(state, "customers")
        delivered = table_rows(db)
        in_order = [r["customer_ID"] for r in server.records("customer")]
        assert exported == sorted(in_order[:3 * page])
        assert committed == sorted(in_order[:4 * page])
        assert sorted(delivered) == committed

        server.reset_log()
        result, report = apply(pipeline)
        assert result.code == 0, result.text
        # The rerun reads what was not exported: the killed batch again (known, so not written again, but now
        # acknowledged) and the rows never read.
        assert counts(report, "customers") == {"read": total - 3 * page, "creates": total - 4 * page, "updates": 0,
                                               "deletes": 0, "unchanged": page, "skipped": 0, "errors": 0}
        assert counts(report, "customers")["creates"] + len(committed) == total
        assert table_rows(db) == expected_rows(server)
        assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT customer_ID) FROM customers") == [(total, total)]
        assert server.export_flags("customer") == dict.fromkeys(in_order, True)
        assert known_keys(state, "customers") == sorted(in_order)
        # Seven full pages of 200 and the empty one that ends the read; seven acknowledgements.
        assert dict(server.route_counts) == {LOGIN: 1, READ: 8, ACK: 7}
        assert server.server_errors == []


def test_a_logical_delete_on_the_server_leaves_the_mirror(tmp_path: Path) -> None:
    with running() as server:
        codes = server.seed("customer", 20)
        pipeline = pull_pipeline(tmp_path, server)
        first, report = apply(pipeline)
        assert first.code == 0, first.text
        assert counts(report, "customers")["creates"] == 20
        db = tmp_path / "out.db"
        assert sorted(table_rows(db)) == codes

        gone = codes[7]
        server.delete("customer", gone)
        server.reset_log()
        second, report = apply(pipeline)
        assert second.code == 0, second.text
        assert counts(report, "customers") == {"read": 1, "creates": 0, "updates": 0, "deletes": 1,
                                               "unchanged": 0, "skipped": 0, "errors": 0}
        assert sorted(table_rows(db)) == [c for c in codes if c != gone]
        assert table_rows(db) == expected_rows(server)
        assert server.record("customer", gone)["srvDeleted"] is True  # type: ignore[index]
        assert server.export_flags("customer") == dict.fromkeys(codes, True)  # the delete was acknowledged too
        assert known_keys(tmp_path / ".syncengine" / "state.db", "customers") == [c for c in codes if c != gone]

        third, report = apply(pipeline)
        assert third.code == 0, third.text
        assert counts(report, "customers")["read"] == 0
        assert sorted(table_rows(db)) == [c for c in codes if c != gone]


# ---------------------------------------------------------------------------------------------- writes

def push_pipeline(folder: Path, server: WeavyServer, destination: str, mapping: str, source: str,
                  read: str = "erp") -> Path:
    """A pipeline that writes the records of endpoint ``source`` (read as ``read``) to Weavy's customers."""
    path = folder / "p.yml"
    path.write_text(
        f"version: 1\nsources:\n  erp: {source}\n"
        + "destinations:\n" + crm_block(server)
        + f"syncs:\n  customers:\n    source: {read}\n"
        + f"    destination: {destination}\n    key: customer_ID\n" + mapping, encoding="utf-8")
    return path


def test_a_bulk_import_lands_the_good_rows_and_dead_letters_the_bad_at_their_field(tmp_path: Path) -> None:
    total = 1000
    records = [{"id": f"C{i:04d}", "name": f"Customer {i}", "credit": round(i * 1.5, 2), "staff": i % 50}
               for i in range(total)]
    records[101]["name"] = "x" * 256  # too long: found before sending
    records[502]["credit"] = "twelve"  # not a number: found before sending
    records[903]["name"] = None  # required: only the server says so
    bad = {"C0101": "name", "C0502": "creditLimit", "C0903": "name"}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    mapping = """\
    mapping:
      fields:
        customer_ID: "{{ record.id }}"
        name: "{{ record.name }}"
        creditLimit: "{{ record.credit }}"
        employeeCount: "{{ record.staff }}"
"""
    with running() as server:
        pipeline = push_pipeline(tmp_path, server, "{name: crm, entity: customer, write: bulk}", mapping,
                                 "{type: jsonl, path: in.jsonl}")
        result, report = apply(pipeline)
        assert result.code == 1, result.text
        assert counts(report, "customers") == {"read": total, "creates": total - 3, "updates": 0, "deletes": 0,
                                               "unchanged": 0, "skipped": 0, "errors": 3}
        stored = {r["customer_ID"]: r for r in server.records("customer")}
        assert sorted(stored) == sorted(r["id"] for r in records if r["id"] not in bad)
        for r in records:
            if r["id"] in stored:
                assert (stored[r["id"]]["name"], stored[r["id"]]["creditLimit"],
                        stored[r["id"]]["employeeCount"]) == (r["name"], r["credit"], r["staff"]), r
        letters = {letter["key"]: letter for letter in dead_letters(pipeline)}
        assert {key: letter["field"] for key, letter in letters.items()} == bad
        assert "256 characters long; the field takes at most 255" in letters["C0101"]["error"]
        assert "'twelve' is not a number" in letters["C0502"]["error"]
        assert "name is required" in letters["C0903"]["error"]
        # The two bad rows found client-side are never sent; the one the server names is taken out of the batch,
        # which is sent again: two imports, far below what a bisection down to 3 rows could take.
        imports = server.route_counts[IMPORT]
        assert imports <= 2 + 3 * math.ceil(math.log2(total))
        assert imports == 2
        assert dict(server.route_counts) == {LOGIN: 1, "GET /v1/data/{p}/entities/{entity}": 1, IMPORT: 2}
        assert report["syncs"]["customers"]["notes"] == [
            "2 request(s) to Weavy for 'customer'; 1 row(s) rejected"]

        # Corrected at the source, the three are sent by the next run in one import, and nothing else is.
        records[101]["name"], records[502]["credit"], records[903]["name"] = "Customer 101", 753.0, "Customer 903"
        (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        server.reset_log()
        fixed, report = apply(pipeline)
        assert fixed.code == 0, fixed.text
        assert counts(report, "customers") == {"read": total, "creates": 3, "updates": 0, "deletes": 0,
                                               "unchanged": total - 3, "skipped": 0, "errors": 0}
        assert server.route_counts[IMPORT] == 1
        assert len(server.records("customer")) == total
        assert dead_letters(pipeline) == []


def make_erp(path: Path, customers: int, seed: int = 5) -> dict[str, list[str]]:
    """An ERP's SQLite tables: customers and their 2 to 5 contacts each; returns contact codes by customer."""
    import random

    rng = random.Random(seed)
    con = sqlite3.connect(path)
    try:
        con.execute("CREATE TABLE customers (code TEXT PRIMARY KEY, name TEXT NOT NULL)")
        con.execute("CREATE TABLE contacts (code TEXT PRIMARY KEY, customer TEXT NOT NULL, first_name TEXT, "
                    "last_name TEXT NOT NULL, email TEXT)")
        children: dict[str, list[str]] = {}
        for i in range(customers):
            code = f"ERP{i:03d}"
            con.execute("INSERT INTO customers VALUES (?, ?)", (code, f"Customer {i}"))
            children[code] = []
            for j in range(rng.randint(2, 5)):
                contact = f"{code}-K{j}"
                con.execute("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)",
                            (contact, code, f"First{j}", f"Last{i}-{j}", f"k{j}@c{i}.example"))
                children[code].append(contact)
        con.commit()
    finally:
        con.close()
    return children


ERP_QUERY = (
    "SELECT c.code AS code, c.name AS name, "
    "(SELECT json_group_array(json_object('contact_ID', k.code, 'firstName', k.first_name, "
    "'lastName', k.last_name, 'email', k.email)) FROM (SELECT * FROM contacts WHERE customer = c.code "
    "ORDER BY code) AS k) AS contacts FROM customers AS c ORDER BY c.code")


def test_a_relational_import_deletes_exactly_the_child_removed_at_the_source(tmp_path: Path) -> None:
    children = make_erp(tmp_path / "erp.db", 50)
    total_contacts = sum(len(c) for c in children.values())
    assert 100 <= total_contacts <= 250
    mapping = """\
    mapping:
      fields:
        customer_ID: "{{ record.code }}"
        name: "{{ record.name }}"
        contacts: "{{ record.contacts | from_json }}"
"""
    with running() as server:
        pipeline = push_pipeline(
            tmp_path, server, "{name: crm, entity: customer, write: relational, children: {contacts: contact}}",
            mapping, "{type: sqlite, path: erp.db}", f"{{name: erp, query: {json.dumps(ERP_QUERY)}}}")
        first, report = apply(pipeline)
        assert first.code == 0, first.text
        assert counts(report, "customers") == {"read": 50, "creates": 50, "updates": 0, "deletes": 0,
                                               "unchanged": 0, "skipped": 0, "errors": 0}
        assert server.route_counts[RELATIONAL] == 50
        contacts = {r["contact_ID"]: r for r in server.records("contact")}
        assert sorted(contacts) == sorted(c for cs in children.values() for c in cs)
        for parent, codes in children.items():
            for code in codes:
                assert contacts[code]["customer_ID"] == parent  # the link field, filled by the destination
                assert contacts[code]["srvDeleted"] is False
        assert sorted(r["customer_ID"] for r in server.records("customer")) == sorted(children)

        # One contact leaves the ERP.
        parent = "ERP017"
        gone = children[parent][1]
        con = sqlite3.connect(tmp_path / "erp.db")
        try:
            con.execute("DELETE FROM contacts WHERE code = ?", (gone,))
            con.commit()
        finally:
            con.close()
        before = {e: {r[f"{e}_ID"]: r for r in server.records(e)} for e in ("customer", "contact")}
        server.reset_log()
        second, report = apply(pipeline)
        assert second.code == 0, second.text
        assert counts(report, "customers") == {"read": 50, "creates": 0, "updates": 1, "deletes": 0,
                                               "unchanged": 49, "skipped": 0, "errors": 0}
        assert server.route_counts[RELATIONAL] == 1
        after = {e: {r[f"{e}_ID"]: r for r in server.records(e)} for e in ("customer", "contact")}
        assert after["contact"][gone]["srvDeleted"] is True
        assert after["contact"][gone]["srvDateUTC"] > before["contact"][gone]["srvDateUTC"]
        # Every other row is untouched: the same values, the same srvDateUTC.
        assert {c: r for c, r in after["contact"].items() if c != gone} == {
            c: r for c, r in before["contact"].items() if c != gone}
        assert after["customer"] == before["customer"]

        third, report = apply(pipeline)
        assert third.code == 0, third.text
        assert counts(report, "customers")["unchanged"] == 50
        assert server.route_counts[RELATIONAL] == 1


# ---------------------------------------------------------------------------------------------- discovery

def test_discover_caches_the_entities_and_validate_catches_a_misspelt_field(tmp_path: Path) -> None:
    with running() as server:
        pipeline = pull_pipeline(tmp_path, server)
        found = syncengine("discover", pipeline, cwd=REPO, env=ENV)
        assert found.code == 0, found.text
        cache = tmp_path / ".syncengine" / "discovery.json"
        assert f"wrote {cache}" in found.out
        assert re.search(r"^sources\.crm \(weavy\): 4 streams$", found.out, re.M), found.out
        customer = next(line for line in found.out.splitlines() if line.strip().startswith("customer:"))
        for shown in ("customer_ID (text, key, required)", "name (text, required)", "creditLimit (decimal)",
                      "srvDateUTC (datetime", "srvDeleted (boolean"):
            assert shown in customer, customer
        assert "sync customers: source crm, stream customer" in found.out
        document = json.loads(cache.read_text(encoding="utf-8"))
        assert "customer" in json.dumps(document)
        assert server.route_counts[LOGIN] == 1 and server.route_counts["GET /v1/data/{p}/entities"] == 1
        assert validate(pipeline).code == 0, validate(pipeline).text

        pipeline.write_text(pipeline.read_text(encoding="utf-8").replace("record.name", "record.nmae"),
                            encoding="utf-8")
        server.reset_log()
        result = validate(pipeline)
        assert result.code == 2, result.text
        at = line_of(pipeline, "record.nmae")
        assert re.search(rf"p\.yml:{at}:\d+: syncs\.customers\.mapping\.fields\.name: record\.nmae: no field 'nmae' "
                         r"in the stream 'customer' of source 'crm' \(did you mean 'name'\?\)", result.err), result.err
        assert "1 problem found" in result.err
        assert sum(server.route_counts.values()) == 0  # validate reads the cache, it asks nobody


def validate(pipeline: Path) -> Result:
    return syncengine("validate", pipeline, cwd=REPO, env=ENV)


# ---------------------------------------------------------------------------------------------- login

def test_a_wrong_password_fails_the_run_in_one_line_without_the_password(tmp_path: Path) -> None:
    wrong = "hunter2-Wr0ng!"
    with running() as server:
        server.seed("customer", 5)
        pipeline = pull_pipeline(tmp_path, server)
        result = syncengine("apply", pipeline, cwd=REPO, env={"WEAVY_PASSWORD": wrong})
        assert result.code == 3, result.text
        assert wrong not in result.text
        lines = [line for line in result.text.splitlines() if line.strip()]
        assert len(lines) == 1, result.text
        assert lines == ["error: Weavy refused the login of user 'apiuser' to project 'DEMO' (HTTP 401)"]
        assert server.login_count == 0
        assert set(server.route_counts) == {LOGIN}
        assert all(r.status == 401 for r in server.requests)
        assert server.export_flags("customer") == dict.fromkeys(server.export_flags("customer"), False)
        assert not (tmp_path / "out.db").exists() or rows(tmp_path / "out.db", "SELECT name FROM sqlite_master "
                                                          "WHERE name = 'customers'") == []
        as_json, report = apply(pipeline, env={"WEAVY_PASSWORD": wrong})
        assert as_json.code == 3 and wrong not in as_json.text
        assert report["exit_code"] == 3
        assert server.login_count == 0
