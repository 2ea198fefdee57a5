"""The Autofy samples as shipped (``samples/autofy/``), run as their README says.

Each test copies the samples to a temporary folder and runs ``syncengine`` as a subprocess. The template
(``template/pipeline.yml`` with ``template/profiles.yml``) validates, runs its two groups for the three tenants
into three databases with three separate states, and lists the three tenants' jobs; the provisioning pipeline
(``provision/``) validates, provisions the three tenants of its CSV in :class:`AutofyServer` (the test fake of
Autofy, in this process) with their schedules and first runs, and a rerun sends nothing. The template also
serves as a control API template, driven with the seed's bodies as the README shows.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from conftest import REPO, Result, rows, syncengine
from cryptography.fernet import Fernet
from servers.autofy_server import AutofyServer, Schedule

from engine.adapters import register_builtins
from engine.control_api import ControlApp
from engine.control_store import ControlStore

SAMPLES = REPO / "samples" / "autofy"
TENANTS = ("acme", "globex", "initech")
ENV = {f"{t.upper()}_SOURCE_USERNAME": f"{t}-sync" for t in TENANTS}
"""Each tenant's account name, in the variable its profile names (profiles.yml ``env``)."""
TOKEN = "PW-Partner-Token-5a17c0"
PASSWORDS = {t: f"{t}-Pa55word!" for t in TENANTS}


def copy_samples(tmp_path: Path) -> Path:
    """A private copy of ``samples/autofy`` without anything a run leaves; returns its folder."""
    target = tmp_path / "autofy"
    shutil.copytree(SAMPLES, target, ignore=shutil.ignore_patterns("out", ".syncengine", "secrets", "*.db"))
    return target


