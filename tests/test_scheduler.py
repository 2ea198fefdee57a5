"""The scheduler of ``syncengine serve``: jobs per profile and group started at their instants on an injected
clock, a missed run once, disconnected syncs, leases between jobs and between processes (a dead holder's
taken over, a lost one stops its job), SIGTERM mid-run, and ``syncengine schedule``.

Runs are real (CSV to SQLite) unless a test needs to hold a run open, then ``run_job`` is a stand-in. The
engine stamps runs with the real clock, so an injected clock starts after it (a last run later than the
scheduler's "now" would read as a clock stepped back). Subprocesses use port 0 and are always killed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests
from conftest import REPO, rows, syncengine
from http_servers import ServeProcess

from engine import api
from engine.config import Pipeline
from engine.runner import RunOptions, RunReport, SyncReport
from engine.scheduler import Job, JobResult, Scheduler, default_run_job, pipeline_jobs
from engine.state_store import StateStore, process_owner

TENANTS = """\
version: 1
name: tenants
vars: {tenant: none}
schedule: {every: 6 hours}
sources:
  customers_csv: {type: csv, path: "{{ vars.tenant }}-customers.csv"}
  orders_csv: {type: csv, path: "{{ vars.tenant }}-orders.csv"}
destinations:
  db: {type: sqlite, path: "out-{{ vars.tenant }}.db"}
groups:
  fast: {syncs: [orders], schedule: {every: 2 hours}}
  nightly: {syncs: [customers], schedule: {every: 1 day, at: "4:00 AM", timezone: Asia/Tokyo}}
  plain: [notes]
syncs:
  customers: {source: customers_csv, destination: {name: db, table: customers, create_table: true}, key: id}
  orders: {source: orders_csv, destination: {name: db, table: orders, create_table: true}, key: id}
  notes: {source: customers_csv, destination: {name: db, table: notes, create_table: true}, key: id}
"""

TENANT_PROFILES = """\
version: 1
profiles:
  acme: {vars: {tenant: acme}}
  beta:
    vars: {tenant: beta}
    schedule: {every: 4 hours}
    groups: {fast: {schedule: {every: 3 hours}}}
  gamma: {vars: {tenant: gamma}, enabled: false}
"""


def tenants(folder: Path) -> Path:
    """Two groups with schedules, one without (its sync stays on the pipeline's), three profiles (one disabled)."""
    (folder / "p.yml").write_text(TENANTS, encoding="utf-8")
    (folder / "profiles.yml").write_text(TENANT_PROFILES, encoding="utf-8")
    for tenant in ("acme", "beta", "gamma"):
        (folder / f"{tenant}-customers.csv").write_text("id,name\n1,a\n2,b\n", encoding="utf-8")
        (folder / f"{tenant}-orders.csv").write_text("id,total\n1,10\n", encoding="utf-8")
    return folder / "p.yml"


def simple(folder: Path, schedule: str, *, batch_size: int = 5000, groups: str = "",
           syncs: tuple[str, ...] = ("people",), extra: str = "") -> Path:
    """One CSV source (``in.csv``), a SQLite table per sync, and the given schedule (YAML flow text)."""
    body = "".join(f"  {name}: {{source: files, destination: {{name: db, table: {name}, create_table: true}}, "
                   f"key: id, batch_size: {batch_size}}}\n" for name in syncs)
    path = folder / "p.yml"
    path.write_text(f"version: 1\nname: simple\n{schedule}\nsources:\n  files: {{type: csv, path: in.csv}}\n"
                    f"destinations:\n  db: {{type: sqlite, path: out.db}}\n{groups}{extra}syncs:\n{body}",
                    encoding="utf-8")
    if not (folder / "in.csv").exists():
        (folder / "in.csv").write_text("id,name\n0,name-0\n", encoding="utf-8")
    return path


def future_midnight(days: int = 2) -> datetime:
    """A midnight (UTC) after the real clock, for the injected one (see the module's docstring)."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)


def hours(moment: datetime, base: datetime) -> float:
    return (moment - base) / timedelta(hours=1)


class FakeClock:
    """The scheduler's clock and its wait: time moves only when the loop sleeps with no job running.

    A job's end wakes the real loop at once; here the wait returns when the jobs are done, at the same
    instant. Past ``end`` the wait asks the scheduler to stop.
    """

    def __init__(self, start: datetime, end: datetime) -> None:
        self.current = start
        self.end = end
        self.scheduler: Scheduler | None = None
        self.waits = 0

    def now(self) -> datetime:
        return self.current

    def wait(self, seconds: float) -> None:
        scheduler = self.scheduler
        assert scheduler is not None
        self.waits += 1
        assert self.waits < 10_000, "the loop does not move on"
        if scheduler.busy:
            assert scheduler.wait_idle(60)
            return
        target = self.current + timedelta(seconds=seconds)
        if target > self.end:
            scheduler.request_stop()
            return
        self.current = target


def scheduler_on(pipeline: Path, clock: FakeClock, **options: Any) -> Scheduler:
    scheduler = Scheduler(pipeline_jobs(api.load(pipeline)), now=clock.now, wait=clock.wait, **options)
    clock.scheduler = scheduler
    return scheduler


class Counting:
    """``run_job`` that runs for real and counts how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, pipeline: Pipeline, options: RunOptions, state: str | None) -> RunReport:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return default_run_job(pipeline, options, state)
        finally:
            with self.lock:
                self.running -= 1


