"""The Autofy-compatible control API, driven over real HTTP with the seed's own request bodies.

The bodies below are the seed's (the Autofy Batch Sync API document) byte for byte, tabs and all,
including their oddities: ``"DataSource": "AutofyXml"``, the schedule example's unquoted property names, the
``UserName`` the developer portal's e-mail obfuscation left as ``[email\u00a0protected]`` (with a no-break space),
and the profile example that is not JSON at all (its two credential lists never close). Only the example
profile id is replaced by the real one; the profile example is used once as it is (a 400) and otherwise with
its two missing ``]`` added. The template is named ``salesforce-qbd`` so that the seed's template name works.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import rows
from cryptography.fernet import Fernet

from engine import api
from engine.adapters import register_builtins
from engine.config import Pipeline
from engine.control_api import (
    DENIED,
    DISCONNECTED,
    INVALID,
    PROFILE_NOT_FOUND,
    RUN_IN_PROGRESS,
    TEMPLATE_NOT_FOUND,
    ControlApp,
    control_app_from_env,
    lenient_json,
    make_control_server,
    parse_start,
    since_text,
)
from engine.control_store import ControlStore, Credentials, credential_env
from engine.errors import ConfigError
from engine.runner import RunOptions, RunReport
from engine.schedule import DailySchedule, IntervalSchedule

register_builtins()

TOKEN = "PW-PARTNER-TOKEN-0001-control"
EXAMPLE_ID = "34027c47-7546-48b9-9b30-451ed25293c5"
SEED_DATE = re.compile(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M")
OK_META = {"StatusCode": 0, "Severity": None, "Message": None}

COMPANY_BODY = (
    '{\n'
    '\t\t\t\t"CoName": null,\n'
    '\t\t\t\t"SyncProfileTemplate": "salesforce-qbd",\n'
    '\t\t\t\t"Credentials": [\n'
    '\t\t\t\t\t{\n'
    '\t\t\t\t\t\t"ID": 0,\n'
    '\t\t\t\t\t\t"UserName": "[email\u00a0protected]",\n'
    '\t\t\t\t\t\t"Password": "somePassword",\n'
    '\t\t\t\t\t\t"DataSource": "AutofyXml",\n'
    '\t\t\t\t\t\t"AccessToken": null,\n'
    '\t\t\t\t\t\t"AccessTokenSecret": null,\n'
    '\t\t\t\t\t\t"AccessTokenCreationDate": null,\n'
    '\t\t\t\t\t\t"RealmID": null\n'
    '\t\t\t\t\t}\n'
    '\t\t\t\t],\n'
    '\t\t\t\t"Profiles": [],\n'
    '\t\t\t\t"Users": []\n'
    '\t\t\t}'
)
PROFILE_BODY = (
    '{\n'
    '    "AppID": "",\n'
    '    "LastSyncAttempt": "",\n'
    '    "LastSuccessfulSync": "",\n'
    '    "LastSuccessfulSyncTime": "",\n'
    '    "DataFile": "",\n'
    '    "CoName": "",\n'
    '    "SyncTitle": "",\n'
    '    "LastModifiedDateTime": "",\n'
    '    "CreatedDateTime": "",\n'
    '    "UserCompanyID": 5328,\n'
    '    "LastModifiedByUserID": 0,\n'
    '    "CreatedByUserID": 0,\n'
    '    "TemplateName": "salesforce-qbd",\n'
    '    "ProfileID": null,\n'
    '    "UserID": 0,\n'
    '    "EnableScheduler": false,\n'
    '    "ScheduleInterval": 0,\n'
    '    "ScheduleTime": null,\n'
    ' \t"DataSourceCreds": [\n'
    '\t\t\t\t\t{\n'
    '\t\t\t\t\t\t"ID": 0,\n'
    '\t\t\t\t\t\t"UserName": "[email\u00a0protected]",\n'
    '\t\t\t\t\t\t"Password": "somePassword",\n'
    '\t\t\t\t\t\t"DataSource": "AutofyXml",\n'
    '\t\t\t\t\t\t"AccessToken": null,\n'
    '\t\t\t\t\t\t"AccessTokenSecret": null,\n'
    '\t\t\t\t\t\t"AccessTokenCreationDate": null,\n'
    '\t\t\t\t\t\t"RealmID": null\n'
    '\t\t\t\t\t},\n'
    '\t"DataDestinationCreds": [\n'
    '\t\t\t\t\t{\n'
    '\t\t\t\t\t\t"ID": 0,\n'
    '\t\t\t\t\t\t"UserName": "[email\u00a0protected]",\n'
    '\t\t\t\t\t\t"Password": "somePassword",\n'
    '\t\t\t\t\t\t"DataSource": "AutofyXml",\n'
    '\t\t\t\t\t\t"AccessToken": null,\n'
    '\t\t\t\t\t\t"AccessTokenSecret": null,\n'
    '\t\t\t\t\t\t"AccessTokenCreationDate": null,\n'
    '\t\t\t\t\t\t"RealmID": null\n'
    '\t\t\t\t\t}\n'
    '}'
)
# The seed's profile example with the two `]` it lacks, and nothing else changed.
PROFILE_BODY_CLOSED = (PROFILE_BODY.replace('\t},\n\t"DataDestinationCreds"', '\t}],\n\t"DataDestinationCreds"')
                       .replace('\t}\n}', '\t}]\n}'))
SCHEDULE_BODY = (
    '{\n'
    '\t\t\t\tprofileId: "34027c47-7546-48b9-9b30-451ed25293c5",\n'
    '\t\t\t\tscheduleInterval: "30",\n'
    '\t\t\t\tscheduleTime: "4:00 AM",\n'
    '\t\t\t\tintervalType: 0\n'
    '\t\t\t}'
)
RUNSYNC_BODY = (
    '{\n'
    '    \t\t\t\t"profileId": "34027c47-7546-48b9-9b30-451ed25293c5",\n'
    '    \t\t\t\t"syncId": "0",\n'
    '    \t\t\t\t"dtStartUTC": "1/1/2016 12:00:00 PM"\n'
    '    \t\t\t}'
)
DISCONNECT_BODY = (
    '{\n'
    '    \t\t\t\t"profileId": "34027c47-7546-48b9-9b30-451ed25293c5", \n'
    '    \t\t\t\t"syncId": "0" \n'
    '    \t\t\t}'
)

TEMPLATE = """\
version: 1
name: salesforce-qbd
vars: {customers_file: customers.csv, orders_file: orders.csv, co_name: "", profile_id: none}
sources:
  customers_csv: {type: csv, path: "{{ vars.customers_file }}"}
  orders_csv: {type: csv, path: "{{ vars.orders_file }}"}
