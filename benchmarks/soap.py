"""SOAP orders per second: ``syncengine apply`` against a bare zeep client, same server, same calls, same run.

    python -m benchmarks.soap --orders 1000 --lines 3 --concurrency 4 --repeat 3 [--update-readme]
    python -m benchmarks.soap --concurrency 4,8 --repeat 5 --update-readme

Both clients send the same ``--orders`` web sales orders (``--lines`` lines each, from one generated CSV)
as ``PersistWebSalesOrder`` calls to the iSync test server (``tests/servers/isync_server.py``), which
sleeps ``--latency`` seconds (20 ms) in every ``Execute``, with ``--concurrency`` requests in flight:

* **engine**: ``python -m engine.cli apply`` of a pipeline (CSV source, a ``group:`` mapping into
  ``LineItems``, the ``isync`` destination with ``concurrency: C``), with a fresh state database;
* **bare**: ``python -m benchmarks.soap bare``: zeep alone, one login, a ``ThreadPoolExecutor`` of C
  threads, each order's ``MessageXml`` written by hand from an f-string (members in sorted order).

Each is a whole process, timed from outside (interpreter start, imports, WSDL, login, every call,
exit); each also reports its time inside the process (the engine: its sync's ``seconds``; bare: from
building the zeep client to the last answer, imports excluded). They alternate (A/B, the order flips
every repetition) and each run gets a fresh server, so both send the same PO numbers to an empty one.

The server runs in its own process (``--server process``, the default: ``python -m benchmarks.soap
serve``, which holds an ``ISyncServer`` and answers ``stats`` on its stdin), so neither client shares
a GIL with it; ``--server thread`` serves from a thread of this driver instead (the driver only waits
while a client runs). After every run the server must hold exactly the generated orders (count and a
digest of PO number, tracking number, date, status, address and every line), have answered exactly
``--orders`` ``PersistWebSalesOrder`` calls after one login, and have ignored no out-of-order member.

It prints a Markdown report; ``--update-readme`` writes it into ``benchmarks/README.md`` between the
``soap`` markers. Raw figures go to ``benchmarks/work/soap.json``. Exit 1 when a check failed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = HERE / "README.md"
START = "<!-- soap:start -->"
END = "<!-- soap:end -->"
RATIO_TARGET = 1.5
USER, PASSWORD = "webstore", "s3cret"  # the test server's default user
REQUIRED_DATE = "2026-12-01T00:00:00"
STATUS = 3
PRODUCTS = 500  # the server's catalogue: barcodes BC000001..BC000500 (its --products numbering)
CITIES = ("Cape Town", "Durban", "Johannesburg", "Pretoria", "Gqeberha", "Bloemfontein")
STREETS = ("Long Street", "Main Road", "Church Street", "Victoria Road", "Beach Road")

PIPELINE = """\
version: 1
name: soap_bench
sources:
  lines: {{type: csv, path: orders.csv}}
destinations:
  isync:
    type: isync
    url: "{{{{ env.ISYNC_URL }}}}"
    username: {user}
    password: "{{{{ env.ISYNC_PASSWORD }}}}"
    concurrency: {concurrency}
syncs:
  orders:
    source: lines
    destination: {{name: isync, operation: PersistWebSalesOrder}}
    key: PONumber
    mapping:
      fields:
        PONumber: "{{{{ record.po }}}}"
        TrackNo: "{{{{ record.track }}}}"
        RequiredDate: "{required}"
        StatusID: {status}
        DeliveryDetail:
          AddressLine1: "{{{{ record.address }}}}"
          City: "{{{{ record.city }}}}"
      group:
        by: po
        into: LineItems
        fields:
          CNTypeID: 0
          ExRate: 1
          SellingPrice: "{{{{ record.price }}}}"
          StatusID: {status}
          ThirdPartyBarcode: "{{{{ record.barcode }}}}"
          Units: "{{{{ record.qty | int }}}}"