class Held:
    """``run_job`` stand-in that holds its run open until released (or until asked to stop, when ``until_stop``)."""

    def __init__(self, *, until_stop: bool = False) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.until_stop = until_stop
        self.options: list[RunOptions] = []

    def __call__(self, pipeline: Pipeline, options: RunOptions, state: str | None) -> RunReport:
        self.options.append(options)
        self.entered.set()
        stop = options.stop
        assert stop is not None
        assert (stop if self.until_stop else self.gate).wait(30)
        status = "interrupted" if stop.is_set() else "ok"
        return RunReport(pipeline.name, f"held{len(self.options)}", False,
                         {name: SyncReport(name, status=status) for name in options.syncs})


def apply_runs(state: Path, pipeline: str) -> dict[str, int]:
    """Per sync, how many ``apply`` runs the state records for a pipeline instance."""
    found = rows(state, "SELECT streams.sync, count(*) FROM runs JOIN streams ON streams.id = runs.stream_id WHERE "
                        f"streams.pipeline = '{pipeline}' AND runs.kind = 'apply' GROUP BY streams.sync")
    return {str(sync): int(str(count)) for sync, count in found}


def age_runs(state: Path) -> None:
    """Make every recorded run look long past: the schedule's slots since then were missed."""
    con = sqlite3.connect(state)
    try:
        con.execute("UPDATE runs SET started_at = '2000-01-01T00:00:00+00:00', finished_at = "
                    "'2000-01-01T00:00:01+00:00'")
        con.commit()
    finally:
        con.close()


# --- jobs and the loop on an injected clock ----------------------------------------------------------------------


def test_the_loop_starts_each_profiles_jobs_at_their_instants_with_bounded_parallelism(tmp_path: Path) -> None:
    pipeline = tenants(tmp_path)
    base = future_midnight()
    clock = FakeClock(base, base + timedelta(hours=20))
    counting = Counting()
    with scheduler_on(pipeline, clock, max_parallel=2, run_job=counting) as scheduler:
        jobs = {(job.profile, job.group): job.syncs for job in scheduler.jobs}
        scheduler.run_forever()
        results = list(scheduler.results)
    # The pipeline's schedule runs what no scheduled group has (notes, in the unscheduled group 'plain'); a
    # disabled profile has no jobs; a profile's schedules replace the pipeline's.
    assert jobs == {("acme", None): ("notes",), ("acme", "fast"): ("orders",), ("acme", "nightly"): ("customers",),
                    ("beta", None): ("notes",), ("beta", "fast"): ("orders",), ("beta", "nightly"): ("customers",)}
    starts: dict[tuple[str | None, str | None], list[float]] = {}
    for result in results:
        starts.setdefault((result.job.profile, result.job.group), []).append(hours(result.started, base))
    # Never run before, each waits for its first slot; 04:00 in Tokyo is 19:00 UTC.
    assert starts == {("acme", None): [6, 12, 18], ("acme", "fast"): [2, 4, 6, 8, 10, 12, 14, 16, 18, 20],
                      ("acme", "nightly"): [19], ("beta", None): [4, 8, 12, 16, 20],
                      ("beta", "fast"): [3, 6, 9, 12, 15, 18], ("beta", "nightly"): [19]}
    assert {result.status for result in results} == {"ok"}
    assert counting.most <= 2  # at 12:00 four jobs were due: two ran, then the other two
    state = tmp_path / ".syncengine" / "state.db"
    assert apply_runs(state, "tenants@acme") == {"notes": 3, "orders": 10, "customers": 1}
    assert apply_runs(state, "tenants@beta") == {"notes": 5, "orders": 6, "customers": 1}
    assert rows(tmp_path / "out-beta.db", "SELECT id, name FROM customers ORDER BY id") == [("1", "a"), ("2", "b")]
    assert not (tmp_path / "out-gamma.db").exists()


