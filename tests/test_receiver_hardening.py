"""The ``aljex_live`` receiver under hostile or careless clients: ``syncengine serve`` as a process, real sockets.

Slow clients must not hold threads or delay a real post, a burst of connections must not be reset,
every check of the request head comes before ``100 Continue``, form decoding is strict, and the dead
letters a post leaves have secrets masked.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests
from conftest import syncengine
from http_servers import ServeProcess

PASSWORD = "hardening-s3cret-pw"
AUTH = ("aljex", PASSWORD)
ENV = {"ALJEX_LIVE_PASSWORD": PASSWORD}
TOKEN = base64.b64encode(f"aljex:{PASSWORD}".encode()).decode()
FORM = "application/x-www-form-urlencoded"


def write_pipeline(folder: Path, extra: str = "") -> Path:
    """One receiver, one sync of employees into SQLite; ``extra`` adds receiver options."""
    path = folder / "pipeline.yml"
    path.write_text(f"""\
version: 1
name: hardening
sources:
  aljex_live:
    type: aljex_live
    username: aljex
    password: "{{{{ env.ALJEX_LIVE_PASSWORD }}}}"
    path: /aljex
{extra}destinations:
  warehouse: {{type: sqlite, path: out.db}}
syncs:
  employees:
    source: {{name: aljex_live, table: employees}}
    destination: {{name: warehouse, table: employees, create_table: true}}
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name }}}}"
        team: "{{{{ record.team | int }}}}"
    key: id
    mode: mirror
    scope: increment