"""

# The bare client's MessageXml: the members of each level in ordinal (sorted) order, as WCF reads them.
ORDER_XML = ('<WebSalesOrder xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO" '
             'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
             "<DeliveryDetail><AddressLine1>{address}</AddressLine1><City>{city}</City></DeliveryDetail>"
             "<LineItems>{lines}</LineItems><PONumber>{po}</PONumber><RequiredDate>{required}</RequiredDate>"
             "<StatusID>{status}</StatusID><TrackNo>{track}</TrackNo></WebSalesOrder>")
LINE_XML = ("<WebSalesOrderDetail><CNTypeID>0</CNTypeID><ExRate>1</ExRate><SellingPrice>{price}</SellingPrice>"
            "<StatusID>{status}</StatusID><ThirdPartyBarcode>{barcode}</ThirdPartyBarcode><Units>{qty}</Units>"
            "</WebSalesOrderDetail>")


# --------------------------------------------------------------------------------------------------------
# The orders: generated, written as CSV order lines, and their digest (what the server must end up holding)
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Order:
    """One generated order and its lines (barcode, quantity, price text)."""

    po: str
    track: str
    city: str
    address: str
    lines: tuple[tuple[str, int, str], ...]


def generate(orders: int, lines: int, seed: int = 20260) -> list[Order]:
    """``orders`` orders of ``lines`` lines each, reproducible from ``seed``."""
    rng = random.Random(seed)
    out = []
    for number in range(1, orders + 1):
        out.append(Order(
            po=f"PO{number:07d}", track=f"TRK{number:07d}", city=rng.choice(CITIES),
            address=f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
            lines=tuple((f"BC{rng.randint(1, PRODUCTS):06d}", rng.randint(1, 5),
                         f"{rng.randint(20, 4999)}.{rng.randint(0, 99):02d}") for _ in range(lines))))
    return out


def write_csv(orders: list[Order], path: Path) -> None:
    """One row per order line, an order's lines adjacent (as ``group:`` requires)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["po", "track", "city", "address", "barcode", "qty", "price"])
        for order in orders:
            for barcode, qty, price in order.lines:
                writer.writerow([order.po, order.track, order.city, order.address, barcode, qty, price])


def _canonical(po: str, track: str, required: str, status: int, address: str, city: str,
               lines: list[tuple[str, int, Decimal]]) -> str:
    return "|".join((po, track, required, str(status), address, city,
                     ";".join(f"{barcode},{qty},{price:.2f}" for barcode, qty, price in lines)))


def digest(canonical: list[str]) -> str:
    """One SHA-256 over the orders' canonical texts, in PO order."""
    return hashlib.sha256("\n".join(sorted(canonical)).encode()).hexdigest()


def expected_digest(orders: list[Order]) -> str:
    """The digest of the orders as generated."""
    return digest([_canonical(o.po, o.track, REQUIRED_DATE, STATUS, o.address, o.city,
                              [(b, q, Decimal(p)) for b, q, p in o.lines]) for o in orders])


def stored_digest(stored: dict[str, dict[str, Any]]) -> str:
    """The digest of the orders a server holds (``ISyncServer.orders``), read as the generator wrote them."""
    return digest([_canonical(
        o["PONumber"], o["TrackNo"], o["RequiredDate"].strftime("%Y-%m-%dT%H:%M:%S"), o["StatusID"],
        o["DeliveryDetail"].get("AddressLine1") or "", o["DeliveryDetail"].get("City") or "",
        [(line["ThirdPartyBarcode"], int(line["Units"]), line["SellingPrice"]) for line in o["LineItems"]])
        for o in stored.values()])


def server_stats(server: Any) -> dict[str, Any]:
    """What a run left on an ``ISyncServer`` (read once the client has finished)."""
    return {"orders": len(server.orders), "digest": stored_digest(server.orders), "calls": dict(server.calls),
            "logins": server.logins, "failed_logins": server.failed_logins,
            "ignored_out_of_order": len(server.ignored_out_of_order), "internal_errors": server.internal_errors[:5]}