destinations:
  db: {type: sqlite, path: "out-{{ vars.profile_id }}.db"}
groups:
  "1": [orders]
syncs:
  customers:
    source: customers_csv
    destination: {name: db, table: customers, create_table: true}
    key: id
    mapping:
      fields:
        id: "{{ record.id }}"
        name: "{{ record.name }}"
        login: "{{ env.SOURCE_USERNAME }}"
        password_length: "{{ env.SOURCE_PASSWORD | length }}"
        destination_login: "{{ env.DESTINATION_USERNAME if 'DESTINATION_USERNAME' in env else 'none' }}"
  orders:
    source: orders_csv
    destination: {name: db, table: orders, create_table: true}
    key: id
"""


@dataclass
class Control:
    """A control server running in this process, and a client for it."""

    url: str
    app: ControlApp
    templates: Path
    db: Path
    session: requests.Session

    def call(self, method: str, route: str, body: str | bytes, *, token: str | None = TOKEN,
             content_type: str | None = "application/json") -> requests.Response:
        """One request as the seed's C# sends it: the token alone in AUTHORIZATION, a JSON body."""
        headers = {}
        if token is not None:
            headers["AUTHORIZATION"] = token
        if content_type is not None:
            headers["Content-Type"] = content_type
        data = body.encode("utf-8") if isinstance(body, str) else body
        return self.session.request(method, self.url + route, data=data, headers=headers, timeout=30)

    def ok(self, method: str, route: str, body: str) -> Any:
        """A call that must succeed: its ``Detail``."""
        answer = self.call(method, route, body)
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert document["Meta"] == OK_META, document
        return document["Detail"]

    def pipeline(self, profile_id: str) -> Pipeline:
        """The profile's pipeline, as its runs load it (without credentials)."""
        record = self.app.store.profile(profile_id)
        assert record is not None
        return self.app.load(record)


