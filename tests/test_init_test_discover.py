"""``syncengine init``, ``syncengine test`` and ``syncengine discover``, end to end through the CLI.

The scaffolds are run as they are made: the files and sqlite ones with ``apply`` alone, the sftp
one against a real SFTP server (``tests/servers/sftp_server.py``) with its host key pinned from the
environment, the http one against a scripted HTTP endpoint on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import rows, syncengine
from http_servers import Reply, Request, ScriptedServer
from servers.sftp_server import SftpServer

TEMPLATES = ("files", "sqlite", "sftp", "http")
SECRET = "fixture-T0ken-value"


def init(folder: Path, template: str, *extra: str) -> None:
    """Scaffold ``template`` into ``folder``; the command must succeed."""
    result = syncengine("init", template, "--dir", folder, *extra)
    assert result.code == 0, result.text


# --- init ------------------------------------------------------------------------------------------


def test_init_without_a_template_lists_them() -> None:
    result = syncengine("init")
    assert result.code == 0, result.text
    for name in TEMPLATES:
        assert name in result.out


def test_an_unknown_template_is_refused_with_a_did_you_mean(tmp_path: Path) -> None:
    result = syncengine("init", "htp", "--dir", tmp_path / "x")
    assert result.code == 2
    assert "unknown template 'htp' (did you mean 'http'?)" in result.err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_scaffold_validates_and_its_mapping_tests_pass_without_any_environment(
        tmp_path: Path, template: str) -> None:
    init(tmp_path, template)
    assert (tmp_path / "README.md").is_file() and (tmp_path / "pipeline.yml").is_file()
    validated = syncengine("validate", "pipeline.yml", cwd=tmp_path)
    assert validated.code == 0, validated.text
    tested = syncengine("test", "pipeline.yml", cwd=tmp_path)
    assert tested.code == 0, tested.text
    assert " 0 failed" in tested.out and not tested.out.startswith("0 passed")
    assert not (tmp_path / ".syncengine").exists() and not (tmp_path / "out").exists(), "test wrote something"


@pytest.mark.parametrize(("template", "table"), [("files", "customers"), ("sqlite", "customers")])
def test_the_local_scaffolds_run_as_made(tmp_path: Path, template: str, table: str) -> None:
    init(tmp_path, template)
    first = syncengine("apply", "pipeline.yml", "--json", cwd=tmp_path)
    assert first.code == 0, first.text
    sync = json.loads(first.out)["syncs"]["customers"]
    assert (sync["creates"], sync["filtered"], sync["errors"]) == (3, 1, 0)
    again = syncengine("apply", "pipeline.yml", "--json", cwd=tmp_path)
    sync = json.loads(again.out)["syncs"]["customers"]
    assert sync["creates"] + sync["updates"] + sync["deletes"] == 0, again.text
    got = dict(rows(tmp_path / "out" / "warehouse.db", f"SELECT customer_id, name FROM {table}"))
    assert got == {"C001": "Acme Freight", "C002": "Bélanger Transport", "C003": "Nordic Haulage"}


def test_init_refuses_to_overwrite_and_names_the_files_unless_forced(tmp_path: Path) -> None:
    init(tmp_path, "files")
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text("# mine\n", encoding="utf-8")
    (tmp_path / "mappings" / "customers.yml").unlink()
    refused = syncengine("init", "files", "--dir", tmp_path)
    assert refused.code == 2
    assert "pipeline.yml" in refused.err and "README.md" in refused.err and "--force" in refused.err
    assert "mappings/customers.yml" not in refused.err, "a file that is not there was named"
    assert pipeline.read_text(encoding="utf-8") == "# mine\n"
    assert not (tmp_path / "mappings" / "customers.yml").exists(), "a refused init wrote a file"
    init(tmp_path, "files", "--force")
    assert "version: 1" in pipeline.read_text(encoding="utf-8")
    assert syncengine("validate", pipeline).code == 0


def host_fingerprint(server: SftpServer) -> str:
    """The server's host key as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(server.host_key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpServer]:
    """An SFTP server serving ``tmp_path/remote`` (with an ``outbound`` folder), stopped after the test."""
    (tmp_path / "remote" / "outbound").mkdir(parents=True)
    with SftpServer(tmp_path / "remote") as server:
        yield server


