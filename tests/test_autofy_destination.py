"""The ``autofy`` destination end to end: the ``syncengine`` command as a real process against a real
:class:`AutofyServer` on 127.0.0.1.

The server runs in this process (a background thread), so every assertion can look at what it holds and what it
was asked; the CLI runs as a subprocess, exactly as a user runs it. Covered: 50 tenants of a CSV provisioned as
companies and profiles with their schedules, a rerun that sends nothing, one changed tenant as one ``PUT
profiles``, one removed tenant as one ``disconnect`` (mode mirror), a schedule changed and removed, an unknown
template and a bad schedule as dead letters (the server's message; nothing made), ``run_after`` starting each new
profile with its ``dtStartUTC``, 5xx retried, a schedule the server refuses after the company was made (kept, no
second company), the state file free of the user tokens the server issued, the mapping checked at ``validate``,
the server's own reading of the seed (lenient JSON, case-insensitive names, envelopes), and a wrong API token
(exit 3, one line, no token).
"""

from __future__ import annotations

import csv
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Result, rows, syncengine
from servers.autofy_server import DENIED, PROFILE_NOT_FOUND, TEMPLATE_NOT_FOUND, AutofyServer, Schedule

from engine.adapters.autofy import Provisioned, schedule_of
from engine.errors import RecordError

TOKEN = "PW-Partner-7f3e9c1d42"
SF_PASSWORD = "Sf-Secret-pa55!"
QB_PASSWORD = "Qb-Secret-pa55!"
ENV = {"AUTOFY_TOKEN": TOKEN, "SF_PASSWORD": SF_PASSWORD, "QB_PASSWORD": QB_PASSWORD}
SCHEDULES = ["every 30 minutes", "2 hours", "every day at 4:00 AM", "daily at 16:30", ""]
"""The schedule column of tenant ``i`` is ``SCHEDULES[i % 5]``; the server then holds ``EXPECTED[i % 5]``."""
EXPECTED = [Schedule(30, 0), Schedule(2, 1), Schedule(1, 2, "4:00 AM"), Schedule(1, 2, "4:30 PM"), None]
COLUMNS = ["tenant_id", "company", "template", "sf_user", "qb_user", "schedule"]

MAPPING = """\
    mapping:
      fields:
        CoName: "{{ record.company }}"
        SyncProfileTemplate: "{{ record.template }}"
        Credentials:
          - UserName: "{{ record.sf_user }}"
            Password: "{{ env.SF_PASSWORD }}"
            DataSource: Salesforce.com
          - UserName: "{{ record.qb_user }}"
            Password: "{{ env.QB_PASSWORD }}"
            DataSource: QuickBooks
        schedule: "{{ record.schedule }}"
"""


# ---------------------------------------------------------------------------------------------- helpers

@contextmanager
def running() -> Iterator[AutofyServer]:
    """A started server knowing the partner token; it must end with no internal error."""
    with AutofyServer(api_token=TOKEN) as server:
        yield server
        assert server.server_errors == []


def tenant(i: int, **changes: str) -> dict[str, str]:
    """Tenant ``i`` of the CSV (template ``salesforce-qbd``, the schedule ``SCHEDULES[i % 5]``)."""
    row = {"tenant_id": f"T{i:03d}", "company": f"Company {i:03d}", "template": "salesforce-qbd",
           "sf_user": f"sf{i}@example.com", "qb_user": f"qb{i}", "schedule": SCHEDULES[i % 5]}
    return {**row, **changes}