def test_a_run_missed_while_down_runs_once_at_start_then_on_the_slots(tmp_path: Path) -> None:
    pipeline = simple(tmp_path, "schedule: {every: 1 hours}")
    assert api.run(api.load(pipeline)).exit_code == 0
    last = datetime.fromisoformat(api.history(pipeline)[0]["started_at"])
    start = last + timedelta(days=3, minutes=10)  # 72 slots passed since
    first_slot = start.replace(minute=0, second=0) + timedelta(hours=1)
    clock = FakeClock(start, first_slot + timedelta(hours=1))
    with scheduler_on(pipeline, clock) as scheduler:
        assert scheduler.next_due(scheduler.jobs[0]) == start
        scheduler.run_forever()
        starts = [result.started for result in scheduler.results]
    assert starts == [start, first_slot, first_slot + timedelta(hours=1)]
    assert apply_runs(tmp_path / ".syncengine" / "state.db", "simple") == {"people": 4}


def test_disconnected_syncs_are_left_out_and_a_wholly_disconnected_job_is_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    groups = ("groups:\n  pair: {syncs: [a, b], schedule: {every: 1 hours}}\n"
              "  single: {syncs: [c], schedule: {every: 1 hours}}\n")
    pipeline = simple(tmp_path, "", groups=groups, syncs=("a", "b", "c"))
    assert api.set_connected(pipeline, connected=False, syncs=["b", "c"]) == ["b", "c"]
    moment = future_midnight()
    caplog.set_level(logging.INFO, logger="syncengine.schedule")
    with Scheduler(pipeline_jobs(api.load(pipeline)), now=lambda: moment, first_run_now=True) as scheduler:
        started = scheduler.tick()
        assert [job.group for job in started] == ["pair"]
        assert scheduler.wait_idle(60)
        assert scheduler.tick() == []  # the skipped job waits for its next slot; the other ran
        results = {result.job.group: result for result in scheduler.results}
    assert (results["pair"].status, results["pair"].syncs) == ("ok", ("a",))
    assert (results["single"].status, results["single"].syncs) == ("disconnected", ())
    assert "simple group single: skipped: every sync of it is disconnected (c)" in caplog.text
    assert rows(tmp_path / "out.db", "SELECT name FROM sqlite_master WHERE type = 'table'") == [("a",)]


# --- leases -------------------------------------------------------------------------------------------------------