def test_the_sftp_scaffold_runs_once_its_environment_points_at_a_server(tmp_path: Path,
                                                                         sftp_server: SftpServer) -> None:
    folder = tmp_path / "pipeline"
    init(folder, "sftp")
    shutil.copy(folder / "sample" / "customers.csv", sftp_server.root / "outbound" / "customers.csv")
    env = {"SFTP_HOST": "127.0.0.1", "SFTP_PORT": str(sftp_server.port), "SFTP_USER": sftp_server.username,
           "SFTP_PASSWORD": sftp_server.password, "SFTP_HOST_KEY_FINGERPRINT": host_fingerprint(sftp_server)}
    result = syncengine("apply", "pipeline.yml", "--json", cwd=folder, env=env)
    assert result.code == 0, result.text
    assert json.loads(result.out)["syncs"]["customers"]["creates"] == 3
    assert sftp_server.password not in result.text
    got = rows(folder / "out" / "warehouse.db", "SELECT customer_id FROM customers ORDER BY 1")
    assert got == [("C001",), ("C002",), ("C003",)]
    # Host key checking is on: another pinned key is refused before any credential is sent.
    attempts = sftp_server.auth_attempts
    wrong = {**env, "SFTP_HOST_KEY_FINGERPRINT": "SHA256:" + "A" * 43}
    refused = syncengine("apply", "pipeline.yml", cwd=folder, env=wrong)
    assert refused.code == 3 and "host key mismatch" in refused.text
    assert sftp_server.auth_attempts == attempts
    assert sftp_server.password not in refused.text


def test_the_http_scaffold_posts_json_with_basic_auth_from_the_environment(tmp_path: Path) -> None:
    init(tmp_path, "http")
    password = "endpoint-Pa55word"

    def created(request: Request) -> Reply:
        body = json.loads(request.body)
        return Reply(201, json.dumps({"id": f"srv-{body['customer_id']}"}).encode())

    with ScriptedServer(created) as server:
        env = {"ENDPOINT_URL": f"{server.url}/customers", "ENDPOINT_USER": "sync", "ENDPOINT_PASSWORD": password}
        result = syncengine("apply", "pipeline.yml", "--json", cwd=tmp_path, env=env)
        assert result.code == 0, result.text
        assert password not in result.text
        sent = {json.loads(r.body)["customer_id"]: r for r in server.requests}
        assert sorted(sent) == ["C001", "C002", "C003"], "C004 is a test account and is filtered out"
        token = base64.b64encode(f"sync:{password}".encode()).decode()
        assert all(r.method == "POST" and r.path == "/customers" for r in sent.values())
        assert all(r.headers["Authorization"] == f"Basic {token}" for r in sent.values())
        assert json.loads(sent["C002"].body) == {
            "customer_id": "C002", "name": "Bélanger Transport", "contact": {"email": None}, "active": True,
            "credit_limit": "8500.50", "updated_at": "2024-04-02T09:05:00+00:00"}
        again = syncengine("apply", "pipeline.yml", cwd=tmp_path, env=env)
        assert again.code == 0 and len(server.requests) == 3, "an unchanged record was sent again"


# --- test ------------------------------------------------------------------------------------------

FAILING = """\
sync: customers
vars: {timezone: UTC}
cases:
  - name: types and fields
    input: {id: C001, name: Acme, email: "", status: A, credit_limit: "1", updated_at: "2024-03-19 16:42:50"}
    expect:
      customer_id: C001
      name: Acme
      status: Active
      credit_limit_cents: "100"
      updated_at: "2024-03-19T16:42:50+00:00"
      phone: "555"
  - name: passes
    input: {id: C002, name: B, email: "", status: I, credit_limit: "2", updated_at: "2024-03-19 16:42:50"}
    partial: true
    expect: {status: Inactive, credit_limit_cents: 200}
  - name: not filtered
    input: {id: C003, name: B, email: "", status: I, credit_limit: "2", updated_at: "2024-03-19 16:42:50"}
    expect_filtered: true
  - name: wrong error
    input: {id: C004, name: B, email: "", status: Q, credit_limit: "2", updated_at: "2024-03-19 16:42:50"}
    expect_error: "no such thing"
"""


def test_a_failing_case_shows_a_field_by_field_diff_at_its_fixture_line(tmp_path: Path) -> None:
    init(tmp_path, "files")
    (tmp_path / "tests" / "failing.test.yml").write_text(FAILING, encoding="utf-8")
    result = syncengine("test", "pipeline.yml", "tests/failing.test.yml", cwd=tmp_path)
    assert result.code == 1, result.text
    lines = result.out.splitlines()
    at = lines.index("FAIL tests/failing.test.yml:4: customers: types and fields")
    assert lines[at + 1:at + 4] == [
        '  credit_limit_cents: expected "100" (text), got 100 (integer)',
        '  phone: missing (expected "555" (text))',
        "  email: extra field, got null (null) (set partial: true to ignore fields not expected)"]
    assert "FAIL tests/failing.test.yml:17: customers: not filtered" in lines
    assert any(line.startswith("  expected the record filtered out; got the record {") for line in lines)
    assert "FAIL tests/failing.test.yml:20: customers: wrong error" in lines
    assert any('the error does not contain "no such thing"' in line for line in lines)
    assert "passes" not in result.out
    assert lines[-1] == "1 passed, 3 failed"
    as_json = syncengine("test", "pipeline.yml", "tests/failing.test.yml", "--json", cwd=tmp_path)
    assert as_json.code == 1
    report = json.loads(as_json.out)
    assert (report["passed"], report["failed"]) == (1, 3)
    first = report["cases"][0]
    assert (first["file"], first["line"], first["passed"]) == ("tests/failing.test.yml", 4, False)
    assert {"path": "credit_limit_cents", "kind": "changed", "expected": "100", "got": 100} \
        .items() <= first["differences"][0].items()
    # The default fixtures (the scaffold's own and this one) are found under tests/.
    assert syncengine("test", "pipeline.yml", cwd=tmp_path).out.splitlines()[-1] == "5 passed, 3 failed"


