"""Serve a pipeline's receivers: records pushed one at a time are mapped, written and recorded.

``syncengine serve`` binds each receiver source (an adapter registered with ``REGISTRY.receiver``),
and routes every arriving :class:`~engine.interfaces.PushEvent` to the sync whose source options
name its route (for the Aljex live sync: ``source: {name: aljex_live, table: employees}``). Per
event: map, hash, look the key up in the state, write the change to the destination, then commit
the state, and only then answer the sender, so a 2xx means durable. Deliveries are serialized
(one state connection, destinations that are not thread-safe), which also orders concurrent
posts of one key.

The rules for duplicates and out-of-order posts (the sender gives no version or timestamp):

- a record whose mapped values are unchanged is not written (a repeated post is harmless);
- ``create`` or ``update`` of a key the state does not know writes a create; of a known key,
  an update (so a repeated create is an update);
- ``delete`` writes a delete and leaves a *tombstone*; it is sent even for a key the state does
  not know, since the destination may hold it from another sync (the morning export);
- an ``update`` for a tombstoned key is a late post: it is ignored (answered 200, counted as
  ``skipped``), so it cannot resurrect a deleted record; a ``create`` for a tombstoned key is a
  genuine re-creation and is written;
- deletes apply only in ``mode: mirror``; in ``upsert`` they are skipped, in ``insert`` updates are.

A tombstone is the key's row in the state's ``records`` table with the all-zero hash, so the
destination's acknowledgement, the tombstone, the dead letters and the run's progress land in one
state transaction (no mapped record hashes to sixteen zero bytes).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from jinja2 import nodes

from engine.config import Pipeline, SyncSpec
from engine.errors import EXIT_FAILED, EXIT_OK, ConfigError, SyncEngineError
from engine.interfaces import (
    Delivery,
    DescribesRoutes,
    PushEvent,
    PushSource,
    ReadableDestination,
    RouteInfo,
    RunInfo,
)
from engine.mapping import AnyMapping, CompiledMapping
from engine.retry import Backoff
from engine.runner import Engine, RunOptions, SyncReport
from engine.scheduler import Scheduler, pipeline_jobs, why_empty
from engine.sync_loop import SyncLoop
from engine.sync_state import SyncState

log = logging.getLogger("syncengine").getChild("serve")

CONTROL_REFRESH = 5.0
"""Seconds between readings of the schedules the control API sets (``serve --control``)."""
WRITE_RETRY = Backoff(first=0.2, cap=2.0, retries=3)
"""A pushed record is retried briefly: the sender is waiting, and it retries a 5xx itself."""


class PushSync:
    """One sync fed by a receiver: each event goes through the engine's one loop as a batch of one."""

    def __init__(self, engine: Engine, sync: SyncSpec, run: RunInfo) -> None:
        self.engine = engine
        self.sync = sync
        self.started = time.perf_counter()
        self.report = SyncReport(sync.name)
        self.state = SyncState(engine.store, engine.pipeline.name, sync.name, mode=sync.mode,
                               key_fields=sync.key_fields, memo_fields=sync.memo_fields)
        for note in self.state.begin("serve", engine.run_id, engine.started_at.isoformat(timespec="seconds")):
            log.warning("%s: %s", sync.name, note)
        self.mapping = engine.mapping(sync, run)
        self.key_mapping = _key_mapping(engine, sync, run, self.mapping)
        ctx = engine.stream_context(sync, self.mapping, run)
        self.writer = engine.destination(sync).open_stream(sync.destination_options, ctx)
        # A pushed record is retried briefly: the sender is waiting, and it retries a 5xx itself.
        self.loop = SyncLoop(engine, sync, self.state, self.report, self.writer, RunOptions(retry=WRITE_RETRY))
        self.loop.budgeted = False

    @property
    def counts(self) -> dict[str, int]:
        """What this sync's receiver has done since it started."""
        return self.report.counts

    def deliver(self, event: PushEvent) -> Delivery:
        """Apply one pushed record; the answer is sent only after this returns."""
        delivery = self.loop.push(event, self.mapping, self.key_mapping)
        if delivery.status >= 400:
            log.warning("%s: %s", self.sync.name, delivery.message)
        return delivery

    def finish(self, status: str, message: str | None) -> None:
        """Close the sync's run row (and let the destination finish)."""
        try:
            self.writer.finish()
        except SyncEngineError as exc:
            status, message = "failed", self.engine.redactor.text(str(exc))
        if status == "ok" and self.counts["errors"]:
            status = "partial"
        self.state.finish(self.counts, status=status, message=message, seconds=time.perf_counter() - self.started,
                          cursor=None, advance_cursor=False)


