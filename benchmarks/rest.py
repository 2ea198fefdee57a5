"""Weavy (REST) records per second: ``syncengine apply`` against a bare ``requests`` client, same server, same run.

    python -m benchmarks.rest --records 10000 --repeat 3 [--update-readme]

Two jobs against the Weavy test server (``tests/servers/weavy_server.py``), which sleeps ``--latency`` seconds
(20 ms) at the start of every request and has no quota:

* **pull**: ``--records`` customers seeded on the server, read with ``mode: export`` (pages of 1000 rows, keyset
  paging by ``srvDateUTC``) into a SQLite table, each page acknowledged (``exportValidation``) once delivered;
* **import**: a JSON Lines file of ``--records`` customers written with ``write: bulk`` (atomic imports of 1000
  rows) to an empty server.

Each job runs two clients, each a whole process timed from outside (interpreter start, imports, login, every
call, exit), alternating (A/B, the order flips every repetition), each against a fresh server:

* **engine**: ``python -m engine.cli apply`` of a pipeline, with a fresh state database (and a fresh table);
* **bare**: ``python -m benchmarks.rest bare-pull`` / ``bare-import``: ``requests`` alone, one login, the same
  GETs and ``exportValidation`` POSTs (the same keyset paging), or the same import POSTs, one after the other.
  The bare pull parses every page and keeps a digest of its rows; it writes no table.

The server runs in its own process (``python -m benchmarks.rest serve``: a ``WeavyServer`` that prints its URL
and answers ``stats`` on its stdin), so neither client shares a GIL with it. After every run the server must
hold what it should: pull, every customer marked exported, the engine's table (or the bare client's digest)
equal to the server's customers; import, exactly the generated customers (count and a digest of every field
sent); one login, one import per 1000 rows or one acknowledgement per page, no error, no 429.

It prints a Markdown report; ``--update-readme`` writes it into ``benchmarks/README.md`` between the
``rest:results`` markers (inside the ``rest`` section). Raw figures go to ``benchmarks/work/rest.json``. Exit 1
when a check failed. ``benchmarks/dsync_push.py`` uses this module's server, timing and README helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = HERE / "README.md"
START = "<!-- rest:results:start -->"
END = "<!-- rest:results:end -->"
SECTION = ("<!-- rest:begin -->", "<!-- rest:end -->")
PROJECT, USER, PASSWORD = "DEMO", "apiuser", "Weavy-Pa55word"  # the test server's defaults
ENTITY = "customer"
PAGE = 1000  # rows per read and per import: the service's own limit
CALLS_PER_MINUTE = 100_000  # the pipelines' declared quota: high enough never to pace a run (the server has none)
JOBS = ("pull", "import")
JOB_TITLES = {"pull": "pull + acknowledge", "import": "bulk import"}

PULL_PIPELINE = """\
version: 1
name: rest_bench_pull
sources:
  crm:
    type: weavy
    url: "{{{{ env.WEAVY_URL }}}}"
    project: {project}
    username: {user}
    password: "{{{{ env.WEAVY_PASSWORD }}}}"
    calls_per_minute: {calls}
    page_size: {page}
destinations:
  db: {{type: sqlite, path: out.db}}
syncs:
  customers:
    source: {{name: crm, entity: customer, mode: export}}
    destination: {{name: db, table: customers, create_table: true}}
    key: customer_ID
    mode: mirror
    scope: increment
    batch_size: {page}
    mapping:
      fields:
        customer_ID: "{{{{ record.customer_ID }}}}"
        CodeCustomer: "{{{{ record.CodeCustomer }}}}"
        name: "{{{{ record.name }}}}"
        creditLimit: "{{{{ record.creditLimit }}}}"
        employeeCount: "{{{{ record.employeeCount }}}}"
        active: "{{{{ record.active }}}}"
        customerSince: "{{{{ record.customerSince }}}}"
        baseuser_ID: "{{{{ record.baseuser_ID }}}}"
        companyCode: "{{{{ record.companyCode }}}}"
        crm_changed_at: "{{{{ record.srvDateUTC }}}}"
"""

IMPORT_PIPELINE = """\
version: 1
name: rest_bench_import
sources:
  file: {{type: jsonl, path: customers.jsonl}}
