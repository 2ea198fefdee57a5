"""Shared fixtures: a copy of the quick start in a temporary folder, and the CLI run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """What a CLI run printed and returned."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr together."""
        return self.out + self.err


def syncengine(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
               timeout: float = 60) -> Result:
    """Run the installed ``syncengine`` command as a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of a query against a SQLite file."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def csv_to_sqlite(folder: Path, sync: str, *, source: str = "{type: csv, path: in.csv}", extra: str = "") -> Path:
    """Write the common test pipeline: one CSV source, one sync into a SQLite table named after it, key ``id``."""
    path = folder / "p.yml"
    path.write_text(f"""\
version: 1
sources:
  files: {source}
destinations:
  db: {{type: sqlite, path: out.db}}
syncs:
  {sync}:
    source: files
    destination: {{name: db, table: {sync}, create_table: true}}
    key: id
{extra}""", encoding="utf-8")
    return path


def write_syncs(folder: Path, syncs: dict[str, dict[str, str]],
                records: list[dict[str, Any]] | None = None) -> tuple[Path, dict[str, int]]:
    """A pipeline with one JSON Lines to SQLite sync per entry; returns it and each ``sync.field``'s line."""
    (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records or [{"id": "1"}]),
                                     encoding="utf-8")
    lines = ["version: 1", "sources:", "  files: {type: jsonl, path: in.jsonl}", "destinations:",
             "  db: {type: sqlite, path: out.db}", "syncs:"]
    found: dict[str, int] = {}
    for sync, fields in syncs.items():
        lines += [f"  {sync}:", "    source: files",
                  f"    destination: {{name: db, table: {sync}, create_table: true}}",
                  "    key: id", "    mapping:", "      fields:"]
        for name, text in fields.items():
            lines.append(f"        {name}: {json.dumps(text)}")
            found[f"{sync}.{name}"] = len(lines)
    path = folder / "p.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, found


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Path]:
    """A private copy of ``samples/quickstart``; yields its pipeline file."""
    target = tmp_path / "quickstart"
    shutil.copytree(REPO / "samples" / "quickstart", target, ignore=shutil.ignore_patterns("out", ".syncengine"))
    yield target / "pipeline.yml"


def apply_json(pipeline: Path, *args: str, env: dict[str, str], timeout: float = 90) -> tuple[Result, Any]:
    """``syncengine apply PIPELINE --json`` from the repository: the result and its parsed report."""
    result = syncengine("apply", pipeline, "--json", *args, cwd=REPO, env=env, timeout=timeout)
    try:
        report = json.loads(result.out)
    except json.JSONDecodeError:
        pytest.fail(f"apply printed no JSON report (exit {result.code}):\n{result.text}")
    return result, report


def counts(report: Any, sync: str) -> dict[str, int]:
    """The counts of one sync of a run report."""
    block = report["syncs"][sync]
    return {k: block[k] for k in ("read", "creates", "updates", "deletes", "unchanged", "skipped", "errors")}


def dead_letters_json(pipeline: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """``syncengine dead-letters PIPELINE --json``."""
    result = syncengine("dead-letters", pipeline, "--json", cwd=REPO, env=env)
    assert result.code == 0, result.text
    letters: list[dict[str, Any]] = json.loads(result.out)
    return letters
