"""The http destination through the CLI: a kill resends at most what was in flight, retries are
scheduled instead of slept on, and the idempotency header names each change the same way every time."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conftest import REPO, rows, syncengine
from http_servers import Reply, Request, ScriptedServer

CONCURRENCY = 8
HEADER = "Idempotency-Key"

PIPELINE = """\
version: 1
name: inflight
sources:
  items: {{type: csv, path: items.csv}}
destinations:
  endpoint:
    type: http
    url: "{{{{ env.ENDPOINT_URL }}}}"
    format: form
    concurrency: {concurrency}
    timeout: 10
    max_retries: 5
    backoff: {backoff}
    max_backoff: 2
{header}syncs:
  items:
    source: items
    destination: {{name: endpoint{key_option}}}
    key: id
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name }}}}"
        amount_cents: "{{{{ record.amount | cents }}}}"
"""


def write_pipeline(folder: Path, *, concurrency: int = CONCURRENCY, backoff: float = 0.05, keyed: bool = False,
                   key_template: str | None = None) -> Path:
    """The pipeline: a CSV of items posted one form per record, with an idempotency header when ``keyed``."""
    key_option = f", idempotency_key: \"{key_template}\"" if key_template else ""
    header = f"    idempotency_header: {HEADER}\n" if keyed else ""
    path = folder / "p.yml"
    path.write_text(PIPELINE.format(concurrency=concurrency, backoff=backoff, header=header, key_option=key_option),
                    encoding="utf-8")
    return path


def write_items(folder: Path, count: int, renamed: dict[str, str] | None = None) -> list[str]:
    """``count`` items (keys ``k00000``...); returns their keys."""
    keys = [f"k{i:05d}" for i in range(count)]
    names = renamed or {}
    lines = ["id,name,amount", *(f"{k},{names.get(k, 'item ' + k)},{i % 997}.25" for i, k in enumerate(keys))]
    (folder / "items.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return keys


def apply(pipeline: Path, url: str) -> tuple[int, str]:
    """A complete ``syncengine apply`` run: (exit code, output)."""
    result = syncengine("apply", pipeline, "--state", pipeline.parent / "state.db", env={"ENDPOINT_URL": url},
                        timeout=120)
    return result.code, result.text


def apply_and_kill(pipeline: Path, url: str, when: Callable[[], bool], timeout: float = 60) -> None:
    """Start ``syncengine apply`` and ``kill -9`` it as soon as ``when()`` holds (it must not finish first)."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "apply", str(pipeline), "--state",
                             str(pipeline.parent / "state.db")], cwd=REPO,
                            env={**os.environ, "ENDPOINT_URL": url}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not when():
            assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def dead_letters(folder: Path) -> object:
    """How many dead letters the state store holds."""
    return rows(folder / "state.db", "SELECT count(*) FROM dead_letters")[0][0]


def delivered(server: ScriptedServer) -> Counter[str]:
    """Requests received per record key."""
    with server.lock:
        return Counter(r.form["id"] for r in server.requests)


# --- (a) a kill resends at most what was in flight -----------------------------------------------------------


