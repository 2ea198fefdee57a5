"""The state policy on its own: no adapters, no templates, no command line; a real SQLite state file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine.errors import DeleteGuardTripped
from engine.interfaces import CREATE, DELETE, OK, UPDATE, Change, Outcome
from engine.state_store import TOMBSTONE, StateStore
from engine.sync_state import Pending, SyncState, new_counts

H1, H2 = b"1" * 16, b"2" * 16


def state(tmp_path: Path, **kw: object) -> SyncState:
    s = SyncState(StateStore(tmp_path / "state.db"), "p", "s", key_fields=("id",), **kw)  # type: ignore[arg-type]
    s.begin("apply", "run1", "2026-01-01T00:00:00+00:00")
    return s


def pending(key: str, digest: bytes = H1, action: str | None = None) -> Pending:
    return ({"id": key, "name": key.upper()}, digest, {"id": key}, action)


def deliver(s: SyncState, changes: list[Change], digests: dict[str, bytes], outcome: Outcome = OK) -> None:
    s.commit(new_counts(), delivered=[(c, digests.get(c.key, H1), outcome) for c in changes])


def test_new_then_unchanged_then_changed(tmp_path: Path) -> None:
    s = state(tmp_path)
    first = s.decide({"a": pending("a")})
    assert [(c.action, c.key, c.key_values) for c in first.changes] == [(CREATE, "a", {"id": "a"})]
    deliver(s, first.changes, {"a": H1}, Outcome(True, remote_id="r-a"))
    again = s.decide({"a": pending("a")}, explain=True)
    assert again.changes == [] and again.unchanged == 1 and again.unchanged_why == {"a": "'a' is unchanged"}
    changed = s.decide({"a": pending("a", H2)})
    assert [(c.action, c.remote_id) for c in changed.changes] == [(UPDATE, "r-a")]
    everything = s.decide({"a": pending("a")}, everything=True)
    assert [c.action for c in everything.changes] == [UPDATE]


def test_an_insert_only_sync_skips_known_records(tmp_path: Path) -> None:
    s = state(tmp_path, mode="insert")
    deliver(s, s.decide({"a": pending("a")}).changes, {"a": H1})
    decision = s.decide({"a": pending("a", H2), "b": pending("b")})
    assert [c.key for c in decision.changes] == ["b"]
    assert decision.skipped == {"a": "'a' exists and the sync only inserts"}


def test_pushed_deletes_leave_tombstones_that_stop_late_updates(tmp_path: Path) -> None:
    s = state(tmp_path, mode="mirror")
    deliver(s, s.decide({"a": pending("a")}).changes, {"a": H1})
    delete = s.decide({"a": ({"id": "a"}, TOMBSTONE, None, DELETE)})
    assert [(c.action, c.key_values, c.values) for c in delete.changes] == [(DELETE, {"id": "a"}, None)]
    deliver(s, delete.changes, {"a": TOMBSTONE})
    assert s.store.lookup(s.stream_id, "a") == (TOMBSTONE, None)
    assert s.known_count() == 0
    late = s.decide({"a": pending("a", H2, UPDATE)})
    assert late.changes == [] and "late update" in late.skipped["a"]
    twice = s.decide({"a": ({"id": "a"}, TOMBSTONE, None, DELETE)}, explain=True)
    assert twice.changes == [] and twice.unchanged_why == {"a": "'a' is already deleted"}
    recreated = s.decide({"a": pending("a", H2, CREATE)})
    assert [(c.action, c.remote_id) for c in recreated.changes] == [(CREATE, None)]
    # A delete of a key the state never knew is still sent: the destination may hold it from elsewhere.
    unknown = s.decide({"z": ({"id": "z"}, TOMBSTONE, None, DELETE)})
    assert [c.action for c in unknown.changes] == [DELETE]


def test_deletes_outside_mirror_are_skipped(tmp_path: Path) -> None:
    s = state(tmp_path)
    decision = s.decide({"a": ({"id": "a"}, TOMBSTONE, None, DELETE)})
    assert decision.changes == [] and "only in mode: mirror" in decision.skipped["a"]


def test_dead_letters_are_written_resolved_and_replayed_or_dropped(tmp_path: Path) -> None:
    s = state(tmp_path)
    dead = [("a", CREATE, '{"id": "a"}', None, "boom", None, None),
            ("(no key) x", "unreadable", '{"raw": "x"}', None, "bad row", None, None)]
    s.commit(new_counts(), dead=dead)
    assert s.dead_keys == {"a", "(no key) x"}
    # A window read that did not bring them: the one with a record is replayed, the unreadable one stays.
    s.store.start_seen()
    replay = s.leftover_dead_letters(whole=True, snapshot=False)
    assert [d.key for d in replay] == ["a"] and s.dead_keys == {"a", "(no key) x"}
    # Delivered later: its dead letter is resolved in the same transaction.
    deliver(s, s.decide({"a": pending("a")}).changes, {"a": H1})
    assert s.dead_keys == {"(no key) x"}
    assert [d.key for d in s.store.dead_letters(s.stream_id)] == ["(no key) x"]
    # A whole snapshot that no longer has it: dropped.
    s.store.start_seen()
    assert s.leftover_dead_letters(whole=True, snapshot=True) == []
    assert s.dead_keys == set() and s.store.dead_letters(s.stream_id) == []


def test_inferred_deletes_respect_the_guard_and_the_condition(tmp_path: Path) -> None:
    s = state(tmp_path, mode="mirror", memo_fields=("day",))
    changes = s.decide({k: ({"id": k, "day": d}, H1, {"id": k}, None) for k, d in
                        (("a", 1), ("b", 2), ("c", 3), ("d", 4))}).changes
    deliver(s, changes, {})
    s.store.start_seen()
    s.decide({"a": ({"id": "a", "day": 1}, H1, None, None)})
    assert s.missing_count() == 3
    with pytest.raises(DeleteGuardTripped, match="would delete 3 of 4 known records"):
        list(s.deletions(known_before=4, size=10, max_share=0.5, force=False))
    # delete_when narrows by the remembered fields: only days >= 3 should still be in the window.
    batches = list(s.deletions(known_before=4, size=10, max_share=0.5, force=False,
                               condition=lambda key, memo: bool(memo and memo["day"] >= 3)))
    assert [[(c.action, c.key, c.key_values) for c in b] for b in batches] == [
        [(DELETE, "c", {"id": "c"}), (DELETE, "d", {"id": "d"})]]
    s.commit(new_counts(), deletes=["c", "d"])
    assert s.known_count() == 2


def test_a_run_whose_process_died_is_closed_as_interrupted_by_the_next(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    s = SyncState(store, "p", "s")
    s.begin("apply", "old", "2026-01-01T00:00:00+00:00")
    # The same run as if its process were gone (no process has pid 2**22 + 1 on Linux's default max).
    store.db.execute("UPDATE runs SET owner = ? WHERE run_id = 'old'", (f"{socket.gethostname()}:4194305:1",))
    assert store.last_run(s.stream_id)["status"] == "interrupted"  # type: ignore[index]
    notes = SyncState(store, "p", "s").begin("apply", "new", "2026-01-02T00:00:00+00:00")
    assert notes == ["the previous run old (started 2026-01-01T00:00:00+00:00) was interrupted; what it "
                     "acknowledged was kept, the rest is sent now"]
    statuses = [row["status"] for row in store.history("p")]
    assert statuses == ["running", "interrupted"]  # this process's own run is alive
