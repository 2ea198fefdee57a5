"""The sqlite3-shell floor: the benchmark job done by the ``sqlite3`` command-line program and SQL alone.

One script, fed to ``sqlite3 -batch -bail DEST`` on its standard input: the destination in WAL mode with
``synchronous = FULL`` (the floor's and the engine's settings), ``.import --csv`` of the export into a
temporary table, then in one transaction an ``INSERT ... SELECT`` of the mapped rows with ``ON CONFLICT
(id) DO UPDATE ... WHERE`` the stored row differs (so unchanged rows are not written), and a ``DELETE``
of the ids the export no longer holds. No state file: the destination itself is what it compares with.

The mapping in SQL: four columns renamed, ``upper()`` of both state codes, ``amount`` to integer cents
(``round(amount * 100)``), ``weight`` to integer, ``nullif(delivery_date, '')``, lane = the two upper-cased
codes joined by ``-``.

The script prints what the benchmark reads back, as ``name=value`` lines: a clock at its first and
last statement (the shell's own time for the job, its start-up excluded), the counts (``changes()`` of
the upsert and the delete, the table's size before and after), and the shell's peak resident set
(``VmHWM`` of ``/proc/<the shell>/status``, read by ``.shell`` after the work, outside the clock).

    python -m benchmarks.shell_floor --input day1.csv --db dest.db     # one run, its JSON line
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.floor import COLUMNS, TYPES

MINIMUM = (3, 32, 0)  # .import --csv --skip --schema
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_SOURCE = ("id", "customer_id", "carrier_id", "status", "origin_city", "origin_state", "dest_city", "dest_state",
           "ship_date", "delivery_date", "amount", "weight", "updated_at")
_MAPPED = ("id", "customer_id", "carrier_id", "status", "origin_city", "upper(origin_state)", "dest_city",
           "upper(dest_state)", "ship_date", "nullif(delivery_date, '')",
           "CAST(round(CAST(amount AS REAL) * 100) AS INTEGER)", "CAST(weight AS INTEGER)", "updated_at",
           "upper(origin_state) || '-' || upper(dest_state)")


def binary() -> str | None:
    """The ``sqlite3`` program on the PATH, if any."""
    return shutil.which("sqlite3")


def status() -> dict[str, Any]:
    """``{"status": "ok", "binary": ..., "version": ...}`` or ``{"status": "unavailable", "reason": ...}``."""
    path = binary()
    if path is None:
        return {"status": "unavailable", "reason": "no sqlite3 program on the PATH (Debian package sqlite3)"}
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"status": "unavailable", "reason": f"{path} -version failed: {exc}"}
    version = out.split()[0] if out.split() else "unknown"
    try:
        numbers = tuple(int(part) for part in version.split(".")[:3])
    except ValueError:
        numbers = ()
    if numbers < MINIMUM:
        return {"status": "unavailable",
                "reason": f"{path} is SQLite {version}; the script needs {'.'.join(map(str, MINIMUM))} or later"}
    return {"status": "ok", "binary": path, "version": version}


def command(db: Path, program: str | None = None) -> list[str]:
    """The shell's command line (the script goes to its standard input)."""
    return [program or binary() or "sqlite3", "-batch", "-bail", str(db)]


def script(input_path: Path) -> str:
    """The whole job as a script for the shell."""
    name = str(Path(input_path).resolve())
    if "'" in name:
        raise ValueError(f"the input path must not hold a single quote: {name}")
    source = ", ".join(f"{c} TEXT" for c in _SOURCE)
    table = ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, TYPES, strict=True))
    changed = (f"({', '.join(f'loads.{c}' for c in COLUMNS[1:])}) IS NOT "
               f"({', '.join(f'excluded.{c}' for c in COLUMNS[1:])})")
    return "\n".join([
        f"SELECT 'start=' || {_NOW};",
        "PRAGMA journal_mode = WAL;",
        "PRAGMA synchronous = FULL;",
        f"CREATE TEMP TABLE incoming ({source});",
        f".import --csv --skip 1 --schema temp '{name}' incoming",
        f"CREATE TABLE IF NOT EXISTS loads ({table}, PRIMARY KEY (id));",
        "BEGIN IMMEDIATE;",
        "SELECT 'read=' || count(*) FROM temp.incoming;",
        "SELECT 'before=' || count(*) FROM loads;",
        # WHERE true: the parser's rule for an upsert on INSERT ... SELECT.
        f"INSERT INTO loads ({', '.join(COLUMNS)}) SELECT {', '.join(_MAPPED)} FROM temp.incoming WHERE true",
        f"  ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}",
        f"  WHERE {changed};",
        "SELECT 'upserted=' || changes();",
        "SELECT 'after_upsert=' || count(*) FROM loads;",
        "DELETE FROM loads WHERE id NOT IN (SELECT id FROM temp.incoming);",
        "SELECT 'deleted=' || changes();",
        "COMMIT;",
        f"SELECT 'end=' || {_NOW};",
        ".shell grep VmHWM /proc/$PPID/status",
        "",
    ])


def parse(stdout: str) -> dict[str, Any]:
    """The job's result (like ``benchmarks/job.py``'s) from what the script printed."""
    values: dict[str, str] = {}
    hwm: int | None = None
    for line in stdout.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    needed = ("start", "end", "read", "before", "upserted", "after_upsert", "deleted")
    missing = [n for n in needed if n not in values]
    if missing:
        return {"status": "failed", "message": f"the shell did not print {', '.join(missing)}",
                "counts": {"errors": 1}}
    read, before, upserted = int(values["read"]), int(values["before"]), int(values["upserted"])
    creates = int(values["after_upsert"]) - before
    updates = upserted - creates
    deletes = int(values["deleted"])
    return {"seconds": float(values["end"]) - float(values["start"]), "status": "ok", "message": None,
            "errors_detail": [], "vm_hwm_kb": hwm,
            "counts": {"read": read, "creates": creates, "updates": updates, "deletes": deletes,
                       "unchanged": read - creates - updates, "errors": 0}}


def run(input_path: Path, db: Path) -> dict[str, Any]:
    """One run, not timed from outside (the benchmark spawns the shell itself): its parsed result."""
    done = subprocess.run(command(db), input=script(input_path), capture_output=True, text=True, timeout=900,
                          check=False)
    result = parse(done.stdout)
    if done.returncode != 0 and result["status"] == "ok":
        result = {"status": "failed", "counts": {"errors": 1}}
    if result["status"] != "ok":
        result["message"] = f"{result.get('message') or ''} (exit {done.returncode}: {done.stderr.strip()[-500:]})"
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: one run, its result as one JSON line."""
    parser = argparse.ArgumentParser(description="The benchmark job by the sqlite3 shell.")
    parser.add_argument("--input", required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args(argv)
    found = status()
    if found["status"] != "ok":
        print(found["reason"], file=sys.stderr)
        return 2
    result = run(Path(args.input), Path(args.db))
    print(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
