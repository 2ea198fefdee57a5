"""The benchmark at 10k rows, for correctness only (never timing): the engine's counts against the
generator's truth, an unchanged rerun that leaves the destination file untouched, and the engine's
table equal to the hand-written floor's after the day-2 file; the sqlite3-shell floor the same way
(the ``sqlite3`` program, which .ci/run installs); both engine kinds of the benchmark run in fresh
processes as ``benchmarks/run.py`` runs them, the default one taking the Arrow read (pyarrow is a test
dependency) and ``engine_rows`` the row path (``arrow: false``); a child's peak RSS its own; the
report's peer lines. Nothing here needs dlt or the network: the dlt peer runs only in
``python -m benchmarks.run``."""

from __future__ import annotations

import http.client
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import REPO

from engine.api import apply

if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks import floor, job, report, run, shell_floor  # noqa: E402
from benchmarks.generate import Dataset, generate, generate_apart, load  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    Endpoint,
    copy_database,
    destination_fingerprint,
    spawn,
    table_diff,
    tables_equal,
)

ROWS = 10_000
PIPELINE = REPO / "benchmarks" / "loads_pipeline.yml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The 10k-row day-1 and day-2 files."""
    return generate(ROWS, tmp_path_factory.mktemp("data"))


def _sync(input_path: Path, db: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setenv("BENCH_INPUT", str(input_path))
    monkeypatch.setenv("BENCH_DB", str(db))
    report = apply(PIPELINE, state=str(state)).to_dict()
    sync = report["syncs"]["loads"]
    assert sync["status"] == "ok", sync["message"]
    return {k: sync[k] for k in ("read", "creates", "updates", "deletes", "unchanged", "errors")}


def test_generator_is_deterministic_and_exact(dataset: Dataset, tmp_path: Path) -> None:
    again = generate(ROWS, tmp_path)
    assert again.day1.read_bytes() == dataset.day1.read_bytes()
    assert again.day2.read_bytes() == dataset.day2.read_bytes()
    assert (len(dataset.changed), len(dataset.removed), len(dataset.added)) == (100, 10, 10)
    assert not set(dataset.changed) & set(dataset.removed)
    with dataset.day1.open(encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
        states = {line.split(",")[5] for line in handle}
    assert len(header) == 13
    assert {s for s in states if s != s.upper()}, "state codes must come in mixed case"
    day2_ids = {line.split(",", 1)[0] for line in dataset.day2.read_text(encoding="utf-8").splitlines()[1:]}
    assert len(day2_ids) == dataset.day2_rows
    assert not day2_ids & set(dataset.removed) and set(dataset.added) <= day2_ids


def test_engine_counts_match_the_generator(dataset: Dataset, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    db, state = tmp_path / "engine.db", tmp_path / "engine.state.db"

    t1 = _sync(dataset.day1, db, state, monkeypatch)
    assert t1 == {"read": ROWS, "creates": ROWS, "updates": 0, "deletes": 0, "unchanged": 0, "errors": 0}

    before = destination_fingerprint(db)
    t2 = _sync(dataset.day1, db, state, monkeypatch)
    assert t2 == {"read": ROWS, "creates": 0, "updates": 0, "deletes": 0, "unchanged": ROWS, "errors": 0}
    assert destination_fingerprint(db) == before, "an unchanged rerun must not touch the destination"

    copy_database(db, tmp_path / "before_t3.db")
    t3 = _sync(dataset.day2, db, state, monkeypatch)
    assert t3 == {"read": dataset.day2_rows, "creates": len(dataset.added), "updates": len(dataset.changed),
                  "deletes": len(dataset.removed), "errors": 0,
                  "unchanged": ROWS - len(dataset.changed) - len(dataset.removed)}

    diff = table_diff(tmp_path / "before_t3.db", db)
    assert diff == {"changed": set(dataset.changed), "added": set(dataset.added), "removed": set(dataset.removed)}

    f_db, f_state = tmp_path / "floor.db", tmp_path / "floor.state.db"
    assert floor.run(dataset.day1, f_db, f_state)["creates"] == ROWS
    assert floor.run(dataset.day1, f_db, f_state)["unchanged"] == ROWS
    f3 = floor.run(dataset.day2, f_db, f_state)
    assert (f3["creates"], f3["updates"], f3["deletes"]) == (t3["creates"], t3["updates"], t3["deletes"])
    assert tables_equal(db, f_db)

    conn = sqlite3.connect(db)
    row = conn.execute("SELECT origin_state, dest_state, lane, amount_cents, weight, delivered_on FROM loads "
                       "WHERE id = 'L0000002'").fetchone()
    conn.close()
    source = next(line for line in dataset.day1.read_text(encoding="utf-8").splitlines()
                  if line.startswith("L0000002,")).split(",")
    assert row == (source[5].upper(), source[7].upper(), f"{source[5].upper()}-{source[7].upper()}",
                   int(source[10].replace(".", "")), int(source[11]), source[9] or None)


def test_the_row_path_pipeline_adds_one_line(tmp_path: Path) -> None:
    path = job.row_path_pipeline(tmp_path / "work")
    lines = PIPELINE.read_text(encoding="utf-8").splitlines()
    at = lines.index("    scope: snapshot") + 1
    assert path.read_text(encoding="utf-8").splitlines() == [*lines[:at], "    arrow: false", *lines[at:]]
    written = path.stat().st_mtime_ns
    assert job.row_path_pipeline(tmp_path / "work") == path and path.stat().st_mtime_ns == written


@pytest.mark.timeout(90)
def test_both_engine_kinds_run_as_the_benchmark_runs_them(dataset: Dataset, tmp_path: Path) -> None:
    """T1/T2/T3 of the engine (Arrow read), the engine on its row path and the floor, each job in a
    fresh process and checked by ``run.run_size`` itself; the report then has a column for each."""
    peers = {"engine_rows": run.row_path_status(), "shell": {"status": "skipped", "reason": "its own test"},
             "dlt": {"status": "skipped", "reason": "not asked for"}}
    assert peers["engine_rows"]["status"] == "ok", "pyarrow is a test dependency: the row path is measured apart"
    size = run.run_size(dataset, 1, tmp_path, peers)
    assert size["problems"] == [] and size["failed"] == {}

    for task in run.TASKS:
        want = run.expected_counts(dataset, task)
        read = dataset.day2_rows if task == "T3" else ROWS
        for kind, path in (("engine", "arrow"), ("engine_rows", "row")):
            (result,) = size["runs"][task][kind]
            assert {k: result["counts"][k] for k in want} == want, (task, kind)
            assert result["counts"]["read"] == read and result["counts"]["errors"] == 0
            assert result["path"] == path, f"{task} {kind} took the {result['path']} path"
    for kind in ("engine", "engine_rows", "floor"):
        (t2,) = size["runs"]["T2"][kind]
        assert not t2["dest_delta"]["changed"], f"an unchanged rerun of {kind} touched the destination"
    for kind in ("engine", "engine_rows"):
        assert size["checks"][kind] == {"equal_to_floor": True, "t3_rows_exact": True}, kind
    folder = tmp_path / str(ROWS)
    assert tables_equal(folder / "engine_rows.db", folder / "floor.db")
    assert tables_equal(folder / "engine.db", folder / "engine_rows.db")

    summaries = run.summarise(size)
    assert all(row["ratio_rows"] > 0 and "floor" in row["ratios_rows"] for row in summaries)
    text = report.render(summaries, None, {"nproc": "2", "cpu": "x", "memory": "1 GiB", "os": "Linux",
                                           "python": "3", "sqlite": "3", "commit": "abc"},
                         "python -m benchmarks.run", size["problems"], peers)
    assert "| engine (Arrow read) s (in-process / whole) | engine, row path s (in-process / whole) |" in text
    assert "- T1 at 10,000 rows: engine (row path, `arrow: false`)/floor " in text
    assert "- T1 at 10,000 rows: engine (Arrow read)/floor " in text
    both = "engine (Arrow read), engine (row path, `arrow: false`)"
    for line in (f"- T2 writes nothing to the destination database ({both}): met",
                 f"- T1/T2/T3 counts equal the generator's (T3: changed, added, removed; {both}, floor, sqlite3 "
                 f"shell): met",
                 "- engine (Arrow read)'s table equals the floor's after T3: met",
                 "- engine (row path, `arrow: false`)'s table equals the floor's after T3: met",
                 "- engine (row path, `arrow: false`) said it took the row path in every run: met"):
        assert line in text


def test_tables_equal_notices_a_difference(dataset: Dataset, tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    floor.run(dataset.day1, a, tmp_path / "a.state")
    floor.run(dataset.day1, b, tmp_path / "b.state")
    assert tables_equal(a, b)
    conn = sqlite3.connect(b)
    with conn:
        conn.execute("UPDATE loads SET weight = weight + 1 WHERE id = 'L0000010'")
    conn.close()
    assert not tables_equal(a, b)


def test_loopback_endpoint_keeps_the_connection_alive() -> None:
    endpoint = Endpoint()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
        try:
            statuses = []
            for number in range(3):
                conn.request("POST", "/loads", body=json.dumps({"id": f"L{number}"}),
                             headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                statuses.append(answer.status)
            conn.request("POST", "/loads", body=b"not json", headers={"Content-Type": "application/json"})
            bad = conn.getresponse()
            bad.read()
        finally:
            conn.close()
        stats = endpoint.stats()
    finally:
        endpoint.stop()
    assert statuses == [201, 201, 201] and bad.status == 400
    assert stats["accepted"] == 3 and stats["rejected"] == 1 and stats["distinct_ids"] == 3
    assert stats["connections"] == 2  # the one kept-alive connection, and the one /stats opened
    assert endpoint.process.returncode == 0


def test_sqlite3_shell_floor_matches_the_floor(dataset: Dataset, tmp_path: Path) -> None:
    assert shell_floor.status()["status"] == "ok"
    db = tmp_path / "shell.db"
    t1 = shell_floor.run(dataset.day1, db)
    assert t1["status"] == "ok", t1
    assert t1["counts"] == {"read": ROWS, "creates": ROWS, "updates": 0, "deletes": 0, "unchanged": 0, "errors": 0}
    assert t1["seconds"] > 0 and t1["vm_hwm_kb"]

    before = destination_fingerprint(db)
    t2 = shell_floor.run(dataset.day1, db)
    assert t2["counts"] == {"read": ROWS, "creates": 0, "updates": 0, "deletes": 0, "unchanged": ROWS, "errors": 0}
    assert destination_fingerprint(db) == before, "an unchanged rerun must not touch the destination"

    copy_database(db, tmp_path / "before_t3.db")
    t3 = shell_floor.run(dataset.day2, db)
    assert (t3["counts"]["creates"], t3["counts"]["updates"], t3["counts"]["deletes"]) == (
        len(dataset.added), len(dataset.changed), len(dataset.removed))
    diff = table_diff(tmp_path / "before_t3.db", db)
    assert diff == {"changed": set(dataset.changed), "added": set(dataset.added), "removed": set(dataset.removed)}

    f_db, f_state = tmp_path / "floor.db", tmp_path / "floor.state.db"
    floor.run(dataset.day1, f_db, f_state)
    floor.run(dataset.day2, f_db, f_state)
    assert tables_equal(db, f_db)
    journal = sqlite3.connect(db)
    assert journal.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    journal.close()


def test_a_missing_sqlite3_program_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell_floor, "binary", lambda: None)
    peers = run.find_peers(["shell"])
    assert peers["shell"]["status"] == "unavailable" and "sqlite3" in peers["shell"]["reason"]
    assert peers["dlt"]["status"] == "skipped"  # not asked for: no virtual environment, no network
    lines = report.peer_lines(peers)
    assert any(line.startswith("- sqlite3 shell: not measured: no sqlite3") for line in lines)


def test_a_child_reports_its_own_peak_rss_not_its_parents(tmp_path: Path) -> None:
    ballast = bytearray(160 * 1024 * 1024)
    for at in range(0, len(ballast), 4096):  # touched, so it is resident in this process
        ballast[at] = 1
    code = "import json; from benchmarks.job import vm_hwm_kb; print(json.dumps({'hwm': vm_hwm_kb()}))"
    done = spawn([sys.executable, "-c", code], cwd=REPO)
    assert done["returncode"] == 0, done["stderr"]
    hwm = json.loads(done["stdout"])["hwm"]
    assert hwm is not None and hwm < 100 * 1024, f"the child's own peak ({hwm} kB) counted the parent's memory"
    assert done["whole_seconds"] > 0 and done["cpu_seconds"] >= 0
    del ballast


def test_generation_runs_in_its_own_process(tmp_path: Path) -> None:
    assert load(1000, tmp_path) is None
    data = generate_apart(1000, tmp_path)
    assert (len(data.changed), len(data.added), len(data.removed)) == (10, 1, 1)
    assert load(1000, tmp_path) == data
    assert generate(1000, tmp_path) == data


def test_report_shows_both_times_every_peer_and_the_targets() -> None:
    def cell(seconds: float, whole: float, path: str = "row") -> dict[str, object]:
        return {"seconds": seconds, "whole_seconds": whole, "per_second": 1000 / seconds, "maxrss_mb": 50.0,
                "dest_changed": False, "dest_bytes": 0, "all_seconds": [seconds], "path": path}

    machine = {"nproc": "2", "cpu": "x", "memory": "1 GiB", "os": "Linux", "python": "3", "sqlite": "3",
               "commit": "abc"}
    # Without pyarrow: the default run is the row path, and there is no second engine kind.
    rows = []
    for task in ("T1", "T2", "T3"):
        row: dict[str, object] = {"rows": 1000, "task": task, "engine": cell(2.0, 3.0), "floor": cell(1.0, 1.5),
                                  "shell": cell(0.5, 0.5), "ratio": 2.0}
        row["ratios"] = {"floor": {"in_process": 2.0, "whole": 2.0}, "shell": {"in_process": 4.0, "whole": 6.0}}
        rows.append(row)
    peers = {"engine_rows": {"status": "skipped", "reason": "pyarrow is not importable in this interpreter"},
             "shell": {"status": "ok", "binary": "/usr/bin/sqlite3", "version": "3.40.1"},
             "dlt": {"status": "unavailable", "reason": "pip install failed (exit 1): no network"}}
    text = report.render(rows, None, machine, "python -m benchmarks.run", [], peers)
    assert "| rows | task | engine (row path) s (in-process / whole) | engine, row path s (in-process / whole) |" \
           in text
    assert "| 1,000 | T1 | 2.000 / 3.000 | not measured | 1.000 / 1.500 | 0.500 / 0.500 | not measured | " \
           "2.00x / 2.00x | not measured | 4.00x / 6.00x | not measured |" in text
    assert "- engine, row path: not measured: pyarrow is not importable in this interpreter" in text
    assert "- dlt Arrow: not measured: pip install failed (exit 1): no network" in text
    assert "- T2 at 1,000 rows: engine (row path)/floor 2.00x in the process (2.00x whole process) (target <= 0.8x, " \
           "row path): NOT met" in text
    assert "- T1/T2/T3 of the engine on the row path (`arrow: false`) beside its default run: not measured: " \
           "pyarrow is not importable" in text
    assert "not measured: the engine's default run took the row path, not its Arrow read" in text

    # With pyarrow: the default run takes the Arrow read, the row path is its own column, dlt is measured.
    for row in rows:
        row["engine"] = cell(0.5, 1.0, "arrow")
        row["engine_rows"] = cell(1.1, 1.6)
        row["dlt"] = cell(1.0, 2.0)
        row["ratios"] = {"floor": {"in_process": 0.5, "whole": 0.67}, "dlt": {"in_process": 0.5, "whole": 0.5}}
        row["ratios_rows"] = {"floor": {"in_process": 1.1, "whole": 1.07}}
    peers["engine_rows"] = {"status": "ok", "pyarrow": "26.0.1"}
    text = report.render(rows, None, machine, "python -m benchmarks.run", [], peers)
    assert "| 1,000 | T1 | 0.500 / 1.000 | 1.100 / 1.600 | 1.000 / 1.500 | 0.500 / 0.500 | 1.000 / 2.000 | " \
           "0.50x / 0.67x | 1.10x / 1.07x | not measured | 0.50x / 0.50x |" in text
    assert "| engine (Arrow read) peak RSS | engine, row path peak RSS |" in text
    assert "- engine, row path: the same pipeline with `arrow: false`" in text and "pyarrow 26.0.1" in text
    assert "- T1 at 1,000 rows: engine (Arrow read)/floor 0.50x in the process (0.67x whole process) " \
           "(target <= 1.2x, Arrow read): met" in text
    assert "- T1 at 1,000 rows: engine (row path, `arrow: false`)/floor 1.10x in the process (1.07x whole process) " \
           "(target <= 1.2x, row path): met" in text
    assert "- T3 at 1,000 rows: engine (row path, `arrow: false`)/floor 1.10x in the process (1.07x whole process) " \
           "(target <= 1.0x, row path): NOT met" in text
    assert "- T1 at 1,000 rows: engine (Arrow read)/dlt's Arrow path 0.50x in the process (0.50x whole process) " \
           "(target <= 1.0x, Arrow read): met" in text
    assert "- engine (row path, `arrow: false`) peak RSS 50 MB (target <= 150 MB): met" in text
