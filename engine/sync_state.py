"""The change-tracking policy of one sync, over the SQL of :mod:`engine.state_store`.

:class:`SyncState` decides, for one sync, everything the state store only records:

- **what changed**: which records of a batch are new or changed (one indexed join per batch),
  what an insert-only sync skips, and how explicit deletes and tombstones answer duplicates and
  out-of-order pushes;
- **commit an acknowledged group**: the new hashes, remote ids, tombstones and the fields
  ``delete_when`` reads, the dead letters written and resolved, and the run's progress, in one
  transaction, only for what the destination acknowledged;
- **what to replay**: after a read, which dead letters the stream did not bring again are dropped
  (gone from a whole snapshot) and which are replayed from their stored record;
- **what to delete**: the known keys a whole read did not see, narrowed by ``delete_when``, behind
  the mass-delete guard.

It knows nothing of adapters, templates or the command line, so it is tested on its own
(``tests/test_sync_state.py``). The engine's loop (:mod:`engine.runner`) asks it and obeys.

Tombstones (explicit deletes pushed by a receiver) are the key's row with the all-zero hash: a
later *update* of that key is a late post and is skipped; a *create* brings it back; a pull
source's record for it is a create.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import DeleteGuardTripped
from engine.interfaces import CREATE, DELETE, UPDATE, Change, Outcome, PendingChange
from engine.state_store import COUNTERS, TOMBSTONE, DeadLetter, HeldRow, StateStore

DeadRow = tuple[str, str | None, str | None, str | None, str, str | None, str | None]
"""(key, action, source record JSON, redacted payload JSON, message, field, template location)"""
UNREADABLE = "unreadable"
"""The dead-letter action of a source row that could not be read into a record."""
COUNTER_OF = {CREATE: "creates", UPDATE: "updates", DELETE: "deletes"}


def new_counts() -> dict[str, int]:
    """A run's counters, all zero."""
    return dict.fromkeys(COUNTERS, 0)


Pending = tuple[dict[str, Any], bytes, dict[str, Any] | None, str | None]
"""A mapped record waiting in a batch: (values, hash, source record, action).

``action`` is what a pushed record asked for (create, update, delete); ``None`` for a pulled
record, which is a create or an update as the state says. An explicit delete carries the values
of its key fields only, and the tombstone as its hash. (A plain tuple: one is made per record.)
"""


@dataclass
class Decision:
    """What the state says about one batch: the changes to send, and why the others are not sent."""

    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    """How many records the destination already holds (or whose delete it already had)."""
    unchanged_why: dict[str, str] = field(default_factory=dict)
    """Per unchanged key, why (only when asked to explain: a receiver answers its sender with it)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Keys not sent by the sync's rules (insert-only, deletes outside mirror, late updates), with why."""
    visited: set[str] = field(default_factory=set)
    """The keys that are new or changed (sent or skipped); every other key of the batch is unchanged."""


