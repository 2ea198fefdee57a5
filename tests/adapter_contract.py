"""The contract every destination keeps, as one reusable check.

An adapter's tests call :func:`check_destination` with the adapter's registered name, a config and
options, and a function that reads back what the destination holds (key -> record). The check
drives the adapter through the public contract of ``engine.interfaces``: creates, updates, deletes,
per-record outcomes aligned with the changes, remote ids handed back, and a batch sent twice (what
a crash between the write and the state commit causes) leaving no duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.adapters import register_builtins
from engine.interfaces import CREATE, DELETE, UPDATE, Change, Outcome, RunInfo, StreamContext
from engine.registry import REGISTRY, Registry
from engine.typed_config import build

Holding = dict[str, dict[str, Any]]


def _outcomes(result: Sequence[Outcome] | None, changes: list[Change]) -> list[Outcome]:
    outcomes = [Outcome(True)] * len(changes) if result is None else list(result)
    assert len(outcomes) == len(changes), "one outcome per change, in order"
    return outcomes


def check_destination(name: str, config: dict[str, Any], options: dict[str, Any], read_back: Callable[[], Holding],
                      base_dir: Path, registry: Registry = REGISTRY) -> None:
    """Drive one destination through creates, updates, deletes and a resent batch."""
    register_builtins(registry)
    spec = registry.get("destination", name)
    assert spec is not None, f"no destination '{name}'"
    destination = spec.factory(build(spec.config_type, config), base_dir)
    ctx = StreamContext("contract", "things", base_dir, ("id",), ("id", "name", "qty"),
                        RunInfo("run1", datetime(2026, 1, 1, tzinfo=UTC)), logging.getLogger("contract"))
    stream = destination.open_stream(build(spec.options_type, options), ctx)
    try:
        records = {f"k{i}": {"id": f"k{i}", "name": f"thing {i}", "qty": i} for i in range(5)}
        creates = [Change(CREATE, key, values, None, {"id": key}) for key, values in records.items()]
        ids = {c.key: o.remote_id for c, o in zip(creates, _outcomes(stream.write(creates), creates), strict=True)
               if o.ok}
        assert set(ids) == set(records), "every create succeeded"
        assert read_back() == records

        # The same batch again, as after a crash before the state commit: no duplicate, same content.
        again = [Change(UPDATE, key, values, ids[key], {"id": key}) for key, values in records.items()]
        assert all(o.ok for o in _outcomes(stream.write(again), again))
        assert read_back() == records

        changed = {**records["k1"], "name": "renamed", "qty": 10}
        updates = [Change(UPDATE, "k1", changed, ids["k1"], {"id": "k1"})]
        deletes = [Change(DELETE, key, None, ids[key], {"id": key}) for key in ("k3", "k4")]
        batch = updates + deletes
        assert all(o.ok for o in _outcomes(stream.write(batch), batch))
        expected = {**records, "k1": changed}
        del expected["k3"], expected["k4"]
        assert read_back() == expected

        # Deleting what is already gone is done, not an error (a resent delete).
        resent = [Change(DELETE, "k4", None, ids["k4"], {"id": "k4"})]
        assert all(o.ok for o in _outcomes(stream.write(resent), resent))
        stream.finish()
        assert read_back() == expected
    finally:
        destination.close()
