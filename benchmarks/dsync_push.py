"""Dsync push, entities per second: ``syncengine apply`` against a bare ``requests`` client, same server, same run.

    python -m benchmarks.dsync_push --records 2000 --concurrency 8 --repeat 3 [--update-readme]

Both clients create the same ``--records`` products (each with its nested ``inventory``, from one generated CSV)
on the Dsync test server (``tests/servers/dsync_server.py``), which sleeps ``--latency`` seconds (20 ms) at the
start of every request, with ``--concurrency`` requests in flight:

* **engine**: ``python -m engine.cli apply`` of a pipeline (CSV source, the ``dsync`` destination, entity
  ``product``, ``concurrency: C``), with a fresh state database: one ``GET /datalayout``, a ``POST
  /entity/product`` per product, one ``POST /notification`` at the end;
* **bare**: ``python -m benchmarks.dsync_push bare``: ``requests`` alone, one ``Session`` (a pool of C
  connections), the same requests: ``GET /datalayout`` for the product's ``Entity-Token`` and endpoint, a
  ``ThreadPoolExecutor`` of C threads POSTing each product with ``Auth-Token``, ``Entity-Token`` and one
  ``Process-Id``, the same body, then the same notification.

Each is a whole process, timed from outside (interpreter start, imports, every call, exit); each also reports
its time inside the process (the engine: its sync's ``seconds``; bare: from the session to the notification's
answer). They alternate (A/B, the order flips every repetition), each against a fresh server in its own process
(``python -m benchmarks.dsync_push serve``, answering ``stats`` on its stdin), so neither client shares a GIL
with it. After every run the server must hold exactly the generated products (count and a digest of every
field), have answered one 201 per product, one layout and one notification, nothing else, all the writes with
one ``Process-Id``, and no error of its own.

Target (from the issue): the engine's entities/s at least 0.8x the bare client's, whole process.

It prints a Markdown report; ``--update-readme`` writes it into ``benchmarks/README.md`` between the
``dsync:results`` markers (inside the ``dsync`` section). Raw figures go to ``benchmarks/work/dsync_push.json``.
Exit 1 when a check failed (a missed target is reported, not an exit code).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from benchmarks.rest import (
    ROOT,
    Load,
    ServerProcess,
    child,
    digest,
    engine_report,
    machine_note,
    serve_loop,
    summarise,
    update_readme,
)

HERE = Path(__file__).resolve().parent
START = "<!-- dsync:results:start -->"
END = "<!-- dsync:results:end -->"
SECTION = ("<!-- dsync:begin -->", "<!-- dsync:end -->")
TARGET = 0.8
AUTH_TOKEN = "080ab6bd49b138594ac9647dc929122adfb983c8"  # the test server's default Auth-Token
COLORS = ("black", "white", "red", "blue", "green", "silver", "gold")

PIPELINE = """\
version: 1
name: dsync_push_bench
sources:
  products: {{type: csv, path: products.csv}}
destinations:
  hub:
    type: dsync
    url: "{{{{ env.DSYNC_URL }}}}"
    auth_token: "{{{{ env.DSYNC_AUTH_TOKEN }}}}"
    concurrency: {concurrency}
syncs:
  products:
    source: products
    destination: {{name: hub, entity: product}}
    key: sku
    mode: mirror
    mapping:
      fields:
        sku: "{{{{ record.sku }}}}"
        name: "{{{{ record.name }}}}"
        inventory:
          qty: "{{{{ record.qty | int }}}}"
          min_qty: "{{{{ record.min_qty | int }}}}"
"""


# --------------------------------------------------------------------------------------------------------
# The products: generated, written as CSV, and their digest (what the server must end up holding)
# --------------------------------------------------------------------------------------------------------

def generate(records: int) -> list[dict[str, str]]:
    """``records`` CSV rows (sku, name, qty, min_qty), reproducible."""
    return [{"sku": f"SKU{i:06d}", "name": f"Product {i}, {COLORS[i % len(COLORS)]}", "qty": str(i * 7 % 250),
             "min_qty": str(i % 9)} for i in range(1, records + 1)]


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    """The products file both clients read."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sku", "name", "qty", "min_qty"])
        writer.writeheader()
        writer.writerows(rows)


