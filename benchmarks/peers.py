"""The benchmark's peers besides the floor: the ``sqlite3`` command-line shell and dlt's Arrow path.

dlt and pyarrow are not dependencies of the project: the dlt peer runs in a virtual environment of its
own, ``benchmarks/work/peers-venv``, made on first use (``python -m venv``, then ``pip install
'dlt[duckdb]' pyarrow``) and reused afterwards. A marker file inside it records that the install
finished and which versions it holds; without the marker the folder is made again.

    python -m benchmarks.peers          # make (or check) the venv and print what it holds
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / "work" / "peers-venv"
MARKER = "benchmark-peers.json"
REQUIREMENTS = ("dlt[duckdb]", "pyarrow")
_VERSIONS = ("import importlib.metadata as m, json; "
             "print(json.dumps({n: m.version(n) for n in ('dlt', 'duckdb', 'pyarrow')}))")


def venv_python(venv: Path = VENV) -> Path:
    """The interpreter of the peers' virtual environment."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(text: str, limit: int = 600) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-4:])[-limit:]


def dlt_environment(venv: Path = VENV, *, create: bool = True) -> dict[str, Any]:
    """``{"status": "ok", "python": ..., "versions": {...}}`` or ``{"status": "unavailable", "reason": ...}``.

    Makes the environment when it is missing (and ``create``); a finished one is reused as it is.
    """
    python = venv_python(venv)
    marker = venv / MARKER
    if marker.is_file() and python.exists():
        try:
            versions = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            versions = None
        if isinstance(versions, dict):
            return {"status": "ok", "python": str(python), "versions": versions, "created": False}
    if not create:
        return {"status": "unavailable", "reason": f"no finished virtual environment at {_rel(venv)}"}
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"-- making {_rel(venv)} (pip install {' '.join(REQUIREMENTS)}); once, reused afterwards",
          file=sys.stderr, flush=True)
    steps = ([sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
             [str(python), "-c", _VERSIONS])
    out = ""
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"status": "unavailable", "reason": f"`{' '.join(cmd[1:3])}` could not run: {exc}"}
        if done.returncode != 0:
            what = "python -m venv" if cmd is steps[0] else "pip install" if cmd is steps[1] else "import"
            return {"status": "unavailable",
                    "reason": f"{what} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}"}
        out = done.stdout
    versions = json.loads(out.strip().splitlines()[-1])
    marker.write_text(json.dumps(versions), encoding="utf-8")
    return {"status": "ok", "python": str(python), "versions": versions, "created": True}


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    print(json.dumps(dlt_environment()))
