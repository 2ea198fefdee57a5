"""One benchmark job: measured in a fresh process, or profiled.

    python -m benchmarks.job engine --input day1.csv --db dest.db --state state.db
    python -m benchmarks.job engine_rows --input day1.csv --db dest.db --state state.db
    python -m benchmarks.job floor  --input day1.csv --db dest.db --state state.db
    python -m benchmarks.job http   --input day1.csv --url http://127.0.0.1:PORT/loads --state state.db
    python -m benchmarks.job profile --rows 100000 --task T2 [--py-spy] [--out FILE]

Measured (``engine``, ``engine_rows``, ``floor``, ``http``): the job runs alone in its process, so its
peak RSS and I/O counters are its own; everything is imported before the clock starts and the clock
stops when the job returned. It prints one JSON line: seconds, the sync's counts, peak RSS and the process's
``/proc/self/io`` write counters (``wchar`` = bytes handed to ``write``; ``write_bytes`` = bytes sent
to storage), which cover the state database as well as the destination.

``engine`` applies ``loads_pipeline.yml`` as it is: with pyarrow installed the engine reads the CSV
with its Arrow read. ``engine_rows`` applies the same pipeline with ``arrow: false`` in its sync, so the
engine reads rows with Python's ``csv`` module (its row path); the variant is written next to the state
file (``loads_pipeline.rows.yml``) before the clock starts. The JSON line says which path was taken
(``path``: ``arrow`` or ``row``, from the engine's sync summary).

Peak RSS is ``VmHWM`` from ``/proc/self/status``, read by the job itself at its end: the high-water
mark of this process's own memory since its ``exec``. ``ru_maxrss`` is reported beside it
(``ru_maxrss_kb``) but is not used: Linux carries the parent's high-water mark into a child across
``fork``/``vfork`` and ``exec``, so a child of a large process (a runner that had generated 1M rows in
memory) reports the parent's figure. ``maxrss_kb`` is ``VmHWM`` where ``/proc`` has it.

``profile``: the task's preconditions (T1 before T2 and T3) run unprofiled first in
``benchmarks/work/profile``, then the task runs under pyinstrument (a call tree), or under py-spy in
a child process with ``--py-spy`` (raw stacks). Both are development tools, not project
dependencies: ``pip install pyinstrument py-spy`` where they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PIPELINES = {"engine": HERE / "loads_pipeline.yml", "http": HERE / "http_pipeline.yml"}
ROW_PATH_PIPELINE = "loads_pipeline.rows.yml"
SCOPE_LINE = "    scope: snapshot"  # a key of the sync block; the row-path variant adds ``arrow: false`` after it


def io_counters() -> dict[str, int]:
    """This process's I/O counters (empty where ``/proc`` has none)."""
    try:
        text = Path("/proc/self/io").read_text(encoding="ascii")
    except OSError:
        return {}
    pairs = (line.split(":") for line in text.splitlines() if ":" in line)
    return {name.strip(): int(value) for name, value in pairs if name.strip() in ("wchar", "write_bytes")}


