"""Every built-in adapter keeps the contract kit of ``engine.testing`` against a real peer, and the kit
catches adapters that break a promise.

Peers: files in a temporary folder (csv, jsonl, sqlite), paramiko's SFTP server on 127.0.0.1
(``tests/servers/sftp_server.py``, its host key pinned by fingerprint), an HTTP endpoint
(``tests/http_servers.py``), and posts over urllib to the ``aljex_live`` receiver.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from http_servers import Reply, Request, ScriptedServer
from servers.sftp_server import SftpServer

from engine.adapters import register_builtins
from engine.adapters.sftp_connection import fingerprint
from engine.interfaces import DELETE, Change, Outcome, PushEvent, StreamContext
from engine.registry import Registry
from engine.testing import check_destination, check_receiver, check_registration, check_source
from engine.typed_config import option

register_builtins()

THINGS = [{"id": f"k{i}", "name": f"thing {i}", "qty": str(i)} for i in range(4)]
"""What the file sources hold (CSV and form values are text)."""


def opener() -> urllib.request.OpenerDirector:
    """urllib without proxies: the peers are on 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status_of(request: urllib.request.Request) -> int:
    """Send a request; its HTTP status, also for a 4xx or 5xx answer."""
    try:
        with opener().open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


# --- sources --------------------------------------------------------------------------------------


def test_csv_source_keeps_the_source_contract(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,name,qty\nk0,thing 0,0\nk1,thing 1,1\n", encoding="utf-8")
    (tmp_path / "in" / "b.csv").write_text("id,name,qty\nk2,thing 2,2\nk3,a row,too,wide\nk3,thing 3,3\n",
                                           encoding="utf-8")
    result = check_source("csv", {"path": "in/*.csv"}, {}, THINGS, tmp_path, expected_errors=1, expect_whole=True,
                          ordered=True)
    assert "b.csv line 3" in str(result.errors[0])
    assert result.cursor is None


def test_jsonl_source_keeps_the_source_contract(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in THINGS[:2]] + ["{not json", "[1, 2]"] + [json.dumps(r) for r in THINGS[2:]]
    (tmp_path / "things.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    check_source("jsonl", {"path": "things.jsonl"}, {}, THINGS, tmp_path, expected_errors=2, expect_whole=True,
                 ordered=True)


def test_sqlite_source_keeps_the_source_contract_and_reads_on_from_its_cursor(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "crm.db")
    with con:
        con.execute("CREATE TABLE things (id TEXT PRIMARY KEY, name TEXT, updated INTEGER)")
        con.executemany("INSERT INTO things VALUES (?, ?, ?)", [("k0", "a", 1), ("k1", "b", 2), ("k2", "c", 3),
                                                               ("k3", "d", 3)])
    con.close()
    rows = [{"id": "k0", "name": "a", "updated": 1}, {"id": "k1", "name": "b", "updated": 2},
            {"id": "k2", "name": "c", "updated": 3}, {"id": "k3", "name": "d", "updated": 3}]
    result = check_source("sqlite", {"path": "crm.db"}, {"table": "things", "cursor": "updated"}, rows, tmp_path,
                          after_cursor=rows[2:], ordered=True)
    assert result.cursor == "3"


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpServer]:
    """An SFTP server serving ``tmp_path/remote`` with ``outbound`` and ``inbound`` folders."""
    root = tmp_path / "remote"
    (root / "outbound").mkdir(parents=True)
    (root / "inbound").mkdir()
    with SftpServer(root) as server:
        yield server


def sftp_config(server: SftpServer, **more: Any) -> dict[str, Any]:
    """A connection to the test server, its host key pinned by fingerprint."""
    return {"host": "127.0.0.1", "port": server.port, "username": server.username, "password": server.password,
            "host_key_fingerprint": fingerprint(server.host_key), "timeout": 10, **more}


