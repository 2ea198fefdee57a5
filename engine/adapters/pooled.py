"""Per-record writes on a bounded thread pool, each outcome reported as it completes.

A destination that sends one request per record (iSync, Weavy's per-record writes) hands
:func:`each_completed` its changes and a function that sends one; the engine receives the outcomes
in groups as requests complete (the :class:`~engine.interfaces.StreamingDestinationStream`
capability). A new request leaves only when the engine asks for the next group, which it does once
the last group is durable in the state: a crash leaves at most ``window`` records in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TypeVar

from engine.interfaces import Outcome

T = TypeVar("T")


def each_completed(executor: Executor, window: int, items: Sequence[T],
                   send: Callable[[T], Outcome]) -> Iterator[list[tuple[int, Outcome]]]:
    """Send every item, at most ``window`` in flight; yield ``(index, outcome)`` groups as they complete.

    An exception in ``send`` (a run-stopping error) is raised when its group is collected; the
    requests not yet sent are cancelled.
    """
    pending: dict[Future[Outcome], int] = {}
    sent = 0
    try:
        while sent < len(items) or pending:
            while sent < len(items) and len(pending) < window:
                pending[executor.submit(send, items[sent])] = sent
                sent += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            yield [(pending.pop(future), future.result()) for future in done]
    finally:
        for future in pending:
            future.cancel()