destinations:
  crm:
    type: weavy
    url: "{{{{ env.WEAVY_URL }}}}"
    project: {project}
    username: {user}
    password: "{{{{ env.WEAVY_PASSWORD }}}}"
    calls_per_minute: {calls}
syncs:
  customers:
    source: file
    destination: {{name: crm, entity: customer, write: bulk, rows_per_import: {rows}}}
    key: customer_ID
    mapping:
      fields:
        customer_ID: "{{{{ record.customer_ID }}}}"
        CodeCustomer: "{{{{ record.CodeCustomer }}}}"
        name: "{{{{ record.name }}}}"
        creditLimit: "{{{{ record.creditLimit }}}}"
        employeeCount: "{{{{ record.employeeCount }}}}"
        active: "{{{{ record.active }}}}"
        customerSince: "{{{{ record.customerSince }}}}"
"""


# --------------------------------------------------------------------------------------------------------
# Shared with benchmarks/dsync_push.py: a server in its own process, a timed child, the machine, the README
# --------------------------------------------------------------------------------------------------------

class ServerProcess:
    """A test server in its own process (``python -m <module> serve ...``): it prints its URL on its first line,
    answers ``stats`` on its stdin with one JSON line, and stops at ``stop`` or end of input."""

    def __init__(self, module: str, args: list[str]) -> None:
        self.cmd = [sys.executable, "-m", module, "serve", *args]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.proc.kill()
            raise SystemExit(f"the test server did not start ({' '.join(self.cmd[2:])}: exit {self.proc.wait(10)})")
        return self

    def stats(self) -> dict[str, Any]:
        """What the server holds and was asked, now."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self.proc = None


def serve_loop(stats: Any) -> None:
    """The ``serve`` side of :class:`ServerProcess`: answer ``stats`` lines until ``stop`` or end of input."""
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(stats()), flush=True)
        elif line.strip() == "stop":
            break


def child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """Run one measured process: wall seconds, its CPU seconds (user + system), exit code, stdout, stderr.

    The CPU time is this process's children's usage before and after: a server process is reaped only after
    the run, so it is the measured process's alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800,
                          check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, done.returncode, done.stdout, done.stderr


def engine_report(out: str, err: str, code: int, sync: str) -> tuple[dict[str, Any] | None, str | None]:
    """One sync's block of ``syncengine apply --json``, or why there is none."""
    try:
        block: dict[str, Any] = json.loads(out)["syncs"][sync]
    except (ValueError, KeyError, TypeError):
        return None, f"exit {code}: {(out + err).strip()[-500:]}"
    if code != 0 or block.get("status") != "ok":
        return block, f"exit {code}, status {block.get('status')}: {block.get('message')}"
    return block, None


def _cpu_times() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot (``/proc/stat``; 0, 0 where there is none)."""
    try:
        first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


def _own_cpu() -> float:
    """CPU seconds of this process and of its children reaped so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class Load:
    """How busy the machine was around a benchmark: load averages, and the CPU time other processes took (the
    machine's busy time from ``/proc/stat`` less this process's and its children's, servers included)."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self.busy, self.all = _cpu_times()
        self.own = _own_cpu()

    def note(self) -> str:
        """One sentence for the machine line."""
        one, five, _ = self.load_before
        after = os.getloadavg()
        busy, every = _cpu_times()
        text = (f"load average {one:.1f} (1 min) / {five:.1f} (5 min) at the start, {after[0]:.1f} / {after[1]:.1f} "
                "at the end")
        if every > self.all:
            others = max(0.0, (busy - self.busy) - (_own_cpu() - self.own))
            text += (f"; other processes used {others:.0f} CPU-s of the {every - self.all:.0f} the machine had "
                     f"during the run ({100 * others / (every - self.all):.0f} %)")
        return text


def machine_note(load: Load, packages: Iterable[str] = ("requests", "urllib3")) -> str:
    """CPUs, CPU model, Python, the client libraries, the engine's commit and the load (read-only git)."""
    from importlib.metadata import version

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.measure import machine_summary

    os.environ.setdefault("GIT_OPTIONAL_LOCKS", "0")  # `git status` must not refresh the index
    m = machine_summary()
    libs = ", ".join(f"{name} {version(name)}" for name in packages)
    return (f"{m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, {m['os']}, Python {m['python']}, {libs}; "
            f"engine at commit {m['commit']}; {load.note()}")


