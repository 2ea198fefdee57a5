"""The CLI over the Python API: --version, completion, --var, --env-file, logs, discarding dead letters, reset."""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Result, csv_to_sqlite, rows, syncengine

from engine import api
from engine.errors import ConfigError
from engine.state_store import process_owner

TOKEN = "tok-3f9a1c77e2b4"


def people(folder: Path, fields: str, csv: str = "id,n\n1,1\n2,2\n", vars_block: str = "") -> Path:
    """A CSV-to-SQLite pipeline with sync ``people`` and the given mapping fields (one per line)."""
    (folder / "in.csv").write_text(csv, encoding="utf-8")
    lines = "".join(f"        {line}\n" for line in fields.strip().splitlines())
    path = csv_to_sqlite(folder, "people", extra=f"    mapping:\n      fields:\n{lines}")
    if vars_block:
        path.write_text(path.read_text(encoding="utf-8") + vars_block, encoding="utf-8")
    return path


def cli(*args: str | Path, stdin: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None) -> Result:
    """Like ``syncengine`` but with stdin set (no terminal by default, whatever runs the tests)."""
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], stdin=stdin, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def on_a_terminal(*args: str | Path, answer: str) -> Result:
    """Run the CLI with a pseudo-terminal as stdin and type ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *map(str, args)], stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(master, f"{answer}\n".encode())
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return Result(proc.returncode, out, err)
    finally:
        os.close(master)
        os.close(slave)


def plain(value: Any) -> Any:
    """Data as ``--json`` would print it."""
    return json.loads(json.dumps(value, default=str))


# --- version and completion ---------------------------------------------------------------------------


def test_version_is_the_package_version() -> None:
    result = syncengine("--version")
    assert result.code == 0, result.text
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert result.out.strip() == f"syncengine {version('syncengine')}" == f"syncengine {project['version']}"


def test_shell_completion_script_and_completions() -> None:
    # The shell is detected from the parent processes; typer's switch names it instead (no shell runs the tests).
    script = syncengine("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.code == 0, script.text
    assert "_SYNCENGINE_COMPLETE=complete_bash" in script.out and "complete -o" in script.out
    verbs = cli(env={"_SYNCENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "syncengine dead", "COMP_CWORD": "1"})
    assert verbs.out.split() == ["dead-letters"], verbs.text
    flags = cli(env={"_SYNCENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "syncengine reset p.yml --y",
                     "COMP_CWORD": "3"})
    assert flags.out.split() == ["--yes"], flags.text


# --- --var ---------------------------------------------------------------------------------------------------


def test_var_makes_an_unknown_var_valid_and_sets_its_value(tmp_path: Path) -> None:
    pipeline = people(tmp_path, 'id: "{{ record.id }}"\nregion: "{{ vars.region }}"')
    invalid = syncengine("validate", pipeline)
    assert invalid.code == 2 and "region" in invalid.err, invalid.text
    valid = syncengine("validate", pipeline, "--var", "region=eu")
    assert valid.code == 0 and "valid (1 sync: people)" in valid.out, valid.text
    applied = syncengine("apply", pipeline, "--var", "region=eu")
    assert applied.code == 0, applied.text
    assert rows(tmp_path / "out.db", "SELECT id, region FROM people ORDER BY id") == [("1", "eu"), ("2", "eu")]


def test_var_overrides_a_declared_var_and_is_json_when_it_parses(tmp_path: Path) -> None:
    pipeline = people(tmp_path, 'id: "{{ record.id }}"\nlabel: "{{ vars.label }}"\nnext: "{{ vars.n + 1 }}"\n'
                                'code: "{{ vars.code }}"\nkind: "{{ vars.ids | length }}"',
                      vars_block="vars:\n  label: from-yaml\n  n: 1\n  code: abc\n  ids: [1]\n")
    assert syncengine("apply", pipeline).code == 0
    db = tmp_path / "out.db"
    assert rows(db, "SELECT label, next, code, kind FROM people WHERE id = '1'") == [("from-yaml", 2, "abc", 1)]
    result = syncengine("apply", pipeline, "--var", "label=cli", "--var", "n=5", "--var", "code=007",
                        "--var", "ids=[1, 2, 3]", "--var", "label=last wins")
    assert result.code == 0 and "people: 0 creates, 2 updates" in result.out, result.text
    # 5 is JSON (a number), 007 is not JSON (so text, leading zeros kept), [1, 2, 3] a list.
    assert rows(db, "SELECT label, next, code, kind FROM people WHERE id = '1'") == [("last wins", 6, "007", 3)]


def test_a_malformed_var_is_exit_2_without_its_value(tmp_path: Path) -> None:
    pipeline = people(tmp_path, 'id: "{{ record.id }}"')
    for bad in ("no-equals-sign-s3cr3t", "bad name=s3cr3t"):
        result = syncengine("plan", pipeline, "--var", bad)
        assert result.code == 2 and "--var needs NAME=VALUE" in result.err, result.text
        assert "s3cr3t" not in result.text


# --- --env-file --------------------------------------------------------------------------------------------


def test_env_file_sets_the_environment_of_the_run_and_set_variables_win(tmp_path: Path) -> None:
    env_file = tmp_path / "run.env"
    env_file.write_text('# settings\n\nexport REGION=eu-west   # a comment\nGREETING="hello\\nworld"\n'
                        "QUOTED='single # not a comment'\nEMPTY=\n", encoding="utf-8")
    pipeline = people(tmp_path, 'id: "{{ record.id }}"\nregion: "{{ env.REGION }}"\n'
                                'greeting: "{{ env.GREETING }}"\nquoted: "{{ env.QUOTED }}"\n'
                                'empty: "{{ env.EMPTY }}"', csv="id\n1\n")
    assert syncengine("validate", pipeline, "--env-file", env_file).code == 0
    without = syncengine("apply", pipeline)
    assert without.code == 3 and "environment variable 'REGION' is not set" in without.out, without.text
    result = syncengine("apply", pipeline, "--env-file", env_file)
    assert result.code == 0, result.text
    db = tmp_path / "out.db"
    assert rows(db, "SELECT region, greeting, quoted, empty FROM people") == [
        ("eu-west", "hello\nworld", "single # not a comment", "")]
    # A variable already in the environment is not overridden by the file.
    again = syncengine("apply", pipeline, "--env-file", env_file, env={"REGION": "from-the-environment"})
    assert again.code == 0 and "1 updates" in again.out, again.text
    assert rows(db, "SELECT region FROM people") == [("from-the-environment",)]


def test_a_missing_or_malformed_env_file_is_exit_2_under_every_rendering_verb(tmp_path: Path) -> None:
    pipeline = people(tmp_path, 'id: "{{ record.id }}"')
    missing = tmp_path / "missing.env"
    for verb in (("validate",), ("plan",), ("apply",), ("retry", "--sync", "people"), ("serve", "--port", "0")):
        result = syncengine(verb[0], pipeline, *verb[1:], "--env-file", missing)
        assert result.code == 2, (verb, result.text)
        assert result.err.strip() == f"error: --env-file {missing}: no such file", (verb, result.text)
    broken = tmp_path / "broken.env"
    broken.write_text("GOOD=1\nthis line holds s3cr3t-value\n", encoding="utf-8")
    result = syncengine("apply", pipeline, "--env-file", broken)
    assert result.code == 2 and f"{broken}:2: expected NAME=value" in result.err, result.text
    assert "s3cr3t" not in result.text
    assert not (tmp_path / "out.db").exists()


# --- logs --------------------------------------------------------------------------------------------------


def test_json_logs_give_each_sync_its_counts_with_the_run_id_and_mask_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / "run.env"
    env_file.write_text(f"API_TOKEN={TOKEN}\n", encoding="utf-8")
    (tmp_path / "in.csv").write_text("id,n\n1,x\n", encoding="utf-8")
    (tmp_path / "ok.csv").write_text("id\n1\n2\n", encoding="utf-8")
    pipeline = tmp_path / "p.yml"
    pipeline.write_text("""\
