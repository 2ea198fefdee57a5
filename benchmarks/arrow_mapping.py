"""The columnar mapping against the row path, in one process, on the benchmark's loads export.

Reads the day-1 file of ``benchmarks/generate.py`` once as text for each path (the CSV source's
rows; ``pyarrow.csv`` with every column as a string) and times only the mapping: the row path's
``CompiledMapping.map`` per record, and ``ArrowMapping.map_table`` per batch of ``--batch`` rows.
Needs the ``arrow`` extra (``pip install -e '.[arrow]'``).

    python -m benchmarks.arrow_mapping --rows 100000
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks.generate import COLUMNS, generate
from engine.adapters.csv_file import CsvConfig, read_csv
from engine.api import load
from engine.arrow_mapping import ROW_PATH, compile_arrow
from engine.interfaces import RunInfo
from engine.mapping import CompiledMapping
from engine.runner import Engine

HERE = Path(__file__).resolve().parent


def loads_mapping() -> CompiledMapping:
    """The benchmark pipeline's mapping, as a run compiles it."""
    os.environ.setdefault("BENCH_INPUT", "unused.csv")
    os.environ.setdefault("BENCH_DB", "unused.db")
    pipeline = load(HERE / "loads_pipeline.yml")
    engine = Engine(pipeline, state_path=":memory:", dry_run=True)
    try:
        mapping = engine.mapping(pipeline.syncs["loads"], RunInfo("bench", datetime.now(UTC), None))
    finally:
        engine.close()
    assert isinstance(mapping, CompiledMapping)
    return mapping


def main() -> None:
    """Command line: print µs per record of each path (the median of ``--repeat`` runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="size of the generated export")
    parser.add_argument("--batch", type=int, default=65_536, help="rows per map_table call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "data"))
    args = parser.parse_args()
    data = generate(args.rows, Path(args.out))
    mapping = loads_mapping()
    arrow = compile_arrow(mapping)
    assert arrow is not None, "the benchmark's mapping should be columnar"

    text = data.day1.read_text(encoding="utf-8")
    records = [r for r in read_csv(io.StringIO(text, newline=""), CsvConfig(path="x"), "x") if isinstance(r, dict)]
    table = pacsv.read_csv(data.day1, convert_options=pacsv.ConvertOptions(
        column_types={name: pa.string() for name in COLUMNS}, strings_can_be_null=False))
    batches = [table.slice(start, args.batch) for start in range(0, table.num_rows, args.batch)]

    def row_path() -> float:
        started = time.perf_counter()
        for record in records:
            mapping.map(record)
        return time.perf_counter() - started

    def columnar() -> float:
        started = time.perf_counter()
        for batch in batches:
            arrow.map_table(batch)
        return time.perf_counter() - started

    fallback = sum(arrow.map_table(b).column(ROW_PATH).to_pylist().count(True) for b in batches)
    rows = len(records)
    row_s = statistics.median(row_path() for _ in range(args.repeat))
    arrow_s = statistics.median(columnar() for _ in range(args.repeat))
    print(f"{rows:,} records of {data.day1.name}, {len(mapping.fields)} fields, batches of {args.batch:,} rows")
    print(f"row path (CompiledMapping.map):   {row_s / rows * 1e6:8.3f} us/record")
    print(f"columnar (ArrowMapping.map_table): {arrow_s / rows * 1e6:8.3f} us/record "
          f"({row_s / arrow_s:.1f}x; {fallback} rows left to the row path)")


if __name__ == "__main__":
    main()
