"""The dlt peer: the benchmark job through dlt's Arrow path, into DuckDB.

Run by the interpreter of ``benchmarks/work/peers-venv`` (see ``peers.py``), not the project's: it imports
nothing of the project, only the standard library, pyarrow and dlt.

    peers-venv/bin/python benchmarks/dlt_job.py run --input day1.csv --db dest.duckdb --pipelines-dir DIR
    peers-venv/bin/python benchmarks/dlt_job.py verify --db dest.duckdb --against floor.db

``run``: read the export with ``pyarrow.csv`` (every column a string but ``amount``, a decimal with 2
places, and ``weight``, an integer), the benchmark's mapping with ``pyarrow.compute`` (renames, state
codes upper-cased, amount to integer cents, empty delivery date to null, lane), then one
``dlt.pipeline(...).run`` of a resource with ``write_disposition="merge"`` and ``primary_key="id"`` into
a DuckDB file. pyarrow and dlt are imported before the clock starts; the clock stops when ``run``
returned. It prints one JSON line like ``benchmarks/job.py``: seconds, counts (``read``: rows of the
export; ``loaded``: rows dlt normalised into the table), peak RSS (``VmHWM`` of this process).
dlt's merge upserts by key and never deletes a row the export no longer holds.

``verify``: walks the DuckDB table and the floor's SQLite table in id order and prints the rows that
differ, the ids only in one of them (after T3: the removed ids, only in dlt's), as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

COLUMNS = ("id", "customer", "carrier", "status", "origin_city", "origin_state", "dest_city", "dest_state",
           "shipped_on", "delivered_on", "amount_cents", "weight", "updated_at", "lane")
DATASET = "bench"


def vm_hwm_kb() -> int | None:
    """This process's peak resident set (``VmHWM``), in kB; None where ``/proc`` has none."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run(input_path: Path, db: Path, pipelines_dir: Path) -> dict[str, Any]:
    """One load of the export; the seconds exclude the imports (done by the caller)."""
    import dlt
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    started = time.perf_counter()
    types = {name: pa.string() for name in ("id", "customer_id", "carrier_id", "status", "origin_city",
                                            "origin_state", "dest_city", "dest_state", "ship_date",
                                            "delivery_date", "updated_at")}
    types.update(amount=pa.decimal128(18, 2), weight=pa.int64())
    raw = csv.read_csv(input_path, convert_options=csv.ConvertOptions(column_types=types))
    origin, dest = pc.utf8_upper(raw["origin_state"]), pc.utf8_upper(raw["dest_state"])
    delivered = raw["delivery_date"]
    table = pa.table({
        "id": raw["id"], "customer": raw["customer_id"], "carrier": raw["carrier_id"], "status": raw["status"],
        "origin_city": raw["origin_city"], "origin_state": origin, "dest_city": raw["dest_city"],
        "dest_state": dest, "shipped_on": raw["ship_date"],
        "delivered_on": pc.if_else(pc.equal(delivered, ""), pa.scalar(None, pa.string()), delivered),
        "amount_cents": pc.cast(pc.multiply(raw["amount"], pa.scalar(100, pa.decimal128(18, 0))), pa.int64()),
        "weight": raw["weight"], "updated_at": raw["updated_at"],
        "lane": pc.binary_join_element_wise(origin, dest, "-"),
    })
    del raw

    loads = dlt.resource(table, name="loads", write_disposition="merge", primary_key="id")
    pipeline = dlt.pipeline(pipeline_name="loads_bench", destination=dlt.destinations.duckdb(str(db)),
                            dataset_name=DATASET, pipelines_dir=str(pipelines_dir))
    pipeline.run(loads)
    seconds = time.perf_counter() - started
    normalized = pipeline.last_trace.last_normalize_info
    loaded = normalized.row_counts.get("loads", 0) if normalized is not None else 0
    return {"seconds": seconds, "status": "ok", "message": None, "errors_detail": [],
            "counts": {"read": table.num_rows, "loaded": loaded, "errors": 0}}


def verify(db: Path, against: Path) -> dict[str, Any]:
    """Compare dlt's table with the floor's, row by row in id order."""
    import duckdb

    cols = ", ".join(COLUMNS)
    duck = duckdb.connect(str(db), read_only=True)
    lite = sqlite3.connect(f"file:{against}?mode=ro", uri=True)
    left = duck.execute(f"SELECT {cols} FROM {DATASET}.loads ORDER BY id")
    right = lite.execute(f"SELECT {cols} FROM loads ORDER BY id")

    def rows(fetch: Any) -> Any:
        while batch := fetch(10000):
            yield from batch

    only_dlt: list[str] = []
    only_floor: list[str] = []
    different: list[str] = []
    same = 0
    a_iter, b_iter = rows(left.fetchmany), rows(right.fetchmany)
    a, b = next(a_iter, None), next(b_iter, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            only_dlt.append(a[0])  # type: ignore[index]
            a = next(a_iter, None)
        elif a is None or b[0] < a[0]:
            only_floor.append(b[0])
            b = next(b_iter, None)
        else:
            if tuple(a) == tuple(b):
                same += 1
            else:
                different.append(a[0])
            a, b = next(a_iter, None), next(b_iter, None)
    duck.close()
    lite.close()
    return {"same": same, "different": different[:20], "n_different": len(different), "only_dlt": only_dlt,
            "only_floor": only_floor[:20], "n_only_floor": len(only_floor)}


def main(argv: list[str] | None = None) -> int:
    """Run one measured load, or compare a finished table with the floor's; one JSON line either way."""
    parser = argparse.ArgumentParser(description="The dlt peer of the benchmark.")
    parser.add_argument("command", choices=("run", "verify"))
    parser.add_argument("--input", help="run: the CSV export")
    parser.add_argument("--db", required=True, help="the DuckDB file")
    parser.add_argument("--pipelines-dir", help="run: dlt's working folder (its local pipeline state)")
    parser.add_argument("--against", help="verify: the floor's SQLite database")
    args = parser.parse_args(argv)
    if args.command == "verify":
        if not args.against:
            parser.error("verify needs --against")
        sys.stdout.write(json.dumps(verify(Path(args.db), Path(args.against))) + "\n")
        return 0
    if not args.input or not args.pipelines_dir:
        parser.error("run needs --input and --pipelines-dir")
    # No telemetry, and nothing under the home folder: dlt keeps its files in the given folder.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DLT_DATA_DIR", str(Path(args.pipelines_dir).resolve()))
    import dlt  # noqa: F401 - imported before the clock starts, as the engine's job does
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401

    result = run(Path(args.input), Path(args.db), Path(args.pipelines_dir))
    result["vm_hwm_kb"] = vm_hwm_kb()
    result["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