def documents(text: str) -> list[Any]:
    """The JSON documents ``--json`` printed one after the other (one per profile)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def run_json(*args: str | Path, env: dict[str, str] | None = None) -> tuple[Result, list[Any]]:
    result = syncengine(*args, "--json", cwd=REPO, env={**ENV, **(env or {})})
    assert result.code == 0, result.text
    found = documents(result.out)
    if args[0] in ("apply", "plan") and "--all-profiles" in args:
        (reports,) = found  # every profile's report in one document
        return result, list(reports)
    return result, found


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------- the template


def test_both_samples_validate(tmp_path: Path) -> None:
    folder = copy_samples(tmp_path)
    result = syncengine("validate", folder / "template" / "pipeline.yml", cwd=REPO)
    assert result.code == 0, result.text
    assert "valid (3 syncs: customers, items, invoices)" in result.out
    result = syncengine("validate", folder / "provision" / "pipeline.yml", cwd=REPO,
                        env={"AUTOFY_TOKEN": TOKEN, "AUTOFY_URL": "http://127.0.0.1:9/api/v1/"})
    assert result.code == 0, result.text
    assert "valid (1 sync: tenants)" in result.out


def test_initial_then_transactions_land_each_tenants_rows_in_its_own_database_with_its_own_state(
        tmp_path: Path) -> None:
    folder = copy_samples(tmp_path)
    pipeline = folder / "template" / "pipeline.yml"
    data, out = folder / "template" / "data", folder / "template" / "out"

    _, reports = run_json("apply", pipeline, "--all-profiles", "--group", "initial")
    assert [r["pipeline"] for r in reports] == [f"tenant-sync@{t}" for t in TENANTS]
    for tenant, report in zip(TENANTS, reports, strict=True):
        assert list(report["syncs"]) == ["customers", "items"]
        customers = csv_rows(data / tenant / "customers.csv")
        assert report["syncs"]["customers"]["creates"] == len(customers)
        # The tenant's own rows, stamped with its own account name (its env name in profiles.yml).
        assert rows(out / f"{tenant}.db", "SELECT customer_id, account FROM customers ORDER BY customer_id") == [
            (c["id"], f"{tenant}-sync") for c in sorted(customers, key=lambda c: c["id"])]
        assert rows(out / f"{tenant}.db", "SELECT count(*) FROM sqlite_master WHERE name = 'invoices'") == [(0,)]
    assert sorted(p.name for p in out.iterdir()) == ["acme.db", "globex.db", "initech.db"]
    assert rows(out / "acme.db", "SELECT credit_limit FROM customers WHERE customer_id = 'C001'") == [("5000.00",)]

    _, reports = run_json("apply", pipeline, "--all-profiles", "--group", "transactions")
    assert [list(r["syncs"]) for r in reports] == [["invoices"]] * 3
    # Each profile's vars.timezone reads its invoices' local times.
    assert rows(out / "acme.db", "SELECT issued_at FROM invoices WHERE invoice_no = 'INV-1001'") == [
        ("2026-03-02T09:15:00-05:00",)]
    assert rows(out / "globex.db", "SELECT issued_at, status FROM invoices WHERE invoice_no = 'G-5001'") == [
        ("2026-03-01T08:00:00-06:00", "paid")]
    assert rows(out / "initech.db", "SELECT issued_at FROM invoices WHERE invoice_no = 'UK-0001'") == [
        ("2026-03-04T10:00:00+00:00",)]

    # One state file, one namespace per tenant: each knows exactly its own records.
    _, [status] = run_json("status", pipeline, "--all-profiles")
    known = {(s["pipeline"], s["sync"]): s["known"] for s in status}
    assert known == {(f"tenant-sync@{t}", sync): len(csv_rows(data / t / f"{sync}.csv"))
                     for t in TENANTS for sync in ("customers", "items", "invoices")}
    assert [p.name for p in (folder / "template" / ".syncengine").iterdir() if p.suffix == ".db"] == ["state.db"]

    # A change in one tenant's file is one update in that tenant only; the others send nothing.
    invoices = data / "globex" / "invoices.csv"
    invoices.write_text(invoices.read_text(encoding="utf-8").replace("2,475.00\",O", "2,475.00\",P"),
                        encoding="utf-8")
    _, reports = run_json("apply", pipeline, "--all-profiles", "--group", "transactions")
    assert [(r["syncs"]["invoices"]["updates"], r["syncs"]["invoices"]["creates"]) for r in reports] == [
        (0, 0), (1, 0), (0, 0)]
    assert rows(out / "globex.db", "SELECT status FROM invoices WHERE invoice_no = 'G-5002'") == [("paid",)]


def test_schedule_lists_the_three_tenants_jobs(tmp_path: Path) -> None:
    folder = copy_samples(tmp_path)
    _, [jobs] = run_json("schedule", folder / "template" / "pipeline.yml", "--from", "2026-03-07T12:00:00Z", "-n",
                         "1")
    listed = {(j["pipeline"], j["group"]): (j["schedule"], j["syncs"], j["next"][0]["utc"]) for j in jobs}
    assert listed == {
        # 02:30 New York does not exist on 2026-03-08 (spring forward): that night's run is at 03:00 EDT.
        ("tenant-sync@acme", "initial"): ("every day at 02:30 (America/New_York)", ["customers", "items"],
                                          "2026-03-08T07:00:00+00:00"),
        ("tenant-sync@acme", "transactions"): ("every 30 minutes (UTC)", ["invoices"], "2026-03-07T12:30:00+00:00"),
        ("tenant-sync@globex", "initial"): ("every day at 02:30 (America/New_York)", ["customers", "items"],
                                            "2026-03-08T07:00:00+00:00"),
        ("tenant-sync@globex", "transactions"): ("every 15 minutes (UTC)", ["invoices"],
                                                 "2026-03-07T12:15:00+00:00"),
        ("tenant-sync@initech", "initial"): (
            "cron '0 6 * * MON-FRI': at 06:00 on Monday through Friday (Europe/London)", ["customers", "items"],
            "2026-03-09T06:00:00+00:00"),
        ("tenant-sync@initech", "transactions"): ("every 2 hours (Europe/London)", ["invoices"],
                                                  "2026-03-07T14:00:00+00:00")}
    text = syncengine("schedule", folder / "template" / "pipeline.yml", cwd=REPO)
    assert text.code == 0, text.text
    assert [line for line in text.out.splitlines() if not line.startswith(" ")] == [
        f"tenant-sync@{t}" for t in TENANTS]


# --------------------------------------------------------------------------------------------- provisioning


def test_the_provision_pipeline_provisions_the_tenants_and_a_rerun_sends_nothing(tmp_path: Path) -> None:
    folder = copy_samples(tmp_path)
    pipeline = folder / "provision" / "pipeline.yml"
    secrets = folder / "provision" / "secrets"
    secrets.mkdir()
    for tenant, password in PASSWORDS.items():
        (secrets / f"{tenant}.password").write_text(password + "\n", encoding="utf-8")
    tenants = {row["tenant_id"]: row for row in csv_rows(folder / "provision" / "tenants.csv")}
    assert list(tenants) == list(TENANTS)
    with AutofyServer(api_token=TOKEN) as server:
        env = {"AUTOFY_URL": server.url, "AUTOFY_TOKEN": TOKEN}
        _, [report] = run_json("apply", pipeline, env=env)
        block = report["syncs"]["tenants"]
        assert (block["creates"], block["errors"]) == (3, 0), block
        assert dict(server.route_counts) == {"POST company": 3, "POST schedule": 2, "POST runsync": 3}
        assert block["notes"] == ["Autofy: 3 compan(ies) provisioned, 2 schedule(s) set, 3 run(s) started"]
        expected = {"acme": Schedule(30, 0), "globex": Schedule(1, 2, "4:00 AM"), "initech": None}
        for tenant, row in tenants.items():
            [profile] = server.profiles_named(row["company"])
            assert profile.template == row["template"]
            assert profile.schedule == expected[tenant]
            assert profile.credentials == [{"UserName": row["source_user"], "Password": PASSWORDS[tenant],
                                            "DataSource": row["data_source"]}]
        assert {(run.sync_id, run.dt_start_utc) for run in server.runs} == {("0", None)}
        assert len(server.runs) == 3
        assert all(set(r.body) == {"CoName", "SyncProfileTemplate", "Credentials", "Profiles", "Users"}
                   for r in server.calls("POST company"))

        # Nothing changed: nothing is sent at all.
        server.reset_log()
        _, [report] = run_json("apply", pipeline, env=env)
        assert report["syncs"]["tenants"]["unchanged"] == 3 and report["syncs"]["tenants"]["creates"] == 0
        assert server.requests == []

        # The state holds ids only: no partner token, no password, no user token the server issued.
        state = (folder / "provision" / ".syncengine" / "state.db").read_bytes()
        for secret in [TOKEN, *PASSWORDS.values(), *server.issued_tokens()]:
            assert secret.encode() not in state
        assert server.server_errors == []


# --------------------------------------------------------------------------------------------- control API


def test_the_template_serves_the_control_api_with_the_seeds_bodies(tmp_path: Path) -> None:
    register_builtins()
    folder = copy_samples(tmp_path) / "template"
    token = "partner-token-for-the-control-api"
    store = ControlStore(folder / ".syncengine" / "control.db", Fernet.generate_key().decode())
    app = ControlApp(folder, store, token)
    headers = {"AUTHORIZATION": token, "Content-Type": "application/json"}
    try:
        # The seed's company body, naming this template ("pipeline", the file's name).
        company = ('{"CoName": null, "SyncProfileTemplate": "pipeline", "Credentials": [{"ID": 0, '
                   '"UserName": "demo-sync", "Password": "somePassword", "DataSource": "AutofyXml", '
                   '"AccessToken": null, "AccessTokenSecret": null, "AccessTokenCreationDate": null, '
                   '"RealmID": null}], "Profiles": [], "Users": []}')
        made = app.handle("POST", "/api/v1/company", headers, company.encode()).document
        assert made["Meta"]["StatusCode"] == 0, made
        profile = made["Detail"]["Profiles"][0]["ID"]
        # The seed's runsync body, with a group of the template as its syncId.
        run = f'{{"profileId": "{profile}", "syncId": "initial", "dtStartUTC": "1/1/2016 12:00:00 PM"}}'
        assert app.handle("POST", "/api/v1/runsync", headers, run.encode()).document["Meta"]["StatusCode"] == 0
        assert app.wait_for_runs(60)
        last = app.last_run(profile)
        assert last is not None and last.status == "ok", last
        assert (last.group, last.since, list(last.report["syncs"] if last.report else [])) == (
            "initial", "2016-01-01T12:00:00Z", ["customers", "items"])
        # The demo data, in the profile's own database, stamped with the company's credential (SOURCE_USERNAME).
        assert rows(folder / "out" / f"{profile}.db", "SELECT customer_id, account FROM customers") == [
            ("D1", "demo-sync")]
        # The seed's schedule body as printed (unquoted names); a syncId that is no group is refused.
        schedule = f'{{ profileId: "{profile}", scheduleInterval: "30", scheduleTime: "4:00 AM", intervalType: 0 }}'
        assert app.handle("POST", "/api/v1/schedule", headers, schedule.encode()).document["Meta"]["StatusCode"] == 0
        other = f'{{"profileId": "{profile}", "syncId": "1"}}'
        wrong = app.handle("POST", "/api/v1/runsync", headers, other.encode()).document["Meta"]
        assert wrong["StatusCode"] == 1 and "its sync ids are: initial, transactions, 0" in wrong["Message"]
        denied = app.handle("POST", "/api/v1/runsync", {**headers, "AUTHORIZATION": "wrong"}, run.encode())
        assert denied.status == 401
    finally:
        app.close()