@pytest.mark.timeout(60)
def test_sftp_source_keeps_the_source_contract(tmp_path: Path, sftp_server: SftpServer) -> None:
    outbound = sftp_server.root / "outbound"
    (outbound / "things_a.csv").write_text("id,name,qty\r\nk0,thing 0,0\r\nk1,thing 1,1\r\n", encoding="utf-8")
    (outbound / "things_b.csv").write_text("id,name,qty\r\nk2,thing 2,2\r\nk3,thing 3,3\r\n", encoding="utf-8")
    (outbound / "other.csv").write_text("id\r\nnot ours\r\n", encoding="utf-8")
    # The cursor lists the files read, so a read from it skips them (and is not whole).
    result = check_source("sftp", sftp_config(sftp_server, directory="outbound"), {"files": "things_*.csv"}, THINGS,
                          tmp_path, expect_whole=True, after_cursor=[], ordered=True)
    assert sorted(json.loads(result.cursor or "{}")["files"]) == ["things_a.csv", "things_b.csv"]


# --- destinations ---------------------------------------------------------------------------------


def test_sqlite_destination_keeps_the_destination_contract(tmp_path: Path) -> None:
    def read_back() -> list[dict[str, Any]]:
        con = sqlite3.connect(tmp_path / "out.db")
        try:
            return [{"id": r[0], "name": r[1], "qty": r[2]} for r in con.execute("SELECT id, name, qty FROM t")]
        finally:
            con.close()

    check_destination("sqlite", {"path": "out.db"}, {"table": "t", "create_table": True}, read_back, tmp_path)


class JsonStore:
    """A REST-style JSON endpoint: POST creates (the same record twice keeps one id), PUT/DELETE ``/items/{id}``.

    A record named ``refused`` is answered 422, as an endpoint rejects one bad record.
    """

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        with self.lock:
            if request.method in ("POST", "PUT") and json.loads(request.body).get("name") == "refused":
                return Reply(422, b'{"error": "name is refused"}', {"Content-Type": "application/json"})
            if request.method == "POST" and request.path == "/items":
                record = json.loads(request.body)
                ident = self.by_key.setdefault(record["id"], f"r{len(self.by_key) + 1}")
                self.items[ident] = record
                return Reply(201, json.dumps({"id": ident}).encode(), {"Content-Type": "application/json"})
            ident = request.path.rsplit("/", 1)[-1]
            if request.method == "PUT" and ident in self.items:
                self.items[ident] = json.loads(request.body)
                return Reply(200)
            if request.method == "DELETE":
                return Reply(204) if self.items.pop(ident, None) is not None else Reply(404)
            return Reply(404)

    def holding(self) -> list[dict[str, Any]]:
        """Every record held."""
        with self.lock:
            return list(self.items.values())


@pytest.mark.timeout(60)
def test_http_json_destination_keeps_the_destination_contract(tmp_path: Path) -> None:
    store = JsonStore()
    with ScriptedServer(store) as server:
        check_destination("http", {"url": server.url + "/items", "format": "json", "update_method": "PUT",
                                   "concurrency": 2, "backoff": 0}, {}, store.holding, tmp_path,
                          rejected={"id": 9, "name": "refused", "qty": 9})


class FormStore:
    """The receiving end of the form shape: one POST per change, the action in ``web_sync_action``."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        form = request.form
        with self.lock:
            if form.get("name") == "refused":
                return Reply(422, b"name is refused")
            if form.pop("web_sync_table_name", None) != "contract":
                return Reply(404, b"unknown table")
            if form.pop("web_sync_action") == DELETE:
                self.items.pop(form["id"], None)
            else:
                self.items[form["id"]] = {**form, "id": int(form["id"]), "qty": int(form["qty"])}
            return Reply(200)

    def holding(self) -> list[dict[str, Any]]:
        """Every record held."""
        with self.lock:
            return list(self.items.values())


@pytest.mark.timeout(60)
def test_http_form_destination_keeps_the_destination_contract(tmp_path: Path) -> None:
    store = FormStore()
    with ScriptedServer(store) as server:
        check_destination("http", {"url": server.url + "/live", "format": "form", "backoff": 0}, {}, store.holding,
                          tmp_path, rejected={"id": 9, "name": "refused", "qty": 9})


def uploaded(server: SftpServer) -> list[dict[str, Any]]:
    """What a reader of the uploaded files holds: each file's rows applied in name order (its action column too)."""
    inbound = server.root / "inbound"
    names = sorted(p.name for p in inbound.iterdir())
    assert not [n for n in names if n.startswith(".")], f"a partial upload was left behind: {names}"
    held: dict[str, dict[str, Any]] = {}
    for name in names:
        text = (inbound / name).read_bytes().decode("utf-8")
        for row in csv.DictReader(io.StringIO(text, newline="")):
            if row.pop("action", None) == DELETE:
                held.pop(row["id"], None)
            else:
                held[row["id"]] = {**row, "id": int(row["id"]), "qty": int(row["qty"])}
    return list(held.values())