version: 1
sources:
  files: {type: csv, path: "*.csv"}
destinations:
  db: {type: sqlite, path: out.db}
syncs:
  people:
    source: {name: files, files: in.csv}
    destination: {name: db, table: people, create_table: true}
    key: id
    max_error_share: 1
    mapping:
      fields:
        id: "{{ record.id }}"
        n: "{{ (record.n ~ env.API_TOKEN) | int }}"
  others:
    source: {name: files, files: ok.csv}
    destination: {name: db, table: others, create_table: true}
    key: id
""", encoding="utf-8")
    result = syncengine("--log-format", "json", "apply", pipeline, "--json", "--env-file", env_file)
    assert result.code == 1, result.text
    report = json.loads(result.out)
    lines = [json.loads(line) for line in result.err.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines), result.err
    ends = {line["sync"]: line for line in lines if "counts" in line}
    assert set(ends) == {"people", "others"}, lines
    assert ends["others"]["counts"]["creates"] == 2 and ends["others"]["status"] == "ok"
    assert ends["people"]["counts"]["errors"] == 1 and ends["people"]["status"] == "partial"
    assert all(line["run_id"] == report["run_id"] for line in ends.values())
    assert "***" in ends["people"]["errors"][0]
    assert TOKEN not in result.text


def test_log_level_and_format_by_flag_and_environment(tmp_path: Path) -> None:
    pipeline = people(tmp_path, 'id: "{{ record.id }}"')
    quiet = syncengine("apply", pipeline)
    assert quiet.code == 0 and quiet.err == "", quiet.text
    info = syncengine("--log-level", "info", "plan", pipeline)
    assert "INFO syncengine.run: people: ok: 0 creates, 0 updates, 0 deletes, 0 errors" in info.err, info.text
    by_env = syncengine("plan", pipeline, env={"SYNCENGINE_LOG_FORMAT": "json"})
    assert any(json.loads(line).get("sync") == "people" for line in by_env.err.splitlines()), by_env.text
    errors_only = syncengine("--log-format", "json", "--log-level", "error", "plan", pipeline)
    assert errors_only.code == 0 and errors_only.err == "", errors_only.text
    # Under a JSON log, an error is a JSON line too, so stderr stays machine-readable.
    typo = syncengine("--log-format", "json", "apply", pipeline, "--sync", "peple")
    assert typo.code == 2, typo.text
    (line,) = [json.loads(text) for text in typo.err.splitlines()]
    assert line["level"] == "error" and line["exit_code"] == 2, line
    assert line["message"].startswith("unknown sync 'peple' (did you mean 'people'?)"), line
    bad = syncengine("--log-level", "loud", "plan", pipeline)
    assert bad.code == 2 and "loud" in bad.err, bad.text


# --- dead letters --------------------------------------------------------------------------------------------


def failing(folder: Path) -> Path:
    """A pipeline of six rows where 2 and 3 fail (dead letters with keys '2' and '3')."""
    pipeline = people(folder, 'id: "{{ record.id }}"\nn: "{{ record.n | int }}"',
                      csv="id,n\n1,1\n2,x\n3,y\n4,4\n5,5\n6,6\n")
    assert syncengine("apply", pipeline).code == 1
    return pipeline


def letter_keys(pipeline: Path) -> list[str]:
    return [d["key"] for d in json.loads(syncengine("dead-letters", pipeline, "--json").out)]


def test_discard_forgets_dead_letters_by_key_all_or_nothing(tmp_path: Path) -> None:
    pipeline = failing(tmp_path)
    assert letter_keys(pipeline) == ["2", "3"]
    unknown = syncengine("dead-letters", pipeline, "--sync", "people", "--discard", "3", "--discard", "nope")
    assert unknown.code == 2 and "no dead letter with key 'nope'" in unknown.err, unknown.text
    assert letter_keys(pipeline) == ["2", "3"], "an unknown key discards nothing"
    done = syncengine("dead-letters", pipeline, "--sync", "people", "--discard", "2")
    assert done.code == 0 and done.out.strip() == "people: discarded 1 dead letter", done.text
    assert letter_keys(pipeline) == ["3"]
    twice = syncengine("dead-letters", pipeline, "--sync", "people", "--discard", "2", "--json")
    assert twice.code == 2 and "no dead letter with key '2'" in twice.err
    as_json = syncengine("dead-letters", pipeline, "-s", "people", "--discard", "3", "--json")
    assert json.loads(as_json.out) == {"sync": "people", "discarded": 1}
    assert letter_keys(pipeline) == []
    no_sync = syncengine("dead-letters", pipeline, "--discard", "3")
    assert no_sync.code == 2 and "--discard needs exactly one --sync" in no_sync.err
    typo = syncengine("dead-letters", pipeline, "--sync", "peple", "--discard", "3")
    assert typo.code == 2 and "unknown sync 'peple' (did you mean 'people'?)" in typo.err


# --- reset ----------------------------------------------------------------------------------------------------


def test_reset_forgets_records_cursor_and_dead_letters_and_keeps_history(tmp_path: Path) -> None:
    pipeline = failing(tmp_path)
    refused = cli("reset", pipeline, "--sync", "people")
    assert refused.code == 2 and "pass --yes" in refused.err, refused.text
    status = json.loads(syncengine("status", pipeline, "--json").out)[0]
    assert (status["known"], status["dead_letters"]) == (4, 2), "a refused reset forgets nothing"
    for bad in (("--sync", "peple"), ("--sync", "people", "--state", tmp_path / "nope.db")):
        result = cli("reset", pipeline, *bad, "--yes")
        assert result.code == 2, (bad, result.text)
    done = cli("reset", pipeline, "--sync", "people", "--yes")
    assert done.code == 0, done.text
    assert done.out.strip() == "people: forgot 4 records, 2 dead letters and the cursor (-)"
    status = json.loads(syncengine("status", pipeline, "--json").out)[0]
    assert (status["known"], status["dead_letters"], status["cursor"]) == (0, 0, None)
    history = json.loads(syncengine("history", pipeline, "--json").out)
    assert [(h["kind"], h["status"]) for h in history] == [("reset", "ok"), ("apply", "partial")]
    again = syncengine("apply", pipeline)
    assert again.code == 1 and "people: 4 creates, 0 updates, 0 deletes, 2 errors" in again.out, again.text
    assert rows(tmp_path / "out.db", "SELECT id FROM people ORDER BY id") == [("1",), ("4",), ("5",), ("6",)]


def test_reset_asks_on_a_terminal(tmp_path: Path) -> None:
    pipeline = failing(tmp_path)
    declined = on_a_terminal("reset", pipeline, "--sync", "people", answer="n")
    assert declined.code == 0 and "people: 4 known records, cursor -, 2 dead letters" in declined.out, declined.text
    assert "nothing was reset" in declined.out
    assert json.loads(syncengine("status", pipeline, "--json").out)[0]["known"] == 4
    accepted = on_a_terminal("reset", pipeline, "--sync", "people", answer="y")
    assert accepted.code == 0 and "people: forgot 4 records" in accepted.out, accepted.text
    assert json.loads(syncengine("status", pipeline, "--json").out)[0]["known"] == 0


def test_reset_refuses_a_sync_that_is_running(tmp_path: Path) -> None:
    pipeline = failing(tmp_path)
    state = tmp_path / ".syncengine" / "state.db"
    con = sqlite3.connect(state)
    try:
        # A run owned by a live process (this one) is running as far as the state can tell.
        con.execute("INSERT INTO runs (run_id, stream_id, kind, started_at, status, owner) VALUES "
                    "('live', 1, 'apply', '2030-01-01T00:00:00+00:00', 'running', ?)", (process_owner(),))
        con.commit()
    finally:
        con.close()
    result = cli("reset", pipeline, "--sync", "people", "--yes")
    assert result.code == 3 and "sync 'people' is running now (run live); nothing was reset" in result.err, result.text
    assert json.loads(syncengine("status", pipeline, "--json").out)[0]["known"] == 4


# --- the Python API ---------------------------------------------------------------------------------------------


def test_the_python_api_gives_the_same_data_as_the_cli(tmp_path: Path) -> None:
    pipeline = failing(tmp_path)
    assert plain([s.to_dict() for s in api.status(pipeline)]) == json.loads(
        syncengine("status", pipeline, "--json").out)
    assert plain([d.to_dict() for d in api.dead_letters(pipeline, syncs=["people"])]) == json.loads(
        syncengine("dead-letters", pipeline, "--sync", "people", "--json").out)

    def comparable(report: dict[str, Any]) -> dict[str, Any]:
        sync = {k: v for k, v in report["syncs"]["people"].items() if k != "seconds"}
        return {**{k: v for k, v in report.items() if k != "run_id"}, "syncs": {"people": sync}}

    by_cli = json.loads(syncengine("retry", pipeline, "--sync", "people", "--json").out)
    by_api = api.retry(pipeline, "people")
    assert by_api.exit_code == 1 == by_cli["exit_code"]
    assert comparable(plain(by_api.to_dict())) == comparable(by_cli)
    assert plain(api.history(pipeline)) == json.loads(syncengine("history", pipeline, "--json").out)
    assert [h["kind"] for h in api.history(pipeline)] == ["retry", "retry", "apply"]

    with pytest.raises(ConfigError, match="no state database there") as missing:
        api.status(pipeline, state=tmp_path / "nope.db")
    assert missing.value.exit_code == 2
    with pytest.raises(ConfigError, match="did you mean 'people'"):
        api.dead_letters(pipeline, syncs=["peple"])
    assert api.discard_dead_letters(pipeline, "people", ["2"]) == 1
    assert [r.to_dict() for r in api.reset(pipeline, "people")] == [
        {"sync": "people", "records": 4, "dead_letters": 1, "cursor": None}]


def test_the_python_api_takes_vars_and_an_env_file_for_one_run_only(tmp_path: Path) -> None:
    env_file = tmp_path / "run.env"
    env_file.write_text("SYNCENGINE_TEST_REGION=eu\n", encoding="utf-8")
    pipeline = people(tmp_path, 'id: "{{ record.id }}"\nregion: "{{ env.SYNCENGINE_TEST_REGION }}"\n'
                                'label: "{{ vars.label }}"')
    assert api.validate(pipeline, variables={"label": "x"}).syncs == ("people",)
    report = api.apply(pipeline, variables={"label": "from-python"}, env_file=env_file)
    assert report.exit_code == 0, report.to_dict()
    assert "SYNCENGINE_TEST_REGION" not in os.environ
    assert rows(tmp_path / "out.db", "SELECT region, label FROM people ORDER BY id") == [("eu", "from-python")] * 2