def business(answer: requests.Response, code: int) -> str:
    """A business error: HTTP 200, ``Meta.StatusCode`` ``code``, ``Detail`` null; returns the message."""
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["Meta"]["StatusCode"] == code, document
    assert document["Meta"]["Severity"] == "Error" and document["Detail"] is None
    message: str = document["Meta"]["Message"]
    return message


def write_template(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "salesforce-qbd.yml").write_text(TEMPLATE, encoding="utf-8")
    (folder / "customers.csv").write_text("id,name\n1,Acme\n2,Globex\n", encoding="utf-8")
    (folder / "orders.csv").write_text("id,total\n10,5.00\n11,7.50\n12,1.25\n", encoding="utf-8")


@contextmanager
def served(tmp_path: Path, runner: Any = None, **app_options: Any) -> Iterator[Control]:
    """A control server on a free port with the template folder; stopped (runs waited for) on leaving."""
    templates = tmp_path / "templates"
    write_template(templates)
    db = templates / ".syncengine" / "control.db"
    store = ControlStore(db, Fernet.generate_key().decode())
    app = ControlApp(templates, store, TOKEN, runner, **app_options)
    url, serve_forever, close = make_control_server("127.0.0.1", 0, app, threads=4, idle_timeout=5)
    thread = threading.Thread(target=serve_forever, name="control-test", daemon=True)
    thread.start()
    try:
        with requests.Session() as session:
            yield Control(url, app, templates, db, session)
    finally:
        close()
        thread.join(30)
        assert not thread.is_alive()


def make_company(control: Control) -> str:
    detail = control.ok("POST", "company", COMPANY_BODY)
    return str(detail["Profiles"][0]["ID"])