@pytest.mark.timeout(90)
def test_sftp_destination_keeps_the_destination_contract(tmp_path: Path, sftp_server: SftpServer) -> None:
    # Each run uploads its own file; a file is a feed of changes, so "no duplicate" is about what its
    # reader holds once the files are applied in order, including the file run 1 staged before it "died".
    check_destination("sftp", sftp_config(sftp_server, outbox="outbox"),
                      {"filename": "things_{{ run.id }}.csv", "directory": "inbound", "action_column": "action"},
                      lambda: uploaded(sftp_server), tmp_path)
    names = sorted(p.name for p in (sftp_server.root / "inbound").iterdir())
    assert names[:2] == ["things_run-01.csv", "things_run-02.csv"], names
    assert not any((tmp_path / "outbox").rglob("*.csv")), "a staged file was not uploaded"


@pytest.mark.timeout(90)
def test_sftp_destination_without_an_action_column_refuses_deletes(tmp_path: Path, sftp_server: SftpServer) -> None:
    check_destination("sftp", sftp_config(sftp_server, outbox="outbox"),
                      {"filename": "things_{{ run.id }}.csv", "directory": "inbound"}, lambda: uploaded(sftp_server),
                      tmp_path, deletes=False)


# --- receivers ------------------------------------------------------------------------------------

PASSWORD = "pw-contract-7"