# --------------------------------------------------------------------------------------------------------
# The server: its own process (``serve``, the default) or a thread of this driver
# --------------------------------------------------------------------------------------------------------

def _server_class() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.servers.isync_server import ISyncServer

    return ISyncServer


def serve(argv: list[str]) -> int:
    """``python -m benchmarks.soap serve``: an ISyncServer that prints its URL, answers ``stats`` on stdin
    with one JSON line, and stops at ``stop`` or end of input."""
    parser = argparse.ArgumentParser(prog="benchmarks.soap serve")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--products", type=int, default=PRODUCTS)
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)
    server = _server_class()(latency=args.latency)
    server.add_products(args.products)
    with server:
        print(server.url, flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(server_stats(server)), flush=True)
            elif line.strip() == "stop":
                break
    return 0


class Server:
    """A fresh iSync test server for one run, in its own process or in a thread of this process."""

    def __init__(self, mode: str, latency: float, products: int = PRODUCTS) -> None:
        self.mode = mode
        self.latency = latency
        self.products = products
        self.proc: subprocess.Popen[str] | None = None
        self.server: Any = None
        self.url = ""

    def __enter__(self) -> Server:
        if self.mode == "thread":
            self.server = _server_class()(latency=self.latency)
            self.server.add_products(self.products)
            self.server.start()
            self.url = self.server.url
            return self
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soap", "serve", "--latency", str(self.latency),
             "--products", str(self.products)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.proc.kill()
            raise SystemExit(f"the iSync test server did not start (exit {self.proc.wait(10)})")
        return self

    def stats(self) -> dict[str, Any]:
        """What the server holds now."""
        if self.server is not None:
            return server_stats(self.server)
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.proc is not None:
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


# --------------------------------------------------------------------------------------------------------
# The bare client (``python -m benchmarks.soap bare``)
# --------------------------------------------------------------------------------------------------------

def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def read_orders(path: Path) -> Iterator[tuple[str, str]]:
    """(PO number, MessageXml) per order, from the CSV's adjacent lines, written by hand."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        current: list[dict[str, str]] = []
        for row in rows:
            if current and row["po"] != current[0]["po"]:
                yield current[0]["po"], _order_xml(current)
                current = []
            current.append(row)
        if current:
            yield current[0]["po"], _order_xml(current)


def _order_xml(rows: list[dict[str, str]]) -> str:
    head = rows[0]
    lines = "".join(LINE_XML.format(price=_escape(r["price"]), status=STATUS, barcode=_escape(r["barcode"]),
                                    qty=int(r["qty"])) for r in rows)
    return ORDER_XML.format(address=_escape(head["address"]), city=_escape(head["city"]), lines=lines,
                            po=_escape(head["po"]), required=REQUIRED_DATE, status=STATUS,
                            track=_escape(head["track"]))


def bare(argv: list[str]) -> int:
    """Send every order of ``--csv`` with zeep alone: one login, ``--concurrency`` threads; print one JSON line."""
    parser = argparse.ArgumentParser(prog="benchmarks.soap bare")
    parser.add_argument("--url", required=True)
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    import requests
    import zeep
    from requests.adapters import HTTPAdapter
    from zeep.transports import Transport

    started = time.perf_counter()
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=max(10, args.concurrency)))
    client = zeep.Client(f"{args.url}?wsdl", transport=Transport(session=session))  # type: ignore[no-untyped-call]
    service = client.service
    key = service.Login(username=USER, password=os.environ.get("ISYNC_PASSWORD", PASSWORD))
    logged_in = time.perf_counter()

    def send(order: tuple[str, str]) -> tuple[str, bool, str]:
        po, xml = order
        result = service.Execute(request={
            "MessageType": "PersistWebSalesOrder", "Identifier": f"bare/{po}", "Source": "bare",
            "PublishDate": datetime.now(UTC).replace(microsecond=0), "Instance": "1", "Action": "INSERT",
            "SessionKey": key, "MessageXml": xml})
        return po, bool(result.SuccessFlag), str(result.ResponseText or "")

    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(send, read_orders(args.csv)))
    finished = time.perf_counter()
    session.close()
    failed = [f"{po}: {text}" for po, ok, text in results if not ok]
    print(json.dumps({"seconds": finished - started, "send_seconds": finished - logged_in, "sent": len(results),
                      "ok": len(results) - len(failed), "errors": failed[:5]}))
    return 0


# --------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------

def _child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """Run one measured process: wall seconds, its CPU seconds (user + system), exit code, stdout, stderr.

    The CPU time is this process's children's usage before and after: the server process (if any) is
    reaped only after the run, so it is the measured process's alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800,
                          check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, done.returncode, done.stdout, done.stderr