def test_an_invalid_fixture_is_located_and_nothing_runs(tmp_path: Path) -> None:
    init(tmp_path, "files")
    (tmp_path / "bad.test.yml").write_text(
        "- sync: customer\n"
        "  cases: [{input: {}, expect: {}}]\n"
        "- sync: customers\n"
        "  cases:\n"
        "    - input: {id: C1}\n"
        "      expct: {}\n", encoding="utf-8")
    result = syncengine("test", "pipeline.yml", "bad.test.yml", cwd=tmp_path)
    assert result.code == 2, result.text
    assert "bad.test.yml:1:9: [0].sync: unknown sync 'customer' (did you mean 'customers'?)" in result.err
    assert "bad.test.yml:6:7: [1].cases[0].expct: unknown key 'expct' (did you mean 'expect'?)" in result.err
    assert "passed" not in result.out
    missing = syncengine("test", "pipeline.yml", "nowhere.test.yml", cwd=tmp_path)
    assert missing.code == 2 and "nowhere.test.yml:1:1: no such fixture file" in missing.err
    (tmp_path / "tests" / "customers.test.yml").unlink()
    (tmp_path / "bad.test.yml").unlink()
    none = syncengine("test", "pipeline.yml", cwd=tmp_path)
    assert none.code == 2 and "no fixtures" in none.err


ENV_PIPELINE = """\
version: 1
vars:
  region: eu
sources:
  nowhere: {type: csv, path: does-not-exist.csv}
destinations:
  db: {type: sqlite, path: out/never.db}
syncs:
  people:
    source: nowhere
    destination: {name: db, table: people}
    key: id
    mapping:
      fields:
        id: "{{ record.id | int }}"
        region: "{{ vars.region }}"
        country: "{{ env.PEOPLE_COUNTRY }}"
        token: "{{ env.PEOPLE_API_TOKEN }}"
        price: "{{ record.price | money }}"
"""


