"""Strict means strict: a missing field is an error through any filter or test; env and secret_file stay confined.

Every test runs the CLI as a subprocess on a JSON Lines source (records may lack a field) and a
SQLite destination, and checks what the run printed, dead-lettered and wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, csv_to_sqlite, rows, syncengine, write_syncs

GOOD = [{"id": "1", "address": " Main St ", "day": "2026-01-02", "amount": "1.50", "count": "12", "flag": "Y"},
        {"id": "2", "address": "Elm", "day": "2026-02-03", "amount": "2", "count": "7", "flag": "no"},
        {"id": "3", "address": "Oak", "day": "2026-03-04", "amount": "3.25", "count": "0", "flag": "1"}]
TYPO = {"id": "4", "adress": "Typo St", "dya": "2026-04-05", "amuont": "4", "cuont": "9", "falg": "N"}
"""A record whose fields are misspelt: each template's field is missing from it, with a close name."""


def write_pipeline(folder: Path, fields: dict[str, str], records: list[dict[str, Any]],
                   sync: str = "people") -> tuple[Path, dict[str, int]]:
    """A JSON Lines to SQLite pipeline with these mapping fields; returns it and each field's line."""
    (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    lines = ["    mapping:", "      fields:"] + [f"        {name}: {json.dumps(text)}" for name, text in fields.items()]
    path = csv_to_sqlite(folder, sync, source="{type: jsonl, path: in.jsonl}", extra="\n".join(lines) + "\n")
    numbered = path.read_text(encoding="utf-8").splitlines()
    found = {name: next(i for i, line in enumerate(numbered, 1) if line.startswith(f"        {name}:"))
             for name in fields}
    return path, found


def cli(command: str, path: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI run from the pipeline's folder, so locations read ``p.yml:LINE``."""
    return syncengine(command, path.name, *args, cwd=path.parent, env=env)


def dead_letters(path: Path) -> list[dict[str, Any]]:
    """The pipeline's dead letters, as ``syncengine dead-letters --json`` lists them."""
    result = cli("dead-letters", path, "--json")
    assert result.code == 0, result.text
    letters: list[dict[str, Any]] = json.loads(result.out)
    return letters


# A mapping with a `record.get` call is outside the fast path's subset, so it runs on Jinja alone;
# without it, the fast path tries each record first and hands the failing one to Jinja.
PATHS = {"fast": {}, "jinja": {"via": "{{ record.get('id') }}"}}

STRICT = [
    ("{{ record.address | null_if_empty }}", "address", "adress"),
    ("{{ record.address | upper }}", "address", "adress"),
    ("{{ record.address | trim }}", "address", "adress"),
    ("{{ record.address | length }}", "address", "adress"),
    ("{{ record.address | replace('St', 'Street') }}", "address", "adress"),
    ("{{ record.address is none }}", "address", "adress"),
    ("{{ record.address is string }}", "address", "adress"),
    ("{{ record.day | parse_date | iso8601 }}", "day", "dya"),
    ("{{ record.day | iso8601 }}", "day", "dya"),
    ("{{ record.amount | decimal(2) }}", "amount", "amuont"),
    ("{{ record.amount | cents }}", "amount", "amuont"),
    ("{{ record.count | int }}", "count", "cuont"),
    ("{{ record.flag | bool }}", "flag", "falg"),
    ("{{ record.adress | coalesce('n/a') ~ (record.count | int) }}", "count", "cuont"),
]


@pytest.mark.parametrize("path_kind", PATHS)
def test_a_missing_field_is_an_error_whatever_filter_or_test_it_goes_through(tmp_path: Path, path_kind: str) -> None:
    # One sync per template, all over the same records: the fourth record lacks each template's field.
    syncs = {f"s{i}": {"id": "{{ record.id }}", "value": template, **PATHS[path_kind]}
             for i, (template, _, _) in enumerate(STRICT)}
    path, line = write_syncs(tmp_path, syncs, [*GOOD, TYPO])
    result = cli("apply", path)
    assert result.code == 1, result.text
    letters = {d["sync"]: d for d in dead_letters(path)}
    for i, (template, name, close) in enumerate(STRICT):
        sync, where = f"s{i}", f"p.yml:{line[f's{i}.value']}"
        message = f"no field '{name}' (did you mean '{close}'?)"
        assert f"{sync}: 3 creates, 0 updates, 0 deletes, 1 errors" in result.out, template
        assert f"{sync}: record error: key '4', field 'value' ({where}): {message}" in result.out, template
        assert (letters[sync]["key"], letters[sync]["field"], letters[sync]["location"]) == ("4", "value", where)
        assert [r[0] for r in rows(tmp_path / "out.db", f"SELECT id FROM {sync} ORDER BY id")] == ["1", "2", "3"]
    assert len(letters) == len(STRICT)


def test_only_explicit_forms_make_absence_acceptable(tmp_path: Path) -> None:
    strict, _ = write_pipeline(tmp_path, {"id": "{{ record.id }}", "street": "{{ record.address | null_if_empty }}"},
                               [*GOOD, TYPO])
    assert cli("apply", strict).code == 1

    loose = tmp_path / "loose"
    loose.mkdir()
    fields = {"id": "{{ record.id }}",
              "by_default": "{{ record.address | default('none given') }}",
              "by_coalesce": "{{ record.address | coalesce(record.adress) }}",
              "by_get": "{{ record.get('address') | null_if_empty }}",
              "by_test": "{{ 'yes' if record.address is defined else 'no' }}",
              "by_undefined": "{{ record.address is undefined }}"}
    path, _ = write_pipeline(loose, fields, [*GOOD, TYPO])
    result = cli("apply", path)
    assert result.code == 0, result.text
    assert rows(loose / "out.db", "SELECT by_default, by_coalesce, by_get, by_test, by_undefined FROM people "
                                  "WHERE id = '4'") == [("none given", "Typo St", None, "no", 1)]
    assert rows(loose / "out.db", "SELECT by_default, by_get, by_test FROM people WHERE id = '1'") == [
        (" Main St ", " Main St ", "yes")]


ENV_MISUSE = ["{{ env }}", "{{ env | list }}", "{% for k in env %}{{ k }}{% endfor %}", "{{ env.items() }}",
              "{{ env | tojson }}", "{{ env.keys() }}", "{{ env | length }}", "{% set e = env %}{{ e | string }}"]


def test_env_answers_lookups_but_cannot_be_listed(tmp_path: Path) -> None:
    fields = {"id": "{{ record.id }}", **{f"f{i}": text for i, text in enumerate(ENV_MISUSE)}}
    path, line = write_pipeline(tmp_path, fields, GOOD)
    result = cli("validate", path, env={"SE_STRICT_TOKEN": "tok-123456"})
    assert result.code == 2, result.text
    for i, text in enumerate(ENV_MISUSE):
        assert f"p.yml:{line[f'f{i}']}:" in result.err and f"syncs.people.mapping.fields.f{i}: " in result.err, text
    assert result.err.count("env answers lookups of one name only (env.NAME or env['NAME'])") == len(ENV_MISUSE)
    assert "tok-123456" not in result.text
    assert not (tmp_path / "out.db").exists()

    # Lookups by name keep working, NAME_FILE too.
    (tmp_path / "region.txt").write_text("eu-west\n", encoding="utf-8")
    ok = tmp_path / "ok"
    ok.mkdir()
    path, _ = write_pipeline(ok, {"id": "{{ record.id }}", "a": "{{ env.SE_STRICT_NAME }}",
                                  "b": "{{ env['SE_STRICT_NAME'] | upper }}", "c": "{{ env.SE_STRICT_REGION }}",
                                  "d": "{{ 'SE_STRICT_NAME' in env }}"}, GOOD)
    env = {"SE_STRICT_NAME": "acme", "SE_STRICT_REGION_FILE": str(tmp_path / "region.txt")}
    result = cli("apply", path, env=env)
    assert result.code == 0, result.text
    assert rows(ok / "out.db", "SELECT DISTINCT a, b, c, d FROM people") == [("acme", "ACME", "eu-west", 1)]


NO_SECRETS_DIR = {"SYNCENGINE_SECRETS_DIR": ""}


def test_secret_file_reads_only_below_the_pipeline_or_the_secrets_folder(tmp_path: Path) -> None:
    pipeline_dir = tmp_path / "pipeline"
    secrets_dir = tmp_path / "secrets"
    pipeline_dir.mkdir()
    secrets_dir.mkdir()
    (tmp_path / "outside.txt").write_text("OUTSIDE-CONTENT-9271\n", encoding="utf-8")
    (secrets_dir / "api.key").write_text("secrets-folder-key\n", encoding="utf-8")
    (pipeline_dir / "inside.txt").write_text("inside-value\n", encoding="utf-8")
    (pipeline_dir / "link.txt").symlink_to(tmp_path / "outside.txt")
    outside = str(tmp_path / "outside.txt")

    escapes = {"up": "../outside.txt", "absolute": outside, "link": "link.txt", "system": "../../../../../etc/passwd"}
    fields = {"id": "{{ record.id }}", **{k: f"{{{{ secret_file('{p}') }}}}" for k, p in escapes.items()}}
    path, line = write_pipeline(pipeline_dir, fields, GOOD)
    result = cli("validate", path, env=NO_SECRETS_DIR)
    assert result.code == 2, result.text
    for key, written in escapes.items():
        assert (f"p.yml:{line[key]}:" in result.err and f"syncs.people.mapping.fields.{key}: secret_file('{written}'): "
                "the file is outside the pipeline's folder") in result.err, key
    assert "OUTSIDE-CONTENT" not in result.text and "root:" not in result.text

    # A path that comes from the data is checked when it is read: that record fails, naming the path only.
    records = [{**r, "file": "inside.txt"} for r in GOOD] + [{"id": "4", "file": "../outside.txt"}]
    path, line = write_pipeline(pipeline_dir, {"id": "{{ record.id }}", "token": "{{ secret_file(record.file) }}"},
                                records)
    result = cli("apply", path, env=NO_SECRETS_DIR)
    assert result.code == 1, result.text
    assert (f"record error: key '4', field 'token' (p.yml:{line['token']}): secret_file('../outside.txt'): "
            "the file is outside the pipeline's folder") in result.out
    assert rows(pipeline_dir / "out.db", "SELECT id, token FROM people ORDER BY id") == [
        ("1", "inside-value"), ("2", "inside-value"), ("3", "inside-value")]
    for stored in (pipeline_dir / "out.db", pipeline_dir / ".syncengine" / "state.db"):
        assert b"OUTSIDE-CONTENT" not in stored.read_bytes()
    assert "OUTSIDE-CONTENT" not in result.text + json.dumps(dead_letters(path))

    # SYNCENGINE_SECRETS_DIR allows one more folder.
    path, _ = write_pipeline(pipeline_dir, {"id": "{{ record.id }}",
                                            "key": f"{{{{ secret_file('{secrets_dir / 'api.key'}') }}}}"}, GOOD,
                             sync="keys")
    assert cli("validate", path, env=NO_SECRETS_DIR).code == 2
    result = cli("apply", path, env={"SYNCENGINE_SECRETS_DIR": str(secrets_dir)})
    assert result.code == 0, result.text
    assert rows(pipeline_dir / "out.db", "SELECT DISTINCT key FROM keys") == [("secrets-folder-key",)]
