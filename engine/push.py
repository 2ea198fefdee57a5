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

import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from engine.config import Pipeline, SyncSpec
from engine.errors import EXIT_FAILED, EXIT_OK, ConfigError, RecordError, SyncEngineError, TransientError
from engine.interfaces import (
    ACTIONS,
    CREATE,
    DELETE,
    OK,
    UPDATE,
    Change,
    Delivery,
    Outcome,
    PushEvent,
    PushSource,
    RunInfo,
)
from engine.mapping import CompiledMapping, IdentityMapping
from engine.runner import Engine, record_hash
from engine.state_store import TOMBSTONE
from engine.templating import EnvView

log = logging.getLogger("syncengine").getChild("serve")

WRITE_RETRY_DELAYS = (0.2, 0.5, 1.0)
"""A pushed record is retried briefly: the sender is waiting, and it retries a 5xx itself."""
PAST = {CREATE: "created", UPDATE: "updated", DELETE: "deleted"}


class PushSync:
    """One sync fed by a receiver: each event is mapped, compared with the state and written."""

    def __init__(self, engine: Engine, sync: SyncSpec, run: RunInfo) -> None:
        self.engine = engine
        self.sync = sync
        self.store = engine.store
        self.stream_id = self.store.stream_id(engine.pipeline.name, sync.name)
        self.run_row = self.store.begin_run(self.stream_id, engine.run_id, "serve",
                                            engine.started_at.isoformat(timespec="seconds"))
        self.counts = dict.fromkeys(("read", "creates", "updates", "deletes", "unchanged", "filtered", "skipped",
                                     "errors"), 0)
        self.started = time.perf_counter()
        self.mapping = engine.mapping(sync, run)
        self.key_mapping = _key_mapping(engine, sync, run, self.mapping)
        ctx = engine.stream_context(sync, self.mapping, run)
        destination = engine.adapter(engine.pipeline.destinations[sync.destination])
        self.writer = destination.open_stream(sync.destination_options, ctx)
        self.dead_keys = self.store.dead_keys(self.stream_id)

    # --- one event ----------------------------------------------------------------------------------

    def deliver(self, event: PushEvent) -> Delivery:
        """Apply one pushed record; the answer is sent only after this returns."""
        action = event.action or UPDATE
        if action not in ACTIONS:
            return Delivery(400, f"unknown action '{action}'; expected one of: {', '.join(ACTIONS)}")
        self.counts["read"] += 1  # committed with the delivery's own outcome
        if action == DELETE:
            return self._delete(event.record)
        try:
            mapped = self.mapping.map(event.record)
        except RecordError as exc:
            return self._reject(exc, action, event.record, None, 422)
        if mapped is None:
            return self._skip("filtered", "filtered out by the mapping's filter")
        key, values = mapped.key, mapped.values
        digest = record_hash(values)
        known = self._lookup(key)
        if known is not None and known[0] == TOMBSTONE:
            if action == UPDATE:
                return self._skip("skipped", f"ignored: '{key}' was deleted; a late update does not bring it back")
            known = None
        if known is not None and known[0] == digest:
            return self._skip("unchanged", f"'{key}' is unchanged")
        if known is not None and self.sync.mode == "insert":
            return self._skip("skipped", f"'{key}' exists and the sync only inserts")
        change = Change(UPDATE if known else CREATE, key, values, known[1] if known else None)
        return self._write(change, digest, event.record)

    def _delete(self, record: dict[str, Any]) -> Delivery:
        try:
            mapped = self.key_mapping.map(record)
        except RecordError as exc:
            return self._reject(exc, DELETE, record, None, 422)
        if mapped is None:
            return self._skip("filtered", "filtered out by the mapping's filter")
        key = mapped.key
        if self.sync.mode != "mirror":
            return self._skip("skipped", f"delete of '{key}' ignored: deletes apply only in mode: mirror")
        known = self._lookup(key)
        if known is not None and known[0] == TOMBSTONE:
            return self._skip("unchanged", f"'{key}' is already deleted")
        return self._write(Change(DELETE, key, None, known[1] if known else None), TOMBSTONE, record)

    def _lookup(self, key: str) -> tuple[bytes, str | None] | None:
        return self.store.lookup(self.stream_id, key)

    def _write(self, change: Change, digest: bytes, record: dict[str, Any]) -> Delivery:
        try:
            outcome = self._send(change)
        except RecordError as exc:
            return self._reject(exc, change.action, record, change.values, 422)
        except SyncEngineError as exc:
            error = RecordError(f"the destination failed: {exc}", key=change.key)
            return self._reject(error, change.action, record, change.values, 502)
        if not outcome.ok:
            error = RecordError(outcome.error or "rejected by the destination", key=change.key, field=outcome.field)
            return self._reject(error, change.action, record, change.values, 422)
        resolved = [change.key] if change.key in self.dead_keys else []
        self._commit(_counter(change.action), upserts=[(change.key, digest, outcome.remote_id, None)],
                     resolved=resolved)
        self.dead_keys.difference_update(resolved)
        return Delivery(200, f"{PAST[change.action]} '{change.key}'")

    def _commit(self, counter: str, **changes: Any) -> None:
        """Count one delivery and commit it with its state changes; counts move only if the commit did."""
        counts = {**self.counts, counter: self.counts[counter] + 1}
        self.store.commit_batch(self.stream_id, self.run_row, counts, **changes)
        self.counts = counts

    def _send(self, change: Change) -> Outcome:
        for attempt in range(len(WRITE_RETRY_DELAYS) + 1):
            try:
                outcomes = self.writer.write([change])
            except TransientError as exc:
                if attempt >= len(WRITE_RETRY_DELAYS):
                    raise
                time.sleep(min(max(WRITE_RETRY_DELAYS[attempt], exc.retry_after or 0.0), 2.0))
                continue
            return OK if outcomes is None else outcomes[0]
        raise AssertionError("unreachable")

    def _skip(self, counter: str, message: str) -> Delivery:
        self._commit(counter)
        return Delivery(200, message)

    def _reject(self, error: RecordError, action: str | None, record: dict[str, Any],
                payload: dict[str, Any] | None, status: int) -> Delivery:
        """Dead-letter the record (state unchanged otherwise) and tell the sender why; secrets are masked."""
        redact = self.engine.redactor
        key = error.key or "(no key) " + hashlib.blake2b(repr(record).encode(), digest_size=6).hexdigest()
        message = redact.text(error.describe())
        row = (key, action, json.dumps(redact.data(record), default=str),
               json.dumps(redact.data(payload), default=str) if payload is not None else None,
               message, error.field, error.location)
        self._commit("errors", dead=[row])
        self.dead_keys.add(key)
        log.warning("%s: %s", self.sync.name, message)
        return Delivery(status, message)

    def finish(self, status: str, message: str | None) -> None:
        """Close the sync's run row (and let the destination finish)."""
        try:
            self.writer.finish()
        except SyncEngineError as exc:
            status, message = "failed", self.engine.redactor.text(str(exc))
        self.store.finish_run(self.stream_id, self.run_row, self.counts, status=status, message=message,
                              seconds=time.perf_counter() - self.started)