def product(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the product document (what the engine's mapping makes of it)."""
    return {"sku": row["sku"], "name": row["name"],
            "inventory": {"qty": int(row["qty"]), "min_qty": int(row["min_qty"])}}


def canonical(doc: dict[str, Any]) -> str:
    """One product document as text."""
    inventory = doc.get("inventory") or {}
    return "|".join(str(v) for v in (doc.get("sku"), doc.get("name"), inventory.get("qty"), inventory.get("min_qty")))


# --------------------------------------------------------------------------------------------------------
# The server (``python -m benchmarks.dsync_push serve``)
# --------------------------------------------------------------------------------------------------------

def serve(argv: list[str]) -> int:
    """A DsyncServer (the seed's layout, the default Auth-Token); see :class:`benchmarks.rest.ServerProcess`."""
    parser = argparse.ArgumentParser(prog="benchmarks.dsync_push serve")
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.servers.dsync_server import DsyncServer

    server = DsyncServer(auth_token=AUTH_TOKEN, latency=args.latency)

    def stats() -> dict[str, Any]:
        with server.lock:
            stored = list(server.rows["product"].values())
            process_ids = {r.headers.get("Process-Id") for r in server.requests if r.route == "/entity/product"}
            return {"products": len(stored), "digest": digest(canonical(doc) for doc in stored),
                    "counts": {f"{m} {route} {status}": n for (m, route, status), n in sorted(server.counts.items())},
                    "process_ids": len(process_ids), "notifications": len(server.notifications),
                    "server_errors": server.server_errors[:5]}

    try:
        print(server.url, flush=True)
        serve_loop(stats)
    finally:
        server.stop()
    return 0


# --------------------------------------------------------------------------------------------------------
# The bare client (``python -m benchmarks.dsync_push bare``)
# --------------------------------------------------------------------------------------------------------

def bare(argv: list[str]) -> int:
    """POST every product of ``--csv`` with ``requests`` alone, ``--concurrency`` threads; print one JSON line."""
    parser = argparse.ArgumentParser(prog="benchmarks.dsync_push bare")
    parser.add_argument("--url", required=True)
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    import uuid
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    import requests
    from requests.adapters import HTTPAdapter

    started = time.perf_counter()
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=args.concurrency))
    auth = {"Auth-Token": os.environ.get("DSYNC_AUTH_TOKEN", AUTH_TOKEN)}
    layout = session.get(f"{args.url}/datalayout", headers=auth)
    layout.raise_for_status()
    entity = next(e for e in layout.json()["data"]["data_layout"] if e.get("entity_name") == "product")
    endpoint = args.url + urlsplit(entity["endpoint_url"]).path
    process_id = str(uuid.uuid4())
    headers = {**auth, "Entity-Token": entity["entity_token"], "Process-Id": process_id}

    def send(row: dict[str, str]) -> tuple[str, int, str]:
        reply = session.post(endpoint, json=product(row), headers=headers)
        return row["sku"], reply.status_code, "" if reply.status_code == 201 else reply.text[:200]

    with args.csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(send, rows))
    created = sum(1 for _, status, _ in results if status == 201)
    failures = [{"node_id": sku, "status": str(status), "message": text} for sku, status, text in results
                if status != 201]
    note = session.post(f"{args.url}/notification", headers={**auth, "Process-Id": process_id},
                        json={"process_id": process_id, "status": "500" if failures else "200",
                              "message": f"product: {created} created", "data": {"notifications": failures[:1000]}})
    finished = time.perf_counter()
    session.close()
    print(json.dumps({"seconds": finished - started, "sent": len(results), "created": created,
                      "notification": note.status_code, "errors": failures[:5]}))
    return 0


