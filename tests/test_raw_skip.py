"""Unchanged raw records skip a pure mapping: what is skipped, what is always mapped, and that the results
are the same as mapping everything.

Each run is the CLI as a subprocess; the report's ``unmapped`` count says how many unchanged records
were recognised by their raw hash without running the mapping, and ``raw_skip`` why none were.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from conftest import apply_json, counts, dead_letters_json, rows, syncengine

from engine.purity import bare_field, mapping_purity, why_impure
from engine.templating import EnvView, make_environment

FIELDS = """    mapping:
      fields:
        id: "{{ record.id }}"
        name: "{{ record.name | trim | upper }}"
        cents: "{{ record.amount | cents }}"
"""
ENV = {"SYNCENGINE_LOG_FORMAT": "text"}


def write_rows(path: Path, data: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "name", "amount", "note"])
        writer.writeheader()
        writer.writerows(data)


def make_rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"K{i:03d}", "name": f" name {i} ", "amount": f"{i}.25", "note": f"note {i}"} for i in range(n)]


def pipeline(folder: Path, fields: str = FIELDS, extra: str = "", sync_extra: str = "") -> Path:
    path = folder / "p.yml"
    path.write_text(f"""\
version: 1
{extra}sources:
  files: {{type: csv, path: in.csv}}
destinations:
  db: {{type: sqlite, path: out.db}}