def dead_owner() -> str:
    """The owner text of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return f"{socket.gethostname()}:{proc.pid}:1"


def test_leases_are_taken_all_or_none_and_freed_by_expiry_or_a_dead_owner(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        now = datetime.now(UTC)
        assert store.acquire_leases("p", ["a", "b"], "t1", seconds=60, now=now) == []
        held = store.acquire_leases("p", ["b", "c"], "t2", seconds=60, now=now)
        assert [(lease.sync, lease.token, lease.owner) for lease in held] == [("b", "t1", process_owner())]
        assert [lease.sync for lease in store.leases("p")] == ["a", "b"]  # c was not taken: all or none
        assert store.acquire_leases("q", ["b"], "t2", seconds=60, now=now) == []  # another pipeline's b
        assert store.renew_leases("t1", seconds=60, now=now) == 2
        # Expired: taken over, even though its owner (this process) lives.
        assert store.acquire_leases("p", ["b", "c"], "t2", seconds=60, now=now + timedelta(seconds=61)) == []
        assert store.renew_leases("t1", seconds=60) == 1  # only a is still t1's
        # Another host's lease holds until it expires; a dead process's is free at once.
        assert store.acquire_leases("p", ["d"], "far", seconds=60, now=now, owner="elsewhere:1:1") == []
        assert [lease.owner for lease in store.acquire_leases("p", ["d"], "t3", seconds=60, now=now)] == [
            "elsewhere:1:1"]
        assert store.acquire_leases("p", ["e"], "ghost", seconds=3600, now=now, owner=dead_owner()) == []
        assert store.acquire_leases("p", ["e"], "t3", seconds=60, now=now) == []
        assert store.release_leases("t2") == 3  # p.b, p.c and q.b
        assert [(lease.sync, lease.token) for lease in store.leases("p")] == [("a", "t1"), ("d", "far"), ("e", "t3")]
    finally:
        store.close()


def test_a_job_waits_while_another_job_holds_a_lease_on_one_of_its_syncs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    groups = ("groups:\n  both: {syncs: [a, b], schedule: {every: 1 hours}}\n"
              "  one: {syncs: [a], schedule: {every: 1 hours}}\n")
    pipeline = simple(tmp_path, "", groups=groups, syncs=("a", "b"))
    clock = FakeClock(future_midnight(), future_midnight(3))
    held = Held()
    caplog.set_level(logging.INFO, logger="syncengine.schedule")
    with Scheduler(pipeline_jobs(api.load(pipeline)), now=clock.now, first_run_now=True, run_job=held,
                   retry_seconds=5) as scheduler:
        assert [job.group for job in scheduler.tick()] == ["both"]
        assert held.entered.wait(30)
        assert f"simple group one: waiting: sync a is leased by {process_owner()}" in caplog.text
        clock.current += timedelta(seconds=5)
        assert scheduler.tick() == []  # tried again: still leased
        held.gate.set()
        assert scheduler.wait_idle(30)
        assert scheduler.tick() == []  # not before its retry time
        clock.current += timedelta(seconds=5)
        assert [job.group for job in scheduler.tick()] == ["one"]
        assert scheduler.wait_idle(30)
        assert [(result.job.group, result.status) for result in scheduler.results] == [("both", "ok"), ("one", "ok")]
        store = StateStore(tmp_path / ".syncengine" / "state.db")
        try:
            assert store.leases() == []  # released at each job's end
        finally:
            store.close()


def test_a_lease_of_another_host_holds_until_it_expires_and_a_dead_process_lease_is_taken_over(
        tmp_path: Path) -> None:
    pipeline = simple(tmp_path, "schedule: {every: 1 hours}")
    clock = FakeClock(future_midnight(), future_midnight(3))
    store = StateStore(tmp_path / ".syncengine" / "state.db")
    try:
        assert store.acquire_leases("simple", ["people"], "remote", seconds=0.5, owner="elsewhere:1:1") == []
        with Scheduler(pipeline_jobs(api.load(pipeline)), now=clock.now, first_run_now=True, retry_seconds=1) as first:
            assert first.tick() == []
            time.sleep(0.6)  # the remote lease expires (leases follow the real clock)
            clock.current += timedelta(seconds=1)
            assert len(first.tick()) == 1
            assert first.wait_idle(60)
            assert [result.status for result in first.results] == ["ok"]
        age_runs(tmp_path / ".syncengine" / "state.db")
        assert store.acquire_leases("simple", ["people"], "ghost", seconds=3600, owner=dead_owner()) == []
        with Scheduler(pipeline_jobs(api.load(pipeline)), now=clock.now) as second:
            assert len(second.tick()) == 1  # a missed run; the lease of a process that is gone is no obstacle
            assert second.wait_idle(60)
            assert [result.status for result in second.results] == ["ok"]
        assert store.leases() == []
    finally:
        store.close()


def test_the_heartbeat_renews_a_running_jobs_leases_and_a_lease_taken_over_stops_the_job(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = simple(tmp_path, "schedule: {every: 1 hours}")
    held = Held(until_stop=True)
    moment = future_midnight()
    caplog.set_level(logging.INFO, logger="syncengine.schedule")
    store = StateStore(tmp_path / ".syncengine" / "state.db")
    try:
        with Scheduler(pipeline_jobs(api.load(pipeline)), now=lambda: moment, first_run_now=True, run_job=held,
                       lease_seconds=2.0, renew_seconds=0.05) as scheduler:
            assert len(scheduler.tick()) == 1
            assert held.entered.wait(30)
            first = store.leases()[0].expires_at
            deadline = time.monotonic() + 10
            while store.leases()[0].expires_at == first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.leases()[0].expires_at > first
            store.db.execute("UPDATE leases SET token = 'thief', owner = 'elsewhere:1:1'")
            assert scheduler.wait_idle(30)
            stop = held.options[0].stop
            assert stop is not None and stop.is_set()
            assert [result.status for result in scheduler.results] == ["interrupted"]
        assert "simple (pipeline schedule): its lease was taken over by another process" in caplog.text
        assert [lease.token for lease in store.leases()] == ["thief"]  # not released by the job that lost it
    finally:
        store.close()


def test_a_stop_request_starts_no_more_jobs_and_stops_the_running_ones(tmp_path: Path) -> None:
    groups = ("groups:\n  first: {syncs: [a], schedule: {every: 1 hours}}\n"
              "  second: {syncs: [b], schedule: {every: 1 hours}}\n")
    pipeline = simple(tmp_path, "", groups=groups, syncs=("a", "b"))
    held = Held(until_stop=True)
    moment = future_midnight()
    with Scheduler(pipeline_jobs(api.load(pipeline)), now=lambda: moment, first_run_now=True, run_job=held,
                   max_parallel=1) as scheduler:
        assert [job.group for job in scheduler.tick()] == ["first"]
        assert held.entered.wait(30)
        scheduler.request_stop()
        assert scheduler.wait_idle(30)
        assert scheduler.tick() == []
        results: list[JobResult] = list(scheduler.results)
    assert [(result.job.group, result.status) for result in results] == [("first", "interrupted")]


# --- serve and schedule as processes -------------------------------------------------------------------------------


class Serve:
    """``syncengine serve`` as a child process (JSON logs), its output collected as it comes; always killed."""

    def __init__(self, pipeline: Path, *args: str, level: str = "info", env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "engine.cli", "--log-format", "json", "--log-level", level, "serve",
                   str(pipeline), "--port", "0", *args]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**_environ(), **(env or {})})
        self.out: list[str] = []
        self.logs: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, is_log: bool) -> None:
        for line in stream:
            with self.lock:
                if not is_log:
                    self.out.append(line)
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = {"message": line.rstrip("\n"), "logger": "raw"}
                self.logs.append(entry if isinstance(entry, dict) else {"message": str(entry)})

    def wait_for(self, test: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first log entry that passes ``test`` (waiting for it up to ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = next((entry for entry in self.logs if test(entry)), None)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                for reader in self.readers:
                    reader.join(10)  # the last lines of a process that ended
                with self.lock:
                    found = next((entry for entry in self.logs if test(entry)), None)
                if found is not None:
                    return found
                break
            time.sleep(0.05)
        raise AssertionError(f"no such log line; exit {self.proc.poll()}; logs: {self.logs}; out: {self.out}")

    def jobs(self) -> list[dict[str, Any]]:
        """The scheduler's log lines about jobs."""
        with self.lock:
            return [entry for entry in self.logs if entry.get("logger") == "syncengine.schedule"]

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for reader in self.readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _environ() -> dict[str, str]:
    """The environment, less a log level or format set for the test run (the child's are given)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_LOG")}


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def big_run(folder: Path, schedule: str, records: int = 2000) -> tuple[Path, Path]:
    """A pipeline whose sync has run (one row) long ago, then a bigger CSV (batches of 100); (pipeline, state)."""
    pipeline = simple(folder, f"schedule: {schedule}", batch_size=100)
    assert api.run(api.load(pipeline)).exit_code == 0
    state = folder / ".syncengine" / "state.db"
    age_runs(state)
    (folder / "in.csv").write_text("id,name\n" + "".join(f"{i},name-{i}\n" for i in range(records)), encoding="utf-8")
    return pipeline, state



class DestinationLock:
    """Holds the destination database's write lock: a run waits at its first write (SQLite's busy timeout, 10 s),
    so a test can act while the run is certainly in flight, however fast the machine."""

    def __init__(self, db: Path) -> None:
        self.con = sqlite3.connect(db, isolation_level=None)
        self.con.execute("BEGIN IMMEDIATE")
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.con.execute("COMMIT")
            self.con.close()


def running(state: Path) -> int:
    return int(str(rows(state, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0]))


def job_intervals(serve: Serve) -> list[tuple[str, str]]:
    """(start, end) of each job a serve process ran, from its log times (milliseconds)."""
    out: list[tuple[str, str]] = []
    begun: str | None = None
    for entry in serve.jobs():
        if entry.get("status") == "started":
            begun = entry["time"]
        elif entry.get("status") in ("ok", "partial", "failed", "interrupted"):
            assert begun is not None
            out.append((begun, entry["time"]))
            begun = None
    assert begun is None, "a job that never ended"
    return out


def test_two_serve_processes_on_one_state_never_run_a_sync_at_once(tmp_path: Path) -> None:
    pipeline, state = big_run(tmp_path, "{every: 1 minutes}")
    lock = DestinationLock(tmp_path / "out.db")
    try:
        with Serve(pipeline) as first:
            wait_until(lambda: running(state) == 1)  # the first process's run, held at its first write
            with Serve(pipeline) as second:
                waiting = second.wait_for(lambda entry: "is leased by" in entry.get("message", ""))
                assert waiting["status"] == "waiting" and waiting["syncs"] == ["people"]
                lock.release()
                first.wait_for(lambda entry: entry.get("logger") == "syncengine.schedule"
                               and entry.get("status") == "ok")
                # Tried again, the second sees the slot already run (or, when a minute has turned meanwhile,
                # runs the next slot, after the first).
                second.wait_for(lambda entry: entry.get("status") in ("already run", "ok"))
                assert second.terminate() == 0
            assert first.terminate() == 0
    finally:
        lock.release()
    first_runs, second_runs = job_intervals(first), job_intervals(second)
    assert len(first_runs) >= 1
    every = sorted(first_runs + second_runs)
    assert all(later[0] >= earlier[1] for earlier, later in zip(every, every[1:], strict=False)), every
    runs = rows(state, "SELECT status, read FROM runs WHERE kind = 'apply' AND started_at > '2001' ORDER BY id")
    assert runs[0] == ("ok", 2000) and len(runs) == len(every)
    assert all(status == "ok" for status, _ in runs)
    assert any("next run now (a run was missed)" in line for line in first.out)


def test_sigterm_lets_the_run_in_flight_commit_its_batch_then_serve_exits_0(tmp_path: Path) -> None:
    pipeline, state = big_run(tmp_path, "{every: 1 hours}")
    lock = DestinationLock(tmp_path / "out.db")
    try:
        with Serve(pipeline) as serve:
            wait_until(lambda: running(state) == 1)
            serve.proc.send_signal(signal.SIGTERM)
            serve.wait_for(lambda entry: entry.get("message", "").startswith("stopping: no job starts any more; 1 "))
            lock.release()  # the batch in flight is written and committed, then the run stops
            assert serve.proc.wait(60) == 0
            ended = serve.wait_for(lambda entry: entry.get("logger") == "syncengine.schedule"
                                   and entry.get("status") == "interrupted")
            assert ended["group"] is None and ended["profile"] is None and ended["exit_code"] == 3
            assert serve.out[-1] == "stopped\n"
    finally:
        lock.release()
    status, read, message = rows(state, "SELECT status, read, message FROM runs WHERE kind = 'apply' "
                                        "ORDER BY id DESC LIMIT 1")[0]
    assert (status, read) == ("interrupted", 100)
    assert str(message).startswith("stopped after 100 records, every batch sent so far committed")
    assert rows(tmp_path / "out.db", "SELECT count(*) FROM people") == [(100,)]
    assert rows(state, "SELECT count(*) FROM records") == [(100,)]
    assert rows(state, "SELECT count(*) FROM leases") == [(0,)]
    report = api.run(api.load(pipeline))  # the next run goes on from what was committed
    assert report.syncs["people"].counts["creates"] == 1900 and report.syncs["people"].counts["unchanged"] == 100


MIXED = """version: 1
name: mixed
schedule: {every: 1 hours}
sources:
  aljex_live:
    type: aljex_live
    username: aljex
    password: "{{ env.ALJEX_LIVE_PASSWORD }}"
    allow_ips: ["127.0.0.1/32"]
    path: /aljex
  files: {type: csv, path: in.csv}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  employees:
    source: {name: aljex_live, table: employees}
    destination: {name: db, table: employees, create_table: true}
    mapping: {fields: {id: "{{ record.id }}", name: "{{ record.name }}"}}
    key: id
  people: {source: files, destination: {name: db, table: people, create_table: true}, key: id}
