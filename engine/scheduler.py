"""Run a pipeline's schedules unattended: which jobs there are, when each is due, and who may run it.

``syncengine serve`` runs this loop beside the receivers (:func:`engine.push.serve_pipeline`);
``syncengine schedule`` lists what it would run. The rules, decided once here:

**Jobs.** For the pipeline itself (when it has no profiles file) or for each enabled profile's instance
(``<pipeline>@<profile>``), one job per schedule:

* a group with a schedule is a job running the group's syncs;
* the pipeline's own schedule is a job running every sync that is in no *scheduled* group, so all syncs
  when no group has a schedule. A group without a schedule is only a name for ``apply --group``: its
  syncs stay on the pipeline's schedule. So a group's schedule takes its syncs off the pipeline's, and
  each sync normally runs on one schedule (a sync in two scheduled groups runs on both; its lease keeps
  the two runs apart);
* a profile's schedule replaces the pipeline's, and its group schedules the groups' (as loaded);
* only enabled syncs read from a pull source are scheduled: a receiver's records arrive by themselves
  (the receivers are served as before), and a sync with ``enabled: false`` runs only when named
  (``apply --sync``).

The jobs are read once, when the scheduler starts: a changed pipeline or profiles file takes effect
at the next start of ``serve``.

**When.** A job's last run is read from the state: for each of its connected syncs that ever ran, the
start of its latest finished ``apply`` run (any status but running: a failed or interrupted run had its
slot; a ``retry`` or ``reset`` is not a run of the sync), and of those the earliest, so a sync that
missed the job's slot (it ran alone, by hand, before the slot) makes the job due. The later of that and
the moment this scheduler last started the job (on its own clock, which tests inject) is the last run.
Then :func:`engine.schedule.next_due` answers: a run missed while the process was down runs once at
start, not once per missed slot. A job that never ran waits for its first slot after the scheduler
started (``first_run_now`` runs it at once instead).

**Never two runs of one sync at once.** Before a job starts, it takes a lease on each of its syncs in
the state store, all at once or none (:meth:`~engine.state_store.StateStore.acquire_leases`); a lease
held by another run, in this process or another, makes the job wait (it is tried again every
``retry_seconds``). A heartbeat renews the leases of running jobs every ``renew_seconds`` for
``lease_seconds``, so a lease whose process was killed is free once it expires, at once when the
process is known to be gone (same host). A job that finds its lease taken over (its process stalled
longer than a lease) is stopped after the batch in flight. With the lease held, the last run is read
again: another process may have just run this slot, and then it is not run twice. A manual ``apply``
takes no lease; a run still open in a live process on this host (``running`` in the history) also
makes a job wait, so a scheduled run does not start beside one by hand either.

**Disconnected syncs** are left out of a job's run (the runner refuses a disconnected sync asked for
by name, so they are filtered here); a job whose syncs are all disconnected is logged and skipped
until its next slot.

**Parallelism.** At most ``max_parallel`` jobs run at once, across profiles, each in its own
:class:`~engine.runner.Engine` (its own state connection) on a thread; the REST and SOAP rate budgets
are process-wide, so the jobs share them. The most overdue job starts first.

**Stopping.** :meth:`Scheduler.request_stop` starts no more jobs and sets each running job's stop
event: it ends after the batch in flight is committed (status ``interrupted``, cursor kept), then
its leases are released.

Two clocks: schedules follow the injectable ``now`` (tests drive it); leases expire on the real clock,
since other processes read them.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from engine import api
from engine.config import Pipeline
from engine.errors import Disconnected, PipelineInvalid, Problem, SyncEngineError
from engine.profiles import load_profiles
from engine.runner import RunOptions, RunReport
from engine.schedule import Schedule, ScheduleError, next_due, parse_schedule
from engine.schema_errors import did_you_mean
from engine.state_store import StateStore, owner_gone
from engine.yaml_source import Located, YamlPath, load_located

log = logging.getLogger("syncengine").getChild("schedule")

JobKey = tuple[str, str | None]
"""A job's identity: (the instance's pipeline name, its group or ``None`` for the pipeline's own schedule)."""
RunJob = Callable[[Pipeline, RunOptions, str | None], RunReport]
"""How a job's run is carried out: (pipeline instance, options, ``--state`` override) -> report."""


