"""Per-record HTTP against its peers: the engine's ``http`` destination, a bare client and drt.

    python -m benchmarks.http_peers --records 100000 --repeat 3
    python -m benchmarks.http_peers --records 20000 --repeat 2 --concurrency default,1,2,8 --arms bare,cli,api
    python -m benchmarks.http_peers --latency-records 4000 --arms latency

Every run posts the same records (the benchmark's day-1 loads export, mapped as
``http_pipeline.yml`` maps it) one JSON object per request to a fresh loopback endpoint
(``benchmarks/http_endpoint.py``, in its own process, threaded, ``TCP_NODELAY``), and checks that
the endpoint accepted every record. The arms:

- ``bare``: a single-connection ``http.client`` loop in its own process: ``csv.reader``, the mapping
  in plain Python, ``json.dumps``, one ``POST`` and the answer read, record after record. It keeps
  no state and retries nothing: the ceiling of one connection for a Python client.
- ``cli``: ``syncengine apply`` of the pipeline as a whole process (interpreter start-up, imports,
  validation, CSV read, mapping, the SQLite state, requests), timed from outside.
- ``api``: ``engine.api.apply`` in a child process with the clock around the call only (imports
  excluded).
- ``drt``: drt (the reverse-ETL tool, PyPI package ``drt-core``) in its own virtual environment,
  made by this command in ``benchmarks/work/drt-venv``: a SQLite source holding the export, a SQL
  model doing the same mapping, the ``rest_api`` destination in ``body_mode: record`` (one POST per
  record through one httpx client per batch), rate limiting off, ``batch_size: 1000``; a whole
  ``drt run`` process timed from outside. ``--drt-batch`` changes the batch size.
- ``latency``: the engine (whole process, default concurrency) against the endpoint with
  ``--latency`` seconds of delay per request (20 ms by default); the target is
  ``0.8 x concurrency / latency`` records/s.

``--concurrency`` runs ``cli`` and ``api`` once per value (``default`` = the destination's default,
no ``concurrency`` key in the pipeline). ``--baseline DIR`` adds ``base-cli`` and ``base-api``: the
same two arms (default concurrency) with the engine of another checkout (say, ``git archive`` of an
earlier commit unpacked in DIR), for a before/after on the same sink. The arms run in turn within a
repetition and the order flips every repetition. Records/s is records / median seconds. Raw figures go to
``benchmarks/work/http_peers.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.measure import Endpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "http_peers"
DRT_VENV = HERE / "work" / "drt-venv"
DRT_PACKAGE = "drt-core"
_HUNDRED = Decimal(100)

DRT_MODEL = (
    "SELECT id, customer_id AS customer, carrier_id AS carrier, status, origin_city, "
    "upper(origin_state) AS origin_state, dest_city, upper(dest_state) AS dest_state, ship_date AS shipped_on, "
    "nullif(delivery_date, '') AS delivered_on, CAST(round(CAST(amount AS REAL) * 100) AS INTEGER) AS amount_cents, "
    "CAST(weight AS INTEGER) AS weight, updated_at, upper(origin_state) || '-' || upper(dest_state) AS lane "
    "FROM loads ORDER BY rowid")


# --- the endpoint ------------------------------------------------------------------------------------


# --- the data ----------------------------------------------------------------------------------------


def dataset(records: int) -> Path:
    """The day-1 export of ``records`` loads (generated once, cached in ``benchmarks/data``)."""
    from benchmarks.generate import generate

    return generate(records, HERE / "data").day1


def map_row(row: list[str]) -> dict[str, Any]:
    """One CSV row to the record ``http_pipeline.yml`` posts (the same fields, types and order)."""
    (id_, customer, carrier, status, origin_city, origin_state, dest_city, dest_state, ship_date,
     delivery_date, amount, weight, updated_at) = row
    origin, dest = origin_state.upper(), dest_state.upper()
    return {"id": id_, "customer": customer, "carrier": carrier, "status": status, "origin_city": origin_city,
            "origin_state": origin, "dest_city": dest_city, "dest_state": dest, "shipped_on": ship_date,
            "delivered_on": delivery_date or None, "amount_cents": int(Decimal(amount) * _HUNDRED),
            "weight": int(weight), "updated_at": updated_at, "lane": f"{origin}-{dest}"}


def pipeline_for(concurrency: int | None) -> Path:
    """``http_pipeline.yml`` with ``concurrency`` set (``None``: the key left out, the default applies)."""
    text = (HERE / "http_pipeline.yml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^    concurrency: .*\n", "", text)
    if concurrency is not None:
        text = re.sub(r"(?m)^(    type: http\n)", rf"\g<1>    concurrency: {concurrency}\n", text)
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"pipeline_{concurrency or 'default'}.yml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the child processes -----------------------------------------------------------------------------


def bare(input_path: Path, url: str) -> dict[str, Any]:
    """Post every record over one keep-alive ``http.client`` connection; seconds in this process."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    sent = failed = 0
    dumps = json.dumps
    with input_path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            conn.request("POST", parts.path, dumps(map_row(row), ensure_ascii=False).encode("utf-8"), headers)
            answer = conn.getresponse()
            answer.read()
            sent += 1
            if answer.status != 201:
                failed += 1
    conn.close()
    return {"seconds": time.perf_counter() - started, "sent": sent, "failed": failed}