# --------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------

def run_engine(folder: Path, url: str, concurrency: int, records: int) -> dict[str, Any]:
    """One ``syncengine apply`` of every product, with a fresh state database."""
    pipeline = folder / f"p{concurrency}.yml"
    pipeline.write_text(PIPELINE.format(concurrency=concurrency), encoding="utf-8")
    state = folder / "state"
    state.mkdir(exist_ok=True)
    for stale in state.iterdir():
        stale.unlink()
    cmd = [sys.executable, "-m", "engine.cli", "apply", str(pipeline), "--state", str(state / "state.db"), "--json"]
    wall, cpu, code, out, err = child(cmd, {"DSYNC_URL": url, "DSYNC_AUTH_TOKEN": AUTH_TOKEN})
    block, problem = engine_report(out, err, code, "products")
    result: dict[str, Any] = {"wall": wall, "cpu": cpu, "inner": block.get("seconds") if block else None,
                              "problems": [problem] if problem else []}
    if block is not None and problem is None:
        want = {"read": records, "creates": records, "errors": 0}
        got = {k: block.get(k) for k in want}
        if got != want:
            result["problems"].append(f"engine counts {got}, want {want}: {block.get('message')}")
    return result


def run_bare(csv_path: Path, url: str, concurrency: int, records: int) -> dict[str, Any]:
    """One bare ``requests`` process sending every product."""
    cmd = [sys.executable, "-m", "benchmarks.dsync_push", "bare", "--url", url, "--csv", str(csv_path),
           "--concurrency", str(concurrency)]
    wall, cpu, code, out, err = child(cmd, {"DSYNC_AUTH_TOKEN": AUTH_TOKEN})
    result: dict[str, Any] = {"wall": wall, "cpu": cpu, "inner": None, "problems": []}
    try:
        answer = json.loads(out.strip().splitlines()[-1])
        result["inner"] = answer["seconds"]
        if code != 0 or answer["created"] != records or answer["notification"] != 200:
            result["problems"].append(f"exit {code}, {answer['created']} of {records} created, notification "
                                      f"{answer['notification']}: {answer['errors']}")
    except (ValueError, KeyError, IndexError):
        result["problems"].append(f"exit {code}: {(out + err).strip()[-500:]}")
    return result


def check_server(stats: dict[str, Any], records: int, want_digest: str) -> list[str]:
    """Exactly the generated products, one 201 per product, one layout, one notification, one process id."""
    problems = []
    if stats["products"] != records:
        problems.append(f"the server holds {stats['products']} products, not {records}")
    elif stats["digest"] != want_digest:
        problems.append("the products the server holds differ from the generated ones (digest)")
    want = {"GET /datalayout 200": 1, "POST /entity/product 201": records, "POST /notification 200": 1}
    if stats["counts"] != want:
        problems.append(f"the server answered {stats['counts']} (want {want})")
    if stats["process_ids"] != 1:
        problems.append(f"{stats['process_ids']} Process-Id values on the writes (want 1)")
    if stats["server_errors"]:
        problems.append(f"server errors: {stats['server_errors']}")
    return problems