def run_engine(folder: Path, url: str, concurrency: int, orders: int) -> dict[str, Any]:
    """One ``syncengine apply`` of every order, with a fresh state database."""
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = folder / f"p{concurrency}.yml"
    pipeline.write_text(PIPELINE.format(user=USER, concurrency=concurrency, required=REQUIRED_DATE, status=STATUS),
                        encoding="utf-8")
    state = folder / "state" / "state.db"
    if state.parent.exists():
        for stale in state.parent.iterdir():
            stale.unlink()
    cmd = [sys.executable, "-m", "engine.cli", "apply", str(pipeline), "--state", str(state), "--json"]
    wall, cpu, code, out, err = _child(cmd, {"ISYNC_URL": url, "ISYNC_PASSWORD": PASSWORD})
    problem = None
    inner = None
    try:
        sync = json.loads(out)["syncs"]["orders"]
        inner = sync["seconds"]
        if code != 0 or sync["status"] != "ok" or sync["creates"] != orders or sync["errors"]:
            problem = (f"exit {code}, status {sync['status']}, {sync['creates']} creates, {sync['errors']} errors: "
                       f"{sync['message'] or sync['errors_detail'][:2]}")
    except (ValueError, KeyError, TypeError):
        problem = f"exit {code}: {(out + err).strip()[-500:]}"
    return {"wall": wall, "cpu": cpu, "inner": inner, "problem": problem}


def run_bare(csv_path: Path, url: str, concurrency: int, orders: int) -> dict[str, Any]:
    """One bare zeep process sending every order."""
    cmd = [sys.executable, "-m", "benchmarks.soap", "bare", "--url", url, "--csv", str(csv_path),
           "--concurrency", str(concurrency)]
    wall, cpu, code, out, err = _child(cmd, {"ISYNC_PASSWORD": PASSWORD})
    problem = None
    inner = None
    try:
        result = json.loads(out.strip().splitlines()[-1])
        inner = result["seconds"]
        if code != 0 or result["ok"] != orders:
            problem = f"exit {code}, {result['ok']} of {orders} orders accepted: {result['errors']}"
    except (ValueError, KeyError, IndexError):
        problem = f"exit {code}: {(out + err).strip()[-500:]}"
    return {"wall": wall, "cpu": cpu, "inner": inner, "problem": problem}


def check_server(stats: dict[str, Any], orders: int, want_digest: str) -> list[str]:
    """What the server must hold after a run: exactly the generated orders, each sent once, after one login."""
    problems = []
    if stats["orders"] != orders:
        problems.append(f"the server holds {stats['orders']} orders, not {orders}")
    elif stats["digest"] != want_digest:
        problems.append("the orders the server holds differ from the generated ones (digest)")
    calls = stats["calls"]
    if calls.get("PersistWebSalesOrder", 0) != orders or set(calls) - {"PersistWebSalesOrder"}:
        problems.append(f"the server answered {calls} (want {orders} PersistWebSalesOrder and nothing else)")
    if stats["logins"] != 1 or stats["failed_logins"]:
        problems.append(f"{stats['logins']} logins, {stats['failed_logins']} refused (want 1, 0)")
    if stats["ignored_out_of_order"]:
        problems.append(f"{stats['ignored_out_of_order']} members arrived out of order (WCF would ignore them)")
    if stats["internal_errors"]:
        problems.append(f"server errors: {stats['internal_errors']}")
    return problems