def engine_api(pipeline: Path, input_path: Path, url: str, state: Path) -> dict[str, Any]:
    """``engine.api.apply`` of the pipeline, the clock around the call only."""
    from engine.api import apply

    os.environ["BENCH_INPUT"] = str(input_path)
    os.environ["BENCH_URL"] = url
    started = time.perf_counter()
    report = apply(pipeline, state=str(state))
    seconds = time.perf_counter() - started
    sync = report.to_dict()["syncs"]["loads"]
    return {"seconds": seconds, "status": sync["status"], "creates": sync["creates"], "errors": sync["errors"],
            "message": sync["message"]}


# --- drt ---------------------------------------------------------------------------------------------


def drt_setup() -> Path | None:
    """drt's own virtual environment (made once); its ``drt`` command, or ``None`` when it cannot be had."""
    command = DRT_VENV / "bin" / "drt"
    if not command.exists():
        print(f"-- making {DRT_VENV.relative_to(ROOT)} (pip install {DRT_PACKAGE})", file=sys.stderr, flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(DRT_VENV)], check=True)
            subprocess.run([str(DRT_VENV / "bin" / "python"), "-m", "pip", "install", "-q", DRT_PACKAGE], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"-- drt could not be installed: {exc}", file=sys.stderr)
            return None
    return command if command.exists() else None


def drt_project(input_path: Path, url: str, records: int, batch: int) -> Path:
    """A drt project posting the export to ``url``: SQLite source, SQL mapping, ``rest_api`` per record."""
    folder = WORK / "drt"
    database = folder / f"loads_{records}.sqlite"
    if not database.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = database.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        db = sqlite3.connect(partial)
        with input_path.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            columns = next(reader)
            db.execute(f"CREATE TABLE loads ({', '.join(f'{c} TEXT' for c in columns)})")
            db.executemany(f"INSERT INTO loads VALUES ({', '.join('?' * len(columns))})", reader)
        db.commit()
        db.close()
        partial.rename(database)
    shutil.rmtree(folder / "project", ignore_errors=True)
    project = folder / "project"
    (project / "syncs").mkdir(parents=True)
    (project / ".drt").mkdir()
    (project / "drt_project.yml").write_text('name: http_peers\nversion: "0.1"\nprofile: bench\n', encoding="utf-8")
    # Profiles live in ~/.drt: the run's HOME is the project folder, so nothing outside it is read or written.
    (project / ".drt" / "profiles.yml").write_text(
        f"bench:\n  type: sqlite\n  database: {json.dumps(str(database))}\n", encoding="utf-8")
    (project / "syncs" / "loads.yml").write_text(json.dumps({
        "name": "loads", "description": "Every load of the export, one POST per record.",
        "model": DRT_MODEL,
        "destination": {"type": "rest_api", "url": url, "method": "POST", "body_mode": "record",
                        "headers": {"Content-Type": "application/json", "Accept": "application/json"}},
        "sync": {"mode": "full", "batch_size": batch, "rate_limit": {"requests_per_second": 0},
                 "on_error": "skip"},
    }, indent=2), encoding="utf-8")
    return project


