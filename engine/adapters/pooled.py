"""Per-record writes on a bounded thread pool, each outcome reported as it completes.

A destination that sends one request per record (iSync, Weavy's per-record writes) hands
:func:`each_completed` its changes and a function that sends one; the engine receives the outcomes
in groups as requests complete (the :class:`~engine.interfaces.StreamingDestinationStream`
capability). A new request leaves only when the engine asks for the next group, which it does once
the last group is durable in the state: a crash leaves at most ``window`` records in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TypeVar

from engine.interfaces import Outcome

T = TypeVar("T")


def each_completed(executor: Executor, window: int, items: Sequence[T],
                   send: Callable[[T], Outcome]) -> Iterator[list[tuple[int, Outcome]]]:
    """Send every item, at most ``window`` in flight; yield ``(index, outcome)`` groups as they complete.

    An exception in ``send`` (a run-stopping error) is raised after the outcomes that completed with
    it were yielded (one of them may be a record just created, whose remote id must reach the state);
    the requests not yet sent are cancelled.
    """
    pending: dict[Future[Outcome], int] = {}
    sent = 0
    try:
        while sent < len(items) or pending:
            while sent < len(items) and len(pending) < window:
                pending[executor.submit(send, items[sent])] = sent
                sent += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            group: list[tuple[int, Outcome]] = []
            failure: BaseException | None = None
            for future in done:
                index = pending.pop(future)
                try:
                    group.append((index, future.result()))
                except Exception as exc:  # noqa: BLE001 - raised below, once the group is out
                    failure = failure or exc
            if group:
                yield group
            if failure is not None:
                raise failure
    finally:
        for future in pending:
            future.cancel()


def in_order(groups: Iterable[list[tuple[int, Outcome]]], count: int) -> list[Outcome]:
    """The outcomes of ``write_each``'s groups as one list in the changes' order (a stream's plain ``write``)."""
    outcomes = [Outcome(False, error="no outcome")] * count
    for group in groups:
        for i, outcome in group:
            outcomes[i] = outcome
    return outcomes