def update_readme(text: str, start: str = START, end: str = END, section: tuple[str, str] = SECTION,
                  path: Path = README) -> None:
    """Replace what lies between ``start`` and ``end`` (which must lie inside ``section``'s markers) with ``text``.

    The file is read right before it is written: another section may have changed meanwhile."""
    readme = path.read_text(encoding="utf-8")
    if any(readme.count(marker) != 1 for marker in (start, end, *section)):
        raise SystemExit(f"{path.name} must hold {section[0]} ... {start} ... {end} ... {section[1]}, each once")
    if not readme.index(section[0]) < readme.index(start) < readme.index(end) < readme.index(section[1]):
        raise SystemExit(f"{path.name}: {start} ... {end} must lie inside {section[0]} ... {section[1]}")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")


def summarise(runs: dict[str, list[dict[str, Any]]], records: int) -> dict[str, Any]:
    """Medians per client; the engine's records/s as a share of the bare client's (of the medians, and the median
    of each repetition's pair)."""
    out: dict[str, Any] = {}
    for kind, results in runs.items():
        wall = statistics.median(r["wall"] for r in results)
        inner = [r["inner"] for r in results if r["inner"] is not None]
        out[kind] = {"wall": wall, "inner": statistics.median(inner) if inner else None,
                     "cpu": statistics.median(r["cpu"] for r in results), "records_per_s": records / wall,
                     "all_wall": [round(r["wall"], 3) for r in results], "requests": results[-1].get("requests")}
    out["rate_ratio"] = out["bare"]["wall"] / out["engine"]["wall"]
    out["paired_rate_ratio"] = statistics.median(b["wall"] / e["wall"] for e, b in zip(runs["engine"], runs["bare"],
                                                                                       strict=True))
    if out["engine"]["inner"] and out["bare"]["inner"]:
        out["inner_rate_ratio"] = out["bare"]["inner"] / out["engine"]["inner"]
    return out


# --------------------------------------------------------------------------------------------------------
# The data: seeded customers (pull) and generated ones (import), and their digest
# --------------------------------------------------------------------------------------------------------

def canonical(code: Any, row: dict[str, Any]) -> str:
    """One customer's fields as text, whatever the store (JSON from the server, SQLite's 1/0 booleans)."""
    def text(value: Any) -> str:
        return "" if value is None else str(value)

    credit = row.get("creditLimit")
    count = row.get("employeeCount")
    active = row.get("active")
    return "|".join((text(code), text(row.get("CodeCustomer")), text(row.get("name")),
                     "" if credit is None else f"{float(credit):.2f}", "" if count is None else str(int(count)),
                     "" if active is None else str(int(bool(active))), text(row.get("customerSince"))))


def digest(canon: Iterable[str]) -> str:
    """One SHA-256 over canonical texts, in sorted order."""
    return hashlib.sha256("\n".join(sorted(canon)).encode()).hexdigest()


def generate(records: int) -> list[dict[str, Any]]:
    """The customers the import sends (codes ``IMP000001``...), reproducible."""
    since = datetime(2019, 3, 1)
    return [{"customer_ID": f"IMP{i:06d}", "CodeCustomer": f"C{i:06d}", "name": f"Customer {i} & Sons",
             "creditLimit": round((i * 37) % 50000 + 0.5, 2), "employeeCount": i % 977, "active": i % 3 != 0,
             "customerSince": (since + timedelta(hours=7 * i)).strftime("%Y-%m-%dT%H:%M:%S")}
            for i in range(1, records + 1)]


def write_jsonl(customers: list[dict[str, Any]], path: Path) -> None:
    """One customer per line."""
    path.write_text("".join(json.dumps(c) + "\n" for c in customers), encoding="utf-8")


