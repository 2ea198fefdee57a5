"""The one retry policy: how long to wait before the next attempt, and when to stop.

Every place that retries (a batch the destination answered with a
:class:`~engine.errors.TransientError`, a pushed record, an HTTP request) asks a :class:`Backoff`:
exponential, capped, jittered (so many clients that failed together do not retry together), and
never shorter than the server's own hint (``Retry-After``). Nothing here sleeps: callers decide how
to wait (a loop may sleep; the HTTP sender schedules the record and keeps sending others).

A library (tenacity, urllib3's ``Retry``) would decide *and* wait in one call; the engine needs the
decision alone, for the scheduled retries of its streaming destinations, so the few lines of policy
are kept here, once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``retries`` retries, the first after ``first`` seconds, doubling up to ``cap``, jittered down to half."""

    first: float = 0.5
    cap: float = 8.0
    retries: int = 5
    jitter: bool = True

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (from 0), at least ``hint`` but never over ``cap``."""
        wait = min(self.cap, self.first * float(2 ** attempt))
        if self.jitter:
            wait *= 0.5 + random.random() / 2
        return min(self.cap, max(wait, hint or 0.0))

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (from 0) was the last one allowed."""
        return attempt >= self.retries


NO_WAIT = Backoff(first=0.0, cap=0.0, retries=3, jitter=False)
"""For tests of the engine's own logic: retry at once."""