class SyncState:
    """One sync's state: change detection, acknowledged commits, dead-letter replay and delete inference."""

    def __init__(self, store: StateStore, pipeline: str, sync: str, *, mode: str = "upsert",
                 key_fields: tuple[str, ...] = (), memo_fields: tuple[str, ...] = (), dry: bool = False) -> None:
        self.store = store
        self.mode = mode
        self.key_fields = key_fields
        self.dry = dry
        self.stream_id = store.stream_id(pipeline, sync)
        self.dead_keys: set[str] = store.dead_keys(self.stream_id)
        self.held: set[str] = store.held_keys(self.stream_id) if self.dead_keys else set()
        """Keys sent without a known outcome: never sent again until someone decides."""
        self.pending: set[str] = store.pending_keys(self.stream_id) if self.stream_id >= 0 else set()
        """Keys of changes the destination accepted but had not carried out yet."""
        self.run_row = 0
        self.memo_fields = memo_fields
        self._missing: int | None = None
        self.keeps_raw = store.has_raw()
        """Whether the records keep raw hashes (a plan of an older state, opened read-only, has none)."""
        self.raw_of: dict[str, bytes] = {}
        """The raw hash of each record of the batch being written that has one (kept with its delivery)."""

    # --- the run -------------------------------------------------------------------------------------

    def begin(self, kind: str, run_id: str, started_at: str, *, start: str | None = None,
              start_reason: str | None = None) -> list[str]:
        """Open the run's record; returns notes about earlier runs whose process died (now ``interrupted``)."""
        notes = []
        if not self.dry:
            for gone in self.store.close_interrupted(self.stream_id):
                notes.append(f"the previous run {gone['run_id']} (started {gone['started_at']}) was "
                             "interrupted; what it acknowledged was kept, the rest is sent now")
        self.run_row = self.store.begin_run(self.stream_id, run_id, kind, started_at, start=start,
                                            start_reason=start_reason)
        self.store.start_seen()
        return notes

    def cursor(self) -> str | None:
        """The cursor the last good run ended with."""
        return self.store.cursor(self.stream_id)

    def known_count(self) -> int:
        """Live records the state knows for the sync."""
        return self.store.known_count(self.stream_id)

    def finish(self, counts: dict[str, int], *, status: str, message: str | None, seconds: float,
               cursor: str | None, advance_cursor: bool) -> None:
        """Close the run; the cursor advances in the same transaction when told to."""
        if not self.dry:
            self.store.finish_run(self.stream_id, self.run_row, counts, status=status, message=message,
                                  seconds=seconds, cursor=cursor, advance_cursor=advance_cursor)

    # --- what changed ----------------------------------------------------------------------------------

    def decide(self, batch: Mapping[str, Pending], *, everything: bool = False, explain: bool = False) -> Decision:
        """The changes of a batch to send (every key is marked seen for delete inference).

        Only the keys the join returns (new or changed) are visited: an unchanged record costs no
        Python work here, which is what makes a rerun with little changed cheap.
        """
        known = self.store.changed(self.stream_id, list(batch), [p[1] for p in batch.values()],
                                   everything=everything)
        decision = Decision(unchanged=len(batch) - len(known), visited=set(known))
        if explain:
            for key, pending in batch.items():
                if key not in known:
                    done = "already deleted" if pending[3] == DELETE else "unchanged"
                    decision.unchanged_why[key] = f"'{key}' is {done}"
        key_fields = self.key_fields
        single = key_fields[0] if len(key_fields) == 1 else None
        held = self.held
        for key, state in known.items():
            if held and key in held:
                decision.skipped[key] = (f"'{key}' is held: its last send has no known outcome; it is not sent again "
                                         "until decided (syncengine dead-letters --mark-sent or --discard)")
                continue
            values, _, _, action = batch[key]
            live = state.known and not state.tombstone
            if single is not None:  # the common case, without a comprehension per record
                key_values = {single: values.get(single)}
            else:
                key_values = {f: values.get(f) for f in key_fields} if key_fields else {"key": key}
            if action == DELETE:
                if self.mode != "mirror":
                    decision.skipped[key] = f"delete of '{key}' ignored: deletes apply only in mode: mirror"
                    continue
                decision.changes.append(Change(DELETE, key, None, state.remote_id if live else None, key_values))
                continue
            if state.tombstone and action == UPDATE:
                decision.skipped[key] = f"ignored: '{key}' was deleted; a late update does not bring it back"
                continue
            if live and self.mode == "insert":
                decision.skipped[key] = f"'{key}' exists and the sync only inserts"
                continue
            decision.changes.append(Change(UPDATE if live else CREATE, key, values,
                                           state.remote_id if live else None, key_values))
        return decision

    def raw_changed(self, keys: Sequence[str], hashes: Sequence[bytes]) -> list[str]:
        """Of keys and their raw hashes, the keys to map: the others are unchanged since their last delivery
        (and are marked seen). A key with a dead letter is always mapped, so that its letter settles."""
        changed = self.store.raw_changed(self.stream_id, keys, hashes)
        if self.dead_keys:
            dead = self.dead_keys
            changed.extend(key for key in keys if key in dead)
        return changed

    def refresh_raw(self, batch: Mapping[str, Pending], changed: set[str]) -> None:
        """Keep the raw hashes of a batch's records whose mapped hash was unchanged (their raw one was not),
        so the next run need not map them."""
        raw = self.raw_of
        if self.dry or not raw:
            return
        rows = [(raw[key], key, pending[1]) for key, pending in batch.items() if key in raw and key not in changed]
        if rows:
            self.store.refresh_raw(self.stream_id, rows)

    def is_live(self, key: str) -> bool:
        """Whether the destination holds the key as far as the state knows (delivered and not deleted)."""
        found = self.store.lookup(self.stream_id, key)
        return found is not None and found[0] != TOMBSTONE

    def mark_seen(self, keys: Sequence[str]) -> None:
        """Count keys as present in this run (records that failed, so a snapshot does not delete them)."""
        self.store.mark_seen(keys)

    # --- commit an acknowledged group --------------------------------------------------------------------

    def memo(self, values: Mapping[str, Any] | None) -> str | None:
        """What the state remembers of a record for ``delete_when``: exactly the fields it reads."""
        if not self.memo_fields:
            return None
        return json.dumps({f: (values or {}).get(f) for f in self.memo_fields}, default=str)

    def hold(self, rows: Sequence[HeldRow]) -> None:
        """Record changes as sent without a known outcome, before they are sent (a destination that must not
        repeat a write blindly); each answer's commit replaces them, a crash leaves them held."""
        if self.dry or not rows:
            return
        self.store.hold(self.stream_id, rows)
        self.dead_keys.update(row[0] for row in rows)

    def commit(self, counts: dict[str, int], *, delivered: Sequence[tuple[Change, bytes, Outcome]] = (),
               deletes: Sequence[str] = (), dead: Sequence[DeadRow] = (), settled: Sequence[str] = (),
               unknown: Sequence[HeldRow] = (), synced: bool = True,
               deletes_pending: Sequence[str] = ()) -> None:
        """Record what the destination acknowledged, with the run's progress, in one transaction.

        ``delivered`` are acknowledged changes with the hash of what was sent: a pushed delete leaves
        a tombstone, anything else its hash and remote id. ``deletes`` are inferred deletes (their
        row goes). ``dead`` are new dead letters; ``settled`` keys had one and are fine now;
        ``unknown`` were sent without a known outcome (held until someone decides).
        """
        if self.dry:
            return
        memo = self.memo if self.memo_fields else None
        raw = self.raw_of
        upserts: list[tuple[str, bytes, str | None, str | None, bytes | None]] = [
            (change.key, TOMBSTONE, None, None, None) if change.action == DELETE
            else (change.key, digest, outcome.remote_id, memo(change.values) if memo else None, raw.get(change.key))
            for change, digest, outcome in delivered]
        dead_keys = self.dead_keys
        resolved = [k for k in (*(u[0] for u in upserts), *deletes, *settled) if k in dead_keys] if dead_keys else []
        accepted: list[tuple[str, str, str | None]] = [
            (change.key, change.action, json.dumps(change.values, default=str) if change.values is not None else None)
            for change, _, outcome in delivered if outcome.pending]
        accepted += [(key, DELETE, None) for key in deletes_pending]
        was_pending = self.pending
        settled_pending = [k for k in (*(u[0] for u in upserts), *deletes) if k in was_pending] if was_pending else []
        self.store.commit_batch(self.stream_id, self.run_row, counts, upserts=upserts, deletes=deletes, dead=dead,
                                resolved=resolved, held=unknown, synced=synced, pending=accepted,
                                settled_pending=settled_pending)
        was_pending.difference_update(settled_pending)
        was_pending.update(k for k, _, _ in accepted)
        dead_keys.difference_update(resolved)
        dead_keys.update(row[0] for row in dead)
        if self.held:
            self.held.difference_update(resolved)
            self.held.difference_update(row[0] for row in dead)
        if unknown:
            dead_keys.update(row[0] for row in unknown)
            self.held.update(row[0] for row in unknown)

    # --- pending changes ----------------------------------------------------------------------------------

    def pending_changes(self) -> list[PendingChange]:
        """The changes accepted earlier and not known to be carried out."""
        return [PendingChange(key, action, self.key_values_of(key), remote_id, since,
                              json.loads(values) if values else None)
                for key, action, remote_id, since, values in self.store.pending_changes(self.stream_id)]

    def settle_pending(self, done: Sequence[str], undone: Sequence[tuple[str, str]]) -> None:
        """Record what the destination confirmed: done, or not done (then the record is sent again)."""
        if self.dry or not (done or undone):
            return
        self.store.settle_pending(self.stream_id, done, undone)
        self.pending.difference_update(done)
        self.pending.difference_update(k for k, _ in undone)

    # --- what to replay ---------------------------------------------------------------------------------

    def leftover_dead_letters(self, *, whole: bool, snapshot: bool) -> list[DeadLetter]:
        """Dead letters this run's read did not bring again: dropped when gone, else returned to replay.

        A whole snapshot that no longer holds a key says the record is gone, so its dead letter is
        dropped. Otherwise (a window, an increment, a snapshot read in part) the stream says nothing
        about the key, and its stored record is replayed. An unreadable row cannot be replayed: it
        stays listed until a whole read no longer has it.
        """
        if not self.dead_keys or self.dry:
            return []
        unseen = [k for k in self.dead_keys if k not in self.held and not self.store.was_seen(k)]
        if not unseen:
            return []
        if snapshot and whole:
            # A record gone from the snapshot takes its dead letter along, except a delete that failed: its
            # key is missing on purpose, and the letter stays until the delete goes through.
            gone = [d.key for d in self.store.dead_letters(self.stream_id, unseen) if d.action != DELETE]
            self.store.drop_dead(self.stream_id, gone)
            self.dead_keys.difference_update(gone)
            return []
        return [d for d in self.store.dead_letters(self.stream_id, unseen) if d.record and d.action != UNREADABLE]

    # --- what to delete -----------------------------------------------------------------------------------

    def missing_count(self) -> int:
        """How many known keys this run did not see (gathered once, after the read)."""
        if self._missing is None:
            self._missing = self.store.collect_missing(self.stream_id)
        return self._missing

    def deletions(self, *, known_before: int, size: int, max_share: float, force: bool,
                  condition: Callable[[str, Mapping[str, Any] | None], bool] | None = None) -> Iterator[list[Change]]:
        """The known keys this run did not see, as delete batches; raises when the guard trips.

        With ``condition`` (``delete_when``), a missing key is a delete only when the condition holds
        on its remembered fields; a key remembered without them is kept rather than guessed about.
        Nothing is yielded before the whole count passed the mass-delete guard.
        """
        store = self.store
        if not self.missing_count():
            return

        def doomed(row: tuple[str, str | None, str | None]) -> bool:
            if condition is None:
                return True
            memo = json.loads(row[2]) if row[2] else None
            return memo is not None and condition(row[0], memo)

        count = sum(sum(1 for row in rows if doomed(row)) for rows in store.missing(size))
        if not count:
            return
        share = count / known_before if known_before else 1.0
        if share > max_share and not force:
            raise DeleteGuardTripped(
                f"would delete {count} of {known_before} known records ({share:.0%}), more than the allowed "
                f"{max_share:.0%}; nothing was deleted. Check the source, then rerun with --force-deletes, "
                "or raise max_delete_share")
        for rows in store.missing(size):
            changes = [Change(DELETE, row[0], None, row[1], self.key_values_of(row[0])) for row in rows if doomed(row)]
            if changes:
                yield changes

    def key_values_of(self, key: str) -> dict[str, Any]:
        """The key fields' values of a state key (an inferred delete has no record to read them from)."""
        if not self.key_fields:
            return {"key": key}
        if len(self.key_fields) == 1:
            return {self.key_fields[0]: key}
        return dict(zip(self.key_fields, json.loads(key), strict=True))