def test_the_seeds_own_bodies_create_schedule_run_and_disconnect_a_profile(tmp_path: Path) -> None:
    with served(tmp_path) as control:
        # POST company, the seed's body as it is.
        detail = control.ok("POST", "company", COMPANY_BODY)
        assert detail["CoName"] is None and detail["SyncProfileTemplate"] == "salesforce-qbd"
        assert detail["Credentials"] == []  # no password travels back
        (profile,) = detail["Profiles"]
        profile_id = profile["ID"]
        assert str(uuid.UUID(profile_id)) == profile_id
        assert SEED_DATE.fullmatch(profile["CreatedDateTime"]) and profile["LastSyncTime"] is None
        (user,) = detail["Users"]
        assert user["ID"] == "4526" and re.fullmatch(r"[A-Z0-9]{28}", user["Token"])
        assert control.app.store.user_for_token(user["Token"]) is not None

        # POST profiles: the seed's profile body (closed) adds a second profile to company 5328.
        added = control.ok("POST", "profiles", PROFILE_BODY_CLOSED)
        assert added["UserCompanyID"] == 5328 and added["TemplateName"] == "salesforce-qbd"
        assert added["ProfileID"] != profile_id and str(uuid.UUID(added["ProfileID"])) == added["ProfileID"]
        assert added["UserID"] == 4526 and SEED_DATE.fullmatch(added["CreatedDateTime"])
        assert added["DataSourceCreds"][0]["UserName"] == "[email\u00a0protected]"
        assert added["DataSourceCreds"][0]["Password"] is None and added["DataDestinationCreds"][0]["Password"] is None

        # PUT profiles: the same document naming the first profile replaces its credentials.
        updated = control.ok("PUT", "profiles", PROFILE_BODY_CLOSED.replace('"ProfileID": null',
                                                                            f'"ProfileID": "{profile_id}"'))
        assert updated["ProfileID"] == profile_id and updated["EnableScheduler"] is False
        assert SEED_DATE.fullmatch(updated["LastModifiedDateTime"])
        credentials = control.app.store.credentials(profile_id)
        assert credentials.destinations[0]["Password"] == "somePassword"

        # POST schedule: the seed's example with its unquoted property names.
        assert control.ok("POST", "schedule", SCHEDULE_BODY.replace(EXAMPLE_ID, profile_id)) is None
        schedule = control.app.store.schedules()[profile_id]
        assert isinstance(schedule, IntervalSchedule) and schedule.describe() == "every 30 minutes (UTC)"
        record = control.app.store.profile(profile_id)
        assert record is not None and record.schedule_given == {"scheduleInterval": "30", "scheduleTime": "4:00 AM",
                                                                "intervalType": 0}

        # POST runsync with the seed's dtStartUTC: answered at once, the run writes the rows.
        assert control.ok("POST", "runsync", RUNSYNC_BODY.replace(EXAMPLE_ID, profile_id)) is None
        assert control.app.wait_for_runs(60)
        run = control.app.last_run(profile_id)
        assert run is not None and run.status == "ok", run
        assert run.since == "2016-01-01T12:00:00Z" and run.group is None
        out = control.templates / f"out-{profile_id}.db"
        # The credentials reached the run as env values: SOURCE_* from Credentials[0] (now DataSourceCreds[0]),
        # DESTINATION_* from DataDestinationCreds[0].
        assert rows(out, "SELECT id, name, login, password_length, destination_login FROM customers ORDER BY id") == [
            ("1", "Acme", "[email\u00a0protected]", 12, "[email\u00a0protected]"),
            ("2", "Globex", "[email\u00a0protected]", 12, "[email\u00a0protected]")]
        assert rows(out, "SELECT count(*) FROM orders") == [(3,)]
        pipeline = control.pipeline(profile_id)
        assert pipeline.name == f"salesforce-qbd@{profile_id}"
        history = api.history(pipeline)
        assert {(h["sync"], h["start"], h["start_reason"]) for h in history} == {
            ("customers", "2016-01-01T12:00:00Z", "since"), ("orders", "2016-01-01T12:00:00Z", "since")}
        record = control.app.store.profile(profile_id)
        assert record is not None and record.last_successful_sync is not None

        # POST disconnect: every sync of the profile; then a runsync is refused and the schedule is gone.
        assert control.ok("POST", "disconnect", DISCONNECT_BODY.replace(EXAMPLE_ID, profile_id)) is None
        assert all(s.disconnected for s in api.status(pipeline))
        message = business(control.call("POST", "runsync", RUNSYNC_BODY.replace(EXAMPLE_ID, profile_id)),
                           DISCONNECTED)
        assert message == f"The sync '0' of profile '{profile_id}' is disconnected."
        assert profile_id not in control.app.store.schedules()
        assert control.ok("POST", "disconnect", DISCONNECT_BODY.replace(EXAMPLE_ID, profile_id)) is None  # again

        # A wrong token, and none: the documented 401, which never repeats the token.
        for token in ("wrong-token-wrong-token", None, f"Bearer {TOKEN}"):
            denied = control.call("POST", "runsync", RUNSYNC_BODY.replace(EXAMPLE_ID, profile_id), token=token)
            assert denied.status_code == 401
            assert denied.json() == {"Meta": {"StatusCode": 401, "Severity": "Error", "Message": DENIED},
                                     "Detail": None}
            assert "wrong-token" not in denied.text

        # A body that is not JSON, and the seed's profile example as it is (not JSON either): 400 envelopes.
        for body in ("this is not JSON", PROFILE_BODY):
            bad = control.call("POST", "profiles", body)
            assert bad.status_code == 400
            assert bad.json()["Meta"]["StatusCode"] == 400 and bad.json()["Meta"]["Severity"] == "Error"
            assert bad.json()["Detail"] is None

        # An unknown profile is a business error.
        assert business(control.call("POST", "runsync", RUNSYNC_BODY), PROFILE_NOT_FOUND) == (
            f"The sync profile '{EXAMPLE_ID}' was not found.")

        # Neither the credentials nor the user token are in the control database in clear.
        raw = b"".join(p.read_bytes() for p in control.db.parent.glob("control.db*"))
        assert b"somePassword" not in raw and "[email\u00a0protected]".encode() not in raw
        assert user["Token"].encode() not in raw
        assert b"somePassword" not in (control.templates / ".syncengine" / "state.db").read_bytes()


def test_runsync_answers_before_the_run_ends_and_refuses_a_second_run_meanwhile(tmp_path: Path) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def slow(pipeline: Pipeline, options: RunOptions) -> RunReport:
        entered.set()
        gate.wait(60)
        return api.run(pipeline, options)

    try:
        with served(tmp_path, slow) as control:
            profile_id = make_company(control)
            body = RUNSYNC_BODY.replace(EXAMPLE_ID, profile_id)
            assert control.ok("POST", "runsync", body) is None
            assert entered.wait(30)
            run = control.app.last_run(profile_id)
            assert run is not None and run.status == "running"
            assert business(control.call("POST", "runsync", body), RUN_IN_PROGRESS) == (
                f"A run of profile '{profile_id}' is already in progress.")
            gate.set()
            assert control.app.wait_for_runs(60)
            assert control.app.last_run(profile_id).status == "ok"  # type: ignore[union-attr]
            assert control.ok("POST", "runsync", body) is None  # the next one is accepted
            assert control.app.wait_for_runs(60)
    finally:
        gate.set()