# ---------------------------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True, eq=False)
class Job:
    """One schedule of one pipeline instance and the syncs it runs."""

    pipeline: Pipeline
    """The instance: the pipeline itself, or a profile's (``name`` is then ``<pipeline>@<profile>``)."""
    group: str | None
    """The scheduled group, or ``None`` for the pipeline's (or profile's) own schedule."""
    syncs: tuple[str, ...]
    """In the pipeline's order; empty when nothing is left to schedule (then the job never runs)."""
    schedule: Schedule
    spec: Mapping[str, Any]
    """The schedule as written."""
    location: str
    """``file:line`` where the schedule is written."""

    @property
    def key(self) -> JobKey:
        """Unique among the jobs of one scheduler."""
        return self.pipeline.name, self.group

    @property
    def profile(self) -> str | None:
        """The profile, or ``None`` for the pipeline itself."""
        return self.pipeline.profile

    def __repr__(self) -> str:
        return f"<Job {self.title}: {self.schedule.describe()}; syncs {', '.join(self.syncs) or '-'}>"

    @property
    def title(self) -> str:
        """``tenants@acme group nightly``, ``orders (pipeline schedule)``: how logs and listings name it."""
        return f"{self.pipeline.name} {'group ' + self.group if self.group else '(pipeline schedule)'}"


@dataclass(frozen=True)
class JobResult:
    """How one start of a job ended."""

    job: Job
    started: datetime
    """On the scheduler's clock."""
    status: str
    """``ok``, ``partial``, ``failed``, ``interrupted``, or ``disconnected`` (skipped: nothing ran)."""
    syncs: tuple[str, ...]
    """The syncs it ran (its connected ones)."""
    run_id: str | None = None
    exit_code: int | None = None
    message: str | None = None
    seconds: float = 0.0


def instances(pipeline: Pipeline, *, variables: Mapping[str, Any] | None = None) -> list[Pipeline]:
    """What is scheduled: the pipeline itself, or (when it has a profiles file) each enabled profile's instance.

    A profile's instance is loaded with ``variables`` (``--var``) over its own vars, as ``apply --profile``
    loads it.
    """
    if pipeline.profile is not None or pipeline.profiles_file is None:
        return [pipeline]
    return [api.load(pipeline.path, variables=variables, profile=name) for name in api.profile_names(pipeline.path)]


def schedulable_syncs(pipeline: Pipeline) -> list[str]:
    """The syncs a schedule may run: enabled ones read from a pull source, in the pipeline's order."""
    return [name for name, sync in pipeline.syncs.items()
            if sync.enabled and pipeline.sources[sync.source].role != "receiver"]


def jobs_of(pipeline: Pipeline) -> list[Job]:
    """The jobs of one instance: its own schedule first, then its groups' in the pipeline's order.

    Schedules are parsed here (loading a pipeline does not parse them); every bad one is raised at once
    as :class:`PipelineInvalid`, located in the pipeline or profiles file where it is written.
    """
    origins = _Origins(pipeline)
    problems: list[Problem] = []
    parsed: dict[str | None, Schedule] = {}
    for group, spec in pipeline.schedules.items():
        located, path = origins.of(group)
        if group is not None and group not in pipeline.groups:
            known = list(pipeline.groups)
            problems.append(located.problem(path[:-1], f"unknown group '{group}'{did_you_mean(group, known)}; "
                                                       f"the groups are: {', '.join(known) or 'none'}", key=True))
            continue
        try:
            parsed[group] = parse_schedule(spec, path)
        except ScheduleError as exc:
            problems.append(located.problem(exc.path, exc.message))
    if problems:
        raise PipelineInvalid(problems)
    allowed = schedulable_syncs(pipeline)
    grouped = {name for group in parsed if group is not None for name in pipeline.groups[group]}
    order = [None, *(group for group in pipeline.groups if group in parsed)] if None in parsed else [
        group for group in pipeline.groups if group in parsed]
    jobs: list[Job] = []
    for group in order:
        if group is None:
            syncs = tuple(name for name in allowed if name not in grouped)
        else:
            syncs = tuple(name for name in pipeline.groups[group] if name in allowed)
        located, path = origins.of(group)
        line, _ = located.where(path)
        jobs.append(Job(pipeline, group, syncs, parsed[group], dict(pipeline.schedules[group]),
                        f"{located.file}:{line}"))
    return jobs


