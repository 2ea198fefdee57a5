"""The record loop's process-wide settings are temporary: the young-generation GC threshold is raised
while records stream and restored after, however the run ends and however many syncs overlap. And a
batch handed to the state store in one piece (a JSON array of keys, a blob of hashes) arrives exactly."""

from __future__ import annotations

import gc
import hashlib
import threading
from pathlib import Path

import pytest

from engine.state_store import StateStore
from engine.sync_loop import GC_YOUNG_THRESHOLD, relaxed_gc


def test_the_threshold_is_raised_while_records_stream_and_restored_after() -> None:
    before = gc.get_threshold()
    with relaxed_gc():
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    assert gc.get_threshold() == before


def test_an_error_restores_it() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), relaxed_gc():
        raise RuntimeError("the sync failed")
    assert gc.get_threshold() == before


def test_overlapping_syncs_restore_it_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    first_in = threading.Event()
    second_in = threading.Event()
    first_out = threading.Event()
    seen: list[tuple[int, int, int]] = []

    def first() -> None:
        with relaxed_gc():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with relaxed_gc():
        second_in.set()
        assert first_out.wait(10)
        seen.append(gc.get_threshold())  # the first sync ended; this one still streams
    thread.join(10)
    assert seen == [(GC_YOUNG_THRESHOLD, before[1], before[2])]
    assert gc.get_threshold() == before


def test_a_process_that_disabled_or_raised_it_is_left_alone() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(0)
        with relaxed_gc():
            assert gc.get_threshold()[0] == 0
        gc.set_threshold(100_000, before[1], before[2])
        with relaxed_gc():
            assert gc.get_threshold()[0] == 100_000
    finally:
        gc.set_threshold(*before)


# --- a batch handed to the state store in one piece --------------------------------------------------

KEYS = ["L1", "Ünïcødé-ß", "tab\tand\nnewline", "quote\"back\\slash", "emoji-\U0001f69a", "ctl-\x01\x1f", "L2"]


def _loaded(store: StateStore, keys: list[str], hashes: list[bytes]) -> list[tuple[int, str, bytes]]:
    store.start_seen()
    store.db.execute("BEGIN")
    store.load_batch(keys, hashes)
    rows = store.db.execute("SELECT pos, key, hash FROM temp.cur ORDER BY pos").fetchall()
    store.db.execute("COMMIT")
    return [(pos, key, bytes(digest)) for pos, key, digest in rows]


@pytest.mark.parametrize("keys", [KEYS, [*KEYS, "nul-\x00-inside"]], ids=["json", "nul-takes-executemany"])
def test_a_batch_reaches_sqlite_with_every_key_and_hash_exactly(tmp_path: Path, keys: list[str]) -> None:
    store = StateStore(tmp_path / "state.db")
    hashes = [hashlib.blake2b(k.encode("utf-8"), digest_size=16).digest() for k in keys]
    assert _loaded(store, keys, hashes) == list(zip(range(len(keys)), keys, hashes, strict=True))
    # Hashes of another size than 16 bytes take the plain way too.
    odd = [*hashes[:-1], b"short"]
    assert _loaded(store, keys, odd) == list(zip(range(len(keys)), keys, odd, strict=True))


def test_the_lookups_answer_with_the_keys_given(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    stream = store.stream_id("p", "s")
    hashes = [hashlib.blake2b(k.encode("utf-8"), digest_size=16).digest() for k in KEYS]
    store.start_seen()
    assert set(store.changed(stream, KEYS, hashes)) == set(KEYS)  # all new
    store.db.executemany("INSERT INTO records (stream_id, key, hash, raw) VALUES (?, ?, ?, ?)",
                         [(stream, k, h, h) for k, h in zip(KEYS[:3], hashes, strict=False)])
    assert set(store.changed(stream, KEYS, hashes)) == set(KEYS[3:])
    store.start_seen()
    assert set(store.raw_changed(stream, KEYS, hashes)) == set(KEYS[3:])
    assert {row[0] for row in store.db.execute("SELECT key FROM temp.seen")} == set(KEYS[:3])
