"""Core hardening, end to end through the CLI: configs rendered at any depth, error budgets, honest
run status, secrets masked in every encoding, and one exit-code table."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from conftest import csv_to_sqlite, rows, syncengine
from http_servers import Reply, Request, ScriptedServer

TOKEN = "tok-9f8e7d6c5b4a"
PASSWORD = "pa ss/wörd+42&x"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def http_pipeline(folder: Path, *, headers: str, extra_dest: str = "", url: str = "{{ env.SINK_URL }}") -> Path:
    write(folder / "in.csv", "id,name\n1,Ada\n2,Bob\n")
    return write(folder / "p.yml", f"""\
version: 1
sources:
  files: {{type: csv, path: in.csv}}
destinations:
  sink:
    type: http
    url: "{url}"
    format: json
    headers:
{headers}
{extra_dest}
syncs:
  people:
    source: files
    destination: sink
    key: id
""")


# --- 1. adapter configs render at any depth ------------------------------------------------------


def test_a_bearer_token_in_a_header_is_rendered_and_sent(tmp_path: Path) -> None:
    pipeline = http_pipeline(tmp_path, headers='      Authorization: "Bearer {{ env.API_TOKEN }}"\n'
                                               '      X-Tenant: "{{ vars.tenant }}"')
    text = pipeline.read_text().replace("version: 1\n", "version: 1\nvars: {tenant: acme}\n")
    pipeline.write_text(text)
    with ScriptedServer(lambda request: Reply(201, b'{"id": "r1"}', {"Content-Type": "application/json"})) as server:
        result = syncengine("apply", pipeline, env={"SINK_URL": server.url, "API_TOKEN": TOKEN})
        assert result.code == 0, result.text
        received = [r.headers for r in server.requests]
    assert len(received) == 2
    assert {h["Authorization"] for h in received} == {f"Bearer {TOKEN}"}
    assert {h["X-Tenant"] for h in received} == {"acme"}
    assert TOKEN not in result.text


def test_an_unset_variable_in_a_nested_field_names_the_variable_and_its_line(tmp_path: Path) -> None:
    pipeline = http_pipeline(tmp_path, headers='      X-Source: syncengine\n'
                                               '      Authorization: "Bearer {{ env.SYNCENGINE_TEST_UNSET_TOKEN }}"')
    env = {"SINK_URL": "http://127.0.0.1:9", "SYNCENGINE_TEST_UNSET_TOKEN": ""}
    env.pop("SYNCENGINE_TEST_UNSET_TOKEN")
    result = syncengine("apply", pipeline, env=env)
    assert result.code == 2, result.text
    assert result.text.splitlines() == [
        f"error: {pipeline}:11:22: destinations.sink.headers.Authorization: environment variable "
        "'SYNCENGINE_TEST_UNSET_TOKEN' is not set"]
    assert not (tmp_path / ".syncengine").exists()


def test_an_unset_variable_of_a_secret_field_is_named_never_its_value(tmp_path: Path) -> None:
    pipeline = http_pipeline(tmp_path, headers="      X-Source: syncengine",
                             extra_dest='    username: sender\n    password: "{{ env.SYNCENGINE_TEST_NO_PASSWORD }}"')
    result = syncengine("apply", pipeline, env={"SINK_URL": "http://127.0.0.1:9"})
    assert result.code == 2, result.text
    assert result.text.splitlines() == [
        f"error: {pipeline}:12:15: destinations.sink.password: environment variable "
        "'SYNCENGINE_TEST_NO_PASSWORD' is not set"]


def test_validate_checks_the_names_a_nested_template_uses(tmp_path: Path) -> None:
    pipeline = http_pipeline(tmp_path, headers='      X-Tenant: "{{ vars.tenantt }}"\n'
                                               '      X-Other: "{{ nope }}"')
    text = pipeline.read_text().replace("version: 1\n", "version: 1\nvars: {tenant: acme}\n")
    pipeline.write_text(text)
    result = syncengine("validate", pipeline)
    assert result.code == 2
    lines = result.err.splitlines()
    assert (f"{pipeline}:11:17: destinations.sink.headers.X-Tenant: unknown variable 'vars.tenantt' "
            "(did you mean 'tenant'?); vars defines tenant") in lines, result.text
    assert any(line.startswith(f"{pipeline}:12:16: destinations.sink.headers.X-Other: unknown name 'nope'")
               for line in lines), result.text


PLUGIN = '''
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.typed_config import option, secret


@dataclass(frozen=True, slots=True)
class Auth:
    """Nested credentials."""

    user: str = option("User.")
    scopes: list[str] = option("Scopes.", [])


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpConfig:
    """Writes its rendered config to a file."""

    out: str = option("File to write.")
    token: str | None = secret("Token.")
    auth: Auth = option("Auth.")
    labels: dict[str, str] = option("Labels.", {})


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """Nothing per sync."""


class Dump:
    def __init__(self, config: DumpConfig, base_dir: Path) -> None:
        (base_dir / config.out).write_text(json.dumps(asdict(config)))

    def open_stream(self, options, ctx):
        return self

    max_batch = None

    def write(self, changes):
        return None

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def register(registry) -> None:
    registry.destination("dump", config=DumpConfig, options=DumpOptions)(Dump)
'''


def test_a_third_party_slots_config_is_rendered_at_every_depth(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write(plugins / "slotted_plugin.py", PLUGIN)
    dist = plugins / "slotted_plugin-0.1.dist-info"
    dist.mkdir()
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: slotted-plugin\nVersion: 0.1\n")
    write(dist / "entry_points.txt", "[syncengine.adapters]\ndump = slotted_plugin:register\n")
    write(tmp_path / "in.csv", "id\n1\n")
    pipeline = write(tmp_path / "p.yml", """\
