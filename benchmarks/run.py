"""Run the benchmark: the engine against the hand-written floor and two peers, measured in the same run.

    python -m benchmarks.run --rows 100000,1000000            # the full benchmark
    python -m benchmarks.run --quick                          # 10k rows, one repetition
    python -m benchmarks.run --rows 100000,1000000 --update-readme

Per size: T1 initial load, T2 the same file again, T3 the day-2 file; every job runs in a fresh
process, the jobs of one task interleaved (the order rotates every repetition), repeated ``--repeat``
times. The jobs: the engine (as it runs by default: with its Arrow read where pyarrow is installed),
the engine on its row path (``engine_rows``: the same pipeline with ``arrow: false``; measured when
pyarrow is importable here, since otherwise the default run is the row path already) and the floor
(``benchmarks/job.py``), the ``sqlite3`` shell (``benchmarks/shell_floor.py``) and dlt's Arrow path
into DuckDB (``benchmarks/dlt_job.py``, in a virtual environment of its own that
``benchmarks/peers.py`` makes on first use); ``--peers`` picks the last two. Each job reports its
own time (imports excluded) and peak RSS (its ``VmHWM``); the driver adds the whole process's wall
time, spawn to exit. Then a per-record HTTP run against a loopback endpoint. It prints Markdown
tables; ``--update-readme`` also writes them into ``benchmarks/README.md``. Raw figures go to
``benchmarks/work/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import shell_floor
from benchmarks.generate import Dataset, generate_apart
from benchmarks.measure import (
    copy_database,
    destination_fingerprint,
    fingerprint_delta,
    http_run,
    machine_summary,
    spawn,
    table_diff,
    tables_equal,
)
from benchmarks.peers import dlt_environment
from benchmarks.report import render, update_readme

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = ("T1", "T2", "T3")
KINDS = ("engine", "engine_rows", "floor", "shell", "dlt")
PEERS = ("shell", "dlt")
# The engine as it runs by default, and on its row path (``arrow: false``); both are ``benchmarks/job.py``.
ENGINES = ("engine", "engine_rows")
# The kinds whose counts are creates/updates/deletes and which must leave the destination alone in T2.
EXACT = ("engine", "engine_rows", "floor", "shell")
# The kinds whose table is compared with the floor's, and row by row before and after T3.
ROW_CHECKED = ("engine", "engine_rows", "shell")


class JobFailed(RuntimeError):
    """A measured job did not finish with a result."""


def _files(kind: str, folder: Path) -> dict[str, Path]:
    if kind == "dlt":
        return {"db": folder / "dlt.duckdb", "pipelines": folder / "dlt-pipelines"}
    return {"db": folder / f"{kind}.db", "state": folder / f"{kind}.state.db"}


def child(kind: str, input_path: Path, files: dict[str, Path], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run one measured job in a fresh process and return its result, with the whole process's figures."""
    stdin = None
    env = None
    cwd = ROOT
    if kind in (*ENGINES, "floor"):
        cmd = [sys.executable, "-m", "benchmarks.job", kind, "--input", str(input_path), "--db", str(files["db"]),
               "--state", str(files["state"])]
    elif kind == "shell":
        stdin = files["db"].with_suffix(".sql")
        stdin.write_text(shell_floor.script(input_path), encoding="utf-8")  # before the clock
        cmd = shell_floor.command(files["db"], peers["shell"]["binary"])
    else:
        cmd = [peers["dlt"]["python"], str(HERE / "dlt_job.py"), "run", "--input", str(input_path),
               "--db", str(files["db"]), "--pipelines-dir", str(files["pipelines"])]
        env = {**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": str(files["pipelines"])}
        cwd = files["db"].parent
    done = spawn(cmd, cwd=cwd, stdin=stdin, env=env)
    if kind == "shell":
        result = shell_floor.parse(done["stdout"])
        if done["returncode"] != 0:
            result = {"status": "failed", "message": f"exit {done['returncode']}", "counts": {"errors": 1}}
    else:
        lines = [line for line in done["stdout"].splitlines() if line.startswith("{")]
        if not lines:
            raise JobFailed(f"{kind} job failed (exit {done['returncode']}): {done['stderr'].strip()[-2000:]}")
        result = json.loads(lines[-1])
    if result["status"] != "ok" or result["counts"].get("errors"):
        raise JobFailed(f"{kind} job did not succeed: {result} {done['stderr'].strip()[-1000:]}")
    result["whole_seconds"] = done["whole_seconds"]
    result["cpu_seconds"] = done["cpu_seconds"]
    result["wait4_maxrss_kb"] = done["ru_maxrss_kb"]
    own = result.get("vm_hwm_kb") or result.get("maxrss_kb")
    # Without /proc the child's own figure is missing; wait4's is then the best there is.
    result["maxrss_kb"] = own if own else done["ru_maxrss_kb"]
    result["maxrss_source"] = "VmHWM" if result.get("vm_hwm_kb") else "ru_maxrss"
    return result


def expected_counts(data: Dataset, task: str) -> dict[str, int]:
    """What the generator says each task must do."""
    if task == "T1":
        return {"creates": data.rows, "updates": 0, "deletes": 0}
    if task == "T2":
        return {"creates": 0, "updates": 0, "deletes": 0}
    return {"creates": len(data.added), "updates": len(data.changed), "deletes": len(data.removed)}


def _check(kind: str, task: str, data: Dataset, result: dict[str, Any]) -> list[str]:
    """The generator's counts (and for T2 the untouched destination) against one job's result.

    ``engine_rows`` must also say it took the row path: otherwise it measured the Arrow read again.
    """
    problems = []
    if kind == "engine_rows" and result.get("path") != "row":
        problems.append(f"{data.rows} {task} {kind}: the engine took the {result.get('path')} path, not the row path")
    if kind in EXACT:
        want = expected_counts(data, task)
        got = {k: result["counts"].get(k) for k in want}
        if got != want:
            problems.append(f"{data.rows} {task} {kind}: counts {got}, generator says {want}")
        if task == "T2" and result["dest_delta"]["changed"]:
            problems.append(f"{data.rows} T2 {kind}: the destination changed: {result['dest_delta']}")
    else:  # dlt reports no creates/updates/deletes: every row of the export read and loaded
        rows = data.day2_rows if task == "T3" else data.rows
        counts = result["counts"]
        if counts.get("read") != rows or counts.get("loaded") != rows:
            problems.append(f"{data.rows} {task} {kind}: read {counts.get('read')}, loaded {counts.get('loaded')}, "
                            f"the export has {rows} rows")
    return problems


def _check_tables(data: Dataset, folder: Path, kinds: list[str], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """After the last repetition's T3: every table against the floor's and the generator's lists."""
    problems: list[str] = []
    checks: dict[str, Any] = {}
    floor_db = _files("floor", folder)["db"]
    truth = {"changed": set(data.changed), "added": set(data.added), "removed": set(data.removed)}
    for kind in (k for k in kinds if k in ROW_CHECKED):
        db = _files(kind, folder)["db"]
        equal = tables_equal(db, floor_db)
        checks[kind] = {"equal_to_floor": equal}
        if not equal:
            problems.append(f"{data.rows}: after T3 the {kind}'s table differs from the floor's")
        # The rows T3 really changed in the destination, id by id, against the generator's lists.
        diff = table_diff(folder / f"{kind}.before_t3.db", db)
        checks[kind]["t3_rows_exact"] = all(diff[name] == ids for name, ids in truth.items())
        for name, ids in truth.items():
            if diff[name] != ids:
                problems.append(f"{data.rows} T3 {kind}: the destination's {name} rows differ from the "
                                f"generator's ({len(diff[name])} vs {len(ids)} ids)")
    if "dlt" in kinds:
        cmd = [peers["dlt"]["python"], str(HERE / "dlt_job.py"), "verify", "--db", str(_files("dlt", folder)["db"]),
               "--against", str(floor_db)]
        done = spawn(cmd, cwd=folder)
        lines = [line for line in done["stdout"].splitlines() if line.startswith("{")]
        if not lines:
            problems.append(f"{data.rows}: dlt's table could not be compared: {done['stderr'].strip()[-500:]}")
            checks["dlt"] = {"equal_to_floor_plus_removed": False}
        else:
            found = json.loads(lines[-1])
            ok = (found["n_different"] == 0 and found["n_only_floor"] == 0
                  and set(found["only_dlt"]) == truth["removed"])
            checks["dlt"] = {"equal_to_floor_plus_removed": ok, "same": found["same"],
                             "only_dlt": len(found["only_dlt"]), "different": found["n_different"],
                             "only_floor": found["n_only_floor"]}
            if not ok:
                problems.append(f"{data.rows}: after T3 dlt's table is not the floor's plus the removed rows: "
                                f"{checks['dlt']}")
    return {"problems": problems, "checks": checks}


def run_size(data: Dataset, repeat: int, work: Path, peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """All repetitions of T1, T2, T3 at one size, every kind's jobs interleaved."""
    rows_arm = ["engine_rows"] if peers.get("engine_rows", {}).get("status") == "ok" else []
    kinds = ["engine", *rows_arm, "floor"] + [k for k in PEERS if peers[k]["status"] == "ok"]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {k: [] for k in kinds} for t in TASKS}
    problems: list[str] = []
    failed: dict[str, str] = {}
    checks: dict[str, Any] = {}
    for rep in range(repeat):
        folder = work / f"{data.rows}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
        for task in TASKS:
            source = data.day2 if task == "T3" else data.day1
            for kind in order:
                if kind in failed:
                    continue
                files = _files(kind, folder)
                logs = (".wal",) if kind == "dlt" else ("-wal",)
                if task == "T3" and rep == repeat - 1 and kind in ROW_CHECKED:
                    copy_database(files["db"], folder / f"{kind}.before_t3.db")
                before = destination_fingerprint(files["db"], logs)
                try:
                    result = child(kind, source, files, peers)
                except JobFailed as exc:
                    if kind in (*ENGINES, "floor"):
                        raise
                    # A peer that fails is reported and left out of the rest of this size.
                    failed[kind] = str(exc)[:600]
                    problems.append(f"{data.rows} {task} {kind}: {str(exc)[:600]}")
                    continue
                result["dest_delta"] = fingerprint_delta(before, destination_fingerprint(files["db"], logs))
                runs[task][kind].append(result)
                problems.extend(_check(kind, task, data, result))
        if rep == repeat - 1:
            found = _check_tables(data, folder, [k for k in kinds if k not in failed], peers)
            problems.extend(found["problems"])
            checks = found["checks"]
    equal = checks.get("engine", {}).get("equal_to_floor")
    return {"rows": data.rows, "runs": runs, "problems": problems, "tables_equal": equal, "checks": checks,
            "failed": failed}


def summarise(size: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: medians (in the process and whole process), ratios, records/s, peak RSS, destination bytes."""
    out = []
    for task, kinds in size["runs"].items():
        row: dict[str, Any] = {"rows": size["rows"], "task": task}
        for kind, results in kinds.items():
            if not results:
                continue
            median = statistics.median(r["seconds"] for r in results)
            whole = statistics.median(r["whole_seconds"] for r in results)
            read = results[0]["counts"]["read"]
            row[kind] = {"seconds": median, "whole_seconds": whole,
                         "per_second": read / median if median else 0.0,
                         "whole_per_second": read / whole if whole else 0.0,
                         "cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
                         "maxrss_mb": max(r["maxrss_kb"] for r in results) / 1024,
                         "maxrss_source": results[0]["maxrss_source"],
                         "wait4_maxrss_mb": max(r["wait4_maxrss_kb"] for r in results) / 1024,
                         "dest_bytes": max(r["dest_delta"]["bytes"] for r in results),
                         "dest_changed": any(r["dest_delta"]["changed"] for r in results),
                         "wchar": statistics.median(r.get("io", {}).get("wchar", 0) for r in results),
                         "counts": results[0]["counts"], "all_seconds": [r["seconds"] for r in results],
                         "all_whole_seconds": [r["whole_seconds"] for r in results]}
            if kind in ENGINES:
                row[kind]["path"] = results[0].get("path", "row")
        row["ratio"] = row["engine"]["seconds"] / row["floor"]["seconds"]
        row["ratios"] = _ratios(row, "engine")
        if "engine_rows" in row:
            row["ratio_rows"] = row["engine_rows"]["seconds"] / row["floor"]["seconds"]
            row["ratios_rows"] = _ratios(row, "engine_rows")
        out.append(row)
    return out


def _ratios(row: dict[str, Any], kind: str) -> dict[str, dict[str, float]]:
    """One engine kind's seconds over the floor's and each measured peer's, in the process and whole."""
    return {peer: {"in_process": row[kind]["seconds"] / row[peer]["seconds"],
                   "whole": row[kind]["whole_seconds"] / row[peer]["whole_seconds"]}
            for peer in ("floor", *PEERS) if peer in row}


def row_path_status() -> dict[str, Any]:
    """Whether the engine's row path (``engine_rows``) runs beside its default run, and why not.

    Only with pyarrow importable in this interpreter (the one the jobs run in) does the default run
    take the Arrow read; without it the default run is the row path already, and a second arm would
    measure the same thing twice.
    """
    if importlib.util.find_spec("pyarrow") is None:
        return {"status": "skipped", "reason": "pyarrow is not importable in this interpreter, so the engine's "
                                                "default run already takes the row path"}
    try:
        version = importlib.metadata.version("pyarrow")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"status": "ok", "pyarrow": version}


def find_peers(wanted: list[str]) -> dict[str, dict[str, Any]]:
    """Each peer's status: ready (with its program and versions), not asked for, or unavailable and why.

    ``engine_rows`` (the engine's row path, not a peer, never left out by ``--peers``) is there too.
    """
    peers: dict[str, dict[str, Any]] = {"engine_rows": row_path_status()}
    for name in PEERS:
        if name not in wanted:
            peers[name] = {"status": "skipped", "reason": "not asked for (--peers)"}
        elif name == "shell":
            peers[name] = shell_floor.status()
        else:
            peers[name] = dlt_environment()
    return peers


def main(argv: list[str] | None = None) -> int:
    """Generate, run, print the tables; exit 1 when a correctness check failed."""
    parser = argparse.ArgumentParser(description="Benchmark the engine against a hand-written floor and peers.")
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per task and size (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="10k rows, one repetition, 10k HTTP records")
    parser.add_argument("--http-rows", type=int, default=100000, help="records posted in the HTTP run (0: skip)")
    parser.add_argument("--peers", default="shell,dlt",
                        help="comma-separated peers besides the floor: shell, dlt (empty: none)")
    parser.add_argument("--update-readme", action="store_true", help="write the tables into benchmarks/README.md")
    args = parser.parse_args(argv)
    sizes = [10000] if args.quick else [int(s) for s in args.rows.split(",")]
    repeat = 1 if args.quick else args.repeat
    http_rows = min(args.http_rows, 10000) if args.quick else args.http_rows
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    data_dir = HERE / "data"
    # Every size's files first, each generated in a process of its own, before anything is measured.
    datasets = [generate_apart(rows, data_dir) for rows in sizes]
    http_data = generate_apart(http_rows, data_dir) if http_rows else None
    peers = find_peers(wanted)
    for name, peer in peers.items():
        if peer["status"] != "ok":
            what = "peer " if name in PEERS else ""
            print(f"-- {what}{name}: {peer['status']}: {peer.get('reason', '')}", file=sys.stderr, flush=True)
    summaries: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    problems: list[str] = []
    load_before = os.getloadavg()[1]
    for data in datasets:
        print(f"-- {data.rows} rows: T1/T2/T3 x {repeat}", file=sys.stderr, flush=True)
        size = run_size(data, repeat, work, peers)
        problems.extend(size["problems"])
        checks[str(data.rows)] = {**size["checks"], "failed": size["failed"]}
        summaries.extend(summarise(size))
        for row in summaries[-len(TASKS):]:
            times = ", ".join(f"{k} {row[k]['seconds']:.3f}/{row[k]['whole_seconds']:.3f}s"
                              for k in KINDS if k in row)
            rows_arm = (f", engine_rows/floor {row['ratio_rows']:.2f}x, engine_rows RSS "
                        f"{row['engine_rows']['maxrss_mb']:.0f} MB" if "engine_rows" in row else "")
            print(f"   {row['task']}: {times} (in-process/whole), engine ({row['engine']['path']})/floor "
                  f"{row['ratio']:.2f}x, engine RSS {row['engine']['maxrss_mb']:.0f} MB{rows_arm}",
                  file=sys.stderr, flush=True)
        # Kept as it goes, so a long run that is stopped still leaves what it measured.
        (work / "results.partial.json").write_text(json.dumps({"summaries": summaries, "problems": problems},
                                                              indent=1, default=str), encoding="utf-8")
    http: dict[str, Any] | None = None
    if http_data is not None:
        print(f"-- HTTP: {http_rows} records x {min(repeat, 3)}", file=sys.stderr, flush=True)
        http = http_run(http_data, work / "http", min(repeat, 3))
        problems.extend(http.get("problems", []))
    machine = machine_summary()
    # Other work on a shared machine moves absolute times (less so the ratios): say how busy it was.
    machine["load"] = f"{load_before:.1f} at the start, {os.getloadavg()[1]:.1f} at the end (5-minute average)"
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(summaries, http, machine, command.strip(), problems, peers)
    print(text)
    (work / "results.json").write_text(json.dumps({"summaries": summaries, "http": http, "machine": machine,
                                                   "peers": peers, "checks": checks, "problems": problems},
                                                  indent=1, default=str), encoding="utf-8")
    if args.update_readme:
        update_readme(HERE / "README.md", text)
    return 1 if problems else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