def test_a_sync_id_is_a_group_of_the_template(tmp_path: Path) -> None:
    with served(tmp_path) as control:
        profile_id = make_company(control)
        out = control.templates / f"out-{profile_id}.db"
        control.ok("POST", "runsync", f'{{"profileId": "{profile_id}", "syncId": "1"}}')
        assert control.app.wait_for_runs(60)
        run = control.app.last_run(profile_id)
        assert run is not None and run.status == "ok" and run.group == "1" and run.since is None
        assert set(run.report["syncs"]) == {"orders"}  # type: ignore[index]
        assert rows(out, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("orders",)]

        unknown = business(control.call("POST", "runsync", f'{{"profileId": "{profile_id}", "syncId": "7"}}'),
                           INVALID)
        assert unknown == "syncId '7' is not a sync group of template 'salesforce-qbd'; its sync ids are: 1, 0."

        # Disconnecting group 1: its runsync is refused; "0" runs the rest, the group's syncs shown disconnected.
        control.ok("POST", "disconnect", f'{{"profileId": "{profile_id}", "syncId": "1"}}')
        business(control.call("POST", "runsync", f'{{"profileId": "{profile_id}", "syncId": "1"}}'), DISCONNECTED)
        control.ok("POST", "runsync", f'{{"profileId": "{profile_id}"}}')
        assert control.app.wait_for_runs(60)
        run = control.app.last_run(profile_id)
        assert run is not None and run.report is not None and run.status == "ok"
        assert {n: s["status"] for n, s in run.report["syncs"].items()} == {"customers": "ok",
                                                                            "orders": "disconnected"}
        assert rows(out, "SELECT count(*) FROM customers") == [(2,)]


def test_json_is_read_as_the_dotnet_service_reads_it_and_paths_ignore_case(tmp_path: Path) -> None:
    with served(tmp_path) as control:
        lenient = ("{coname: 'Initech', 'syncprofiletemplate': 'SALESFORCE-QBD', credentials: [{datasource: "
                   "'Autofy XML', username: 'u', password: 'p',},],}")
        answer = control.call("POST", "Company/", lenient)
        assert answer.status_code == 200 and answer.json()["Meta"] == OK_META, answer.text
        assert answer.json()["Detail"]["CoName"] == "Initech"
        assert answer.json()["Detail"]["SyncProfileTemplate"] == "salesforce-qbd"  # as the file spells it
        upper = control.session.post(control.url.replace("/api/v1/", "/API/V1/") + "COMPANY/",
                                     data=COMPANY_BODY.encode(), headers={"authorization": TOKEN}, timeout=30)
        assert upper.status_code == 200 and upper.json()["Meta"] == OK_META  # no Content-Type: taken as JSON
        # a BOM, as some .NET writers send one
        assert control.call("POST", "company", b"\xef\xbb\xbf" + COMPANY_BODY.encode()).json()["Meta"] == OK_META

        profile_id = answer.json()["Detail"]["Profiles"][0]["ID"]
        # intervalType as text, days with a time: every 2 days at 4:00 AM.
        control.ok("POST", "schedule", f"{{PROFILEID: '{{{profile_id.upper()}}}', scheduleinterval: 2, "
                                       "SCHEDULETIME: '4:00 AM', intervaltype: '2'}")
        schedule = control.app.store.schedules()[profile_id]
        assert isinstance(schedule, DailySchedule) and schedule.describe() == "every 2 days at 04:00 (UTC)"

        assert control.call("GET", "company", "").status_code == 405
        assert control.call("GET", "company", "").headers["Allow"] == "POST"
        assert control.call("POST", "companies", "{}").json()["Meta"]["StatusCode"] == 404
        assert control.call("POST", "company", "{}", content_type="text/plain").status_code == 415
        assert control.call("POST", "company", "[1, 2]").status_code == 400
        assert control.call("POST", "company", "[" * 100 + "]" * 100).status_code == 400
        assert control.call("POST", "company", '{"CoName": NaN}').status_code == 400
        assert control.call("POST", "company", b'{"CoName": "\xff"}').status_code == 400