"""


def test_serve_runs_the_receivers_and_the_schedules_in_one_process(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yml"
    pipeline.write_text(MIXED, encoding="utf-8")
    (tmp_path / "in.csv").write_text("id,name\n1,a\n", encoding="utf-8")
    assert api.run(api.load(pipeline)).syncs["people"].counts["creates"] == 1  # the receiver's sync is not pulled
    state = tmp_path / ".syncengine" / "state.db"
    age_runs(state)
    (tmp_path / "in.csv").write_text("id,name\n1,a\n2,b\n", encoding="utf-8")
    password = "mixed-s3cret"
    with ServeProcess(pipeline, env={"ALJEX_LIVE_PASSWORD": password}, state=state) as server:
        answer = requests.post(server.url, data={"web_sync_table_name": "employees", "web_sync_action": "create",
                                                 "id": "e1", "name": "Ann"}, auth=("aljex", password), timeout=10)
        assert answer.status_code == 200, answer.text
        wait_until(lambda: apply_runs(state, "mixed") == {"people": 2} and running(state) == 1)  # 1: the receiver
        assert server.terminate() == 0
    assert rows(tmp_path / "out.db", "SELECT id, name FROM people ORDER BY id") == [("1", "a"), ("2", "b")]
    assert rows(tmp_path / "out.db", "SELECT id, name FROM employees") == [("e1", "Ann")]


def test_serve_refuses_a_pipeline_with_nothing_to_serve(tmp_path: Path) -> None:
    plain = simple(tmp_path, "")
    result = syncengine("serve", plain, "--port", "0")
    assert result.code == 2 and "no source is a receiver and no schedule runs a sync" in result.err, result.text
    scheduled = simple(tmp_path, "schedule: {every: 1 hours}")
    result = syncengine("serve", scheduled, "--port", "0", "--no-schedules")
    assert result.code == 2 and "with --no-schedules there is nothing to serve" in result.err, result.text
    assert syncengine("serve", scheduled, "--port", "0", "--max-parallel", "0").code == 2
    assert not (tmp_path / ".syncengine").exists()


# --- syncengine schedule ----------------------------------------------------------------------------------------------


def test_schedule_prints_the_next_runs_of_every_profile_and_group(tmp_path: Path) -> None:
    tenants(tmp_path)
    result = syncengine("schedule", "p.yml", "--from", "2026-03-07T12:00:00Z", "-n", "2", cwd=tmp_path)
    assert result.code == 0, result.text
    assert result.out == """\