def write_tenants(folder: Path, tenants: list[dict[str, str]]) -> None:
    """``tenants.csv`` beside the pipeline."""
    with (folder / "tenants.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(tenants)


def pipeline(folder: Path, server: AutofyServer, tenants: list[dict[str, str]], *, options: str = "",
             mapping: str = MAPPING) -> Path:
    """Tenants of a CSV provisioned in Autofy, mirrored, keyed by ``tenant_id`` (not sent: a key template)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tenants(folder, tenants)
    path = folder / "p.yml"
    path.write_text(f"""\
version: 1
sources:
  tenants: {{type: csv, path: tenants.csv}}
destinations:
  autofy:
    type: autofy
    url: {json.dumps(server.url)}
    token: "{{{{ env.AUTOFY_TOKEN }}}}"
    backoff: 0
syncs:
  provision:
    source: tenants
    destination: {{name: autofy{options}}}
    key: "{{{{ record.tenant_id }}}}"
    mode: mirror
{mapping}""", encoding="utf-8")
    return path


def apply(path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Result, Any]:
    """``syncengine apply PIPELINE --json``: the result and its parsed report."""
    result = syncengine("apply", path, "--json", *args, cwd=REPO, env=env or ENV, timeout=90)
    try:
        report = json.loads(result.out)
    except json.JSONDecodeError:
        pytest.fail(f"apply printed no JSON report (exit {result.code}):\n{result.text}")
    return result, report


def counts(report: Any) -> dict[str, int]:
    """The counts of the sync."""
    block = report["syncs"]["provision"]
    return {k: block[k] for k in ("read", "creates", "updates", "deletes", "unchanged", "errors")}


def dead_letters(path: Path) -> dict[str, dict[str, Any]]:
    """``syncengine dead-letters PIPELINE --json`` by key."""
    result = syncengine("dead-letters", path, "--json", cwd=REPO, env=ENV)
    assert result.code == 0, result.text
    return {letter["key"]: letter for letter in json.loads(result.out)}


def remote_ids(folder: Path) -> dict[str, str]:
    """Each live key's remote id in the state."""
    found = rows(folder / ".syncengine" / "state.db", "SELECT key, remote_id FROM records "
                                                      "WHERE hash <> zeroblob(16)")
    return {str(key): str(remote) for key, remote in found}


def profile_of(server: AutofyServer, i: int) -> Any:
    """Tenant ``i``'s one profile on the server."""
    found = server.profiles_named(f"Company {i:03d}")
    assert len(found) == 1, f"Company {i:03d} has {len(found)} profiles"
    return found[0]


def call(server: AutofyServer, method: str, route: str, body: bytes, token: str | None = TOKEN,
         content_type: str = "application/json") -> tuple[int, Any]:
    """One raw call to the server (urllib, no proxy): its status and parsed envelope."""
    request = urllib.request.Request(server.url + route, data=body, method=method,
                                     headers={"Content-Type": content_type, **({"AUTHORIZATION": token}
                                                                               if token else {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


# ---------------------------------------------------------------------------------------------- tests

@pytest.mark.timeout(120)
def test_fifty_tenants_are_provisioned_then_a_rerun_sends_nothing_an_update_is_one_put_and_a_removal_one_disconnect(
        tmp_path: Path) -> None:
    tenants = [tenant(i) for i in range(50)]
    with running() as server:
        path = pipeline(tmp_path, server, tenants)
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report) == {"read": 50, "creates": 50, "updates": 0, "deletes": 0, "unchanged": 0,
                                  "errors": 0}
        # One company per tenant, each with its profile, credentials (passwords from the environment) and schedule.
        assert len(server.companies) == 50 and len(server.profiles) == 50
        assert dict(server.route_counts) == {"POST company": 50, "POST schedule": 40}
        assert all(r.authorized and r.status == 200 and r.meta_status == 0 for r in server.requests)
        for i in range(50):
            profile = profile_of(server, i)
            assert profile.template == "salesforce-qbd"
            assert profile.schedule == EXPECTED[i % 5], (i, profile.schedule)
            assert profile.credentials == [
                {"UserName": f"sf{i}@example.com", "Password": SF_PASSWORD, "DataSource": "Salesforce.com"},
                {"UserName": f"qb{i}", "Password": QB_PASSWORD, "DataSource": "QuickBooks"}]
            assert server.company_of(profile.id).name == f"Company {i:03d}"
        company = server.calls("POST company")[0].body
        assert set(company) == {"CoName", "SyncProfileTemplate", "Credentials", "Profiles", "Users"}
        # The remote id is the profile and user ids (and the schedule applied), never the user's token.
        ids = remote_ids(tmp_path)
        first = Provisioned.parse(ids["T000"])
        assert first is not None and first.profile_id == profile_of(server, 0).id
        assert first.user_id == server.company_of(first.profile_id).users[0].id
        assert json.loads(ids["T000"]) == {"ProfileID": first.profile_id, "UserID": first.user_id,
                                           "schedule": "30 minutes"}
        assert json.loads(ids["T004"]) == {"ProfileID": profile_of(server, 4).id,
                                           "UserID": server.company_of(profile_of(server, 4).id).users[0].id}

        # A rerun with nothing changed sends nothing at all.
        server.reset_log()
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["unchanged"] == 50 and counts(report)["creates"] == counts(report)["updates"] == 0
        assert server.requests == []

        # One tenant changed (its QuickBooks user): one PUT profiles, and nothing else (its schedule is as before).
        tenants[7] = tenant(7, qb_user="qb7-renamed")
        write_tenants(tmp_path, tenants)
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["updates"] == 1 and counts(report)["unchanged"] == 49
        assert dict(server.route_counts) == {"PUT profiles": 1}
        seven = profile_of(server, 7)
        sent = server.calls("PUT profiles")[0].body
        assert sent == {"ProfileID": seven.id, "UserID": int(server.company_of(seven.id).users[0].id),
                        "CoName": "Company 007", "TemplateName": "salesforce-qbd",
                        "DataSourceCreds": [{"UserName": "sf7@example.com", "Password": SF_PASSWORD,
                                             "DataSource": "Salesforce.com"}],
                        "DataDestinationCreds": [{"UserName": "qb7-renamed", "Password": QB_PASSWORD,
                                                  "DataSource": "QuickBooks"}]}
        assert seven.credentials[1]["UserName"] == "qb7-renamed" and seven.schedule == EXPECTED[2]
        assert len(server.companies) == 50

        # One tenant removed (mode mirror): one disconnect of its profile, sync id "0"; nothing is deleted.
        server.reset_log()
        removed = profile_of(server, 12)
        write_tenants(tmp_path, tenants[:12] + tenants[13:])
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["deletes"] == 1 and counts(report)["unchanged"] == 49
        assert dict(server.route_counts) == {"POST disconnect": 1}
        assert server.calls("POST disconnect")[0].body == {"profileId": removed.id, "syncId": "0"}
        assert removed.disconnected == {"0"}
        assert [p.id for p in server.profiles.values() if p.disconnected] == [removed.id]
        assert "T012" not in remote_ids(tmp_path)

        # The state store never held a user token the server issued (nor the passwords, nor the API token).
        tokens = server.issued_tokens()
        assert len(tokens) == 50 and all(re.fullmatch(r"[A-Z0-9]{28}", t) for t in tokens)
        files = [p for p in (tmp_path / ".syncengine").iterdir() if p.is_file()]
        assert any(p.name == "state.db" for p in files)
        for file in files:
            data = file.read_bytes()
            for secret in [*tokens, TOKEN, SF_PASSWORD, QB_PASSWORD]:
                assert secret.encode() not in data, f"{file.name} holds a secret"


def test_a_changed_schedule_is_sent_again_and_a_removed_one_disables_the_scheduler(tmp_path: Path) -> None:
    tenants = [tenant(i) for i in range(3)]
    with running() as server:
        path = pipeline(tmp_path, server, tenants)
        assert apply(path)[0].code == 0
        server.reset_log()
        tenants[0] = tenant(0, schedule="every 15 minutes")  # was every 30 minutes
        tenants[1] = tenant(1, schedule="")  # was every 2 hours
        write_tenants(tmp_path, tenants)
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["updates"] == 2
        assert dict(server.route_counts) == {"PUT profiles": 2, "POST schedule": 1}
        zero, one = profile_of(server, 0), profile_of(server, 1)
        assert server.calls("POST schedule")[0].body == {"profileId": zero.id, "scheduleInterval": "15",
                                                         "intervalType": 0}
        assert zero.schedule == Schedule(15, 0) and one.schedule is None
        put_one = next(r.body for r in server.calls("PUT profiles") if r.body["ProfileID"] == one.id)
        assert put_one["EnableScheduler"] is False
        put_zero = next(r.body for r in server.calls("PUT profiles") if r.body["ProfileID"] == zero.id)
        assert "EnableScheduler" not in put_zero
        ids = remote_ids(tmp_path)
        assert json.loads(ids["T000"])["schedule"] == "15 minutes" and "schedule" not in json.loads(ids["T001"])


def test_an_unknown_template_and_a_bad_schedule_are_dead_letters_and_make_no_company(tmp_path: Path) -> None:
    tenants = [tenant(0), tenant(1, template="no-such-template"), tenant(2, schedule="every 3 fortnights"),
               tenant(3)]
    with running() as server:
        path = pipeline(tmp_path, server, tenants)
        result, report = apply(path)
        assert result.code == 1, result.text
        assert counts(report)["creates"] == 2 and counts(report)["errors"] == 2
        letters = dead_letters(path)
        assert set(letters) == {"T001", "T002"}
        # The server's refusal: HTTP 200, Meta.StatusCode 2, its Message in the dead letter.
        refusal = server.calls("POST company")
        refused = [r for r in refusal if r.meta_status != 0]
        assert [(r.status, r.meta_status) for r in refused] == [(200, TEMPLATE_NOT_FOUND)]
        assert "The sync profile template 'no-such-template' was not found." in letters["T001"]["error"]
        assert letters["T001"]["payload"]["Credentials"][0]["Password"] == "***"
        # A bad schedule is found before anything is sent: no half-provisioned company.
        assert "'every 3 fortnights' is not a schedule" in letters["T002"]["error"]
        assert letters["T002"]["field"] == "schedule"
        assert len(server.companies) == 2 and server.route_counts["POST company"] == 3
        assert sorted(p.co_name or "" for p in server.profiles.values()) == ["Company 000", "Company 003"]

        # Fixed at the source: both are provisioned by the next run, the others untouched.
        tenants[1], tenants[2] = tenant(1), tenant(2)
        write_tenants(tmp_path, tenants)
        server.reset_log()
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["creates"] == 2 and counts(report)["unchanged"] == 2
        assert dict(server.route_counts) == {"POST company": 2, "POST schedule": 2}
        assert dead_letters(path) == {}


def test_run_after_starts_each_provisioned_profile_with_the_given_start(tmp_path: Path) -> None:
    tenants = [tenant(i) for i in range(10)]
    with running() as server:
        path = pipeline(tmp_path, server, tenants, options=', template: qbo-csv, run_after: '
                                                           '{sync_id: "1", start: "2016-01-01T12:00:00Z"}')
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["creates"] == 10
        assert len(server.runs) == 10
        assert {run.profile_id for run in server.runs} == set(server.profiles)
        assert {(run.sync_id, run.dt_start_utc) for run in server.runs} == {("1", "1/1/2016 12:00:00 PM")}
        # Each run follows its profile's schedule call.
        for profile in server.profiles.values():
            order = [r.route for r in server.requests if r.body and profile.id in
                     (r.body.get("profileId"), r.body.get("ProfileID"))]
            assert order == (["POST schedule", "POST runsync"] if profile.schedule else ["POST runsync"])
        notes = report["syncs"]["provision"]["notes"]
        assert notes == ["Autofy: 10 compan(ies) provisioned, 8 schedule(s) set, 10 run(s) started"]
        # An update does not run the profile again; the seed's own date format goes through unchanged.
        tenants[3] = tenant(3, qb_user="changed")
        tenants.append(tenant(10))
        write_tenants(tmp_path, tenants)
        path = pipeline(tmp_path, server, tenants, options=', run_after: {start: "1/1/2016 12:00:00 PM"}')
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["creates"] == 1 and counts(report)["updates"] == 1
        assert len(server.runs) == 11
        assert (server.runs[-1].profile_id, server.runs[-1].sync_id, server.runs[-1].dt_start_utc) == (
            profile_of(server, 10).id, "0", "1/1/2016 12:00:00 PM")


def test_server_errors_are_retried_and_a_refused_schedule_keeps_the_company(tmp_path: Path) -> None:
    with running() as server:
        path = pipeline(tmp_path, server, [tenant(0)])
        server.fail("POST company", 503, times=2)
        server.fail("POST schedule", 400)
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["creates"] == 1
        # Two 503s retried by the REST layer: one company.
        assert [r.status for r in server.calls("POST company")] == [503, 503, 200]
        assert len(server.companies) == 1
        warnings = report["syncs"]["provision"]["warnings"]
        assert len(warnings) == 1 and "'T000' was provisioned" in warnings[0] and "HTTP 400" in warnings[0]
        assert profile_of(server, 0).schedule is None
        assert "schedule" not in json.loads(remote_ids(tmp_path)["T000"])
        # The record is kept: the next run makes no second company; a full refresh applies the schedule.
        result, report = apply(path)
        assert result.code == 0 and counts(report)["unchanged"] == 1
        assert len(server.companies) == 1
        result, report = apply(path, "--full-refresh")
        assert result.code == 0, result.text
        assert counts(report)["updates"] == 1 and len(server.companies) == 1
        assert profile_of(server, 0).schedule == EXPECTED[0]
        assert json.loads(remote_ids(tmp_path)["T000"])["schedule"] == "30 minutes"


def test_a_token_refused_after_the_company_was_made_keeps_the_record_and_stops_the_run(tmp_path: Path) -> None:
    with running() as server:
        path = pipeline(tmp_path, server, [tenant(0)])
        server.fail("POST schedule", 401)
        result, report = apply(path)
        assert result.code == 3, result.text
        assert report["syncs"]["provision"]["message"] == "Autofy refused the API token (HTTP 401): injected HTTP 401"
        assert len(server.companies) == 1
        # The company's ids reached the state before the run stopped: the next run makes no second company.
        profile = profile_of(server, 0)
        kept = Provisioned(profile.id, server.company_of(profile.id).users[0].id)
        assert Provisioned.parse(remote_ids(tmp_path)["T000"]) == kept and profile.schedule is None
        result, report = apply(path)
        assert result.code == 0, result.text
        assert counts(report)["unchanged"] == 1 and len(server.companies) == 1


def test_a_wrong_api_token_fails_the_run_in_one_line_without_the_token(tmp_path: Path) -> None:
    wrong = "PW-Wrong-Token-99"
    with running() as server:
        path = pipeline(tmp_path, server, [tenant(i) for i in range(5)])
        result = syncengine("apply", path, cwd=REPO, env={**ENV, "AUTOFY_TOKEN": wrong})
        assert result.code == 3, result.text
        lines = [line for line in result.text.splitlines() if line.strip()]
        assert lines == [f"error: Autofy refused the API token (HTTP 401): {DENIED}"], result.text
        assert wrong not in result.text and TOKEN not in result.text
        assert server.companies == {} and server.requests
        assert all(r.status == 401 and not r.authorized for r in server.requests)
        as_json, report = apply(path, env={**ENV, "AUTOFY_TOKEN": wrong})
        assert as_json.code == 3 and report["exit_code"] == 3 and wrong not in as_json.text


def test_validate_checks_the_schedule_members_and_the_template(tmp_path: Path) -> None:
    mapping = """\
    mapping:
      fields:
        CoName: "{{ record.company }}"
        schedule:
          every: "{{ record.schedule }}"
          units: minutes
"""
    with running() as server:
        path = pipeline(tmp_path, server, [tenant(0)], mapping=mapping)
        result = syncengine("validate", path, cwd=REPO, env=ENV)
        assert result.code == 2, result.text
        assert "schedule.units: a schedule has `every`, `unit`" in result.text
        assert "no sync profile template: map SyncProfileTemplate or set the destination's `template`" in result.text
        assert server.requests == []


def test_schedule_blocks_are_read_as_documented() -> None:
    assert schedule_of({"every": 30, "unit": "minutes"}) == schedule_of("every 30 minutes")
    assert schedule_of({"every": "1", "unit": "days", "at": "4:00 am"}) == schedule_of("every day at 4:00 AM")
    assert schedule_of({"Every": 2, "Unit": "Hours"}) == schedule_of("2 hours")
    assert schedule_of("daily at 00:05") is not None and schedule_of("daily at 00:05").text == "1 days at 12:05 AM"
    assert schedule_of("hourly") is not None and schedule_of("hourly").body("p") == {
        "profileId": "p", "scheduleInterval": "1", "intervalType": 1}
    assert schedule_of({"every": "", "unit": "", "at": None}) is None and schedule_of("  ") is None
    for bad, field in [({"every": 30, "unit": "minutes", "at": "4:00 AM"}, "schedule.at"),
                       ({"every": 0, "unit": "hours"}, "schedule.every"), ({"every": 3}, "schedule.unit"),
                       ({"every": 3, "unit": "days", "at": "25:00"}, "schedule.at"),
                       ({"every": 3, "unit": "weeks"}, "schedule.unit"), (["30 minutes"], "schedule")]:
        with pytest.raises(RecordError) as caught:
            schedule_of(bad)
        assert caught.value.field == field, bad


def test_the_server_reads_json_as_dotnet_does_and_answers_the_seeds_envelope() -> None:
    with running() as server:
        status, made = call(server, "POST", "company", json.dumps({
            "coname": "Lenient Ltd", "SYNCPROFILETEMPLATE": "salesforce-qbd",
            "credentials": [{"username": "u", "password": "p", "datasource": "AutofyXml"}]}).encode())
        assert status == 200 and made["Meta"] == {"StatusCode": 0, "Severity": None, "Message": None}
        detail = made["Detail"]
        assert detail["Credentials"] == [] and detail["CoName"] == "Lenient Ltd"
        profile_id = detail["Profiles"][0]["ID"]
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", profile_id)
        created = detail["Profiles"][0]["CreatedDateTime"]
        assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M", created)
        assert detail["Users"][0]["ID"] == "4526" and len(detail["Users"][0]["Token"]) == 28
        # The seed's schedule example as written: unquoted property names, the interval as text.
        seed_example = (f'{{\n profileId: "{profile_id.upper()}",\n scheduleInterval: "30",\n'
                        ' scheduleTime: "4:00 AM",\n intervalType: 0\n}').encode()
        assert call(server, "POST", "schedule", seed_example)[1]["Meta"]["StatusCode"] == 0
        assert server.profiles[profile_id].schedule == Schedule(30, 0)
        status, ran = call(server, "POST", "RunSync", b"{'PROFILEID': '%s', dtstartutc: '1/1/2016 12:00:00 PM',}"
                           % profile_id.encode())
        assert (status, ran["Meta"]["StatusCode"]) == (200, 0)
        # Business errors: HTTP 200, a non-zero StatusCode and a Message.
        status, missing = call(server, "POST", "disconnect", b'{"profileId": "00000000-0000-0000-0000-000000000000"}')
        assert status == 200 and missing["Meta"]["StatusCode"] == PROFILE_NOT_FOUND
        assert missing["Meta"]["Severity"] == "Error" and "was not found" in missing["Meta"]["Message"]
        status, bad_date = call(server, "POST", "runsync",
                                json.dumps({"profileId": profile_id, "dtStartUTC": "2016-01-01"}).encode())
        assert status == 200 and "is not a date such as 1/1/2016 12:00:00 PM" in bad_date["Meta"]["Message"]
        # Disconnected, then run: refused; disconnecting again is fine.
        assert call(server, "POST", "disconnect", json.dumps({"profileId": profile_id}).encode())[0] == 200
        assert call(server, "POST", "disconnect", json.dumps({"profileId": profile_id}).encode())[1]["Meta"][
            "StatusCode"] == 0
        assert call(server, "POST", "runsync", json.dumps({"profileId": profile_id}).encode())[1]["Meta"][
            "StatusCode"] != 0
        # A wrong or missing token: 401 with the envelope, never echoing the token.
        for token in ("nope-token", None, f"Bearer {TOKEN}"):
            status, denied = call(server, "POST", "company", b"{}", token=token)
            assert status == 401 and denied == {"Meta": {"StatusCode": 401, "Severity": "Error", "Message": DENIED},
                                                "Detail": None}
        assert call(server, "GET", "company", b"")[0] == 405
        assert call(server, "POST", "nothing", b"{}")[0] == 404
        assert call(server, "POST", "company", b"not json at all")[0] == 400
        assert len(server.runs) == 1 and server.runs[0].dt_start_utc == "1/1/2016 12:00:00 PM"
