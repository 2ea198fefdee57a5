"""Run the benchmark: the engine against the hand-written floor, measured in the same run.

    python -m benchmarks.run --rows 100000,1000000            # the full benchmark
    python -m benchmarks.run --quick                          # 10k rows, one repetition
    python -m benchmarks.run --rows 100000,1000000 --update-readme

Per size: T1 initial load, T2 the same file again, T3 the day-2 file; every job runs in a fresh
process (``benchmarks/job.py``), engine and floor interleaved, repeated ``--repeat`` times. Then a
per-record HTTP run against a loopback endpoint. It prints one Markdown table; ``--update-readme``
also writes it into ``benchmarks/README.md``. Raw figures go to ``benchmarks/work/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.generate import Dataset, generate
from benchmarks.measure import (
    copy_database,
    destination_fingerprint,
    fingerprint_delta,
    http_run,
    machine_summary,
    table_diff,
    tables_equal,
)
from benchmarks.report import render, update_readme

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = ("T1", "T2", "T3")


def child(kind: str, input_path: Path, db: Path, state: Path) -> dict[str, Any]:
    """Run one measured job in a fresh interpreter and return what it printed."""
    cmd = [sys.executable, "-m", "benchmarks.job", kind, "--input", str(input_path), "--db", str(db),
           "--state", str(state)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{kind} job failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if result["status"] != "ok" or result["counts"].get("errors"):
        raise RuntimeError(f"{kind} job did not succeed: {result}")
    return result


def expected_counts(data: Dataset, task: str) -> dict[str, int]:
    """What the generator says each task must do."""
    if task == "T1":
        return {"creates": data.rows, "updates": 0, "deletes": 0}
    if task == "T2":
        return {"creates": 0, "updates": 0, "deletes": 0}
    return {"creates": len(data.added), "updates": len(data.changed), "deletes": len(data.removed)}


def run_size(data: Dataset, repeat: int, work: Path) -> dict[str, Any]:
    """All repetitions of T1, T2, T3 at one size, engine and floor interleaved."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {"engine": [], "floor": []} for t in TASKS}
    problems: list[str] = []
    equal = None
    for rep in range(repeat):
        folder = work / f"{data.rows}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        files = {kind: (folder / f"{kind}.db", folder / f"{kind}.state.db") for kind in ("engine", "floor")}
        for task in TASKS:
            source = data.day2 if task == "T3" else data.day1
            for kind in ("engine", "floor") if rep % 2 == 0 else ("floor", "engine"):
                db, state = files[kind]
                if task == "T3" and rep == repeat - 1:
                    copy_database(db, folder / f"{kind}.before_t3.db")
                before = destination_fingerprint(db)
                result = child(kind, source, db, state)
                result["dest_delta"] = fingerprint_delta(before, destination_fingerprint(db))
                runs[task][kind].append(result)
                want = expected_counts(data, task)
                got = {k: result["counts"][k] for k in want}
                if got != want:
                    problems.append(f"{data.rows} {task} {kind}: counts {got}, generator says {want}")
                if task == "T2" and result["dest_delta"]["changed"]:
                    problems.append(f"{data.rows} T2 {kind}: the destination changed: {result['dest_delta']}")
        if rep == repeat - 1:
            equal = tables_equal(files["engine"][0], files["floor"][0])
            if not equal:
                problems.append(f"{data.rows}: after T3 the engine's table differs from the floor's")
            # The rows T3 really changed in the destination, id by id, against the generator's lists.
            diff = table_diff(folder / "engine.before_t3.db", files["engine"][0])
            truth = {"changed": set(data.changed), "added": set(data.added), "removed": set(data.removed)}
            for name, ids in truth.items():
                if diff[name] != ids:
                    problems.append(f"{data.rows} T3 engine: the destination's {name} rows differ from the "
                                    f"generator's ({len(diff[name])} vs {len(ids)} ids)")
    return {"rows": data.rows, "runs": runs, "problems": problems, "tables_equal": equal}


def summarise(size: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: medians, ratio, records/s, peak RSS, destination bytes."""
    out = []
    for task, kinds in size["runs"].items():
        row: dict[str, Any] = {"rows": size["rows"], "task": task}
        for kind, results in kinds.items():
            median = statistics.median(r["seconds"] for r in results)
            read = results[0]["counts"]["read"]
            row[kind] = {"seconds": median, "per_second": read / median if median else 0.0,
                         "maxrss_mb": max(r["maxrss_kb"] for r in results) / 1024,
                         "dest_bytes": max(r["dest_delta"]["bytes"] for r in results),
                         "dest_changed": any(r["dest_delta"]["changed"] for r in results),
                         "wchar": statistics.median(r["io"].get("wchar", 0) for r in results),
                         "counts": results[0]["counts"], "all_seconds": [r["seconds"] for r in results]}
        row["ratio"] = row["engine"]["seconds"] / row["floor"]["seconds"]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Generate, run, print the table; exit 1 when a correctness check failed."""
    parser = argparse.ArgumentParser(description="Benchmark the engine against a hand-written floor.")
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per task and size (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="10k rows, one repetition, 10k HTTP records")
    parser.add_argument("--http-rows", type=int, default=100000, help="records posted in the HTTP run (0: skip)")
    parser.add_argument("--update-readme", action="store_true", help="write the table into benchmarks/README.md")
    args = parser.parse_args(argv)
    sizes = [10000] if args.quick else [int(s) for s in args.rows.split(",")]
    repeat = 1 if args.quick else args.repeat
    http_rows = min(args.http_rows, 10000) if args.quick else args.http_rows
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    data_dir = HERE / "data"
    summaries: list[dict[str, Any]] = []
    problems: list[str] = []
    load_before = os.getloadavg()[1]
    for rows in sizes:
        data = generate(rows, data_dir)
        print(f"-- {rows} rows: T1/T2/T3 x {repeat}", file=sys.stderr, flush=True)
        size = run_size(data, repeat, work)
        problems.extend(size["problems"])
        summaries.extend(summarise(size))
        for row in summaries[-len(TASKS):]:
            print(f"   {row['task']}: engine {row['engine']['seconds']:.3f}s, floor {row['floor']['seconds']:.3f}s, "
                  f"{row['ratio']:.2f}x, engine RSS {row['engine']['maxrss_mb']:.0f} MB", file=sys.stderr, flush=True)
        # Kept as it goes, so a long run that is stopped still leaves what it measured.
        (work / "results.partial.json").write_text(json.dumps({"summaries": summaries, "problems": problems},
                                                              indent=1, default=str), encoding="utf-8")
    http: dict[str, Any] | None = None
    if http_rows:
        data = generate(http_rows, data_dir)
        print(f"-- HTTP: {http_rows} records x {min(repeat, 3)}", file=sys.stderr, flush=True)
        http = http_run(data, work / "http", min(repeat, 3))
        problems.extend(http.get("problems", []))
    machine = machine_summary()
    # Other work on a shared machine moves absolute times (less so the ratios): say how busy it was.
    machine["load"] = f"{load_before:.1f} at the start, {os.getloadavg()[1]:.1f} at the end (5-minute average)"
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(summaries, http, machine, command.strip(), problems)
    print(text)
    (work / "results.json").write_text(json.dumps({"summaries": summaries, "http": http, "machine": machine,
                                                   "problems": problems}, indent=1, default=str), encoding="utf-8")
    if args.update_readme:
        update_readme(HERE / "README.md", text)
    return 1 if problems else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