def run(records: int, concurrency: int, repeat: int, latency: float = 0.02,
        log: IO[str] | None = sys.stderr) -> dict[str, Any]:
    """Every repetition, engine and bare alternating, a fresh server each; figures and problems."""
    rows = generate(records)
    want = digest(canonical(product(r)) for r in rows)
    results: dict[str, Any] = {"records": records, "concurrency": concurrency, "latency": latency, "repeat": repeat,
                               "problems": []}
    runs: dict[str, list[dict[str, Any]]] = {"engine": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="dsync-bench-") as tmp:
        folder = Path(tmp)
        csv_path = folder / "products.csv"
        write_csv(rows, csv_path)
        for rep in range(repeat):
            for kind in ("engine", "bare") if rep % 2 == 0 else ("bare", "engine"):
                with ServerProcess("benchmarks.dsync_push", ["--latency", str(latency)]) as srv:
                    if kind == "engine":
                        result = run_engine(folder, srv.url, concurrency, records)
                    else:
                        result = run_bare(csv_path, srv.url, concurrency, records)
                    stats = srv.stats()
                problems = result["problems"] + check_server(stats, records, want)
                result["requests"] = stats["counts"]
                runs[kind].append(result)
                results["problems"] += [f"{kind} run {rep + 1}: {p}" for p in problems]
                if log is not None:
                    inner = f"{result['inner']:.2f}s" if result["inner"] is not None else "?"
                    print(f"run {rep + 1} {kind}: {result['wall']:.2f}s whole process "
                          f"({records / result['wall']:,.0f} entities/s), {inner} in process, {result['cpu']:.2f}s CPU"
                          + (f"; PROBLEM: {problems}" if problems else ""), file=log, flush=True)
    results["summary"] = summarise(runs, records)
    return results


def render(results: dict[str, Any], command: str, machine: str) -> str:
    """The report as Markdown."""
    n, latency, c = results["records"], results["latency"], results["concurrency"]
    row = results["summary"]
    eng, bare_ = row["engine"], row["bare"]
    lines = [f"Command: `{command}`", "", f"Machine: {machine}.", "",
             f"{n:,} products, concurrency {c}, {latency * 1000:g} ms server latency on every request; the Dsync test "
             "server in its own process (`python -m benchmarks.dsync_push serve`), a fresh one per run; "
             f"{results['repeat']} runs of each client, alternating; medians. Entities/s = products / median "
             "whole-process seconds (interpreter start to exit). \"engine/bare\" is the engine's entities/s as a share "
             f"of the bare client's. Latency floor: products x latency / concurrency = {n * latency / c:.2f} s.", "",
             "| | whole process s | entities/s | in process s | entities/s in process | client CPU s | "
             "CPU ms per entity | all runs, whole process s |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, figures in (("engine (`syncengine apply`)", eng), ("bare `requests`", bare_)):
        inner = figures["inner"]
        lines.append(f"| {name} | {figures['wall']:.2f} | {figures['records_per_s']:,.0f} | "
                     + (f"{inner:.2f} | {n / inner:,.0f}" if inner else "? | ?")
                     + f" | {figures['cpu']:.2f} | {figures['cpu'] * 1000 / n:.2f} | "
                     + ", ".join(f"{w:.2f}" for w in figures["all_wall"]) + " |")
    inner_ratio = f"{row['inner_rate_ratio']:.2f}x" if "inner_rate_ratio" in row else "?"
    lines += ["", f"engine/bare entities/s: {row['rate_ratio']:.2f}x whole process (paired, the median of each "
              f"repetition's ratio: {row['paired_rate_ratio']:.2f}x); {inner_ratio} inside the process.", "",
              "Targets:",
              f"- engine/bare entities/s {row['rate_ratio']:.2f}x, whole process (target >= {TARGET}x): "
              f"{'met' if row['rate_ratio'] >= TARGET else 'NOT met'}",
              "- every run: the server held exactly the generated products (count and digest), answered one 201 per "
              "product, one layout and one notification and nothing else, all writes under one Process-Id: "
              + ("NOT met" if results["problems"] else "met")]
    if results["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in results["problems"][:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the report; exit 1 when a check failed."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "serve":
        return serve(args_in[1:])
    if args_in and args_in[0] == "bare":
        return bare(args_in[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client (median)")
    parser.add_argument("--latency", type=float, default=0.02, help="server seconds per request")
    parser.add_argument("--update-readme", action="store_true", help="write the report into benchmarks/README.md")
    args = parser.parse_args(args_in)
    load = Load()
    results = run(args.records, args.concurrency, args.repeat, args.latency)
    text = render(results, "python -m benchmarks.dsync_push " + " ".join(args_in), machine_note(load))
    print(text)
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    (work / "dsync_push.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.update_readme:
        update_readme(text, START, END, SECTION)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