version: 1
vars: {user: robot, scope: read}
sources:
  files: {type: csv, path: in.csv}
destinations:
  out:
    type: dump
    out: dumped.json
    token: "{{ env.DUMP_TOKEN }}"
    auth:
      user: "{{ vars.user }}"
      scopes: ["{{ vars.scope }}", fixed]
    labels: {env: "{{ env.DUMP_LABEL }}"}
syncs:
  one: {source: files, destination: out, key: id}
""")
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
           "DUMP_TOKEN": TOKEN, "DUMP_LABEL": "prod"}
    result = syncengine("apply", pipeline, env=env)
    assert result.code == 0, result.text
    assert json.loads((tmp_path / "dumped.json").read_text()) == {
        "out": "dumped.json", "token": TOKEN, "auth": {"user": "robot", "scopes": ["read", "fixed"]},
        "labels": {"env": "prod"}}


# --- 3. error budget ----------------------------------------------------------------------------


def test_a_typo_that_fails_every_record_stops_the_sync_as_failed(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id,address\n" + "".join(f"{i},street {i}\n" for i in range(300)))
    pipeline = csv_to_sqlite(tmp_path, "people", extra="""\
    batch_size: 50
    mapping:
      fields:
        id: "{{ record.id }}"
        address: "{{ record.adress }}"
""")
    result = syncengine("apply", pipeline)
    assert result.code == 3, result.text
    failed = [line for line in result.out.splitlines() if line.startswith("people: failed:")]
    assert failed == [
        "people: failed: error budget exceeded: 100 of 100 records failed (max_error_share 50%); nothing more was "
        f"written for this sync. Most common error (100x): field 'address': no field 'adress' (did you mean "
        f"'address'?) ({pipeline}:15)"], result.out
    # Stopped at the first hundred: the later batches were never written, nor dead-lettered.
    assert not (tmp_path / "out.db").exists() or rows(tmp_path / "out.db", "SELECT count(*) FROM people") == [(0,)]
    assert rows(tmp_path / ".syncengine" / "state.db", "SELECT count(*) FROM dead_letters")[0][0] <= 100
    status = json.loads(syncengine("status", pipeline, "--json").out)
    assert status[0]["last_run"]["status"] == "failed"


def test_errors_within_budget_are_partial_and_over_the_share_failed(tmp_path: Path) -> None:
    lines = ["id,amount"] + [f"{i},{'bad' if i % 10 == 0 else i}" for i in range(200)]
    write(tmp_path / "in.csv", "\n".join(lines) + "\n")
    mapping = """\
    mapping:
      fields:
        id: "{{ record.id }}"
        amount: "{{ record.amount | int }}"