def run(orders: int, lines: int, concurrencies: list[int], repeat: int, latency: float = 0.02,
        server: str = "process", log: IO[str] | None = sys.stderr) -> dict[str, Any]:
    """Every repetition at every concurrency, engine and bare alternating; figures and problems."""
    generated = generate(orders, lines)
    want = expected_digest(generated)
    results: dict[str, Any] = {"orders": orders, "lines": lines, "latency": latency, "repeat": repeat,
                               "server": server, "concurrency": {}, "problems": []}
    with tempfile.TemporaryDirectory(prefix="soap-bench-") as tmp:
        folder = Path(tmp)
        csv_path = folder / "orders.csv"
        write_csv(generated, csv_path)
        for concurrency in concurrencies:
            runs: dict[str, list[dict[str, Any]]] = {"engine": [], "bare": []}
            for rep in range(repeat):
                for kind in ("engine", "bare") if rep % 2 == 0 else ("bare", "engine"):
                    with Server(server, latency) as srv:
                        if kind == "engine":
                            result = run_engine(folder, srv.url, concurrency, orders)
                        else:
                            result = run_bare(csv_path, srv.url, concurrency, orders)
                        stats = srv.stats()
                    problems = [result["problem"]] if result["problem"] else []
                    problems += check_server(stats, orders, want)
                    result["server_calls"] = stats["calls"]
                    runs[kind].append(result)
                    results["problems"] += [f"concurrency {concurrency}, {kind} run {rep + 1}: {p}" for p in problems]
                    if log is not None:
                        inner = f"{result['inner']:.2f}s" if result["inner"] is not None else "?"
                        print(f"c={concurrency} run {rep + 1} {kind}: {result['wall']:.2f}s whole process "
                              f"({orders / result['wall']:,.0f} orders/s), {inner} in process, "
                              f"{result['cpu']:.2f}s CPU"
                              + (f"; PROBLEM: {problems}" if problems else ""), file=log, flush=True)
            results["concurrency"][str(concurrency)] = summarise(runs, orders)
    return results


def summarise(runs: dict[str, list[dict[str, Any]]], orders: int) -> dict[str, Any]:
    """Medians per client; the engine/bare ratio of the medians, and the median of each repetition's pair."""
    out: dict[str, Any] = {}
    for kind, results in runs.items():
        wall = statistics.median(r["wall"] for r in results)
        inner = [r["inner"] for r in results if r["inner"] is not None]
        out[kind] = {"wall": wall, "inner": statistics.median(inner) if inner else None,
                     "cpu": statistics.median(r["cpu"] for r in results), "orders_per_s": orders / wall,
                     "all_wall": [round(r["wall"], 3) for r in results]}
    out["ratio"] = out["engine"]["wall"] / out["bare"]["wall"]
    out["paired_ratio"] = statistics.median(e["wall"] / b["wall"] for e, b in zip(runs["engine"], runs["bare"],
                                                                                    strict=True))
    out["cpu_ratio"] = out["engine"]["cpu"] / out["bare"]["cpu"]
    if out["engine"]["inner"] and out["bare"]["inner"]:
        out["inner_ratio"] = out["engine"]["inner"] / out["bare"]["inner"]
    return out


