"""Profile one benchmark task of the engine with pyinstrument, or print the command for py-spy.

    python -m benchmarks.profile --rows 100000 --task T2            # pyinstrument call tree
    python -m benchmarks.profile --rows 100000 --task T3 --py-spy   # py-spy, sampled in a child

The task's preconditions (T1 before T2 and T3) run unprofiled first, in the same work folder
(``benchmarks/work/profile``). The profilers are development tools, not project dependencies:
``pip install pyinstrument py-spy`` where they are missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.generate import generate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _apply(input_path: Path, db: Path, state: Path) -> None:
    from engine.api import apply

    os.environ["BENCH_INPUT"] = str(input_path)
    os.environ["BENCH_DB"] = str(db)
    report = apply(HERE / "loads_pipeline.yml", state=str(state)).to_dict()["syncs"]["loads"]
    if report["status"] != "ok":
        raise SystemExit(f"the run failed: {report['message']}")


def main(argv: list[str] | None = None) -> int:
    """Prepare the task's starting point, then profile the task."""
    parser = argparse.ArgumentParser(description="Profile one benchmark task of the engine.")
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--task", choices=("T1", "T2", "T3"), default="T2")
    parser.add_argument("--py-spy", action="store_true", help="sample with py-spy in a child process")
    parser.add_argument("--out", help="where to write the profile (text for pyinstrument, raw for py-spy)")
    args = parser.parse_args(argv)
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
        code = (f"from benchmarks.profile import _apply; from pathlib import Path; "
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


if __name__ == "__main__":
    sys.exit(main())
