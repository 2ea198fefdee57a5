"""The record loop's process-wide settings are temporary: the young-generation GC threshold is raised
while records stream and restored after, however the run ends and however many syncs overlap."""

from __future__ import annotations

import gc
import threading

import pytest

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