"""
    pipeline = csv_to_sqlite(tmp_path, "items", extra=mapping)
    result = syncengine("apply", pipeline)
    assert result.code == 1, result.text
    assert "items: 180 creates, 0 updates, 0 deletes, 20 errors" in result.out
    status = json.loads(syncengine("status", pipeline, "--json").out)
    assert status[0]["last_run"]["status"] == "partial"
    history = json.loads(syncengine("history", pipeline, "--json").out)
    assert [h["status"] for h in history] == ["partial"]

    # max_errors is absolute: 20 errors over a budget of 5 fail the sync before the first batch is written.
    other = tmp_path / "strict"
    other.mkdir()
    write(other / "in.csv", (tmp_path / "in.csv").read_text())
    strict = csv_to_sqlite(other, "items", extra=mapping + "    max_errors: 5\n")
    result = syncengine("apply", strict, "--json")
    assert result.code == 3, result.text
    report = json.loads(result.out)["syncs"]["items"]
    assert report["status"] == "failed" and report["message"].startswith(
        "error budget exceeded: 6 of 51 records failed (max_errors 5)"), report
    assert report["creates"] == 0


# --- 6. honest status ---------------------------------------------------------------------------


def test_a_killed_run_shows_as_interrupted_and_the_next_run_says_so(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id\n" + "".join(f"{i}\n" for i in range(20)))
    pipeline = write(tmp_path / "p.yml", """\
version: 1
sources:
  files: {type: csv, path: in.csv}
destinations:
  sink: {type: http, url: "{{ env.SINK_URL }}", format: json, concurrency: 1, timeout: 30}
syncs:
  slow: {source: files, destination: sink, key: id}