tenants@acme
  pipeline schedule: every 6 hours (UTC); syncs: notes
    2026-03-07 18:00:00 UTC  (2026-03-07 18:00:00 UTC)
    2026-03-08 00:00:00 UTC  (2026-03-08 00:00:00 UTC)
  group fast: every 2 hours (UTC); syncs: orders
    2026-03-07 14:00:00 UTC  (2026-03-07 14:00:00 UTC)
    2026-03-07 16:00:00 UTC  (2026-03-07 16:00:00 UTC)
  group nightly: every day at 04:00 (Asia/Tokyo); syncs: customers
    2026-03-08 04:00:00 JST  (2026-03-07 19:00:00 UTC)
    2026-03-09 04:00:00 JST  (2026-03-08 19:00:00 UTC)
tenants@beta
  pipeline schedule: every 4 hours (UTC); syncs: notes
    2026-03-07 16:00:00 UTC  (2026-03-07 16:00:00 UTC)
    2026-03-07 20:00:00 UTC  (2026-03-07 20:00:00 UTC)
  group fast: every 3 hours (UTC); syncs: orders
    2026-03-07 15:00:00 UTC  (2026-03-07 15:00:00 UTC)
    2026-03-07 18:00:00 UTC  (2026-03-07 18:00:00 UTC)
  group nightly: every day at 04:00 (Asia/Tokyo); syncs: customers
    2026-03-08 04:00:00 JST  (2026-03-07 19:00:00 UTC)
    2026-03-09 04:00:00 JST  (2026-03-08 19:00:00 UTC)