def test_a_kill_mid_run_resends_at_most_the_requests_in_flight(tmp_path: Path) -> None:
    """20,000 records, concurrency 8, ``kill -9`` at a random point, rerun: nothing lost, at most 8 resent.

    Every record is sent only when the engine asks for more, which it does after the outcomes it
    was given are committed: at any instant at most ``concurrency`` records were sent and not
    recorded, so that is the bound, with no allowance (an answer the server wrote that the killed
    process never read is one of those ``concurrency``).
    """
    total = 20_000
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for trial in range(2):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        kill_at = rng.randrange(total // 10, total * 7 // 10)
        lost, duplicates = crash_trial(folder, total, kill_at)
        assert not lost, f"seed {seed}: {len(lost)} records lost, e.g. {lost[:3]}"
        assert duplicates <= CONCURRENCY, f"seed {seed}, killed after {kill_at}: {duplicates} records resent"


def crash_trial(folder: Path, total: int, kill_at: int) -> tuple[list[str], int]:
    """Kill a run once the endpoint received ``kill_at`` requests, rerun it: (keys never received, resends)."""
    pipeline = write_pipeline(folder)
    keys = write_items(folder, total)
    with ScriptedServer(lambda request: Reply(200, b"ok")) as server:
        apply_and_kill(pipeline, server.url, lambda: len(server.requests) >= kill_at)
        code, text = apply(pipeline, server.url)
        assert code == 0, text
        received = delivered(server)
    return [k for k in keys if not received[k]], sum(n - 1 for n in received.values())


# --- (b) faults: retried on a schedule, every record delivered ----------------------------------------------


class Faulty:
    """Every 20th request fails (in turn a 503 HTML page, a 500, a dropped connection); the rest get 200."""

    FAULTS = (Reply(503, b"<html><body><h1>503 Service Unavailable</h1></body></html>", {"Content-Type": "text/html"}),
              Reply(500, b"internal error"), Reply(drop=True))

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.answers: list[tuple[Request, int]] = []  # (request, status; 0 for dropped)

    def __call__(self, request: Request) -> Reply:
        with self.lock:
            self.count += 1
            reply = self.FAULTS[(self.count // 20) % 3] if self.count % 20 == 0 else Reply(200, b"ok")
            self.answers.append((request, 0 if reply.drop else reply.status))
            return reply


def test_faults_are_retried_until_every_record_is_delivered_with_the_same_key(tmp_path: Path) -> None:
    """5 % faults (503 page, 500, reset): every record is accepted once, no dead letter, exit 0."""
    keys = write_items(tmp_path, 2_000)
    pipeline = write_pipeline(tmp_path, keyed=True, key_template="{{ action }}/{{ table }}/{{ key }}/{{ hash }}")
    script = Faulty()
    with ScriptedServer(script) as server:
        code, text = apply(pipeline, server.url)
    assert code == 0, text
    assert "0 errors" in text
    accepted = Counter(r.form["id"] for r, status in script.answers if status == 200)
    assert set(accepted) == set(keys) and set(accepted.values()) == {1}
    failed = [r for r, status in script.answers if status != 200]
    assert len(failed) >= 2_000 // 20
    assert dead_letters(tmp_path) == 0
    # A retry is the same change: it carries the same key as the attempt that failed.
    first = {r.form["id"]: r.headers[HEADER] for r, status in script.answers if status == 200}
    assert all(r.headers[HEADER] == first[r.form["id"]] for r in failed)
    assert all(re.fullmatch(rf"create/items/{k}/[0-9a-f]{{16}}", v) for k, v in first.items())


def test_a_record_waiting_for_its_retry_does_not_hold_up_the_others(tmp_path: Path) -> None:
    """With one request at a time: a 503 lets the next records go while it waits; a 429 pauses everyone."""
    keys = write_items(tmp_path, 30)
    pipeline = write_pipeline(tmp_path, concurrency=1, backoff=0.4)
    plan = {"k00005": [Reply(503, b"busy")], "k00020": [Reply(429, b"slow down", {"Retry-After": "1"})]}
    times: list[tuple[str, float]] = []

    def script(request: Request) -> Reply:
        key = request.form["id"]
        times.append((key, time.monotonic()))
        queue = plan.get(key) or []
        return queue.pop(0) if queue else Reply(200, b"ok")

    with ScriptedServer(script) as server:
        code, text = apply(pipeline, server.url)
    assert code == 0, text
    order = [key for key, _ in times]
    assert Counter(order) == {**dict.fromkeys(keys, 1), "k00005": 2, "k00020": 2}
    first, retry = [i for i, key in enumerate(order) if key == "k00005"]
    assert retry - first > 1, f"nothing was sent while k00005 waited for its retry: {order}"
    # A 429 speaks for the whole server: nothing new starts before its Retry-After has passed.
    limited = order.index("k00020")
    assert times[limited + 1][1] - times[limited][1] >= 0.95, "a request was sent during the 429's Retry-After"


# --- (c) the idempotency header -----------------------------------------------------------------------------


def test_the_idempotency_key_is_stable_across_a_crash_and_changes_with_the_record(tmp_path: Path) -> None:
    """A change resent after a kill carries the same key; a changed record gets a new one."""
    keys = write_items(tmp_path, 300)
    pipeline = write_pipeline(tmp_path, concurrency=4, keyed=True)
    stuck = "k00100"
    release = threading.Event()
    seen_stuck = threading.Event()
    answered_stuck = False

    def script(request: Request) -> Reply:
        nonlocal answered_stuck
        if request.form["id"] == stuck and not answered_stuck:
            answered_stuck = True
            seen_stuck.set()
            release.wait(30)  # the request stays in flight until the sender is dead
        return Reply(200, b"ok")

    with ScriptedServer(script) as server:
        try:
            apply_and_kill(pipeline, server.url, seen_stuck.is_set)
        finally:
            release.set()
        code, text = apply(pipeline, server.url)
        assert code == 0, text
        with server.lock:
            first_pass = [(r.form["id"], r.headers.get(HEADER)) for r in server.requests]
            server.requests.clear()

        values: dict[str, set[str | None]] = {}
        for key, value in first_pass:
            values.setdefault(key, set()).add(value)
        assert set(values) == set(keys)
        assert sum(1 for key, _ in first_pass if key == stuck) == 2, "the change in flight at the kill was not resent"
        assert all(len(v) == 1 for v in values.values()), "a resent change got another key"
        key_of = {key: next(iter(v)) for key, v in values.items()}
        assert all(re.fullmatch(rf"items:{k}:[0-9a-f]{{16}}", v or "") for k, v in key_of.items())
        assert len(set(key_of.values())) == len(keys)

        write_items(tmp_path, 300, renamed={"k00007": "renamed"})
        code, text = apply(pipeline, server.url)
        assert code == 0, text
        with server.lock:
            second = [(r.form["id"], r.headers.get(HEADER)) for r in server.requests]
    assert [key for key, _ in second] == ["k00007"]
    new_value = second[0][1] or ""
    assert new_value.startswith("items:k00007:") and new_value != key_of["k00007"]


def test_an_idempotency_key_template_may_use_the_names_of_a_change(tmp_path: Path) -> None:
    """``sync``, ``key``, ``hash``, ``action``, ``table`` validate in ``idempotency_key``; other names do not."""
    write_items(tmp_path, 1)
    good = write_pipeline(tmp_path, keyed=True, key_template="{{ sync }}-{{ table }}-{{ key }}-{{ hash }}-{{ run.id }}")
    result = syncengine("validate", good)
    assert result.code == 0, result.text
    bad = write_pipeline(tmp_path, keyed=True, key_template="{{ record.id }}")
    result = syncengine("validate", bad)
    assert result.code == 2 and "idempotency_key: unknown name 'record'" in result.text, result.text
