"""One measured job, run in a fresh process so its peak RSS and I/O counters are its own.

    python -m benchmarks.child engine --input day1.csv --db dest.db --state state.db
    python -m benchmarks.child floor  --input day1.csv --db dest.db --state state.db
    python -m benchmarks.child http   --input day1.csv --url http://127.0.0.1:PORT/loads --state state.db

Everything is imported before the clock starts; the clock stops when the job returned. It prints one
JSON line: seconds, the sync's counts, peak RSS (``ru_maxrss``) and the process's ``/proc/self/io``
write counters (``wchar`` = bytes handed to ``write``; ``write_bytes`` = bytes sent to storage),
which cover the state database as well as the destination.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PIPELINES = {"engine": HERE / "loads_pipeline.yml", "http": HERE / "http_pipeline.yml"}


def io_counters() -> dict[str, int]:
    """This process's I/O counters (empty where ``/proc`` has none)."""
    try:
        text = Path("/proc/self/io").read_text(encoding="ascii")
    except OSError:
        return {}
    pairs = (line.split(":") for line in text.splitlines() if ":" in line)
    return {name.strip(): int(value) for name, value in pairs if name.strip() in ("wchar", "write_bytes")}


def run_engine(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The engine's run of the benchmark pipeline (``engine.api.apply``)."""
    from engine.api import apply

    os.environ["BENCH_INPUT"] = str(Path(args.input).resolve())
    if args.db:
        os.environ["BENCH_DB"] = str(Path(args.db).resolve())
    if args.url:
        os.environ["BENCH_URL"] = args.url
    started = time.perf_counter()
    report = apply(PIPELINES[kind], state=str(Path(args.state).resolve()))
    seconds = time.perf_counter() - started
    data = report.to_dict()
    sync = data["syncs"]["loads"]
    return {"seconds": seconds, "status": sync["status"], "message": sync["message"],
            "errors_detail": sync["errors_detail"][:3],
            "counts": {k: sync[k] for k in ("read", "creates", "updates", "deletes", "unchanged", "errors")}}


def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The hand-written floor."""
    from benchmarks import floor

    started = time.perf_counter()
    counts = floor.run(Path(args.input), Path(args.db), Path(args.state))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "status": "ok", "message": None, "errors_detail": [],
            "counts": {**counts, "errors": 0}}


def main(argv: list[str] | None = None) -> int:
    """Run one job and print its measurements as one JSON line."""
    parser = argparse.ArgumentParser(description="Run one measured benchmark job.")
    parser.add_argument("kind", choices=("engine", "floor", "http"))
    parser.add_argument("--input", required=True)
    parser.add_argument("--db")
    parser.add_argument("--url")
    parser.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    if args.kind != "floor":
        # Import the engine before the clock starts, so start-up is not counted.
        import engine.api  # noqa: F401

    before = io_counters()
    result = run_floor(args) if args.kind == "floor" else run_engine(args.kind, args)
    after = io_counters()
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["io"] = {name: after[name] - before.get(name, 0) for name in after}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
