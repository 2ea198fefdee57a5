"""The ``http`` destination under faults and kills, measured through ``syncengine apply`` as a whole process.

    python -m benchmarks.http_faults throughput [--records 5000] [--repeat 3] [--fault-every 20]
    python -m benchmarks.http_faults crash [--records 20000] [--trials 20] [--seed N]

``throughput`` runs the same apply fault-free and with every ``--fault-every``-th request answered
503 (5 % by default), alternating, and prints the median records/s of each and their ratio.
``crash`` kills (``kill -9``) an apply at a random point, reruns it to the end, and counts the
records never received (must be 0) and the records received twice (at most ``concurrency``).

The endpoint is a threaded HTTP/1.1 keep-alive server on 127.0.0.1 (port 0) in this process, which
does nothing else while the measured process runs; each answer is one write with ``TCP_NODELAY``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 8

PIPELINE = """\
version: 1
name: http_faults
sources:
  items: {{type: csv, path: items.csv}}
destinations:
  endpoint:
    type: http
    url: "{{{{ env.FAULTS_URL }}}}"
    format: json
    concurrency: {concurrency}
    timeout: 10
syncs:
  items:
    source: items
    destination: endpoint
    key: id
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name }}}}"
        amount_cents: "{{{{ record.amount | cents }}}}"
"""

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 503: "Service Unavailable"}


def answer(status: int, body: bytes, kind: str = "application/json") -> bytes:
    """One whole HTTP/1.1 response, sent in a single write."""
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


class Handler(socketserver.StreamRequestHandler):
    """Serves one keep-alive connection: each POSTed JSON record is counted, or answered 503 when its turn."""

    disable_nagle_algorithm = True
    server: Endpoint

    def handle(self) -> None:
        """Read requests in a loop; minimal parsing, so the endpoint is not what is measured."""
        while True:
            line = self.rfile.readline(8192)
            if not line:
                return
            length = 0
            while True:
                header = self.rfile.readline(8192)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = self.rfile.read(length) if length else b""
            if len(body) < length:
                return  # the sender died mid-request: no endpoint would see it
            self.wfile.write(self.server.take(body))


class Endpoint(socketserver.ThreadingTCPServer):
    """The endpoint and what it received: accepted requests per record id, and faults answered."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, fault_every: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fault_every = fault_every
        self.lock = threading.Lock()
        self.requests = 0
        self.faults = 0
        self.accepted: Counter[str] = Counter()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def take(self, body: bytes) -> bytes:
        """The answer to one request (every ``fault_every``-th one is a 503 page)."""
        with self.lock:
            self.requests += 1
            if self.fault_every and self.requests % self.fault_every == 0:
                self.faults += 1
                return answer(503, b"<html><body>503 Service Unavailable</body></html>", "text/html")
        try:
            ident = str(json.loads(body)["id"])
        except (ValueError, KeyError, TypeError):
            return answer(400, b'{"error": "expected a JSON object with an id"}')
        with self.lock:
            self.accepted[ident] += 1
        return answer(201, json.dumps({"id": ident}).encode())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about a connection reset by the killed process; print anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        """Where the pipeline posts."""
        return f"http://127.0.0.1:{self.server_address[1]}/items"

    def __enter__(self) -> Endpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def prepare(folder: Path, records: int) -> tuple[Path, list[str]]:
    """A fresh folder with the pipeline and a CSV of ``records`` items; returns the pipeline and the keys."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("state.db*"):
        stale.unlink()
    keys = [f"k{i:06d}" for i in range(records)]
    lines = ["id,name,amount", *(f"{k},item {k},{i % 997}.25" for i, k in enumerate(keys))]
    (folder / "items.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pipeline = folder / "p.yml"
    pipeline.write_text(PIPELINE.format(concurrency=CONCURRENCY), encoding="utf-8")
    return pipeline, keys


def command(pipeline: Path) -> list[str]:
    """The measured process."""
    return [sys.executable, "-m", "engine.cli", "apply", str(pipeline), "--state", str(pipeline.parent / "state.db")]


def apply(pipeline: Path, url: str) -> tuple[int, float, str]:
    """One whole ``syncengine apply``: exit code, seconds, last line of output."""
    started = time.perf_counter()
    done = subprocess.run(command(pipeline), cwd=ROOT, env={**os.environ, "FAULTS_URL": url}, capture_output=True,
                          text=True, timeout=1800)
    seconds = time.perf_counter() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, seconds, lines[-1] if lines else ""


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Fault-free against faulted runs, alternating so a change in machine load hits both."""
    results: dict[str, list[float]] = {"fault_free": [], "faults": []}
    with tempfile.TemporaryDirectory(prefix="http-faults-") as tmp:
        for round_ in range(args.repeat):
            for name, every in (("fault_free", 0), ("faults", args.fault_every)):
                pipeline, keys = prepare(Path(tmp) / name, args.records)
                with Endpoint(every) as endpoint:
                    code, seconds, last = apply(pipeline, endpoint.url)
                    missing = sum(1 for k in keys if not endpoint.accepted[k])
                    faults = endpoint.faults
                if code != 0 or missing:
                    raise SystemExit(f"{name}: exit {code}, {missing} records not delivered: {last}")
                rate = args.records / seconds
                results[name].append(rate)
                print(f"round {round_ + 1} {name}: {seconds:.2f}s, {rate:,.0f} records/s, {faults} faults answered",
                      file=sys.stderr, flush=True)
    free, faulted = statistics.median(results["fault_free"]), statistics.median(results["faults"])
    return {"records": args.records, "fault_share": 1 / args.fault_every, "repeat": args.repeat,
            "fault_free_records_per_s": round(free), "faults_records_per_s": round(faulted),
            "ratio": round(faulted / free, 2), "runs": {k: [round(v) for v in vs] for k, vs in results.items()}}