def render(results: dict[str, Any], command: str, machine: str) -> str:
    """The report as Markdown."""
    n, latency = results["orders"], results["latency"]
    where = ("its own process (`python -m benchmarks.soap serve`)" if results["server"] == "process"
             else "a thread of the benchmark driver")
    lines = [f"Command: `{command}`", "", f"Machine: {machine}.", "",
             f"{n:,} orders x {results['lines']} lines, {latency * 1000:g} ms server latency per Execute, server in "
             f"{where}, a fresh server per run; {results['repeat']} runs of each client per concurrency, alternating; "
             "medians. \"Latency floor\": orders x latency / concurrency, the time the server's sleeps alone take.",
             "",
             "| concurrency | engine s | bare zeep s | engine/bare | paired (median of each run's ratio) "
             "| engine orders/s | bare orders/s | latency floor s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for concurrency, row in results["concurrency"].items():
        eng, bare_ = row["engine"], row["bare"]
        lines.append(f"| {concurrency} | {eng['wall']:.2f} | {bare_['wall']:.2f} | {row['ratio']:.2f}x | "
                     f"{row['paired_ratio']:.2f}x | {eng['orders_per_s']:,.0f} | {bare_['orders_per_s']:,.0f} | "
                     f"{n * latency / int(concurrency):.2f} |")
    lines += ["", "Inside the process (engine: its sync's seconds; bare: client, login and calls) and the client "
              "process's CPU time (user + system; what a busy machine turns into wall time), medians:", "",
              "| concurrency | engine s in process | bare s in process | ratio | engine CPU s | bare CPU s "
              "| CPU ratio | CPU ms per order, engine / bare |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for concurrency, row in results["concurrency"].items():
        eng, bare_ = row["engine"], row["bare"]
        inner = (f"{eng['inner']:.2f} | {bare_['inner']:.2f} | {row['inner_ratio']:.2f}x"
                 if "inner_ratio" in row else "? | ? | ?")
        lines.append(f"| {concurrency} | {inner} | {eng['cpu']:.2f} | {bare_['cpu']:.2f} | {row['cpu_ratio']:.2f}x | "
                     f"{eng['cpu'] * 1000 / n:.2f} / {bare_['cpu'] * 1000 / n:.2f} |")
    lines += ["", "Targets:"]
    for concurrency, row in results["concurrency"].items():
        ok = row["ratio"] <= RATIO_TARGET
        lines.append(f"- concurrency {concurrency}: engine/bare {row['ratio']:.2f}x, whole process "
                     f"(target <= {RATIO_TARGET}x): {'met' if ok else 'NOT met'}")
    checked = ("every run: the server held exactly the generated orders (count and digest of every member sent), "
               "answered one PersistWebSalesOrder per order after one login, and ignored no member")
    lines.append(f"- {checked}: {'met' if not results['problems'] else 'NOT met'}")
    if results["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in results["problems"][:20]]
    return "\n".join(lines)


def machine_note(load_before: float) -> str:
    """CPUs, CPU model, Python, zeep, the engine's commit and the load (read-only git)."""
    from importlib.metadata import version

    from benchmarks.measure import machine_summary

    os.environ.setdefault("GIT_OPTIONAL_LOCKS", "0")  # `git status` must not refresh the index
    m = machine_summary()
    return (f"{m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, {m['os']}, Python {m['python']}, "
            f"zeep {version('zeep')}, spyne {version('spyne')}; engine at commit {m['commit']}; "
            f"load {load_before:.1f} at the start, {os.getloadavg()[1]:.1f} at the end (5-minute average)")


def update_readme(text: str, path: Path = README) -> None:
    """Replace the SOAP block of the README (between its two markers) with ``text``."""
    readme = path.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        raise SystemExit(f"{path.name} has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the report; exit 1 when a check failed."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "serve":
        return serve(args_in[1:])
    if args_in and args_in[0] == "bare":
        return bare(args_in[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=3, help="lines per order")
    parser.add_argument("--concurrency", default="4", help="requests in flight; comma-separated for several")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client per concurrency (median)")
    parser.add_argument("--latency", type=float, default=0.02, help="server seconds per Execute")
    parser.add_argument("--server", choices=("process", "thread"), default="process")
    parser.add_argument("--update-readme", action="store_true", help="write the report into benchmarks/README.md")
    args = parser.parse_args(args_in)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    load_before = os.getloadavg()[1]
    results = run(args.orders, args.lines, concurrencies, args.repeat, args.latency, args.server)
    text = render(results, "python -m benchmarks.soap " + " ".join(args_in), machine_note(load_before))
    print(text)
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    (work / "soap.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.update_readme:
        update_readme(text)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