def _chain(node: nodes.Node) -> tuple[str, ...] | None:
    """``record.a.b`` (or ``record['a']['b']``) as ("a", "b"); ``None`` when the chain does not start at record."""
    parts: list[str] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            parts.append(node.arg.value)
        else:
            return None
        node = node.node
    if isinstance(node, nodes.Name) and node.name == "record" and parts:
        return tuple(reversed(parts))
    return None


def source_fields(engine: Engine, sync: SyncSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the source fields a sync's templates read, dotted; the source fields its key is a plain copy of)."""
    sources: list[str] = [f.source for f in sync.fields or () if f.is_template]
    if sync.group is not None:
        sources += [f.source for f in sync.group.fields if f.is_template]
    if sync.key_template is not None:
        sources.append(sync.key_template[0])
    chains: set[tuple[str, ...]] = set()
    for source in sources:
        ast = engine.env.parse(source)
        for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
            chain = _chain(node)
            if chain is not None and chain != ("get",):  # record.get is the method, not a field
                chains.add(chain)
        for call in ast.find_all(nodes.Call):  # record.get('name') reads the field 'name'
            target = call.node
            if isinstance(target, nodes.Getattr) and target.attr == "get" and isinstance(target.node, nodes.Name) \
                    and target.node.name == "record" and call.args and isinstance(call.args[0], nodes.Const) \
                    and isinstance(call.args[0].value, str):
                chains.add((call.args[0].value,))
    # Only the longest reads: record.inventory.qty says inventory is an object holding qty.
    longest = sorted(c for c in chains if not any(o != c and o[:len(c)] == c for o in chains))
    copies = {str(f.path[0]): _chain_of(engine, f.source) for f in sync.fields or () if f.is_template
              and len(f.path) == 1}
    key = tuple(".".join(c) for k in sync.key_fields if (c := copies.get(k)) is not None)
    return tuple(".".join(c) for c in longest), key if len(key) == len(sync.key_fields) else ()


def _chain_of(engine: Engine, source: str) -> tuple[str, ...] | None:
    """The field a template copies as it is (``{{ record.sku }}``), else ``None``."""
    body = engine.env.parse(source).body
    if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
        return _chain(body[0].nodes[0])
    return None


def _key_mapping(engine: Engine, sync: SyncSpec, run: RunInfo,
                 full: AnyMapping) -> AnyMapping:
    """A mapping of only the key fields: a delete may carry nothing but the key."""
    if sync.fields is None:
        return full
    leaves = [f for f in sync.fields if str(f.path[0]) in sync.key_fields]
    context = {"vars": engine.pipeline.vars, "env": engine.pipeline.env(), "run": run}
    return CompiledMapping(engine.env, leaves, key_fields=sync.key_fields, key_template=sync.key_template,
                           filter_template=None, context=context)


class PushHub:
    """Routes events to syncs, one at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.run = RunInfo(engine.run_id, engine.started_at)
        self.routes: dict[str, dict[str, PushSync]] = {}
        self.lock = threading.Lock()

    def add_receiver(self, name: str, receiver: PushSource[object]) -> list[str]:
        """Open the syncs fed by one receiver; returns their routes."""
        routes: dict[str, PushSync] = {}
        for sync in self.engine.pipeline.syncs.values():
            if sync.source != name or not sync.enabled:
                continue
            route = receiver.route(sync.source_options)
            if route in routes:
                raise ConfigError(f"syncs '{routes[route].sync.name}' and '{sync.name}' both receive '{route}' "
                                  f"from {name}; each route may feed one sync")
            routes[route] = PushSync(self.engine, sync, self.run)
        if not routes:
            raise ConfigError(f"no enabled sync reads from receiver '{name}'")
        self.routes[name] = routes
        if isinstance(receiver, DescribesRoutes):
            receiver.describe_routes([self.route_info(route, target.sync) for route, target in routes.items()])
        return list(routes)

    def route_info(self, route: str, sync: SyncSpec) -> RouteInfo:
        """What a receiver may know of a route: the source fields its mapping reads, its key, its records."""
        paths, key = source_fields(self.engine, sync)
        destination = self.engine.destination(sync)
        if isinstance(destination, ReadableDestination):
            options = sync.destination_options
            lock = self.lock  # reads wait for any delivery in progress, as deliveries wait for each other

            def count() -> int:
                with lock:
                    return destination.count(options)

            def rows(offset: int, limit: int) -> list[dict[str, Any]]:
                with lock:
                    return destination.rows(options, offset, limit)

            return RouteInfo(route, sync.name, paths, key, count=count, rows=rows)
        return RouteInfo(route, sync.name, paths, key)

    def deliverer(self, name: str) -> Callable[[PushEvent], Delivery]:
        """The ``deliver`` callback of one receiver."""
        routes = self.routes[name]

        def deliver(event: PushEvent) -> Delivery:
            target = routes.get(event.route)
            if target is None:
                return Delivery(404, f"unknown table '{event.route}'; this receiver serves: {', '.join(routes)}")
            with self.lock:
                return target.deliver(event)

        return deliver

    def finish(self, status: str, message: str | None) -> None:
        """Close every sync's run row."""
        with self.lock:
            for routes in self.routes.values():
                for target in routes.values():
                    target.finish(status, message)


def _serve(receiver: PushSource[object], deliver: Callable[[PushEvent], Delivery], stop: threading.Event,
           failures: list[str], redact: Callable[[str], str]) -> None:
    try:
        receiver.serve(deliver, stop)
    except Exception as exc:  # noqa: BLE001 - reported, and the whole server stops
        log.error("a receiver stopped: %s", redact(str(exc)))
        failures.append(redact(str(exc)))
    finally:
        stop.set()


def _schedule(scheduler: Scheduler, stop: threading.Event, failures: list[str]) -> None:
    """The scheduler's loop on its thread; should it end by itself (a bug), the whole server stops."""
    try:
        scheduler.run_forever()
    except Exception as exc:  # noqa: BLE001 - reported, and the whole server stops
        log.error("the scheduler stopped: %s: %s", type(exc).__name__, exc)
        failures.append(f"the scheduler stopped: {type(exc).__name__}")
    finally:
        stop.set()


def serve_pipeline(pipeline: Pipeline, *, host: str, port: int, state_path: str | None = None,
                   schedules: bool = True, max_parallel: int = 4,
                   variables: Mapping[str, Any] | None = None, control: bool = False,
                   templates_dir: Path | None = None, control_port: int = 0) -> int:
    """Serve every receiver of the pipeline and run its schedules until SIGTERM or SIGINT; returns the exit code.

    The schedules are the pipeline's, or every enabled profile's when it has a profiles file (loaded with
    ``variables`` over their own vars; see :mod:`engine.scheduler`); ``schedules=False`` serves the receivers
    only. A pipeline needs a receiver or a schedule to be served. On SIGTERM or SIGINT no job starts any
    more, the running ones end after the batch in flight is committed (``interrupted``), and the exit is 0.
    """
    receivers = [name for name, ep in pipeline.sources.items() if ep.role == "receiver"]
    jobs = pipeline_jobs(pipeline, variables=variables) if schedules else []
    for job in jobs:
        if not job.syncs:
            log.warning("%s (%s): %s", job.title, job.location, why_empty(job))
    jobs = [job for job in jobs if job.syncs]
    app = None
    if control and state_path is not None:
        raise ConfigError("--state with --control: the control API's runs keep their state beside each template, "
                          "where its scheduled runs must look too; leave --state out")
    if control:
        from engine.control_api import control_app_from_env  # late: only serve --control needs it

        state_file = Path(state_path) if state_path else pipeline.state_path
        app = control_app_from_env(templates_dir or pipeline.base_dir, state_file.resolve().parent / "control.db")
        own = list(jobs)
        jobs += _control_jobs(app) if schedules else []
    if not receivers and not jobs and app is None:
        if not schedules:
            raise ConfigError(f"{pipeline.path}: no source is a receiver, so with --no-schedules there is nothing to "
                              "serve; use `syncengine apply` for pull sources")
        raise ConfigError(f"{pipeline.path}: no source is a receiver and no schedule runs a sync, so there is "
                          "nothing to serve; give the pipeline (or a group, or a profile) a `schedule:`, or use "
                          "`syncengine apply` for pull sources")
    engine = Engine(pipeline, state_path=state_path) if receivers else None
    hub = PushHub(engine) if engine is not None else None
    scheduler = Scheduler(jobs, state=state_path, max_parallel=max_parallel) if jobs or (app and schedules) \
        else None
    stop = threading.Event()
    failures: list[str] = []
    threads: list[threading.Thread] = []
    closers: list[Callable[[], None]] = []
    restore = _on_signals(stop)
    try:
        if engine is not None and hub is not None:
            for name in receivers:
                receiver = engine.receiver(name)
                routes = hub.add_receiver(name, receiver)
                url = receiver.bind(host, port)
                print(f"listening on {url} ({name}: {', '.join(routes)})", flush=True)
                threads.append(threading.Thread(target=_serve, name=f"receiver-{name}", daemon=True,
                                                args=(receiver, hub.deliverer(name), stop, failures,
                                                      engine.redactor.text)))
        if app is not None:
            from engine.control_api import make_control_server

            url, serve_forever, close_control = make_control_server(host, control_port, app)
            closers.append(close_control)
            print(f"control API on {url}", flush=True)
            threads.append(threading.Thread(target=serve_forever, name="control", daemon=True))
            if scheduler is not None:
                threads.append(threading.Thread(target=_follow_control, name="control-schedules", daemon=True,
                                                args=(app, scheduler, own, stop)))
        if scheduler is not None:
            for job in jobs:
                at = scheduler.next_due(job)
                when = "now (a run was missed)" if at <= scheduler.now() else at.isoformat()
                print(f"scheduled {job.title}: {job.schedule.describe()}; syncs {', '.join(job.syncs)}; next run "
                      f"{when}", flush=True)
            threads.append(threading.Thread(target=_schedule, name="scheduler", daemon=True,
                                            args=(scheduler, stop, failures)))
        for thread in threads:
            thread.start()
        while not stop.wait(0.5):
            pass
        if scheduler is not None:
            scheduler.request_stop()  # no new job; the running ones end after their batch in flight
        for close in closers:
            close()  # the control API answers what is in flight, its runs end after their batch
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        try:
            if scheduler is not None:
                scheduler.close()
        finally:
            restore()
            try:
                if hub is not None:
                    hub.finish("failed" if failures else "ok", "; ".join(failures) or None)
            finally:
                if engine is not None:
                    engine.close()
    print("stopped", flush=True)
    return EXIT_FAILED if failures else EXIT_OK


def _control_jobs(app: Any) -> list[Any]:
    """The scheduled jobs of the profiles made through the control API (read when called)."""
    from engine.scheduler import jobs_of

    jobs = []
    for instance in app.scheduled_pipelines():
        try:
            jobs += [job for job in jobs_of(instance) if job.syncs]
        except SyncEngineError as exc:
            log.warning("control profile %s: its schedule cannot run: %s", instance.name, exc)
    return jobs


def _follow_control(app: Any, scheduler: Any, base: list[Any], stop: threading.Event) -> None:
    """Keep the scheduler's jobs in step with the schedules the control API sets (every few seconds)."""
    while not stop.wait(CONTROL_REFRESH):
        try:
            scheduler.jobs = [*base, *_control_jobs(app)]
        except Exception as exc:  # noqa: BLE001 - a refresh that fails leaves the jobs as they were
            log.warning("control schedules could not be read: %s", exc)


def _on_signals(stop: threading.Event) -> Callable[[], None]:
    """Turn SIGTERM and SIGINT into a clean stop; returns what restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers; an embedding program stops us itself

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