""", encoding="utf-8")
    return path


def post_body(ident: str, name: str = "Ann", team: str = "4") -> str:
    """A form-encoded create of one employee."""
    return f"web_sync_table_name=employees&web_sync_action=create&id={ident}&name={name}&team={team}"


def post(url: str, body: str, http: requests.Session | None = None) -> requests.Response:
    """An authorized post of a form-encoded ``body`` (already encoded, sent as it is)."""
    return (http or requests).post(url, data=body, auth=AUTH, headers={"Content-Type": FORM}, timeout=10)


def post_head(body: str, extra: str = "") -> bytes:
    """The head of an authorized post of ``body``."""
    return (f"POST /aljex HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {TOKEN}\r\nContent-Type: {FORM}\r\n"
            f"Content-Length: {len(body.encode())}\r\n{extra}\r\n").encode()


def stored(folder: Path) -> list[tuple[object, ...]]:
    """The employees table (empty when it does not exist yet)."""
    con = sqlite3.connect(folder / "out.db")
    try:
        return con.execute("SELECT id, name, team FROM employees ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def address(url: str) -> tuple[str, int]:
    """Host and port of the receiver's URL."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def proc_status(pid: int, field: str) -> int:
    """One number from /proc/<pid>/status (``Threads``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def open_files(pid: int) -> int:
    """How many file descriptors the process holds (each accepted connection is one)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list of client sockets that are all closed at the end, whatever happened."""
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def read_answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_clients_hold_no_threads_delay_no_post_and_are_dropped(tmp_path: Path) -> None:
    idle_timeout, request_timeout = 3.0, 4.5
    pipeline = write_pipeline(tmp_path, f"    idle_timeout: {idle_timeout}\n    request_timeout: {request_timeout}\n"
                                        "    threads: 4\n")
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server, sockets() as held:
        pid = server.proc.pid
        with socket.create_connection(address(server.url), timeout=10) as sock:
            body = post_body("warmup")
            sock.sendall(post_head(body, "Connection: close\r\n") + body.encode())
            assert read_answer(sock).startswith(b"HTTP/1.1 200 ")  # and the server closed its end first
        threads_before, files_before = proc_status(pid, "Threads"), open_files(pid)

        # 100 clients connect and say nothing; 100 send a request a byte at a time, often enough that
        # the idle timeout never catches them.
        started = time.monotonic()
        idle = [socket.create_connection(address(server.url), timeout=5) for _ in range(100)]
        held.extend(idle)
        tricklers = [socket.create_connection(address(server.url), timeout=5) for _ in range(100)]
        held.extend(tricklers)
        request = post_head(post_body("slow"))
        stop = threading.Event()
        sent_bytes = [0]

        def trickle() -> None:
            while not stop.is_set() and sent_bytes[0] < len(request):
                for sock in tricklers:
                    try:
                        sock.send(request[sent_bytes[0]:sent_bytes[0] + 1])
                    except OSError:
                        pass  # dropped by the server: what the test waits for
                sent_bytes[0] += 1
                stop.wait(0.4)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            deadline = time.monotonic() + 5
            while open_files(pid) < files_before + 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            held_files = open_files(pid)
            assert held_files >= files_before + 200, (files_before, held_files)
            threads_held = proc_status(pid, "Threads")

            # A real post while all 200 are held is answered at once.
            began = time.monotonic()
            answer = post(server.url, post_body("legit"))
            answered_in = time.monotonic() - began
            assert (answer.status_code, answer.text) == (200, "created 'legit'\n")
            assert answered_in < 1.0, answered_in
            assert time.monotonic() - started < idle_timeout, "the slow clients were not all held during the post"
            assert open_files(pid) >= files_before + 200
            threads_held = max(threads_held, proc_status(pid, "Threads"))
            assert threads_held <= threads_before + 2, (threads_before, threads_held)

            # Each slow client is dropped: the silent ones after the idle timeout, the tricklers (kept
            # active by their trickle) after the request timeout.
            dropped: dict[socket.socket, float] = {}
            with selectors.DefaultSelector() as selector:
                for sock in held:
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ)
                deadline = started + request_timeout + 4
                while len(dropped) < len(held) and time.monotonic() < deadline:
                    for key, _ in selector.select(timeout=0.2):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        try:
                            data = sock.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            dropped[sock] = time.monotonic() - started
                            selector.unregister(sock)
        finally:
            stop.set()
            trickler.join(5)
        assert len(dropped) == len(held), f"{len(held) - len(dropped)} slow clients still connected"
        idle_drops = [dropped[s] for s in idle]
        trickle_drops = [dropped[s] for s in tricklers]
        assert idle_timeout - 0.5 <= min(idle_drops) and max(idle_drops) <= idle_timeout + 2.5, idle_drops
        assert idle_timeout <= min(trickle_drops) and max(trickle_drops) <= request_timeout + 2.5, trickle_drops
        assert sent_bytes[0] < len(request), "a trickler finished its request"

        after = post(server.url, post_body("after"))
        assert after.status_code == 200
        assert server.terminate() == 0
    assert [row[0] for row in stored(tmp_path)] == ["after", "legit", "warmup"]


def test_a_burst_of_500_connections_is_answered_without_a_reset(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path)
    count = 500
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server, sockets() as held, \
            selectors.DefaultSelector() as selector:
        target = address(server.url)
        answers: dict[int, bytes] = {}
        failures: dict[int, str] = {}
        pending: dict[int, bytes] = {}
        for n in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.setblocking(False)
            code = sock.connect_ex(target)
            assert code in (0, errno.EINPROGRESS), errno.errorcode.get(code)
            body = post_body(f"b{n:03d}")
            pending[n] = post_head(body, "Connection: close\r\n") + body.encode()
            answers[n] = b""
            selector.register(sock, selectors.EVENT_WRITE, n)
        deadline = time.monotonic() + 40
        open_count = count
        while open_count and time.monotonic() < deadline:
            for key, events in selector.select(timeout=0.5):
                sock, n = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                try:
                    if events & selectors.EVENT_WRITE:
                        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            raise OSError(error, os.strerror(error))
                        sent = sock.send(pending[n])
                        pending[n] = pending[n][sent:]
                        if not pending[n]:
                            selector.modify(sock, selectors.EVENT_READ, n)
                        continue
                    data = sock.recv(65536)
                except OSError as exc:
                    failures[n] = errno.errorcode.get(exc.errno or 0, str(exc))
                    data = b""
                if data:
                    answers[n] += data
                else:
                    selector.unregister(sock)
                    open_count -= 1
        assert not failures, f"{len(failures)} connections failed: {sorted(set(failures.values()))}"
        assert open_count == 0, f"{open_count} connections got no answer in time"
        statuses = {n: answer.split(b"\r\n", 1)[0] for n, answer in answers.items()}
        assert set(statuses.values()) == {b"HTTP/1.1 200 OK"}, sorted(set(statuses.values()))
        assert server.terminate() == 0
    assert len(stored(tmp_path)) == count


def test_every_head_check_comes_before_100_continue_and_the_server_is_not_named(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path)
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server:
        target = address(server.url)
        body = post_body("e1")

        # Right credentials but the wrong content type: refused from the head, no body invited.
        with socket.create_connection(target, timeout=10) as sock:
            sock.sendall(post_head(body, "Expect: 100-continue\r\n").replace(FORM.encode(), b"application/json"))
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 415 ") and b"100 Continue" not in answer, answer

        # A good head is invited, then answered; no answer names the server software.
        with socket.create_connection(target, timeout=10) as sock:
            sock.sendall(post_head(body, "Expect: 100-continue\r\nConnection: close\r\n"))
            sock.settimeout(10)
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(body.encode())
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"created 'e1'\n"), answer
        for response in (post(server.url, post_body("e2")),
                         requests.get(server.url, auth=AUTH, timeout=10)):
            assert "Server" not in response.headers and "waitress" not in response.text, response.headers

        # A refused post whose body is still on its way gets its answer, not a connection reset.
        with socket.create_connection(target, timeout=10) as sock:
            sock.sendall(post_head(body).replace(TOKEN.encode(), base64.b64encode(b"aljex:wrong")))
            time.sleep(0.3)
            sock.sendall(body.encode() * 20)
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 401 ") and answer.endswith(b"wrong or missing credentials\n"), answer
        assert server.terminate() == 0
    assert [row[0] for row in stored(tmp_path)] == ["e1", "e2"]


def test_bad_percent_escapes_are_refused(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path)
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server, requests.Session() as http:
        for bad in ("%ZZ", "Ann%", "Ann%4", "%4G", "Ann%%20"):
            answer = post(server.url, post_body("p1", name=bad), http)
            assert answer.status_code == 400 and "bad percent-escape" in answer.text, (bad, answer.text)
        assert stored(tmp_path) == []
        good = post(server.url, post_body("p1", name="Jos%C3%A9+Le%20Roy%2B"), http)
        assert (good.status_code, good.text) == (200, "created 'p1'\n")
        assert server.terminate() == 0
    assert stored(tmp_path) == [("p1", "José Le Roy+", 4)]


def test_dead_letters_of_served_posts_mask_secrets(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path)
    state = tmp_path / "state.db"
    with ServeProcess(pipeline, env=ENV, state=state) as server:
        data = {"web_sync_table_name": "employees", "web_sync_action": "create", "id": "d1",
                "name": f"pw is {PASSWORD}", "team": PASSWORD}
        answer = requests.post(server.url, data=data, auth=AUTH, timeout=10)
        assert answer.status_code == 422 and "field 'team'" in answer.text, answer.text
        assert PASSWORD not in answer.text
        assert server.terminate() == 0
        assert PASSWORD not in server.stderr
    con = sqlite3.connect(state)
    try:
        rows = con.execute("SELECT key, record, payload, error FROM dead_letters").fetchall()
    finally:
        con.close()
    assert len(rows) == 1 and rows[0][0] == "d1"
    assert PASSWORD not in repr(rows)
    record = json.loads(rows[0][1])
    assert record["name"] == "pw is ***" and record["team"] == "***", record
    listed = syncengine("dead-letters", pipeline, "--state", state, "--json", env=ENV)
    assert PASSWORD not in listed.text and "'***' is not a decimal number" in listed.out
    assert json.loads(listed.out)[0]["key"] == "d1"


def test_max_connections_makes_further_clients_wait_not_fail(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, "    max_connections: 2\n    threads: 1\n    idle_timeout: 1.0\n")
    with ServeProcess(pipeline, env=ENV, state=tmp_path / "state.db") as server, sockets() as held:
        held.extend(socket.create_connection(address(server.url), timeout=5) for _ in range(2))
        time.sleep(0.3)  # both accepted: the receiver is at its limit
        began = time.monotonic()
        answer = post(server.url, post_body("w1"))
        waited = time.monotonic() - began
        assert (answer.status_code, answer.text) == (200, "created 'w1'\n")
        # It waited in the listen backlog until the idle timeout freed a place.
        assert 0.5 <= waited <= 4.0, waited
        assert server.terminate() == 0
    assert [row[0] for row in stored(tmp_path)] == ["w1"]
