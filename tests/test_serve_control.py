"""`syncengine serve --control`: the Autofy-compatible control API in the long-running process, its schedules run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests
from conftest import REPO
from cryptography.fernet import Fernet
from test_control_api import COMPANY_BODY, OK_META, RUNSYNC_BODY, TOKEN, write_template

SERVED = """\
version: 1
name: control
sources:
  none: {type: csv, path: none.csv}
destinations:
  db: {type: sqlite, path: none.db}
syncs:
  idle:
    source: none
    destination: {name: db, table: idle}
    key: id
    enabled: false
"""


def rows(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_serve_control_creates_runs_and_schedules_a_profile_then_stops_on_sigterm(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates)
    (templates / "serve.yml").write_text(SERVED, encoding="utf-8")
    env = {**os.environ, "SYNCENGINE_CONTROL_TOKEN": TOKEN, "SYNCENGINE_CONTROL_KEY": Fernet.generate_key().decode(),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "serve.yml", "--control", "--templates", ".",
                             "--port", "0", "--control-port", "0"], cwd=templates, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("control API on "), line + (proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ", 1)[1].strip()
        headers = {"AUTHORIZATION": TOKEN, "Content-Type": "application/json"}
        created = requests.post(url + "company", data=COMPANY_BODY, headers=headers, timeout=30).json()
        assert created["Meta"] == OK_META, created
        profile = created["Detail"]["Profiles"][0]["ID"]
        out = templates / f"out-{profile}.db"
        run = requests.post(url + "runsync", data=RUNSYNC_BODY.replace("34027c47-7546-48b9-9b30-451ed25293c5", profile),
                            headers=headers, timeout=30).json()
        assert run["Meta"] == OK_META, run
        deadline = time.monotonic() + 60
        while rows(out, "customers") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rows(out, "customers") == 2
        # A schedule set through the API is picked up by the running scheduler without a restart.
        schedule = f'{{ profileId: "{profile}", scheduleInterval: "1", scheduleTime: "", intervalType: 0 }}'
        assert requests.post(url + "schedule", data=schedule, headers=headers, timeout=30).json()["Meta"] == OK_META
        wrong = requests.post(url + "runsync", data=RUNSYNC_BODY, headers={**headers, "AUTHORIZATION": "nope"},
                              timeout=30)
        assert wrong.status_code == 401 and wrong.json()["Meta"]["StatusCode"] != 0
        proc.send_signal(signal.SIGTERM)
        out_text, err_text = proc.communicate(timeout=60)
        assert proc.returncode == 0, err_text
        assert "stopped" in out_text
        assert TOKEN not in out_text + err_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