def test_business_errors_change_nothing(tmp_path: Path) -> None:
    with served(tmp_path) as control:
        missing = business(control.call("POST", "company", COMPANY_BODY.replace("salesforce-qbd", "qbo-csv")),
                           TEMPLATE_NOT_FOUND)
        assert missing == "The sync profile template 'qbo-csv' was not found."
        assert business(control.call("POST", "company", COMPANY_BODY.replace("salesforce-qbd", "../etc/passwd")),
                        TEMPLATE_NOT_FOUND)
        (control.templates / "broken.yml").write_text("version: 1\nsyncs: {}\n", encoding="utf-8")
        broken = business(control.call("POST", "company", COMPANY_BODY.replace("salesforce-qbd", "broken")),
                          TEMPLATE_NOT_FOUND)
        assert "not a valid pipeline" in broken
        wrong_source = business(control.call("POST", "company", COMPANY_BODY.replace("AutofyXml", "Excel")), INVALID)
        assert "DataSource 'Excel' is not one of" in wrong_source
        assert control.app.store.profile_ids() == []
        assert business(control.call("POST", "profiles", PROFILE_BODY_CLOSED), 5) == (
            "The company '5328' was not found.")

        profile_id = make_company(control)
        not_guid = business(control.call("POST", "schedule", SCHEDULE_BODY.replace(EXAMPLE_ID, "42")), INVALID)
        assert not_guid == "profileId '42' is not a GUID."
        no_type = SCHEDULE_BODY.replace(EXAMPLE_ID, profile_id).replace(",\n\t\t\t\tintervalType: 0", "")
        assert business(control.call("POST", "schedule", no_type), INVALID).startswith("intervalType is required")
        bad_time = SCHEDULE_BODY.replace(EXAMPLE_ID, profile_id).replace("4:00 AM", "25:00")
        assert "not a time of day" in business(control.call("POST", "schedule", bad_time), INVALID)
        bad_start = RUNSYNC_BODY.replace(EXAMPLE_ID, profile_id).replace("1/1/2016 12:00:00 PM", "yesterday")
        assert business(control.call("POST", "runsync", bad_start), INVALID).startswith("dtStartUTC 'yesterday'")
        assert control.app.store.schedules() == {} and control.app.last_run(profile_id) is None


def test_a_profile_document_turns_the_schedule_off_and_on(tmp_path: Path) -> None:
    with served(tmp_path) as control:
        profile_id = make_company(control)
        put = PROFILE_BODY_CLOSED.replace('"ProfileID": null', f'"ProfileID": "{profile_id}"')
        business(control.call("PUT", "profiles", put.replace('"EnableScheduler": false', '"EnableScheduler": true')),
                 INVALID)  # on, with no interval and no schedule to keep
        control.ok("POST", "schedule", f'{{profileId: "{profile_id}", scheduleInterval: 3, intervalType: 1}}')
        assert control.app.store.schedules()[profile_id].describe() == "every 3 hours (UTC)"
        off = control.ok("PUT", "profiles", put)  # the seed's document says EnableScheduler: false
        assert off["EnableScheduler"] is False and control.app.store.schedules() == {}
        assert control.app.scheduled_pipelines() == []
        on = control.ok("PUT", "profiles", put.replace('"EnableScheduler": false', '"EnableScheduler": true')
                        .replace('"ScheduleInterval": 0', '"ScheduleInterval": 2'))
        assert on["EnableScheduler"] is True and on["ScheduleInterval"] == 2
        assert control.app.store.schedules()[profile_id].describe() == "every 2 hours (UTC)"  # the type stays hours
        # What serve's scheduler is given: the instance, with the schedule as its own and its credentials.
        (scheduled,) = control.app.scheduled_pipelines()
        assert scheduled.name == f"salesforce-qbd@{profile_id}"
        assert scheduled.schedules[None] == {"interval": 2, "interval_type": 1}
        assert scheduled.env()["SOURCE_PASSWORD"] == "somePassword"


def test_a_body_over_the_limit_is_refused_with_the_envelope(tmp_path: Path) -> None:
    with served(tmp_path, max_body_bytes=2048) as control:
        answer = control.call("POST", "company", COMPANY_BODY + " " * 4096)
        assert answer.status_code == 413
        assert answer.json()["Meta"] == {"StatusCode": 413, "Severity": "Error",
                                         "Message": "The request body is over 2048 bytes."}