""")

    def slow(request: Request) -> Reply:
        return Reply(200, b"{}", {"Content-Type": "application/json"}, delay=0.2)

    with ScriptedServer(slow) as server:
        env = {**os.environ, "SINK_URL": server.url}
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while len(server.requests) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(server.requests) >= 3
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        history = json.loads(syncengine("history", pipeline, "--json").out)
        assert history[0]["status"] == "interrupted", history
        assert f"pid {proc.pid}" in history[0]["message"]
        shown = syncengine("history", pipeline)
        assert "interrupted" in shown.out and "running" not in shown.out

        result = syncengine("apply", pipeline, env={"SINK_URL": server.url})
    assert result.code == 0, result.text
    assert (f"slow: note: the previous run {history[0]['run_id']} (started {history[0]['started_at']}) was "
            "interrupted; what it acknowledged was kept, the rest is sent now") in result.out
    after = json.loads(syncengine("history", pipeline, "--json").out)
    assert [h["status"] for h in after] == ["ok", "interrupted"]


def test_a_glob_that_matches_nothing_warns_and_fails_when_required(tmp_path: Path) -> None:
    pipeline = csv_to_sqlite(tmp_path, "loads", source="{type: csv, path: 'exports/loads_*.csv'}")
    (tmp_path / "exports").mkdir()
    result = syncengine("apply", pipeline)
    assert result.code == 0, result.text
    assert "loads: warning: no file matches 'exports/loads_*.csv'" in result.out
    strict = syncengine("apply", pipeline, "--strict")
    assert strict.code == 3
    assert "loads: failed: --strict: no file matches 'exports/loads_*.csv'" in strict.out
    required = csv_to_sqlite(tmp_path, "loads", source="{type: csv, path: 'exports/loads_*.csv'}").read_text()
    required = required.replace("source: files", "source: {name: files, require_files: true}")
    (tmp_path / "p.yml").write_text(required)
    result = syncengine("apply", tmp_path / "p.yml")
    assert result.code == 3 and "loads: failed: no file matches 'exports/loads_*.csv'" in result.out


def test_a_rerun_of_a_partial_read_prints_no_record_error(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    write(exports / "a.csv", "id\n1\n2\n")
    pipeline = csv_to_sqlite(tmp_path, "loads", source="{type: csv, path: 'exports/*.csv'}",
                             extra="    mode: mirror\n")
    assert syncengine("apply", pipeline).code == 0
    again = syncengine("apply", pipeline)
    assert again.code == 0 and "record error" not in again.out and "deletes skipped" not in again.out


# --- 9. secrets in every encoding -----------------------------------------------------------------


def test_secrets_never_leak_in_any_encoding_from_an_echoing_server(tmp_path: Path) -> None:
    basic = base64.b64encode(f"sender:{PASSWORD}".encode()).decode()

    def echo(request: Request) -> Reply:
        # A careless server: its error body echoes the request line and every header.
        text = f"bad request {request.method} {request.path}\n" + "\n".join(
            f"{k}: {v}" for k, v in request.headers.items())
        return Reply(422, text.encode())

    pipeline = http_pipeline(tmp_path, headers='      X-Api-Key: "{{ env.API_TOKEN }}"',
                             url="{{ env.SINK_URL }}?api_token={{ env.API_TOKEN }}",
                             extra_dest='    username: sender\n    password: "{{ env.SINK_PASSWORD }}"')
    outputs: list[str] = []
    with ScriptedServer(echo) as server:
        env = {"SINK_URL": server.url + "/in", "API_TOKEN": TOKEN, "SINK_PASSWORD": PASSWORD}
        first = syncengine("apply", pipeline, env=env)
        assert first.code == 3 or first.code == 1, first.text
        assert any(f"Basic {basic}" == r.headers.get("Authorization") for r in server.requests)
        outputs.append(first.text)
        outputs.append(syncengine("apply", pipeline, "--json", env=env).text)
        outputs.append(syncengine("dead-letters", pipeline, env=env).text)
        outputs.append(syncengine("dead-letters", pipeline, "--json", env=env).text)
        outputs.append(syncengine("retry", pipeline, "--sync", "people", env=env).text)
        outputs.append(syncengine("apply", pipeline, "--full-refresh", env={**env, "SYNCENGINE_DEBUG": "1"}).text)
    joined = "\n".join(outputs)
    assert "***" in joined and "422" in joined
    state = (tmp_path / ".syncengine" / "state.db").read_bytes()
    wal = tmp_path / ".syncengine" / "state.db-wal"
    if wal.exists():
        state += wal.read_bytes()
    for form in (PASSWORD, basic, quote(PASSWORD, safe=""), TOKEN, base64.b64encode(PASSWORD.encode()).decode()):
        assert form not in joined, form
        assert form.encode() not in state, form


# --- 10. one exit-code table ------------------------------------------------------------------------


def test_an_unknown_sync_is_exit_2_under_every_verb(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id\n1\n")
    pipeline = csv_to_sqlite(tmp_path, "people")
    for verb in (("apply",), ("plan",), ("retry",), ("dead-letters",)):
        result = syncengine(*verb, pipeline, "--sync", "peple")
        assert result.code == 2, (verb, result.text)
        assert result.err.startswith("error: unknown sync 'peple' (did you mean 'people'?)"), (verb, result.text)


def test_a_mistyped_state_path_is_an_error_not_an_empty_status(tmp_path: Path) -> None:
    write(tmp_path / "in.csv", "id\n1\n")
    pipeline = csv_to_sqlite(tmp_path, "people")
    assert syncengine("apply", pipeline).code == 0
    for verb in ("status", "history", "dead-letters"):
        result = syncengine(verb, pipeline, "--state", tmp_path / ".syncengine" / "stat.db")
        assert result.code == 2, (verb, result.text)
        assert "no state database there" in result.err
    assert syncengine("status", pipeline, "--state", tmp_path / ".syncengine" / "state.db").code == 0