def _counter(action: str) -> str:
    return {CREATE: "creates", UPDATE: "updates", DELETE: "deletes"}[action]


def _key_mapping(engine: Engine, sync: SyncSpec, run: RunInfo,
                 full: CompiledMapping | IdentityMapping) -> CompiledMapping | IdentityMapping:
    """A mapping of only the key fields: a delete may carry nothing but the key."""
    if sync.fields is None:
        return full
    leaves = [f for f in sync.fields if str(f.path[0]) in sync.key_fields]
    context = {"vars": engine.pipeline.vars, "env": EnvView(), "run": run}
    return CompiledMapping(engine.env, leaves, key_fields=sync.key_fields, key_template=sync.key_template,
                           filter_template=None, context=context)


class PushHub:
    """Routes events to syncs, one at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.run = RunInfo(engine.run_id, engine.started_at)
        self.routes: dict[str, dict[str, PushSync]] = {}
        self.lock = threading.Lock()

    def add_receiver(self, name: str, receiver: PushSource) -> list[str]:
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
        return list(routes)

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


def _serve(receiver: PushSource, deliver: Callable[[PushEvent], Delivery], stop: threading.Event,
           failures: list[str], redact: Callable[[str], str]) -> None:
    try:
        receiver.serve(deliver, stop)
    except Exception as exc:  # noqa: BLE001 - reported, and the whole server stops
        log.error("a receiver stopped: %s", redact(str(exc)))
        failures.append(redact(str(exc)))
    finally:
        stop.set()


def serve_pipeline(pipeline: Pipeline, *, host: str, port: int, state_path: str | None = None) -> int:
    """Serve every receiver of the pipeline until SIGTERM or SIGINT; returns the exit code."""
    receivers = [name for name, ep in pipeline.sources.items() if ep.role == "receiver"]
    if not receivers:
        raise ConfigError(f"{pipeline.path}: no source is a receiver, so there is nothing to serve; "
                          "use `syncengine apply` for pull sources")
    engine = Engine(pipeline, state_path=state_path)
    hub = PushHub(engine)
    stop = threading.Event()
    failures: list[str] = []
    threads: list[threading.Thread] = []
    restore = _on_signals(stop)
    try:
        for name in receivers:
            receiver: PushSource = engine.adapter(pipeline.sources[name])
            routes = hub.add_receiver(name, receiver)
            url = receiver.bind(host, port)
            print(f"listening on {url} ({name}: {', '.join(routes)})", flush=True)
            threads.append(threading.Thread(target=_serve, name=f"receiver-{name}", daemon=True,
                                            args=(receiver, hub.deliverer(name), stop, failures,
                                                  engine.redactor.text)))
        for thread in threads:
            thread.start()
        while not stop.wait(0.5):
            pass
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        restore()
        try:
            hub.finish("failed" if failures else "ok", "; ".join(failures) or None)
        finally:
            engine.close()
    print("stopped", flush=True)
    return EXIT_FAILED if failures else EXIT_OK


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