def vm_hwm_kb() -> int | None:
    """This process's peak resident set since its ``exec`` (``VmHWM``), in kB; None without ``/proc``."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def row_path_pipeline(folder: Path) -> Path:
    """``loads_pipeline.yml`` with ``arrow: false`` in its sync (the engine's row path), written into ``folder``.

    The same text every time: the line ``    arrow: false`` inserted after ``    scope: snapshot``.
    """
    lines = PIPELINES["engine"].read_text(encoding="utf-8").splitlines(keepends=True)
    found = [number for number, line in enumerate(lines) if line.rstrip() == SCOPE_LINE]
    if len(found) != 1:
        raise SystemExit(f"{PIPELINES['engine'].name}: expected one {SCOPE_LINE.strip()!r} line, found {len(found)}")
    lines[found[0]] = lines[found[0]].rstrip("\r\n") + "\n"
    lines.insert(found[0] + 1, "    arrow: false\n")
    variant = "".join(lines)
    path = folder / ROW_PATH_PIPELINE
    if not path.is_file() or path.read_text(encoding="utf-8") != variant:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(variant, encoding="utf-8")
    return path


def pipeline_for(kind: str, args: argparse.Namespace) -> Path:
    """The pipeline a measured engine job applies: ``engine_rows``'s variant is written next to ``--state``."""
    if kind == "engine_rows":
        return row_path_pipeline(Path(args.state).resolve().parent)
    return PIPELINES[kind]


def run_engine(pipeline: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The engine's run of a benchmark pipeline (``engine.api.apply``)."""
    from engine.api import apply

    os.environ["BENCH_INPUT"] = str(Path(args.input).resolve())
    if args.db:
        os.environ["BENCH_DB"] = str(Path(args.db).resolve())
    if args.url:
        os.environ["BENCH_URL"] = args.url
    started = time.perf_counter()
    report = apply(pipeline, state=str(Path(args.state).resolve()))
    seconds = time.perf_counter() - started
    data = report.to_dict()
    sync = data["syncs"]["loads"]
    return {"seconds": seconds, "status": sync["status"], "message": sync["message"],
            "errors_detail": sync["errors_detail"][:3], "path": _engine_path(sync),
            "counts": {k: sync[k] for k in ("read", "creates", "updates", "deletes", "unchanged", "errors")}}


def _engine_path(sync: dict[str, Any]) -> str:
    """Which path the engine says it took: ``arrow`` when its summary names one, else ``row``."""
    named = sync.get("path") or sync.get("engine_path")
    if isinstance(named, str) and named:
        return named
    notes = sync.get("notes") or ()
    if sync.get("arrow") or any(re.search(r"\barrow\b", str(note), re.IGNORECASE) for note in notes):
        return "arrow"
    return "row"


def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The hand-written floor."""
    from benchmarks import floor

    started = time.perf_counter()
    counts = floor.run(Path(args.input), Path(args.db), Path(args.state))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "status": "ok", "message": None, "errors_detail": [],
            "counts": {**counts, "errors": 0}}


def _apply(input_path: Path, db: Path, state: Path) -> None:
    from engine.api import apply

    os.environ["BENCH_INPUT"] = str(input_path)
    os.environ["BENCH_DB"] = str(db)
    report = apply(HERE / "loads_pipeline.yml", state=str(state)).to_dict()["syncs"]["loads"]
    if report["status"] != "ok":
        raise SystemExit(f"the run failed: {report['message']}")


def profile(args: argparse.Namespace) -> int:
    """Prepare the task's starting point, then profile the task."""
    from benchmarks.generate import generate

    data = generate(args.rows, HERE / "data")
    work = HERE / "work" / "profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, state = work / "dest.db", work / "state.db"
    if args.task != "T1":
        _apply(data.day1, db, state)
    source = data.day2 if args.task == "T3" else data.day1
    if args.py_spy:
        out = args.out or str(work / f"{args.task}.pyspy.txt")
        code = (f"from benchmarks.job import _apply; from pathlib import Path; "
                f"_apply(Path({str(source)!r}), Path({str(db)!r}), Path({str(state)!r}))")
        cmd = ["py-spy", "record", "-r", "250", "-f", "raw", "-o", out, "--", sys.executable, "-c", code]
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    _apply(source, db, state)
    profiler.stop()
    text = profiler.output_text(color=False, show_all=False)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one job: print its measurements as one JSON line, or its profile."""
    parser = argparse.ArgumentParser(description="Run one benchmark job, measured or profiled.")
    parser.add_argument("kind", choices=("engine", "engine_rows", "floor", "http", "profile"))
    parser.add_argument("--input", help="the CSV export (measured jobs)")
    parser.add_argument("--db", help="the destination database (engine, engine_rows, floor)")
    parser.add_argument("--url", help="the endpoint (http)")
    parser.add_argument("--state", help="the state database (measured jobs)")
    parser.add_argument("--rows", type=int, default=100000, help="profile: the size")
    parser.add_argument("--task", choices=("T1", "T2", "T3"), default="T2", help="profile: the task")
    parser.add_argument("--py-spy", action="store_true", help="profile: sample with py-spy in a child process")
    parser.add_argument("--out", help="profile: where to write it (text for pyinstrument, raw for py-spy)")
    args = parser.parse_args(argv)
    if args.kind == "profile":
        return profile(args)
    if not args.input or not args.state:
        parser.error("--input and --state are required for a measured job")
    pipeline = None
    if args.kind != "floor":
        # Import the engine and write the pipeline before the clock starts, so neither is counted.
        import engine.api  # noqa: F401

        pipeline = pipeline_for(args.kind, args)

    before = io_counters()
    result = run_floor(args) if pipeline is None else run_engine(pipeline, args)
    after = io_counters()
    hwm = vm_hwm_kb()
    result["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["vm_hwm_kb"] = hwm
    result["maxrss_kb"] = hwm if hwm is not None else result["ru_maxrss_kb"]
    result["io"] = {name: after[name] - before.get(name, 0) for name in after}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