def crash_trial(folder: Path, records: int, kill_at: int) -> dict[str, Any]:
    """Kill an apply once ``kill_at`` requests were answered, rerun it, count what was lost and resent."""
    pipeline, keys = prepare(folder, records)
    with Endpoint() as endpoint:
        proc = subprocess.Popen(command(pipeline), cwd=ROOT, env={**os.environ, "FAULTS_URL": endpoint.url},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while endpoint.requests < kill_at:
                if proc.poll() is not None:
                    raise SystemExit(f"the run ended (exit {proc.returncode}) before the kill point {kill_at}")
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        at_kill = endpoint.requests
        code, seconds, last = apply(pipeline, endpoint.url)
        if code != 0:
            raise SystemExit(f"the rerun failed (exit {code}): {last}")
        lost = sum(1 for k in keys if not endpoint.accepted[k])
        duplicates = sum(n - 1 for n in endpoint.accepted.values())
    return {"kill_at": kill_at, "received_at_kill": at_kill, "lost": lost, "duplicates": duplicates}


def crash(args: argparse.Namespace) -> dict[str, Any]:
    """``--trials`` kills at random points between 5 % and 95 % of the records."""
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    trials = []
    with tempfile.TemporaryDirectory(prefix="http-crash-") as tmp:
        for trial in range(args.trials):
            kill_at = rng.randrange(args.records // 20, args.records * 19 // 20)
            result = crash_trial(Path(tmp) / f"t{trial}", args.records, kill_at)
            trials.append(result)
            print(f"trial {trial + 1}: killed after {result['received_at_kill']} requests, lost {result['lost']}, "
                  f"resent {result['duplicates']}", file=sys.stderr, flush=True)
    return {"records": args.records, "concurrency": CONCURRENCY, "trials": args.trials, "seed": seed,
            "max_duplicates": max(t["duplicates"] for t in trials), "lost": sum(t["lost"] for t in trials),
            "duplicates": [t["duplicates"] for t in trials]}


def main() -> int:
    """Run one measurement and print its summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("throughput", help="records/s fault-free and with injected 503s")
    speed.add_argument("--records", type=int, default=5000)
    speed.add_argument("--repeat", type=int, default=3)
    speed.add_argument("--fault-every", type=int, default=20, help="answer every N-th request 503 (20: 5 %%)")
    kill = commands.add_parser("crash", help="kill -9 at random points, rerun, count lost and resent records")
    kill.add_argument("--records", type=int, default=20000)
    kill.add_argument("--trials", type=int, default=20)
    kill.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    summary = throughput(args) if args.command == "throughput" else crash(args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