def drt_env(project: Path) -> dict[str, str]:
    """drt's environment: HOME in its project, telemetry off, no proxy."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("DRT_")}
    env.update({"HOME": str(project), "DO_NOT_TRACK": "1", "DRT_TELEMETRY": "0", "NO_COLOR": "1"})
    return env


# --- the driver --------------------------------------------------------------------------------------


def _child(args: list[str], env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """Run a child process; its wall-clock seconds and the JSON line it printed last (if any)."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600, check=False)
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 and not lines:
        raise RuntimeError(f"{' '.join(args[:4])} failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return seconds, (json.loads(lines[-1]) if lines else {})


def run_arm(arm: str, concurrency: int | None, input_path: Path, records: int, options: argparse.Namespace,
            drt: Path | None) -> dict[str, Any]:
    """One run of one arm against a fresh endpoint: seconds (whole process, and in process where known)."""
    delay = options.latency if arm == "latency" else 0.0
    endpoint = Endpoint(delay)
    state = WORK / "state.db"
    for leftover in WORK.glob("state.db*"):
        leftover.unlink()
    try:
        inside: float | None = None
        if arm == "bare":
            outside, result = _child([sys.executable, "-m", "benchmarks.http_peers", "bare", "--input",
                                      str(input_path), "--url", endpoint.url])
            inside = result["seconds"]
        elif arm in ("cli", "latency", "base-cli"):
            # `syncengine apply`: the console script runs engine.cli's main; -m runs the engine of the folder
            # it starts in (this checkout, or the baseline).
            env_input = {"BENCH_INPUT": str(input_path), "BENCH_URL": endpoint.url}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "engine.cli", "apply", str(pipeline_for(concurrency)),
                                   "--state", str(state), "--json"],
                                  cwd=options.baseline if arm == "base-cli" else ROOT, capture_output=True,
                                  text=True, timeout=3600, check=False, env={**os.environ, **env_input})
            outside = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"syncengine apply failed ({done.returncode}): "
                                   f"{(done.stdout + done.stderr).strip()[-1500:]}")
            report = json.loads(done.stdout)["syncs"]["loads"]
            inside = report.get("seconds")
        elif arm in ("api", "base-api"):
            # This file run by path, so that `engine` comes from PYTHONPATH: the baseline's, or this checkout's.
            engine_root = options.baseline if arm == "base-api" else ROOT
            outside, result = _child([sys.executable, str(HERE / "http_peers.py"), "api", "--pipeline",
                                      str(pipeline_for(concurrency)), "--input", str(input_path), "--url",
                                      endpoint.url, "--state", str(state)],
                                     env={**os.environ, "PYTHONPATH": str(engine_root)})
            if result.get("status") != "ok":
                raise RuntimeError(f"engine.api.apply: {result}")
            inside = result["seconds"]
        elif arm == "drt":
            assert drt is not None
            project = drt_project(input_path, endpoint.url, records, options.drt_batch)
            started = time.perf_counter()
            done = subprocess.run([str(drt), "run"], cwd=project, capture_output=True, text=True, timeout=3600,
                                  check=False, env=drt_env(project))
            outside = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"drt run failed ({done.returncode}): {(done.stdout + done.stderr).strip()[-1500:]}")
        else:
            raise ValueError(arm)
        stats = endpoint.stats()
    finally:
        endpoint.stop()
    if stats["accepted"] != records or stats["rejected"]:
        raise RuntimeError(f"{arm}: the endpoint accepted {stats['accepted']} and rejected {stats['rejected']} "
                           f"of {records} records")
    return {"outside": outside, "inside": inside, "connections": stats["connections"]}


def _label(arm: str, concurrency: int | None) -> str:
    if arm in ("cli", "api", "latency", "base-cli", "base-api"):
        return f"{arm} c={concurrency or 'default'}"
    return arm


def default_concurrency() -> int:
    """The ``http`` destination's default ``concurrency``."""
    from engine.adapters.http_post import HttpPostConfig

    default = HttpPostConfig.__dataclass_fields__["concurrency"].default
    assert isinstance(default, int)
    return default


def drive(options: argparse.Namespace) -> int:
    """Run the arms in turn, ``repeat`` times, and print records/s and the ratios."""
    arms = [a.strip() for a in options.arms.split(",") if a.strip()]
    levels: list[int | None] = [None if c.strip() == "default" else int(c) for c in options.concurrency.split(",")]
    plan: list[tuple[str, int | None]] = []
    if options.baseline:
        arms += [a for a in ("base-cli", "base-api") if a not in arms]
    for arm in arms:
        if arm in ("cli", "api"):
            plan.extend((arm, c) for c in levels)
        else:
            plan.append((arm, None))
    drt = drt_setup() if "drt" in arms else None
    if "drt" in arms and drt is None:
        plan = [p for p in plan if p[0] != "drt"]
        print("-- drt: not measured (it could not be installed)", file=sys.stderr)
    input_path = dataset(options.records)
    small = dataset(options.latency_records) if "latency" in arms else input_path
    runs: dict[str, list[dict[str, Any]]] = {_label(*p): [] for p in plan}
    for repetition in range(options.repeat):
        order = plan if repetition % 2 == 0 else plan[::-1]
        for arm, concurrency in order:
            label = _label(arm, concurrency)
            count = options.latency_records if arm == "latency" else options.records
            result = run_arm(arm, concurrency, small if arm == "latency" else input_path, count, options, drt)
            result["records"] = count
            runs[label].append(result)
            inside = f", in process {count / result['inside']:,.0f}/s" if result["inside"] else ""
            print(f"-- {repetition + 1}/{options.repeat} {label}: {count / result['outside']:,.0f} records/s "
                  f"whole process{inside}", file=sys.stderr, flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for label, results in runs.items():
        count = results[0]["records"]
        outside = statistics.median(r["outside"] for r in results)
        insides = [r["inside"] for r in results if r["inside"]]
        summary[label] = {"records": count, "outside_s": outside, "outside_rps": count / outside,
                          "inside_s": statistics.median(insides) if insides else None,
                          "inside_rps": count / statistics.median(insides) if insides else None,
                          "all_outside_rps": [round(count / r["outside"]) for r in results],
                          "connections": results[0]["connections"]}
    print(render(summary, options))
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK.parent / "http_peers.json").write_text(json.dumps({"options": vars(options), "summary": summary}, default=str,
                                                            indent=2), encoding="utf-8")
    return 0


