"""What the benchmark checks besides time: destination files untouched, tables equal, the HTTP run.

The bytes written to the destination are measured on its files, not on the process: the size,
modification time and SHA-256 of the database and its ``-wal`` before and after a job. A job that
wrote nothing leaves all three identical (the process's own ``/proc/self/io`` counters also cover
the state database, so they are reported beside this, not instead of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.generate import Dataset

ROOT = Path(__file__).resolve().parent.parent
Fingerprint = dict[str, tuple[int, int, str] | None]


def spawn(cmd: list[str], *, cwd: Path = ROOT, stdin: Path | None = None, env: dict[str, str] | None = None,
          timeout: float = 1800) -> dict[str, Any]:
    """Run one child process and measure it from outside: wall time from spawn to exit, its rusage.

    ``whole_seconds`` runs from just before the process is started to its reaping (interpreter
    start-up, imports and exit included). The child is reaped with ``os.wait4``, so ``rusage`` is this
    child's alone (``RUSAGE_CHILDREN`` would be the largest of every child so far). Its ``ru_maxrss``
    is not the child's own peak on Linux (it starts from this process's high-water mark); the jobs
    report their own ``VmHWM`` for that.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            (stdin.open("rb") if stdin is not None else open(os.devnull, "rb")) as feed:
        # As on a user's machine, Python keeps compiled bytecode between runs: an environment that forbids
        # it (PYTHONDONTWRITEBYTECODE) would add the compilation of every module to each whole-process time.
        env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONDONTWRITEBYTECODE"}
        started = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=feed, stdout=out, stderr=err)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        whole = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    return {"returncode": process.returncode, "stdout": stdout, "stderr": stderr, "whole_seconds": whole,
            "ru_maxrss_kb": usage.ru_maxrss, "cpu_seconds": usage.ru_utime + usage.ru_stime}


def destination_fingerprint(db: Path, logs: tuple[str, ...] = ("-wal",)) -> Fingerprint:
    """(size, mtime_ns, sha256) of the database and its log (SQLite's ``-wal``; DuckDB's is ``.wal``);
    ``None`` for a file that is absent."""
    out: Fingerprint = {}
    for path in (db, *(Path(f"{db}{suffix}") for suffix in logs)):
        if not path.exists():
            out[path.name] = None
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 - handle is this loop's own
                digest.update(block)
        stat = path.stat()
        out[path.name] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
    return out


def fingerprint_delta(before: Fingerprint, after: Fingerprint) -> dict[str, Any]:
    """Whether any destination file changed, and the bytes by which the files grew."""
    changed = [name for name in after if before.get(name) != after[name]]
    grown = sum((after[n] or (0, 0, ""))[0] - (before.get(n) or (0, 0, ""))[0] for n in after)
    return {"changed": changed, "bytes": max(grown, 0) if changed else 0}


def tables_equal(left: Path, right: Path) -> bool:
    """Whether two databases' ``loads`` tables hold the same rows (in both directions)."""
    db = sqlite3.connect(f"file:{left}?mode=ro", uri=True)
    try:
        db.execute("ATTACH DATABASE ? AS other", (f"file:{right}?mode=ro",))
        one = db.execute("SELECT count(*) FROM (SELECT * FROM main.loads EXCEPT SELECT * FROM other.loads)")
        two = db.execute("SELECT count(*) FROM (SELECT * FROM other.loads EXCEPT SELECT * FROM main.loads)")
        sizes = db.execute("SELECT (SELECT count(*) FROM main.loads), (SELECT count(*) FROM other.loads)")
        a, b = sizes.fetchone()
        return bool(one.fetchone()[0] == 0 and two.fetchone()[0] == 0 and a == b)
    finally:
        db.close()