def test_the_entry_point_refuses_to_start_without_its_key_or_token(tmp_path: Path) -> None:
    write_template(tmp_path / "t")
    with pytest.raises(ConfigError, match="SYNCENGINE_CONTROL_TOKEN"):
        control_app_from_env(tmp_path / "t", tmp_path / "c.db", environ={})
    with pytest.raises(ConfigError, match=r"SYNCENGINE_CONTROL_KEY.*Fernet.generate_key"):
        control_app_from_env(tmp_path / "t", tmp_path / "c.db", environ={"SYNCENGINE_CONTROL_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="is not a Fernet key") as bad:
        control_app_from_env(tmp_path / "t", tmp_path / "c.db",
                             environ={"SYNCENGINE_CONTROL_TOKEN": TOKEN, "SYNCENGINE_CONTROL_KEY": "hunter2-secret"})
    assert "hunter2" not in str(bad.value)
    with pytest.raises(ConfigError, match="at least 16"):
        control_app_from_env(tmp_path / "t", tmp_path / "c.db", environ={
            "SYNCENGINE_CONTROL_TOKEN": "short", "SYNCENGINE_CONTROL_KEY": Fernet.generate_key().decode()})

    key = Fernet.generate_key().decode()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n", encoding="utf-8")
    app = control_app_from_env(tmp_path / "t", tmp_path / "c.db", environ={
        "SYNCENGINE_CONTROL_TOKEN": TOKEN, "SYNCENGINE_CONTROL_KEY_FILE": str(key_file)})
    try:
        assert app.handle("POST", "/api/v1/company", {"Authorization": TOKEN}, COMPANY_BODY.encode()).status == 200
    finally:
        app.close()
    assert oct((tmp_path / "c.db").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="made with another key"):
        ControlStore(tmp_path / "c.db", Fernet.generate_key().decode())
    rotated = ControlStore(tmp_path / "c.db", f"{Fernet.generate_key().decode()},{key}")  # new key first
    try:
        assert rotated.reencrypt() == 1
        profile_id = rotated.profile_ids()[0]
        assert rotated.credentials(profile_id).sources[0]["Password"] == "somePassword"
    finally:
        rotated.close()


def test_credentials_become_the_runs_environment_under_documented_names() -> None:
    first = {"ID": 0, "UserName": "u0", "Password": "p0", "DataSource": "AutofyXml", "AccessToken": None,
             "RealmID": 123}
    assert credential_env([first, {"username": "u1"}], [{"UserName": "d0", "accesstokensecret": "s"},
                                                        {"Password": "dp1"}]) == {
        "SOURCE_ID": "0", "SOURCE_USERNAME": "u0", "SOURCE_PASSWORD": "p0", "SOURCE_DATA_SOURCE": "AutofyXml",
        "SOURCE_REALM_ID": "123", "SOURCE_2_USERNAME": "u1", "DESTINATION_USERNAME": "d0",
        "DESTINATION_ACCESS_TOKEN_SECRET": "s", "DESTINATION_2_PASSWORD": "dp1"}
    # A company's Credentials: the first is the source's, the others the destinations'.
    assert Credentials([first], [{"UserName": "d"}]).env()["DESTINATION_USERNAME"] == "d"


def test_dates_and_the_lenient_reader() -> None:
    seed = parse_start("1/1/2016 12:00:00 PM")
    assert seed is not None and since_text(seed) == "2016-01-01T12:00:00Z"
    assert since_text(parse_start("12/31/2015 12:05:09 am")) == "2015-12-31T00:05:09Z"  # type: ignore[arg-type]
    assert since_text(parse_start("2016-01-01T13:00:00+01:00")) == "2016-01-01T12:00:00Z"  # type: ignore[arg-type]
    assert since_text(parse_start("2016-01-01")) == "2016-01-01T00:00:00Z"  # type: ignore[arg-type]
    for bad in ("13/1/2016 1:00:00 PM", "1/1/2016 13:00:00 PM", "soon", "2016-02-30"):
        assert parse_start(bad) is None
    assert lenient_json(SCHEDULE_BODY) == {"profileId": EXAMPLE_ID, "scheduleInterval": "30",
                                           "scheduleTime": "4:00 AM", "intervalType": 0}
    assert lenient_json("{'a': 'it\\'s \"x\"', b: [1, 2,],}") == {"a": "it's \"x\"", "b": [1, 2]}
    with pytest.raises(ValueError):
        lenient_json("{a: Infinity}")