def pipeline_jobs(pipeline: Pipeline, *, variables: Mapping[str, Any] | None = None) -> list[Job]:
    """The jobs of every instance (see :func:`instances`), every bad schedule of every profile raised at once."""
    jobs: list[Job] = []
    problems: list[Problem] = []
    for instance in instances(pipeline, variables=variables):
        try:
            jobs.extend(jobs_of(instance))
        except PipelineInvalid as exc:
            problems.extend(exc.problems)
    if problems:
        raise PipelineInvalid(problems)
    return jobs


def why_empty(job: Job) -> str:
    """Why a job has no sync to run (for the warning at start and ``syncengine schedule``)."""
    if job.group is None and job.pipeline.groups:
        return ("every sync is in a scheduled group, fed by a receiver or disabled, so the pipeline's schedule "
                "runs nothing")
    return "its syncs are fed by a receiver or disabled, so it runs nothing"


class _Origins:
    """Where each schedule of an instance is written: the profiles file when the profile sets it, else the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._pipeline_file: Located | None = None
        self._profiles_file: Located | None = None

    def of(self, group: str | None) -> tuple[Located, YamlPath]:
        """(the file, the path of the schedule in it)."""
        profile = self.pipeline.profile
        tail: YamlPath = ("schedule",) if group is None else ("groups", group, "schedule")
        if profile is not None and self.pipeline.profiles_file is not None:
            profiles = self._profiles()
            path: YamlPath = ("profiles", profile, *tail)
            if profiles is not None and _value_at(profiles.data, path) is not None:
                return profiles, path
        return self._pipeline(), tail

    def _pipeline(self) -> Located:
        if self._pipeline_file is None:
            self._pipeline_file = _located(self.pipeline.path)
        return self._pipeline_file

    def _profiles(self) -> Located | None:
        if self._profiles_file is None and self.pipeline.profiles_file is not None:
            file = self.pipeline.profiles_file
            if not file.is_file() or self.pipeline.profile not in load_profiles(file, _shown(file)):
                return None  # a profile made elsewhere (the control API): its schedules are then the pipeline's
            self._profiles_file = _located(file)
        return self._profiles_file


def _located(path: Path) -> Located:
    return load_located(path, _shown(path))


def _value_at(data: Any, path: YamlPath) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _shown(path: Path) -> str:
    """A path as messages show it: relative to the working folder when it is below it (as the config's are)."""
    absolute = path.resolve()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(path)


# ---------------------------------------------------------------------------------------------------------------
# What the state says about a job


def _finished_runs(store: StateStore, pipeline: str, syncs: Sequence[str]) -> dict[str, datetime]:
    """Per sync, the start of its latest finished ``apply`` run.

    Read straight from the runs table: the state store has no such query (an engine gap noted in the
    report; it belongs in :mod:`engine.state_store`).
    """
    if not syncs:
        return {}
    rows = store.db.execute(
        "SELECT streams.sync, max(runs.started_at) FROM runs JOIN streams ON streams.id = runs.stream_id "
        f"WHERE streams.pipeline = ? AND streams.sync IN ({','.join('?' * len(syncs))}) AND runs.kind = 'apply' "
        "AND runs.status <> 'running' GROUP BY streams.sync", (pipeline, *syncs)).fetchall()
    return {sync: _aware(datetime.fromisoformat(started)) for sync, started in rows if started}


def _open_runs_here(store: StateStore, pipeline: str, syncs: Sequence[str]) -> list[tuple[str, str]]:
    """(sync, owner) of runs still open in a live process on this host (a manual ``apply``, which takes no lease).

    An open run of another host cannot be told from one whose process died there, so only the leases
    order runs across hosts.
    """
    if not syncs:
        return []
    rows = store.db.execute(
        "SELECT streams.sync, runs.owner FROM runs JOIN streams ON streams.id = runs.stream_id WHERE "
        f"streams.pipeline = ? AND streams.sync IN ({','.join('?' * len(syncs))}) AND runs.status = 'running'",
        (pipeline, *syncs)).fetchall()
    here = socket.gethostname()
    return [(sync, owner) for sync, owner in rows
            if owner and owner.partition(":")[0] == here and not owner_gone(owner)]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def job_status(report: RunReport) -> str:
    """One word for a job's run: the worst of its syncs' (``interrupted``, ``failed``, ``partial``), else ``ok``."""
    statuses = [sync.status for sync in report.syncs.values()]
    for status in ("interrupted", "failed", "partial"):
        if status in statuses:
            return status
    if report.error:
        return "failed"
    if statuses and all(status == "disconnected" for status in statuses):
        return "disconnected"
    return "ok"


def default_run_job(pipeline: Pipeline, options: RunOptions, state: str | None) -> RunReport:
    """A job's run as ``apply`` does it: a new engine (and state connection) per run."""
    return api.run(pipeline, options, state=state)


# ---------------------------------------------------------------------------------------------------------------
# The loop


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Active:
    """A job running now."""

    job: Job
    syncs: tuple[str, ...]
    token: str
    stop: threading.Event
    future: Future[JobResult]


class Scheduler:
    """Starts due jobs on a bounded pool, under leases; see the module's docstring for the rules.

    ``now`` is the schedules' clock and ``wait(seconds)`` how the loop sleeps (by default until a job
    ends, a stop is requested, or the time passes): tests inject both. ``run_job`` carries a run out
    (by default :func:`engine.api.run`).
    """

    def __init__(self, jobs: Iterable[Job], *, state: str | Path | None = None, max_parallel: int = 4,
                 now: Callable[[], datetime] = _utc_now, wait: Callable[[float], object] | None = None,
                 lease_seconds: float = 60.0, renew_seconds: float = 10.0, retry_seconds: float = 5.0,
                 max_sleep: float = 60.0, first_run_now: bool = False, run_job: RunJob = default_run_job) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel is at least 1, not {max_parallel}")
        if not 0 < renew_seconds < lease_seconds:
            raise ValueError("leases must be renewed more often than they last (0 < renew_seconds < lease_seconds)")
        self.jobs = list(jobs)
        keys = [job.key for job in self.jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("two jobs of one pipeline instance and group")
        self.state = str(state) if state is not None else None
        self.max_parallel = max_parallel
        self.now = now
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self.max_sleep = max_sleep
        self.first_run_now = first_run_now
        self.run_job = run_job
        self.results: deque[JobResult] = deque(maxlen=1000)
        """The latest ends of jobs, oldest first."""
        self._wait = wait or self._sleep
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="syncengine-job")
        self._stores: dict[str, StateStore] = {}
        self._active: dict[JobKey, _Active] = {}
        self._last: dict[JobKey, datetime] = {}
        self._retry_at: dict[JobKey, datetime] = {}
        self._waiting: set[JobKey] = set()
        self._since: datetime | None = None
        self._heartbeat: threading.Thread | None = None

    # --- what is due ---------------------------------------------------------------------------------------

    def _store(self, job: Job) -> StateStore:
        """The scheduler's own connection to a job's state (used under the lock only)."""
        path = self.state or str(job.pipeline.state_path)
        if path not in self._stores:
            self._stores[path] = StateStore(path)
        return self._stores[path]

    def _connected(self, job: Job) -> tuple[str, ...]:
        off = self._store(job).disconnected(job.pipeline.name)
        return tuple(name for name in job.syncs if name not in off)

    def last_run(self, job: Job, syncs: Sequence[str] | None = None) -> datetime | None:
        """When the job last ran (see the module's docstring), over ``syncs`` (default: its connected ones)."""
        with self._lock:
            names = self._connected(job) if syncs is None else tuple(syncs)
            finished = _finished_runs(self._store(job), job.pipeline.name, names or job.syncs)
            moments = [moment for moment in (min(finished.values(), default=None), self._last.get(job.key))
                       if moment is not None]
            return max(moments, default=None)

    def next_due(self, job: Job, now: datetime | None = None) -> datetime:
        """When the job is due next (``now`` when it is due), in UTC."""
        moment = now or self.now()
        with self._lock:
            return self._due_at(job, self.last_run(job), moment)

    def _due_at(self, job: Job, last: datetime | None, now: datetime) -> datetime:
        """:func:`next_due` for a job; one that never ran counts from when this scheduler first looked.

        ``next_due`` without a last run answers the first slot after *now*, which recedes as now does: the
        first look is the anchor, so such a job runs at the first slot after the scheduler started.
        """
        if self._since is None:
            self._since = now
        if last is None and not self.first_run_now:
            last = self._since
        return next_due(job.schedule, last, now, first_run_now=self.first_run_now)

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        with self._lock:
            return bool(self._active)

    def running(self) -> list[Job]:
        """The jobs running now."""
        with self._lock:
            return [active.job for active in self._active.values()]

    # --- starting jobs ---------------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[Job]:
        """Start every due job there is room for, most overdue first; returns those started."""
        moment = now or self.now()
        started: list[Job] = []
        with self._lock:
            if self._stopping.is_set():
                return started
            due: list[tuple[datetime, int, Job, tuple[str, ...]]] = []
            for order, job in enumerate(self.jobs):
                if not job.syncs or job.key in self._active or self._retry_at.get(job.key, moment) > moment:
                    continue
                try:
                    connected = self._connected(job)
                    last = self.last_run(job, connected)
                    at = self._due_at(job, last, moment)
                except (sqlite3.Error, SyncEngineError) as exc:
                    self._failed_to_start(job, moment, exc)
                    continue
                if at <= moment:
                    anchor = last or self._since
                    slot = job.schedule.next_after(anchor) if anchor is not None else moment
                    due.append((slot, order, job, connected))
                elif job.key in self._waiting:
                    # It waited for a lease, and the run that held it (another process's) ran this slot.
                    self._waiting.discard(job.key)
                    self._retry_at.pop(job.key, None)
                    log.info("%s: already run for this slot by another process; next run %s", job.title,
                             at.isoformat(), extra={**_fields(job, connected), "status": "already run"})
            for _, _, job, connected in sorted(due, key=lambda item: item[:2]):
                if len(self._active) >= self.max_parallel:
                    break
                try:
                    if self._start(job, connected, moment):
                        started.append(job)
                except (sqlite3.Error, SyncEngineError) as exc:
                    self._failed_to_start(job, moment, exc)
        return started

    def _failed_to_start(self, job: Job, now: datetime, exc: Exception) -> None:
        """The state could not be asked (locked too long, unreadable): try again a little later."""
        self._retry_at[job.key] = now + timedelta(seconds=self.retry_seconds)
        log.error("%s: could not start: %s", job.title, exc, extra=_fields(job, job.syncs))

    def _start(self, job: Job, connected: tuple[str, ...], now: datetime) -> bool:
        key = job.key
        if not connected:
            self._last[key] = now  # skipped until its next slot
            log.info("%s: skipped: every sync of it is disconnected (%s)", job.title, ", ".join(job.syncs),
                     extra={**_fields(job, ()), "status": "disconnected"})
            self.results.append(JobResult(job, now, "disconnected", ()))
            return False
        store = self._store(job)
        token = uuid.uuid4().hex
        held = store.acquire_leases(job.pipeline.name, connected, token, seconds=self.lease_seconds)
        if held:
            self._retry_at[key] = now + timedelta(seconds=self.retry_seconds)
            level = logging.DEBUG if key in self._waiting else logging.INFO
            self._waiting.add(key)
            log.log(level, "%s: waiting: sync %s is leased by %s (until %s)", job.title, held[0].sync,
                    held[0].owner, held[0].expires_at, extra={**_fields(job, connected), "status": "waiting"})
            return False
        try:
            busy = _open_runs_here(store, job.pipeline.name, connected)
            if busy:
                self._retry_at[key] = now + timedelta(seconds=self.retry_seconds)
                level = logging.DEBUG if key in self._waiting else logging.INFO
                self._waiting.add(key)
                log.log(level, "%s: waiting: sync %s is being run by %s", job.title, busy[0][0], busy[0][1],
                        extra={**_fields(job, connected), "status": "waiting"})
                store.release_leases(token)
                return False
            self._waiting.discard(key)
            self._retry_at.pop(key, None)
            # Another process may have run this slot while this one waited for the lease: ask again, holding it.
            at = self._due_at(job, self.last_run(job, connected), now)
            if at > now:
                log.info("%s: already run for this slot by another process; next run %s", job.title, at.isoformat(),
                         extra={**_fields(job, connected), "status": "already run"})
                store.release_leases(token)
                return False
        except BaseException:
            store.release_leases(token)
            raise
        self._last[key] = now
        stop = threading.Event()
        future = self._pool.submit(self._run, job, connected, token, stop, now)
        self._active[key] = _Active(job, connected, token, stop, future)
        self._ensure_heartbeat()
        return True

    def _run(self, job: Job, syncs: tuple[str, ...], token: str, stop: threading.Event, started: datetime) -> JobResult:
        """One job's run, on a pool thread; its leases are released whatever happens."""
        begun = time.perf_counter()
        result = JobResult(job, started, "failed", syncs)
        try:
            log.info("%s: started (%s)", job.title, ", ".join(syncs),
                     extra={**_fields(job, syncs), "status": "started"})
            report: RunReport | None = None
            try:
                report = self.run_job(job.pipeline, RunOptions(syncs=syncs, stop=stop), self.state)
                status = job_status(report)
                message = report.error or next((s.message for s in report.syncs.values()
                                                if s.status in ("failed", "interrupted") and s.message), None)
            except Disconnected as exc:  # disconnected between the check and the run
                status, message = "disconnected", str(exc)
            except SyncEngineError as exc:
                status, message = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in one job must not stop the scheduler
                log.debug("unexpected error in %s", job.title, exc_info=True)
                # Its message may hold anything, so only the debug log (which masks secrets) shows it.
                status, message = "failed", f"unexpected {type(exc).__name__} (--log-level debug shows it)"
            result = JobResult(job, started, status, syncs, report.run_id if report else None,
                               report.exit_code if report else None, message, time.perf_counter() - begun)
            level = logging.WARNING if status == "failed" else logging.INFO
            log.log(level, "%s: %s%s (run %s, %.1f s)%s", job.title, status, "" if status != "interrupted" else
                    " after the batch in flight", result.run_id or "-", result.seconds,
                    f": {message}" if message else "",
                    extra={**_fields(job, syncs), "status": status, "run_id": result.run_id,
                           "exit_code": result.exit_code, "seconds": round(result.seconds, 3), "error": message})
        finally:
            with self._lock:
                try:
                    self._store(job).release_leases(token)
                except sqlite3.Error as exc:
                    log.warning("%s: could not release its leases (they expire by themselves): %s", job.title, exc)
                self._active.pop(job.key, None)
                self.results.append(result)
            self._wake.set()
        return result

    # --- leases while running -------------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="syncengine-lease-heartbeat", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        """Renew the leases of the running jobs; a job whose lease was taken over is stopped."""
        while not self._closed.wait(self.renew_seconds):
            self.renew()

    def renew(self) -> None:
        """One heartbeat (the heartbeat thread calls it every ``renew_seconds``)."""
        with self._lock:
            for active in list(self._active.values()):
                try:
                    held = self._store(active.job).renew_leases(active.token, seconds=self.lease_seconds)
                except sqlite3.Error as exc:
                    log.warning("%s: could not renew its leases: %s", active.job.title, exc)
                    continue
                if held < len(active.syncs) and not active.stop.is_set():
                    log.warning("%s: its lease was taken over by another process (this one stalled longer than a "
                                "lease); it stops after the batch in flight", active.job.title,
                                extra=_fields(active.job, active.syncs))
                    active.stop.set()

    # --- the loop ---------------------------------------------------------------------------------------------

    def seconds_to_next(self, now: datetime | None = None) -> float:
        """How long the loop may sleep: until the next job is due or may be tried again (at most ``max_sleep``)."""
        moment = now or self.now()
        soonest = self.max_sleep
        with self._lock:
            if len(self._active) >= self.max_parallel:
                return soonest  # the end of a job wakes the loop
            for job in self.jobs:
                if not job.syncs or job.key in self._active:
                    continue
                try:
                    at = self.next_due(job, moment)
                except (sqlite3.Error, SyncEngineError):
                    at = moment + timedelta(seconds=self.retry_seconds)
                at = max(at, self._retry_at.get(job.key, at))
                soonest = min(soonest, max(0.0, (at - moment).total_seconds()))
        return soonest

    def run_forever(self) -> None:
        """Start due jobs until :meth:`request_stop`; then wait for the jobs in flight to end their batch."""
        while not self._stopping.is_set():
            try:
                self.tick()
                delay = self.seconds_to_next()
            except Exception as exc:  # noqa: BLE001 - the loop outlives one bad pass; the next retries
                log.error("the scheduler's loop failed: %s: %s", type(exc).__name__, exc)
                log.debug("the scheduler's loop failed", exc_info=True)
                delay = self.retry_seconds
            if self._stopping.is_set():
                break
            self._wait(delay)
        self.drain()

    def _sleep(self, seconds: float) -> None:
        """The default wait: until the time passes, a job ends, or a stop is requested."""
        self._wake.wait(seconds)
        self._wake.clear()

    def request_stop(self) -> None:
        """Start no more jobs; each running job stops after its batch in flight is committed."""
        with self._lock:
            if not self._stopping.is_set():
                log.info("stopping: no job starts any more; %d running end after their batch in flight",
                         len(self._active), extra={"running": [active.job.title for active in self._active.values()]})
            self._stopping.set()
            for active in self._active.values():
                active.stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping.is_set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job runs (or ``timeout`` seconds); returns whether none does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                futures = [active.future for active in self._active.values()]
            if not futures:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait_futures(futures, timeout=remaining)

    def drain(self) -> None:
        """Wait for every running job to end."""
        self.wait_idle()

    def close(self) -> None:
        """Stop (see :meth:`request_stop`), wait for the running jobs, and close the state connections."""
        self.request_stop()
        self.drain()
        self._pool.shutdown(wait=True)
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _fields(job: Job, syncs: Sequence[str]) -> dict[str, Any]:
    """What every log line about a job carries (a JSON log's fields)."""
    return {"pipeline": job.pipeline.name, "profile": job.profile, "group": job.group, "syncs": list(syncs)}


__all__ = ["Job", "JobKey", "JobResult", "RunJob", "Scheduler", "default_run_job", "instances", "job_status",
           "jobs_of", "pipeline_jobs", "schedulable_syncs", "why_empty"]