def render(summary: dict[str, dict[str, Any]], options: argparse.Namespace) -> str:
    """The table and the ratios of the targets."""
    default = default_concurrency()
    lines = [f"{options.records:,} records (latency case: {options.latency_records:,} at "
             f"{options.latency * 1000:g} ms), median of {options.repeat}; default concurrency {default}", "",
             "| arm | whole process rec/s | in process rec/s | runs (whole process) | connections |",
             "|---|---:|---:|---|---:|"]
    for label, row in summary.items():
        inside = f"{row['inside_rps']:,.0f}" if row["inside_rps"] else "-"
        lines.append(f"| {label} | {row['outside_rps']:,.0f} | {inside} | "
                     f"{', '.join(f'{v:,}' for v in row['all_outside_rps'])} | {row['connections']} |")
    lines.append("")
    bare_row, drt_row = summary.get("bare"), summary.get("drt")
    for kind in ("cli", "api"):
        engine = summary.get(f"{kind} c=default")
        if engine is None:
            continue
        key = "outside_rps" if kind == "cli" else "inside_rps"
        how = "whole process" if kind == "cli" else "in process"
        if bare_row:
            bare_rate = bare_row[key] or bare_row["outside_rps"]
            lines.append(f"- engine default ({how}) / bare client ({how}): {engine[key] / bare_rate:.2f}x "
                         f"(target >= 0.9x)")
        if drt_row:
            lines.append(f"- engine default ({how}) / drt (whole process): {engine[key] / drt_row['outside_rps']:.2f}x "
                         f"(target >= 2x)")
    latency = summary.get("latency c=default")
    if latency:
        target = 0.8 * default / options.latency
        lines.append(f"- {options.latency * 1000:g} ms endpoint, engine default (whole process): "
                     f"{latency['outside_rps']:,.0f} records/s, in process {latency['inside_rps'] or 0:,.0f}; "
                     f"target >= 0.8 x {default} / {options.latency:g} s = {target:,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The driver, or one of its child processes."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("bare", "api"):
        parser = argparse.ArgumentParser(prog=f"http_peers {argv[0]}")
        parser.add_argument("--input", required=True)
        parser.add_argument("--url", required=True)
        parser.add_argument("--pipeline")
        parser.add_argument("--state")
        args = parser.parse_args(argv[1:])
        if argv[0] == "bare":
            result = bare(Path(args.input), args.url)
        else:
            import engine.api  # noqa: F401 - imported before the clock starts

            result = engine_api(Path(args.pipeline), Path(args.input), args.url, Path(args.state))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    parser = argparse.ArgumentParser(description="Per-record HTTP: the engine against a bare client and drt.")
    parser.add_argument("--records", type=int, default=100000, help="records posted per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each arm (the median is reported)")
    parser.add_argument("--arms", default="bare,cli,api,drt,latency",
                        help="comma-separated: bare, cli, api, drt, latency")
    parser.add_argument("--concurrency", default="default", help="cli/api: comma-separated values, or 'default'")
    parser.add_argument("--latency", type=float, default=0.02, help="latency case: seconds per request")
    parser.add_argument("--latency-records", type=int, default=4000, help="latency case: records posted")
    parser.add_argument("--drt-batch", type=int, default=1000, help="drt: batch_size (one httpx client per batch)")
    parser.add_argument("--baseline", type=Path, help="another checkout: adds base-cli and base-api (its engine)")
    return drive(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