syncs:
  loads:
    source: files
    destination: {{name: db, table: loads, create_table: true}}
    key: id
    mode: mirror
    scope: snapshot
{sync_extra}{fields}""", encoding="utf-8")
    return path


def run(path: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result, report = apply_json(path, *args, env={**ENV, **(env or {})})
    assert result.code in (0, 1), result.text
    block = report["syncs"]["loads"]
    return {**counts(report, "loads"), "unmapped": block["unmapped"], "raw_skip": block["raw_skip"]}


def table(folder: Path) -> dict[str, tuple[Any, ...]]:
    return {str(r[0]): r[1:] for r in rows(folder / "out.db", "SELECT id, name, cents FROM loads")}


@pytest.mark.timeout(120)
def test_a_rerun_maps_only_what_changed_and_deletes_still_travel(tmp_path: Path) -> None:
    data = make_rows(40)
    write_rows(tmp_path / "in.csv", data)
    path = pipeline(tmp_path)
    first = run(path)
    assert (first["creates"], first["unmapped"], first["raw_skip"]) == (40, 0, None)
    again = run(path)
    assert (again["unchanged"], again["unmapped"], again["creates"] + again["updates"]) == (40, 40, 0)

    data[3]["amount"] = "99.99"               # a mapped value changed: an update
    data[7]["note"] = "only the note changed"  # a column the mapping does not read: mapped, unchanged
    del data[10]                               # gone from the snapshot: a delete
    data.append({"id": "K900", "name": "new", "amount": "1", "note": ""})
    write_rows(tmp_path / "in.csv", data)
    third = run(path)
    assert (third["creates"], third["updates"], third["deletes"]) == (1, 1, 1)
    assert third["unchanged"] == 38 and third["unmapped"] == 37  # K007 was mapped (raw changed), found unchanged
    assert table(tmp_path)["K003"] == ("NAME 3", 9999) and "K010" not in table(tmp_path)
    # K007's new raw hash was kept although nothing was sent: the next run maps nothing.
    fourth = run(path)
    assert (fourth["unchanged"], fourth["unmapped"]) == (40, 40)


@pytest.mark.timeout(120)
def test_skipping_gives_the_same_destination_as_mapping_everything(tmp_path: Path) -> None:
    """The same sequence of files through a pure mapping and an impure twin (which maps every record)."""
    pure = tmp_path / "pure"
    impure = tmp_path / "impure"
    impure_fields = FIELDS + '        seen_run: "{{ run.id | length > 0 }}"\n'
    for folder, fields in ((pure, FIELDS), (impure, impure_fields)):
        folder.mkdir()
        pipeline(folder, fields)
    data = make_rows(30)
    versions = [list(data)]
    changed = [dict(r) for r in data]
    changed[2]["name"] = "Zoë"
    changed[5]["amount"] = "0.5"
    changed[6]["note"] = "x"
    versions.append(changed[:20] + changed[25:])
    versions.append(data)  # back to the first file: everything changed back, the removed return
    for version in versions:
        for folder in (pure, impure):
            write_rows(folder / "in.csv", version)
            report = run(folder / "p.yml")
            if folder is impure:
                assert report["unmapped"] == 0 and "run.*" in report["raw_skip"]
        assert table(pure) == table(impure)
    assert len(table(pure)) == 30


@pytest.mark.timeout(120)
def test_a_new_mapping_text_var_or_env_value_maps_everything_once(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.csv", make_rows(20))
    fields = FIELDS + '        tag: "{{ vars.tag }}-{{ env.TAG_SUFFIX }}"\n'
    path = pipeline(tmp_path, fields, extra="vars: {tag: a}\n")
    env = {"TAG_SUFFIX": "one"}
    run(path, env=env)
    assert run(path, env=env)["unmapped"] == 20
    changed_env = run(path, env={"TAG_SUFFIX": "two"})
    assert (changed_env["unmapped"], changed_env["updates"]) == (0, 20)
    assert run(path, env={"TAG_SUFFIX": "two"})["unmapped"] == 20
    changed_var = run(path, "--var", "tag=b", env={"TAG_SUFFIX": "two"})
    assert (changed_var["unmapped"], changed_var["updates"]) == (0, 20)
    # A new template text with the same output: mapped once, nothing sent, then skipped again.
    path.write_text(path.read_text(encoding="utf-8").replace("| trim | upper", "| upper | trim"), encoding="utf-8")
    retext = run(path, "--var", "tag=b", env={"TAG_SUFFIX": "two"})
    assert (retext["unmapped"], retext["unchanged"], retext["updates"]) == (0, 20, 0)
    assert run(path, "--var", "tag=b", env={"TAG_SUFFIX": "two"})["unmapped"] == 20


@pytest.mark.timeout(120)
def test_full_refresh_and_a_dead_letter_always_map(tmp_path: Path) -> None:
    data = make_rows(10)
    write_rows(tmp_path / "in.csv", data)
    path = pipeline(tmp_path)
    run(path)
    full = run(path, "--full-refresh")
    assert (full["unmapped"], full["updates"], full["raw_skip"]) == (0, 10, None)
    bad = [dict(r) for r in data]
    bad[4]["amount"] = "not money"
    write_rows(tmp_path / "in.csv", bad)
    failed = run(path)
    assert failed["errors"] == 1 and failed["unmapped"] == 9
    assert [letter["key"] for letter in dead_letters_json(path, ENV)] == ["K004"]
    # Back to the delivered row: its raw hash matches the stored one, but its dead letter must settle.
    write_rows(tmp_path / "in.csv", data)
    back = run(path)
    assert (back["errors"], back["unchanged"], back["unmapped"]) == (0, 10, 9)
    assert dead_letters_json(path, ENV) == []


@pytest.mark.timeout(120)
def test_a_key_seen_twice_across_batches_keeps_the_last_row(tmp_path: Path) -> None:
    data = make_rows(6)
    write_rows(tmp_path / "in.csv", data)
    path = pipeline(tmp_path, sync_extra="    batch_size: 2\n")
    run(path)
    # K001 first as a new value, then (three rows later, another batch) as the value already delivered.
    twice = [dict(data[0]), {**data[1], "amount": "5.00"}, data[2], data[3], data[4], data[1], data[5]]
    write_rows(tmp_path / "in.csv", twice)
    report = run(path)
    assert report["errors"] == 0
    assert table(tmp_path)["K001"] == ("NAME 1", 125)
    assert run(path)["updates"] == 0


@pytest.mark.timeout(60)
def test_plan_counts_unchanged_records_without_mapping_them(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.csv", make_rows(12))
    path = pipeline(tmp_path)
    run(path)
    result = syncengine("plan", path, "--json", env=ENV)
    assert result.code == 0, result.text
    assert '"unmapped": 12' in result.out


def test_a_key_that_is_not_a_copied_column_maps_every_record(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.csv", make_rows(5))
    path = pipeline(tmp_path, FIELDS.replace('id: "{{ record.id }}"', 'id: "{{ record.id | lower }}"'))
    run(path)
    again = run(path)
    assert again["unmapped"] == 0 and "not a source column copied as it is" in again["raw_skip"]


# --- purity, decided when the pipeline is compiled --------------------------------------------------------

@pytest.mark.parametrize(("template", "why"), [
    ("{{ run.id }}", "run.*"),
    ("{{ record.a ~ run.started_at }}", "run.*"),
    ("{{ [1, 2] | random }}", "filter 'random'"),
    ("{{ record.xs | map('random') | list }}", "random"),
    ("{{ secret_file('token') }}", "secret_file()"),
    ("{{ env[record.name] }}", "env other than by a fixed name"),
    ("{{ record.a | some_plugin_filter }}", "some_plugin_filter"),
])
def test_impure_templates_are_named(template: str, why: str) -> None:
    env = make_environment(Path.cwd())
    env.filters["some_plugin_filter"] = lambda value: value
    reason = why_impure(env, template)
    assert reason is not None and why in reason


@pytest.mark.parametrize("template", [
    "{{ record.a }}", "{{ record.a | trim | upper }}", "{{ record.amount | cents }}",
    "{{ record.d | parse_date('%d/%m/%Y') }}", "{{ vars.x ~ env.HOME }}", "{{ env['HOME'] }}",
    "{% if record.a is defined %}{{ record.a | default('x') }}{% endif %}",
    "{{ range(3) | list }}", "{{ record.tags | map('upper') | join(',') }}",
])
def test_pure_templates_are_recognised(template: str) -> None:
    assert why_impure(make_environment(Path.cwd()), template) is None


def test_the_version_covers_templates_vars_and_the_env_values_read() -> None:
    env = make_environment(Path.cwd())
    sources = ["{{ record.a }}", "{{ env.ONE }}"]

    def version(vars_: dict[str, Any], values: dict[str, str], texts: list[str] = sources) -> bytes | None:
        return mapping_purity(env, texts, {"vars": vars_, "env": EnvView(values=values), "run": None}).version

    base = version({"x": 1}, {"ONE": "1", "TWO": "2"})
    assert base is not None
    assert version({"x": 1}, {"ONE": "1", "TWO": "changed"}) == base  # a value no template reads
    assert version({"x": 1}, {"ONE": "changed", "TWO": "2"}) != base
    assert version({"x": 2}, {"ONE": "1", "TWO": "2"}) != base
    assert version({"x": 1}, {"ONE": "1", "TWO": "2"}, ["{{ record.b }}", "{{ env.ONE }}"]) != base


def test_bare_fields() -> None:
    assert bare_field("{{ record.id }}") == "id"
    assert bare_field("{{record['load id']}}") == "load id"
    assert bare_field("{{ record.id | trim }}") is None
    assert bare_field("L-{{ record.id }}") is None
    assert bare_field(5) is None



@pytest.mark.timeout(120)
def test_rows_read_as_lists_keep_their_errors_in_place_and_decoding_errors_named(tmp_path: Path) -> None:
    data = make_rows(8)
    write_rows(tmp_path / "in.csv", data)
    path = pipeline(tmp_path)
    run(path)
    text = (tmp_path / "in.csv").read_text(encoding="utf-8").splitlines()
    text.insert(4, "a,row,far,too,wide,for,the,header")
    text.append("K100,x,abc,")  # cents of 'abc' fails, located
    (tmp_path / "in.csv").write_text("\n".join(text) + "\n", encoding="utf-8")
    report = run(path)
    assert (report["errors"], report["unmapped"], report["deletes"]) == (2, 8, 0)
    letters = {letter["key"]: letter for letter in dead_letters_json(path, ENV)}
    assert "cents" in str(letters["K100"]), letters
    assert any("8 fields where the header has 4" in str(letter) for letter in letters.values())
    (tmp_path / "in.csv").write_bytes("id,name,amount,note\nK001,\xe9t\xe9,1,x\n".encode("latin-1"))
    result, _ = apply_json(path, env=ENV)
    assert result.code == 3 and "in.csv: not utf-8-sig text" in result.text, result.text


@pytest.mark.timeout(120)
def test_the_summary_says_how_many_were_not_mapped_and_plan_says_why_all_are(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.csv", make_rows(7))
    path = pipeline(tmp_path)
    assert syncengine("apply", path, env=ENV).code == 0
    again = syncengine("apply", path, env=ENV)
    assert "loads: 0 creates, 0 updates, 0 deletes, 0 errors; 7 unchanged without mapping" in again.out, again.text
    impure = pipeline(tmp_path, FIELDS + '        run_id: "{{ run.id }}"\n')
    planned = syncengine("plan", impure, env=ENV)
    assert planned.code == 0, planned.text
    assert "loads: note: every record is mapped, changed or not: the mapping is not pure" in planned.out
    assert "run.*" in planned.out


@pytest.mark.timeout(120)
def test_a_state_from_before_raw_hashes_maps_everything_once(tmp_path: Path) -> None:
    write_rows(tmp_path / "in.csv", make_rows(9))
    path = pipeline(tmp_path)
    run(path)
    state = tmp_path / ".syncengine" / "state.db"
    rows(state, "ALTER TABLE records DROP COLUMN raw")  # the table as an earlier version made it
    planned = syncengine("plan", path, "--json", env=ENV)  # read-only: no column to read, everything mapped
    assert planned.code == 0 and '"unmapped": 0' in planned.out and '"unchanged": 9' in planned.out, planned.text
    upgraded = run(path)
    assert (upgraded["unchanged"], upgraded["unmapped"], upgraded["updates"]) == (9, 0, 0)
    assert run(path)["unmapped"] == 9