"""
    listed = json.loads(syncengine("schedule", "p.yml", "--from", "2026-03-07T12:00:00", "-n", "1", "--json",
                                   cwd=tmp_path).out)
    assert [(item["pipeline"], item["group"], item["syncs"]) for item in listed] == [
        ("tenants@acme", None, ["notes"]), ("tenants@acme", "fast", ["orders"]),
        ("tenants@acme", "nightly", ["customers"]), ("tenants@beta", None, ["notes"]),
        ("tenants@beta", "fast", ["orders"]), ("tenants@beta", "nightly", ["customers"])]
    beta_fast = listed[4]
    assert (beta_fast["profile"], beta_fast["spec"], beta_fast["location"]) == ("beta", {"every": "3 hours"},
                                                                                 "profiles.yml:7")
    assert listed[2]["next"] == [{"local": "2026-03-08T04:00:00+09:00", "utc": "2026-03-07T19:00:00+00:00"}]


def test_schedule_across_a_dst_change_runs_a_time_in_the_lost_hour_after_the_gap(tmp_path: Path) -> None:
    simple(tmp_path, 'schedule: {every: 1 day, at: "2:30 AM", timezone: America/New_York}')
    result = syncengine("schedule", "p.yml", "--from", "2026-03-07T12:00:00Z", "-n", "3", "--json", cwd=tmp_path)
    assert result.code == 0, result.text
    [job] = json.loads(result.out)
    assert job["schedule"] == "every day at 02:30 (America/New_York)"
    # 2026-03-08 has no 02:30 in New York (02:00 EST -> 03:00 EDT): it runs at 03:00 EDT, then 02:30 again.
    assert job["next"] == [
        {"local": "2026-03-08T03:00:00-04:00", "utc": "2026-03-08T07:00:00+00:00"},
        {"local": "2026-03-09T02:30:00-04:00", "utc": "2026-03-09T06:30:00+00:00"},
        {"local": "2026-03-10T02:30:00-04:00", "utc": "2026-03-10T06:30:00+00:00"}]


def test_bad_schedules_are_located_in_the_file_that_holds_them(tmp_path: Path) -> None:
    tenants(tmp_path)
    (tmp_path / "p.yml").write_text(TENANTS.replace("Asia/Tokyo", "Asia/Tokio"), encoding="utf-8")
    (tmp_path / "profiles.yml").write_text(TENANT_PROFILES.replace(
        "groups: {fast: {schedule: {every: 3 hours}}}",
        "groups: {fsat: {schedule: {every: 3 hours}}, fast: {schedule: {every: 3 hourz}}}"), encoding="utf-8")
    # The pipeline's own schedules are checked when it loads (validate finds them too); the profiles' next.
    for verb in (("validate",), ("schedule",), ("serve", "--port", "0")):
        result = syncengine(*verb[:1], "p.yml", *verb[1:], cwd=tmp_path)
        assert result.code == 2, result.text
        assert result.err.splitlines() == [
            "p.yml:12:83: groups.nightly.schedule.timezone: unknown time zone 'Asia/Tokio' (did you mean "
            "'Asia/Tokyo'?); use an IANA name such as 'Europe/London', 'America/New_York' or 'UTC'",
            "1 problem found; nothing was run."]
    (tmp_path / "p.yml").write_text(TENANTS, encoding="utf-8")
    for verb in (("schedule",), ("serve", "--port", "0")):
        result = syncengine(*verb[:1], "p.yml", *verb[1:], cwd=tmp_path)
        assert result.code == 2, result.text
        assert result.err.splitlines() == [
            "profiles.yml:7:14: profiles.beta.groups.fsat: unknown group 'fsat' (did you mean 'fast'?); the groups "
            "are: fast, nightly, plain",
            "profiles.yml:7:75: profiles.beta.groups.fast.schedule.every: unknown unit 'hourz' (did you mean "
            "'hour'?); the units are minutes, hours and days",
            "2 problems found; nothing was run."]


def test_schedule_says_when_there_is_nothing_to_list_or_a_schedule_runs_nothing(tmp_path: Path) -> None:
    simple(tmp_path, "")
    result = syncengine("schedule", "p.yml", cwd=tmp_path)
    assert result.code == 0 and result.out.startswith("p.yml: no schedules; give the pipeline"), result.text
    wrong = syncengine("schedule", "p.yml", "--from", "yesterday", cwd=tmp_path)
    assert wrong.code == 2 and "--from 'yesterday': expected an ISO 8601 moment" in wrong.err, wrong.text
    simple(tmp_path, "schedule: {every: 1 hours}", syncs=("a", "b"),
           groups="groups:\n  all_of_them: {syncs: [a, b], schedule: {cron: '0 4 * * MON'}}\n")
    result = syncengine("schedule", "p.yml", "--from", "2026-03-07T12:00:00Z", "-n", "1", cwd=tmp_path)
    assert result.code == 0, result.text
    assert result.out == (
        "simple\n"
        "  pipeline schedule: every hour (UTC); syncs: -\n"
        "    every sync is in a scheduled group, fed by a receiver or disabled, so the pipeline's schedule runs "
        "nothing\n"
        "  group all_of_them: cron '0 4 * * MON': at 04:00 on Monday (UTC); syncs: a, b\n"
        "    2026-03-09 04:00:00 UTC  (2026-03-09 04:00:00 UTC)\n")


def test_jobs_leave_out_disabled_syncs_and_syncs_fed_by_a_receiver(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yml"
    pipeline.write_text(MIXED.replace("key: id}\n", "key: id}\n  dormant: {source: files, destination: {name: db, "
                                      "table: dormant}, key: id, enabled: false}\n"), encoding="utf-8")
    [job] = pipeline_jobs(api.load(pipeline))
    assert isinstance(job, Job) and (job.group, job.syncs, job.location) == (None, ("people",), f"{pipeline}:3")