def table_digest(db: Path) -> tuple[int, int, str]:
    """(rows, distinct codes, digest) of the pulled table."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        found = [dict(r) for r in con.execute("SELECT * FROM customers")]
    finally:
        con.close()
    return len(found), len({r["customer_ID"] for r in found}), digest(canonical(r["customer_ID"], r) for r in found)


# --------------------------------------------------------------------------------------------------------
# The server (``python -m benchmarks.rest serve``)
# --------------------------------------------------------------------------------------------------------

def serve(argv: list[str]) -> int:
    """A WeavyServer (user ``apiuser``, no quota) with ``--seed`` customers; see :class:`ServerProcess`."""
    parser = argparse.ArgumentParser(prog="benchmarks.rest serve")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0, help="customers created before serving")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.servers.weavy_server import WeavyServer

    server = WeavyServer(project=PROJECT, users={USER: PASSWORD}, latency=args.latency, quota=None)

    def stats() -> dict[str, Any]:
        with server.lock:
            live = [r for r in server.rows[ENTITY].values() if not r["srvDeleted"]]
            return {"customers": len(live), "exported": sum(1 for r in live if r["srvExport"]),
                    "digest": digest(canonical(r[f"{ENTITY}_ID"], r) for r in live),
                    "routes": dict(server.route_counts), "logins": server.login_count,
                    "throttled": server.throttled_count, "server_errors": server.server_errors[:5],
                    "statuses": {str(k): n for k, n in Counter(r.status for r in server.requests).items()}}

    try:
        if args.seed:
            server.seed(ENTITY, args.seed)
        print(server.url, flush=True)
        serve_loop(stats)
    finally:
        server.stop()
    return 0


# --------------------------------------------------------------------------------------------------------
# The bare clients (``python -m benchmarks.rest bare-pull`` / ``bare-import``)
# --------------------------------------------------------------------------------------------------------

def _login(session: Any, url: str) -> dict[str, str]:
    reply = session.post(f"{url}/v1/Authenticate", json={"scope": "API", "projectCode": PROJECT, "userName": USER,
                                                          "password": os.environ.get("WEAVY_PASSWORD", PASSWORD)})
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['authToken']}"}


def bare_pull(argv: list[str]) -> int:
    """Read every unexported customer page by page (keyset paging by ``srvDateUTC``, as the engine does) and
    acknowledge each page once read; print one JSON line."""
    parser = argparse.ArgumentParser(prog="benchmarks.rest bare-pull")
    parser.add_argument("--url", required=True)
    parser.add_argument("--page-size", type=int, default=PAGE)
    args = parser.parse_args(argv)
    import requests

    started = time.perf_counter()
    session = requests.Session()
    headers = _login(session, args.url)
    root = f"{args.url}/v1/data/{PROJECT}"
    at: str | None = None
    seen: set[str] = set()
    canon: list[str] = []
    acknowledged = conflicts = reads = acks = 0
    while True:
        params: dict[str, Any] = {"includeDeleted": "true", "srvExport": 0, "offset": 0, "limit": args.page_size}
        if at is not None:
            params["srvDateUTCFrom"] = at
        reply = session.get(f"{root}/{ENTITY}", params=params, headers=headers)
        reply.raise_for_status()
        reads += 1
        page: list[dict[str, Any]] = reply.json()
        fresh = [r for r in page if r[f"{ENTITY}_ID"] not in seen]  # the row at `at` comes again until acknowledged
        for row in fresh:
            seen.add(row[f"{ENTITY}_ID"])
            canon.append(canonical(row[f"{ENTITY}_ID"], row))
        if fresh:
            body = {"entityName": ENTITY, "srvExport": True,
                    "rows": [{"rowCode": r[f"{ENTITY}_ID"], "srvDateUTC": r["srvDateUTC"]} for r in fresh]}
            answer = session.post(f"{root}/exportValidation", json=body, headers=headers)
            answer.raise_for_status()
            acks += 1
            found = len(answer.json().get("conflicts") or [])
            conflicts += found
            acknowledged += len(fresh) - found
        if len(page) < args.page_size:
            break
        at = page[-1]["srvDateUTC"]
    finished = time.perf_counter()
    session.close()
    print(json.dumps({"seconds": finished - started, "read": len(canon), "distinct": len(seen),
                      "acknowledged": acknowledged, "conflicts": conflicts, "reads": reads, "acks": acks,
                      "digest": digest(canon)}))
    return 0


def bare_import(argv: list[str]) -> int:
    """Send every customer of ``--jsonl`` as atomic imports of ``--rows`` rows, one after the other; print one
    JSON line."""
    parser = argparse.ArgumentParser(prog="benchmarks.rest bare-import")
    parser.add_argument("--url", required=True)
    parser.add_argument("--jsonl", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=PAGE)
    args = parser.parse_args(argv)
    import requests

    started = time.perf_counter()
    session = requests.Session()
    headers = _login(session, args.url)
    path = f"{args.url}/v1/data/{PROJECT}/{ENTITY}/import"
    added = sent = 0
    errors: list[str] = []

    def batches() -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        with args.jsonl.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    batch.append(json.loads(line))
                    if len(batch) == args.rows:
                        yield batch
                        batch = []
        if batch:
            yield batch

    for batch in batches():
        reply = session.post(path, json=batch, headers=headers)
        sent += len(batch)
        if reply.status_code == 200:
            added += int(reply.json().get("addedRow") or 0)
        else:
            errors.append(f"HTTP {reply.status_code}: {reply.text[:200]}")
    finished = time.perf_counter()
    session.close()
    print(json.dumps({"seconds": finished - started, "sent": sent, "added": added, "errors": errors[:5]}))
    return 0


# --------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------

def fresh_folder(folder: Path) -> Path:
    """An empty folder (the previous run's table and state removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file():
            stale.unlink()
    return folder


def run_engine(job: str, folder: Path, url: str, records: int, page: int, rows: int,
               jsonl: Path) -> dict[str, Any]:
    """One ``syncengine apply`` of a job, with a fresh state database (and, for the pull, a fresh table)."""
    folder = fresh_folder(folder)
    pipeline = folder / "p.yml"
    if job == "pull":
        pipeline.write_text(PULL_PIPELINE.format(project=PROJECT, user=USER, calls=CALLS_PER_MINUTE, page=page),
                            encoding="utf-8")
    else:
        (folder / "customers.jsonl").write_bytes(jsonl.read_bytes())
        pipeline.write_text(IMPORT_PIPELINE.format(project=PROJECT, user=USER, calls=CALLS_PER_MINUTE, rows=rows),
                            encoding="utf-8")
    cmd = [sys.executable, "-m", "engine.cli", "apply", str(pipeline), "--state", str(folder / "state.db"), "--json"]
    wall, cpu, code, out, err = child(cmd, {"WEAVY_URL": url, "WEAVY_PASSWORD": PASSWORD})
    block, problem = engine_report(out, err, code, "customers")
    result: dict[str, Any] = {"wall": wall, "cpu": cpu, "inner": block.get("seconds") if block else None,
                              "problems": [problem] if problem else []}
    if block is not None and problem is None:
        want = {"read": records, "creates": records, "errors": 0}
        got = {k: block.get(k) for k in want}
        if got != want:
            result["problems"].append(f"engine counts {got}, want {want}: {block.get('message')}")
        result["notes"] = block.get("notes")
    if job == "pull" and (folder / "out.db").exists() and not result["problems"]:
        count, distinct, found = table_digest(folder / "out.db")
        result["table"] = {"rows": count, "distinct": distinct, "digest": found}
    return result


def run_bare(job: str, url: str, page: int, rows: int, jsonl: Path) -> dict[str, Any]:
    """One bare ``requests`` process doing the job."""
    if job == "pull":
        cmd = [sys.executable, "-m", "benchmarks.rest", "bare-pull", "--url", url, "--page-size", str(page)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.rest", "bare-import", "--url", url, "--jsonl", str(jsonl),
               "--rows", str(rows)]
    wall, cpu, code, out, err = child(cmd, {"WEAVY_PASSWORD": PASSWORD})
    result: dict[str, Any] = {"wall": wall, "cpu": cpu, "inner": None, "problems": []}
    try:
        answer = json.loads(out.strip().splitlines()[-1])
        result["inner"] = answer["seconds"]
        result["bare"] = answer
        if code != 0:
            result["problems"].append(f"exit {code}: {err.strip()[-300:]}")
    except (ValueError, KeyError, IndexError):
        result["problems"].append(f"exit {code}: {(out + err).strip()[-500:]}")
    return result


def route_summary(routes: dict[str, int]) -> dict[str, int]:
    """The server's route counts under short names."""
    names = {"POST /v1/Authenticate": "login", "GET /v1/data/{p}/entities/{entity}": "entity",
             "GET /v1/data/{p}/{entity}": "read", "POST /v1/data/{p}/exportValidation": "ack",
             "POST /v1/data/{p}/{entity}/import": "import"}
    short = {names.get(route, route): n for route, n in routes.items()}
    order = [*names.values(), *sorted(set(short) - set(names.values()))]
    return {name: short[name] for name in order if name in short}


def check(job: str, kind: str, result: dict[str, Any], stats: dict[str, Any], records: int, page: int, rows: int,
          want_import: str) -> list[str]:
    """What the server (and the engine's table, or the bare client's answer) must show after a run."""
    problems = list(result["problems"])
    routes = route_summary(stats["routes"])
    if stats["logins"] != 1:
        problems.append(f"{stats['logins']} logins (want 1)")
    if stats["throttled"] or set(stats["statuses"]) != {"200"}:
        problems.append(f"answers {stats['statuses']}, {stats['throttled']} throttled (want only 200s)")
    if stats["server_errors"]:
        problems.append(f"server errors: {stats['server_errors']}")
    if job == "pull":
        if stats["customers"] != records or stats["exported"] != records:
            problems.append(f"{stats['exported']} of {stats['customers']} customers marked exported (want {records})")
        if routes.get("ack") != math.ceil(records / page):
            problems.append(f"{routes.get('ack')} acknowledgements (want {math.ceil(records / page)})")
        if kind == "engine" and "table" in result:
            table = result["table"]
            if table["rows"] != records or table["distinct"] != records or table["digest"] != stats["digest"]:
                problems.append(f"the table holds {table['rows']} rows ({table['distinct']} codes), "
                                f"{'not ' if table['digest'] != stats['digest'] else ''}the server's customers")
        elif kind == "engine" and not result["problems"]:
            problems.append("no table to check")
        if kind == "bare" and "bare" in result:
            answer = result["bare"]
            if (answer["read"], answer["distinct"], answer["acknowledged"], answer["conflicts"]) != \
                    (records, records, records, 0) or answer["digest"] != stats["digest"]:
                problems.append(f"the bare client read {answer['read']} rows ({answer['distinct']} codes), "
                                f"acknowledged {answer['acknowledged']}, {answer['conflicts']} conflicts")
    else:
        if stats["customers"] != records or stats["digest"] != want_import:
            problems.append(f"the server holds {stats['customers']} customers"
                            + (", not the generated ones (digest)" if stats["customers"] == records else ""))
        if routes.get("import") != math.ceil(records / rows):
            problems.append(f"{routes.get('import')} imports (want {math.ceil(records / rows)})")
        if kind == "bare" and "bare" in result and (result["bare"]["added"], result["bare"]["errors"]) != (records, []):
            problems.append(f"the bare client: {result['bare']['added']} added, errors {result['bare']['errors']}")
    return problems


def run(records: int, repeat: int, latency: float = 0.02, page: int = PAGE, rows: int = PAGE,
        jobs: Iterable[str] = JOBS, log: IO[str] | None = sys.stderr) -> dict[str, Any]:
    """Every repetition of every job, engine and bare alternating, a fresh server each; figures and problems."""
    customers = generate(records)
    want_import = digest(canonical(c["customer_ID"], c) for c in customers)
    results: dict[str, Any] = {"records": records, "latency": latency, "repeat": repeat, "page": page,
                               "rows_per_import": rows, "jobs": {}, "problems": []}
    with tempfile.TemporaryDirectory(prefix="rest-bench-") as tmp:
        folder = Path(tmp)
        jsonl = folder / "customers.jsonl"
        write_jsonl(customers, jsonl)
        for job in jobs:
            runs: dict[str, list[dict[str, Any]]] = {"engine": [], "bare": []}
            for rep in range(repeat):
                for kind in ("engine", "bare") if rep % 2 == 0 else ("bare", "engine"):
                    seed = records if job == "pull" else 0
                    with ServerProcess("benchmarks.rest", ["--latency", str(latency), "--seed", str(seed)]) as srv:
                        if kind == "engine":
                            result = run_engine(job, folder / "engine", srv.url, records, page, rows, jsonl)
                        else:
                            result = run_bare(job, srv.url, page, rows, jsonl)
                        stats = srv.stats()
                    problems = check(job, kind, result, stats, records, page, rows, want_import)
                    result["requests"] = route_summary(stats["routes"])
                    runs[kind].append(result)
                    results["problems"] += [f"{job}, {kind} run {rep + 1}: {p}" for p in problems]
                    if log is not None:
                        inner = f"{result['inner']:.2f}s" if result["inner"] is not None else "?"
                        print(f"{job} run {rep + 1} {kind}: {result['wall']:.2f}s whole process "
                              f"({records / result['wall']:,.0f} records/s), {inner} in process, "
                              f"{result['cpu']:.2f}s CPU, requests {result['requests']}"
                              + (f"; PROBLEM: {problems}" if problems else ""), file=log, flush=True)
            results["jobs"][job] = summarise(runs, records)
    return results


def _requests(summary: dict[str, int] | None) -> str:
    return ", ".join(f"{n} {name}" for name, n in (summary or {}).items()) or "?"


def render(results: dict[str, Any], command: str, machine: str) -> str:
    """The report as Markdown."""
    n, latency = results["records"], results["latency"]
    lines = [f"Command: `{command}`", "", f"Machine: {machine}.", "",
             f"{n:,} customers, {latency * 1000:g} ms server latency on every request, no quota; pages of "
             f"{results['page']:,} rows, imports of {results['rows_per_import']:,} rows; the Weavy test server in its "
             f"own process (`python -m benchmarks.rest serve`), a fresh one per run; {results['repeat']} runs of each "
             "client per job, alternating; medians. Records/s = records / median whole-process seconds (interpreter "
             "start to exit). \"engine/bare\" is the engine's records/s as a share of the bare client's.", "",
             "| job | engine s | bare `requests` s | engine records/s | bare records/s | engine/bare | paired (median "
             "of each run's) | requests to the server (engine; bare) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for job, row in results["jobs"].items():
        eng, bare_ = row["engine"], row["bare"]
        lines.append(f"| {JOB_TITLES[job]} | {eng['wall']:.2f} | {bare_['wall']:.2f} | {eng['records_per_s']:,.0f} | "
                     f"{bare_['records_per_s']:,.0f} | {row['rate_ratio']:.2f}x | {row['paired_rate_ratio']:.2f}x | "
                     f"{_requests(eng['requests'])}; {_requests(bare_['requests'])} |")
    lines += ["", "Inside the process (engine: its sync's seconds; bare: from the session to the last answer, imports "
              "excluded) and the client process's CPU time (user + system), medians:", "",
              "| job | engine s in process | bare s in process | engine/bare records/s in process | engine CPU s "
              "| bare CPU s |", "|---|---:|---:|---:|---:|---:|"]
    for job, row in results["jobs"].items():
        eng, bare_ = row["engine"], row["bare"]
        inner = (f"{eng['inner']:.2f} | {bare_['inner']:.2f} | {row['inner_rate_ratio']:.2f}x"
                 if "inner_rate_ratio" in row else "? | ? | ?")
        lines.append(f"| {JOB_TITLES[job]} | {inner} | {eng['cpu']:.2f} | {bare_['cpu']:.2f} |")
    lines += ["", "Checks (every run):"]
    checks = {"pull": "pull: every customer landed in the table once with the server's values (digest), every "
                      "customer marked exported, one acknowledgement per page, one login, only 200s",
              "import": "import: the server holds exactly the generated customers (count and digest of every field "
                        "sent), one import per 1,000 rows, one login, only 200s"}
    for job in results["jobs"]:
        failed = any(p.startswith(f"{job},") for p in results["problems"])
        lines.append(f"- {checks[job]}: {'NOT met' if failed else 'met'}")
    if results["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in results["problems"][:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the report; exit 1 when a check failed."""
    args_in = sys.argv[1:] if argv is None else argv
    commands = {"serve": serve, "bare-pull": bare_pull, "bare-import": bare_import}
    if args_in and args_in[0] in commands:
        return commands[args_in[0]](args_in[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client per job (median)")
    parser.add_argument("--latency", type=float, default=0.02, help="server seconds per request")
    parser.add_argument("--jobs", default=",".join(JOBS), help="pull, import, or both (comma-separated)")
    parser.add_argument("--update-readme", action="store_true", help="write the report into benchmarks/README.md")
    args = parser.parse_args(args_in)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if set(jobs) - set(JOBS):
        parser.error(f"--jobs takes {', '.join(JOBS)}")
    load = Load()
    results = run(args.records, args.repeat, args.latency, jobs=jobs)
    text = render(results, "python -m benchmarks.rest " + " ".join(args_in), machine_note(load))
    print(text)
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    (work / "rest.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.update_readme:
        update_readme(text)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