def post_form(url: str, event: PushEvent) -> int:
    """One Aljex live post: form fields, the table and the action, behind basic auth."""
    body = urlencode({"web_sync_table_name": event.route, "web_sync_action": event.action, **event.record})
    auth = base64.b64encode(f"aljex:{PASSWORD}".encode()).decode("ascii")
    return status_of(urllib.request.Request(url, data=body.encode("ascii"), method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {auth}"}))


@pytest.mark.timeout(60)
def test_aljex_live_receiver_keeps_the_receiver_contract(tmp_path: Path) -> None:
    check_receiver("aljex_live", {"username": "aljex", "password": PASSWORD, "path": "/live"},
                   {"table": "employees"}, post_form, route="employees", base_dir=tmp_path)


# --- the kit catches what it should ---------------------------------------------------------------

FLAWED = Registry()
HELD: list[dict[str, Any]] = []


@dataclass(frozen=True)
class FlawedConfig:
    """An in-memory table with one deliberate flaw."""

    flaw: str = option("Which promise to break: none, duplicates, decodes_key, short or undocumented.", "none")


@dataclass(frozen=True)
class NoOptions:
    """Nothing per sync."""


class FlawedStream:
    """Writes into :data:`HELD`, breaking one promise of the destination contract on purpose."""

    max_batch: int | None = None

    def __init__(self, flaw: str) -> None:
        self.flaw = flaw

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply the changes (with the flaw)."""
        for change in changes:
            # The flaw "decodes_key" deletes by the key text instead of the key values.
            decodes = self.flaw == "decodes_key" and change.action == DELETE
            ident = change.key if decodes else change.key_values["id"]
            if change.action == DELETE:
                HELD[:] = [r for r in HELD if str(r["id"]) != str(ident)]
                continue
            assert change.values is not None
            existing = [i for i, r in enumerate(HELD) if str(r["id"]) == str(ident)]
            if existing and self.flaw != "duplicates":
                HELD[existing[0]] = dict(change.values)
            else:
                HELD.append(dict(change.values))
        outcomes = [Outcome(True)] * len(changes)
        return outcomes[:-1] if self.flaw == "short" else outcomes

    def finish(self) -> None:
        """Nothing buffered."""


@FLAWED.destination("flawed", config=FlawedConfig, options=NoOptions)
class FlawedDestination:
    """An in-memory table with a flaw."""

    def __init__(self, config: FlawedConfig, base_dir: Path) -> None:
        self.flaw = config.flaw

    def open_stream(self, options: NoOptions, ctx: StreamContext) -> FlawedStream:
        """A stream with the flaw."""
        return FlawedStream(self.flaw)

    def close(self) -> None:
        """Nothing to close."""


@pytest.mark.parametrize(("flaw", "message"), [
    ("duplicates", "holds the key (0,) twice"),
    ("decodes_key", "unexpected keys [(3,), (4,)]"),
    ("short", "write returned 4 outcomes for 5 changes"),
])
def test_the_destination_check_catches_a_broken_promise(tmp_path: Path, flaw: str, message: str) -> None:
    HELD.clear()
    check_destination("flawed", {"flaw": "none"}, {}, lambda: HELD, tmp_path, registry=FLAWED)  # the control
    HELD.clear()
    with pytest.raises(AssertionError) as caught:
        check_destination("flawed", {"flaw": flaw}, {}, lambda: HELD, tmp_path, registry=FLAWED)
    assert message in str(caught.value), caught.value


def test_the_registration_check_catches_an_undocumented_field() -> None:
    @dataclass(frozen=True)
    class Bare:
        """A config with a field nobody described."""

        path: str = "x"

    registry = Registry()
    registry.destination("bare", config=Bare, options=NoOptions)(FlawedDestination)  # type: ignore[arg-type]
    spec = registry.get("destination", "bare")
    assert spec is not None
    with pytest.raises(AssertionError, match="config field\\(s\\) without a description: path"):
        check_registration(spec)


class DriftingStream:
    """A source whose every read gives one record more than the last: a read that depends on earlier ones."""

    reads = 0

    def read(self, cursor: str | None) -> Iterator[dict[str, Any]]:
        """One more record each time."""
        DriftingStream.reads += 1
        return iter([{"id": f"k{i}"} for i in range(DriftingStream.reads)])

    def finish(self) -> str | None:
        """No cursor."""
        return None


@FLAWED.source("drifting", config=FlawedConfig, options=NoOptions)
class DriftingSource:
    """A source that drifts between reads."""

    def __init__(self, config: FlawedConfig, base_dir: Path) -> None:
        DriftingStream.reads = 0

    def open_stream(self, options: NoOptions, ctx: StreamContext) -> DriftingStream:
        """A drifting stream."""
        return DriftingStream()

    def close(self) -> None:
        """Nothing to close."""


def test_the_source_check_catches_a_read_that_depends_on_the_last(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="a second read without a cursor differs from the first"):
        check_source("drifting", {}, {}, [{"id": "k0"}], tmp_path, registry=FLAWED)


class EagerReceiver:
    """Answers every post at once and delivers it afterwards: the sender is told before anything is durable."""

    def __init__(self, config: FlawedConfig, base_dir: Path) -> None:
        self.server: ThreadingHTTPServer | None = None

    def route(self, options: NoOptions) -> str:
        """One route."""
        return "things"

    def bind(self, host: str, port: int) -> str:
        """Listen on ``host:port``."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fields = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"]))
                                                        .decode()).items()}
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                event = PushEvent(fields.pop("web_sync_table_name"), fields.pop("web_sync_action"), fields)
                threading.Thread(target=receiver.deliver, args=(event,), daemon=True).start()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        return f"http://{host}:{self.server.server_address[1]}/"

    def serve(self, deliver: Any, stop: threading.Event) -> None:
        """Answer until stopped."""
        assert self.server is not None
        self.deliver = deliver
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        stop.wait()
        self.server.shutdown()
        thread.join(5)
        self.close()

    def close(self) -> None:
        """Close the socket."""
        if self.server is not None:
            self.server.server_close()
            self.server = None


FLAWED.receiver("eager", config=FlawedConfig, options=NoOptions)(EagerReceiver)


def test_the_receiver_check_catches_an_answer_before_the_record_is_durable(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="before deliver returned"):
        check_receiver("eager", {}, {}, post_form, route="things", base_dir=tmp_path, registry=FLAWED, timeout=5)