def table_diff(before: Path, after: Path) -> dict[str, set[str]]:
    """The ids whose ``loads`` row changed, appeared or disappeared between two databases."""
    db = sqlite3.connect(f"file:{after}?mode=ro", uri=True)
    try:
        db.execute("ATTACH DATABASE ? AS old", (f"file:{before}?mode=ro",))
        changed = db.execute("SELECT id FROM (SELECT * FROM main.loads EXCEPT SELECT * FROM old.loads) "
                             "WHERE id IN (SELECT id FROM old.loads)")
        out = {"changed": {row[0] for row in changed}}
        out["added"] = {r[0] for r in db.execute("SELECT id FROM main.loads EXCEPT SELECT id FROM old.loads")}
        out["removed"] = {r[0] for r in db.execute("SELECT id FROM old.loads EXCEPT SELECT id FROM main.loads")}
        return out
    finally:
        db.close()


def copy_database(db: Path, target: Path) -> None:
    """Copy a database with its WAL, if any (the source must not be open for writing)."""
    shutil.copyfile(db, target)
    wal = Path(f"{db}-wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{target}-wal"))


def http_available() -> bool:
    """Whether a destination adapter named ``http`` is registered."""
    from engine.adapters import register_builtins
    from engine.registry import REGISTRY

    register_builtins(REGISTRY)
    return REGISTRY.get("destination", "http") is not None


class Endpoint:
    """The loopback JSON endpoint, in its own process (``delay`` seconds per answer); stopped by closing its
    standard input."""

    def __init__(self, delay: float = 0.0) -> None:
        cmd = [sys.executable, "-m", "benchmarks.http_endpoint"] + (["--delay", str(delay)] if delay else [])
        self.process = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"the endpoint did not start: {line}")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}/loads"

    def stats(self) -> dict[str, int]:
        """The endpoint's counters."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as answer:
            data: dict[str, int] = json.loads(answer.read())
        return data

    def stop(self) -> None:
        """Close standard input and wait for the process to end."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _http_once(data: Dataset, folder: Path) -> dict[str, Any]:
    """One HTTP job from an empty state, against a fresh endpoint."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    endpoint = Endpoint()
    try:
        cmd = [sys.executable, "-m", "benchmarks.job", "http", "--input", str(data.day1),
               "--url", f"http://127.0.0.1:{endpoint.port}/loads", "--state", str(folder / "state.db")]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {"status": "failed", "reason": done.stderr.strip()[-2000:]}
        result: dict[str, Any] = json.loads(lines[-1])
        result["endpoint"] = endpoint.stats()
    finally:
        endpoint.stop()
    return result


def http_run(data: Dataset, folder: Path, repeat: int = 1) -> dict[str, Any]:
    """Post every record of the day-1 file, one request each, to the loopback endpoint; the median run."""
    if not http_available():
        return {"status": "not run", "reason": "no destination adapter named http is registered"}
    runs = []
    problems = []
    for _ in range(repeat):
        result = _http_once(data, folder)
        if result["status"] != "ok":
            return {"status": "failed", "reason": result.get("reason") or result.get("message"),
                    "problems": ["HTTP run failed"]}
        accepted = result["endpoint"]["accepted"]
        if result["counts"]["creates"] != data.rows or accepted != data.rows:
            problems.append(f"HTTP: {result['counts']['creates']} creates, {accepted} accepted by the endpoint, "
                            f"expected {data.rows}")
        runs.append(result)
    runs.sort(key=lambda r: r["seconds"])
    median = runs[len(runs) // 2]
    return {"status": "ok", "rows": data.rows, "seconds": median["seconds"], "repeat": repeat,
            "all_seconds": [r["seconds"] for r in runs], "per_second": data.rows / median["seconds"],
            "maxrss_mb": max(r["maxrss_kb"] for r in runs) / 1024, "counts": median["counts"],
            "endpoint": median["endpoint"], "problems": problems}


def machine_summary() -> dict[str, str]:
    """nproc, memory, CPU model, Python and SQLite versions."""
    cpu = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {"nproc": str(len(os.sched_getaffinity(0))), "memory": memory, "cpu": cpu,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "os": f"{platform.system()} {platform.release()}", "commit": _commit()}


def _commit() -> str:
    """The checked-out commit, marked when ``engine/`` has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (engine/ has uncommitted changes)" if dirty else head