def test_fixture_vars_and_environment_apply_types_count_and_secrets_stay_masked(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(ENV_PIPELINE, encoding="utf-8")
    (tmp_path / "people.test.yml").write_text(f"""\
sync: people
vars: {{region: us}}
env: {{PEOPLE_COUNTRY: US, PEOPLE_API_TOKEN: {SECRET}}}
cases:
  - input: {{id: "7", price: "1.5"}}
    expect: {{id: 7, region: us, country: US, token: {SECRET}, price: "1.50"}}
    expect_key: "7"
  - name: a number is not its text
    input: {{id: "8", price: "2"}}
    expect: {{id: "8", region: us, country: US, token: wrong, price: 2.0}}
""", encoding="utf-8")
    result = syncengine("test", "p.yml", cwd=tmp_path)
    assert result.code == 1, result.text
    assert '  id: expected "8" (text), got 8 (integer)' in result.out
    assert '  token: expected "wrong" (text), got "***" (text)' in result.out
    assert '  price: expected 2.0 (number), got "2.00" (Decimal, compared as text)' in result.out
    assert SECRET not in result.text
    assert result.out.splitlines()[-1] == "1 passed, 1 failed"
    as_json = syncengine("test", "p.yml", "--json", cwd=tmp_path)
    assert SECRET not in as_json.text
    # No source was read (its file does not exist) and no destination or state was made.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yml", "people.test.yml"]


# --- discover --------------------------------------------------------------------------------------

DISCOVER_PIPELINE = """\
version: 1
sources:
  crm: {{type: sqlite, path: "{{{{ env.CRM_DB }}}}"}}
  files: {{type: csv, path: people.csv}}
destinations:
  db: {{type: sqlite, path: out/warehouse.db}}
syncs:
  people:
    source: {{name: crm, table: {table}}}
    destination: {{name: db, table: people, create_table: true}}
    key: id
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.nmae }}}}"
        nick: "{{{{ record.nick | default('') }}}}"
"""


def crm(folder: Path) -> Path:
    """A source database with a people table and a view."""
    path = folder / "crm.db"
    con = sqlite3.connect(path)
    try:
        con.executescript("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born DATE);"
                          "CREATE TABLE orders (id TEXT, line INTEGER, PRIMARY KEY (id, line));"
                          "CREATE VIEW named AS SELECT name FROM people;")
    finally:
        con.close()
    return path


def test_discover_then_validate_reports_a_field_the_source_lacks(tmp_path: Path) -> None:
    env = {"CRM_DB": str(crm(tmp_path))}
    pipeline = tmp_path / "p.yml"
    pipeline.write_text(DISCOVER_PIPELINE.format(table="people"), encoding="utf-8")
    before = syncengine("validate", "p.yml", cwd=tmp_path)
    assert before.code == 0, before.text
    found = syncengine("discover", "p.yml", "--json", cwd=tmp_path, env=env)
    assert found.code == 0, found.text
    report = json.loads(found.out)
    cache = tmp_path / ".syncengine" / "discovery.json"
    assert report["cache"] == str(cache) and cache.is_file()
    source = report["sources"]["crm"]
    assert source["adapter"] == "sqlite" and source["discovered_at"]
    streams = {s["name"]: s for s in source["streams"]}
    assert sorted(streams) == ["named", "orders", "people"]
    assert streams["people"]["fields"] == [{"name": "id", "type": "INTEGER", "required": False},
                                           {"name": "name", "type": "TEXT", "required": True},
                                           {"name": "born", "type": "DATE", "required": False}]
    assert (streams["people"]["key"], streams["orders"]["key"], streams["named"]["key"]) == (["id"], ["id", "line"], [])
    assert report["destinations"]["db"]["streams"] == []
    assert not (tmp_path / "out").exists(), "discover created the destination database"
    assert report["syncs"]["people"]["source"]["stream"] == "people"
    assert report["skipped"] == ["sources.files (csv)"]
    # validate connects nowhere (CRM_DB is not set now) and reads the cache.
    after = syncengine("validate", "p.yml", cwd=tmp_path)
    assert after.code == 2
    assert after.err.splitlines()[0].startswith(
        "p.yml:15:15: syncs.people.mapping.fields.name: record.nmae: no field 'nmae' in the stream 'people' of "
        "source 'crm' (did you mean 'name'?)")
    assert "nick" not in after.err, "a read through default() was reported"
    assert "1 problem found" in after.err
    # A cache that no longer matches the sync's options changes nothing.
    pipeline.write_text(DISCOVER_PIPELINE.format(table="orders"), encoding="utf-8")
    assert syncengine("validate", "p.yml", cwd=tmp_path).code == 0
    pipeline.write_text(DISCOVER_PIPELINE.format(table="people"), encoding="utf-8")
    assert syncengine("validate", "p.yml", cwd=tmp_path).code == 2
    cache.unlink()
    assert syncengine("validate", "p.yml", cwd=tmp_path).code == 0


def test_discover_prints_a_summary_and_fails_plainly(tmp_path: Path) -> None:
    db = crm(tmp_path)
    (tmp_path / "p.yml").write_text(DISCOVER_PIPELINE.format(table="people"), encoding="utf-8")
    unset = syncengine("discover", "p.yml", cwd=tmp_path)
    assert unset.code == 2 and "CRM_DB" in unset.err
    text = syncengine("discover", "p.yml", "--no-cache", cwd=tmp_path, env={"CRM_DB": str(db)})
    assert text.code == 0, text.text
    assert "sources.crm (sqlite): 3 streams" in text.out
    assert "  people: id (INTEGER, key), name (TEXT, required), born (DATE)" in text.out
    assert "sync people: source crm, stream people" in text.out
    assert not (tmp_path / ".syncengine").exists(), "--no-cache wrote the cache"
    gone = syncengine("discover", "p.yml", cwd=tmp_path, env={"CRM_DB": str(tmp_path / "gone.db")})
    assert gone.code == 3 and "sources.crm (sqlite): no such SQLite database" in gone.err


def test_the_sqlite_scaffold_discovers_and_then_checks_its_mapping_file(tmp_path: Path) -> None:
    init(tmp_path, "sqlite")
    assert syncengine("discover", "pipeline.yml", cwd=tmp_path).code == 0
    assert syncengine("validate", "pipeline.yml", cwd=tmp_path).code == 0
    mapping = tmp_path / "mappings" / "customers.yml"
    text = mapping.read_text(encoding="utf-8")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "record.status |" in row)
    mapping.write_text(text.replace("record.status |", "record.stauts |"), encoding="utf-8")
    result = syncengine("validate", "pipeline.yml", cwd=tmp_path)
    assert result.code == 2
    assert f"mappings/customers.yml:{line}:11: fields.status: record.stauts: no field 'stauts'" in result.err
    assert "(did you mean 'status'?)" in result.err
