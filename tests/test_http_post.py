"""The http destination against a real scripted HTTP server: retries, Retry-After, timeouts, dead letters."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from http_servers import Reply, Request, ScriptedServer

from engine import api
from engine.runner import RunReport
from engine.state_store import StateStore

PASSWORD = "post-s3cret-pw"

PIPELINE = """
version: 1
name: post_test
sources:
  people:
    type: csv
    path: people.csv
destinations:
  endpoint:
    type: http
    url: "{{{{ env.ENDPOINT_URL }}}}"
    format: {format}
    username: sender
    password: "{{{{ env.ENDPOINT_PASSWORD }}}}"
    concurrency: 4
    timeout: 0.4
    max_retries: 3
    backoff: 0.01
    max_backoff: 2
{extra}
syncs:
  employees:
    source: people
    destination: {{name: endpoint, table: employees}}
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name }}}}"
        team: "{{{{ record.team | int }}}}"
    key: id
    mode: mirror
    scope: snapshot
    max_delete_share: 1
"""


def setup(folder: Path, monkeypatch: pytest.MonkeyPatch, url: str, rows: list[tuple[str, str, int]], *,
          format: str = "form", extra: str = "") -> Path:
    monkeypatch.setenv("ENDPOINT_URL", url)
    monkeypatch.setenv("ENDPOINT_PASSWORD", PASSWORD)
    (folder / "pipeline.yml").write_text(PIPELINE.format(format=format, extra=extra), encoding="utf-8")
    write_rows(folder, rows)
    return folder / "pipeline.yml"


def write_rows(folder: Path, rows: list[tuple[str, str, int]]) -> None:
    lines = ["id,name,team", *(f"{i},{n},{t}" for i, n, t in rows)]
    (folder / "people.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(pipeline: Path) -> RunReport:
    return api.apply(pipeline, state=str(pipeline.parent / "state.db"))


class Script:
    """Per-key answers: a list of replies consumed in order, then 200 for ever after."""

    def __init__(self, plan: dict[str, list[Reply]], key: str = "id") -> None:
        self.plan = {k: list(v) for k, v in plan.items()}
        self.key = key
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = {}

    def __call__(self, request: Request) -> Reply:
        import time

        ident = request.form.get(self.key) if request.body and request.method == "POST" else request.path
        ident = ident or ""
        with self.lock:
            self.times.setdefault(ident, []).append(time.monotonic())
            queue = self.plan.get(ident) or []
            return queue.pop(0) if queue else Reply(200, b"ok")


ROWS = [("a", "Ann", 1), ("b", "Bob", 2), ("c", "Cid", 3), ("d", "Dee", 4), ("e", "Eve", 5), ("f", "Fay", 6),
        ("g", "Gus", 7)]


def test_form_posts_retry_what_a_retry_may_cure_and_dead_letter_the_rest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script({
        "b": [Reply(500, b"oops")],
        "c": [Reply(429, b"slow down", {"Retry-After": "1"})],
        "d": [Reply(200, b"late", delay=1.2)],
        "e": [Reply(400, b"team is not valid")] * 9,
        "f": [Reply(503, b"unavailable")] * 9,
    })
    with ScriptedServer(script) as server:
        pipeline = setup(tmp_path, monkeypatch, server.url + "/live", ROWS)
        report = run(pipeline)
        sync = report.syncs["employees"]
        assert (sync.status, sync.counts["creates"], sync.counts["errors"]) == ("partial", 5, 2)
        attempts = Counter(r.form["id"] for r in server.requests)
        assert attempts == {"a": 1, "b": 2, "c": 2, "d": 2, "e": 1, "f": 4, "g": 1}
        c_times = script.times["c"]
        assert c_times[1] - c_times[0] >= 0.95, "Retry-After was not honoured"
        first = next(r for r in server.requests if r.form["id"] == "a")
        assert first.path == "/live"
        assert first.form == {"web_sync_table_name": "employees", "web_sync_action": "create", "id": "a",
                              "name": "Ann", "team": "1"}
        token = base64.b64encode(f"sender:{PASSWORD}".encode()).decode()
        assert first.headers["Authorization"] == f"Basic {token}"
        assert first.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert len({r.client_port for r in server.requests}) <= 4 + 2, "connections were not reused"

        store = StateStore(tmp_path / "state.db")
        try:
            stream = store.stream_id("post_test", "employees")
            dead = {d.key: d.error for d in store.dead_letters(stream)}
            known = {row[0] for row in store.db.execute("SELECT key FROM records WHERE stream_id = ?", (stream,))}
        finally:
            store.close()
        assert set(dead) == {"e", "f"}
        assert "HTTP 400" in dead["e"] and "team is not valid" in dead["e"]
        assert "HTTP 503 after 4 attempts" in dead["f"]
        assert known == {"a", "b", "c", "d", "g"}
        assert all(PASSWORD not in message for message in [*dead.values(), *sync.errors])

        # Second run: a changed, g gone, e and f accepted now: an update, a delete, two creates.
        server.requests.clear()
        script.plan.clear()
        write_rows(tmp_path, [("a", "Ann Lee", 1), *[r for r in ROWS[1:] if r[0] != "g"]])
        sync = run(pipeline).syncs["employees"]
        counts = {k: sync.counts[k] for k in ("creates", "updates", "deletes", "errors")}
        assert counts == {"creates": 2, "updates": 1, "deletes": 1, "errors": 0}
        sent = sorted((r.form["web_sync_action"], r.form["id"], r.form.get("name")) for r in server.requests)
        assert sent == [("create", "e", "Eve"), ("create", "f", "Fay"), ("delete", "g", None),
                        ("update", "a", "Ann Lee")]
        delete = next(r for r in server.requests if r.form["web_sync_action"] == "delete")
        assert delete.form == {"web_sync_table_name": "employees", "web_sync_action": "delete", "id": "g"}


def test_json_keeps_remote_ids_for_updates_and_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def script(request: Request) -> Reply:
        if request.method == "POST":
            body = json.loads(request.body)
            return Reply(201, json.dumps({"id": f"R-{body['id']}"}).encode(), {"Content-Type": "application/json"})
        if request.method == "DELETE" and request.path.endswith("R-b"):
            return Reply(404, b"gone already")
        return Reply(204)

    with ScriptedServer(script) as server:
        pipeline = setup(tmp_path, monkeypatch, server.url + "/items", ROWS[:3], format="json",
                         extra="    update_method: PUT")
        assert run(pipeline).syncs["employees"].counts["creates"] == 3
        posted = json.loads(server.requests[0].body)
        assert set(posted) == {"id", "name", "team"} and isinstance(posted["team"], int)
        assert server.requests[0].headers["Content-Type"] == "application/json"

        server.requests.clear()
        write_rows(tmp_path, [("a", "Ann Lee", 1)])
        sync = run(pipeline).syncs["employees"]
        assert {k: sync.counts[k] for k in ("updates", "deletes", "errors")} == {"updates": 1, "deletes": 2,
                                                                                 "errors": 0}
        calls = sorted((r.method, r.path) for r in server.requests)
        assert calls == [("DELETE", "/items/R-b"), ("DELETE", "/items/R-c"), ("PUT", "/items/R-a")]


def test_refused_credentials_stop_the_run_without_showing_the_password(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedServer(lambda request: Reply(401, b"who are you")) as server:
        pipeline = setup(tmp_path, monkeypatch, server.url + "/live", ROWS)
        report = run(pipeline)
        sync = report.syncs["employees"]
        assert (sync.status, report.exit_code) == ("failed", 3)
        assert "refused the credentials (HTTP 401)" in (sync.message or "")
        assert PASSWORD not in (sync.message or "")
        assert len(server.requests) <= 4, "a 401 must not be retried"


def test_an_unreachable_endpoint_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedServer(lambda request: Reply(200)) as server:
        url = server.url
    pipeline = setup(tmp_path, monkeypatch, url + "/live", ROWS[:2])  # the server is closed now
    sync = run(pipeline).syncs["employees"]
    assert sync.status == "failed" and "cannot reach" in (sync.message or "")
