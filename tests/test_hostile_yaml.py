"""Hostile pipeline and mapping files (alias bombs, bytes that are not UTF-8 text, unsafe tags, deep nesting,
huge files) are refused as located problems with exit 2 by ``validate`` and ``apply`` alike: never a traceback,
never the memory or time they ask for. The CLI runs as a real process under a memory limit."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Result

# The CLI needs about 200 MB of address space; an alias bomb expanded even in part needs gigabytes.
MEMORY_LIMIT = 768 * 1024 * 1024

PIPELINE = """\
version: 1
sources:
  customers_csv:
    type: csv
    path: customers.csv
destinations:
  warehouse:
    type: sqlite
    path: out.db
syncs:
  customers:
    source: customers_csv
    destination: {name: warehouse, table: customers, create_table: true}
    key: customer_id
    mode: mirror
    mapping:
      fields:
        customer_id: "{{ record.id }}"
        name: "{{ record.name | upper }}"
"""

# Nine levels of nine aliases: 9**9 (387 million) strings once expanded.
BOMB = "".join(
    ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    + [f"  {name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
       for prev, name in zip("abcdefgh", "bcdefghi", strict=True)])
BOMB_MESSAGE = ("vars.e[0]: alias '*d' stands for 7,381 values; the aliases of a file may stand for at most "
                "10,000 values in all")


def bounded(*args: str, cwd: Path) -> Result:
    """The CLI as a subprocess with capped memory and time, so a file that blows up fails the test quickly."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    proc = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, preexec_fn=cap)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def refused(folder: Path, pipeline: str, expected: list[str]) -> None:
    """``validate`` and ``apply`` both print exactly ``expected`` and exit 2, and nothing is created."""
    before = sorted(p.name for p in folder.iterdir())
    for command in ("validate", "apply"):
        result = bounded(command, pipeline, cwd=folder)
        assert "Traceback" not in result.text
        count = len(expected)
        assert result.err.splitlines() == [*expected, f"{count} problem{'s' if count != 1 else ''} found; "
                                                      "nothing was run."]
        assert result.code == 2
    assert sorted(p.name for p in folder.iterdir()) == before


def with_mapping_file(folder: Path, mapping: bytes) -> None:
    """A pipeline whose sync takes its fields from ``mappings/m.yml``."""
    (folder / "p.yml").write_text(PIPELINE.replace(
        '      fields:\n        customer_id: "{{ record.id }}"\n        name: "{{ record.name | upper }}"\n',
        "      file: m.yml\n"), encoding="utf-8")
    (folder / "mappings").mkdir()
    (folder / "mappings" / "m.yml").write_bytes(mapping)


def test_alias_bomb_is_refused_at_the_alias_before_it_expands(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(PIPELINE.replace("version: 1\n", "version: 1\nvars:\n" + BOMB), encoding="utf-8")
    refused(tmp_path, "p.yml", [f"p.yml:7:10: {BOMB_MESSAGE}"])


def test_alias_bomb_in_a_mapping_file_is_refused_there(tmp_path: Path) -> None:
    lols = "".join("  " + line for line in BOMB.splitlines(keepends=True))
    with_mapping_file(tmp_path, ('fields:\n  customer_id: "{{ record.id }}"\n  lols:\n' + lols).encode())
    refused(tmp_path, "p.yml", [f"mappings/m.yml:8:12: fields.lols.{BOMB_MESSAGE.replace('vars.', '')}"])


def test_a_byte_that_is_not_utf8_is_located_by_line_column_and_offset(tmp_path: Path) -> None:
    data = PIPELINE.encode().replace(b'| upper }}"', b'| upper }} caf\xe9"')
    (tmp_path / "p.yml").write_bytes(data)
    offset = data.index(b"\xe9")
    refused(tmp_path, "p.yml", [f"p.yml:19:45: not valid UTF-8: byte 0xE9 at byte offset {offset} "
                                "(invalid continuation byte); save the file as UTF-8"])


def test_a_latin1_mapping_file_is_located_in_that_file(tmp_path: Path) -> None:
    with_mapping_file(tmp_path, b'fields:\n  customer_id: "{{ record.id }}"\n  city: "Z\xfcrich"\n')
    refused(tmp_path, "p.yml", ["mappings/m.yml:3:11: not valid UTF-8: byte 0xFC at byte offset 51 "
                                "(invalid start byte); save the file as UTF-8"])


def test_a_binary_file_is_not_a_text_file(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00")
    refused(tmp_path, "p.yml", ["p.yml:3:1: not a text file: NUL byte at byte offset 8"])


def test_a_utf16_file_is_asked_for_as_utf8(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_bytes(PIPELINE.encode("utf-16"))
    refused(tmp_path, "p.yml", ["p.yml:1:1: the file is UTF-16 text; save it as UTF-8"])


def test_a_control_character_is_located(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(PIPELINE.replace('"{{ record.name | upper }}"', '"\x1b[31m{{ record.name }}"'),
                                    encoding="utf-8")
    refused(tmp_path, "p.yml", ["p.yml:19:16: character U+001B is not allowed in YAML (not even quoted)"])


def test_python_tags_in_a_mapping_file_are_refused_at_the_tag(tmp_path: Path) -> None:
    with_mapping_file(tmp_path, b'fields:\n  customer_id: "{{ record.id }}"\n'
                                b'  cmd: !!python/object/apply:os.system ["echo owned > owned.txt"]\n')
    refused(tmp_path, "p.yml", ["mappings/m.yml:3:8: fields.cmd: tag '!!python/object/apply:os.system' is not "
                                "allowed (allowed: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)"])


def test_deep_nesting_is_refused_at_the_level_too_deep(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(PIPELINE.replace("version: 1\n", "version: 1\nvars:\n  deep: "
                                                     + "[" * 500 + "]" * 500 + "\n"), encoding="utf-8")
    # vars is level 1 and deep's list level 2, so the list that goes past 100 levels is the 99th inside it.
    path = "vars.deep" + "[0]" * 98
    refused(tmp_path, "p.yml", [f"p.yml:3:{9 + 98}: {path}: lists and mappings nest more than 100 levels deep"])


@pytest.mark.parametrize(("opener", "closer", "expected"), [
    # In brackets the parser reads ahead to its own limit of 1000 levels before it hands over any value.
    ("[", "]", "p.yml:4:1003: YAML syntax: exceeded maximum nesting depth (lists and mappings may nest at most "
               "100 levels deep)"),
    ("- ", "", f"p.yml:4:201: vars.deep{'[0]' * 98}: lists and mappings nest more than 100 levels deep"),
])
def test_nesting_ten_thousand_levels_deep_is_refused(tmp_path: Path, opener: str, closer: str, expected: str) -> None:
    (tmp_path / "p.yml").write_text(PIPELINE.replace("version: 1\n", "version: 1\nvars:\n  deep:\n    "
                                                     + opener * 10_000 + "x" + closer * 10_000 + "\n"),
                                    encoding="utf-8")
    refused(tmp_path, "p.yml", [expected])


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    with (tmp_path / "p.yml").open("wb") as handle:
        handle.write(PIPELINE.encode())
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, nothing on disk
    refused(tmp_path, "p.yml", ["p.yml:1:1: the file is 50.0 MB; pipeline and mapping files may be at most 10 MB"])


def test_a_mapping_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    with_mapping_file(tmp_path, b"fields: {}\n")
    with (tmp_path / "mappings" / "m.yml").open("r+b") as handle:
        handle.truncate(12 * 1024 * 1024)
    refused(tmp_path, "p.yml", ["mappings/m.yml:1:1: the file is 12.0 MB; pipeline and mapping files may be at "
                                "most 10 MB"])


@pytest.mark.parametrize(("line", "problem"), [
    ("  {key}: 1", "mapping values are not allowed in this context"),
    ("  flow: {{{key}: 1}}", "did not find expected ',' or '}'"),
])
def test_a_key_longer_than_yaml_allows_is_named_as_such(tmp_path: Path, line: str, problem: str) -> None:
    text = line.format(key="k" * 2000)
    (tmp_path / "p.yml").write_text(PIPELINE.replace("version: 1\n", f"version: 1\nvars:\n{text}\n"), encoding="utf-8")
    refused(tmp_path, "p.yml", [f"p.yml:3:{text.index('k') + 1}: YAML syntax: a key may be at most 1024 characters "
                                f"long ({problem})"])


def test_valid_yaml_within_the_limits_still_runs(tmp_path: Path) -> None:
    # A UTF-8 byte order mark, a 1 MB line, aliases within their budget, explicit core tags, a date that
    # stays text, and nesting 90 levels deep: all fine, and apply writes what they say.
    deep = "{a: " * 90 + "1" + "}" * 90
    (tmp_path / "p.yml").write_text("\ufeff" + PIPELINE.replace("version: 1\n", f"""\
version: 1
description: "{'x' * 1_000_000}"
vars:
  since: 2024-01-31
  region: &region {{code: !!str 7, name: East}}
  again: *region
  deep: {deep}
""").replace('        name: "{{ record.name | upper }}"\n', """\
        name: "{{ record.name | upper }}"
        since: "{{ vars.since }}"
        region: "{{ vars.again.code }}-{{ vars.region.name }}"
"""), encoding="utf-8")
    (tmp_path / "customers.csv").write_text("id,name\n1,ada\n", encoding="utf-8")
    assert bounded("validate", "p.yml", cwd=tmp_path).code == 0
    applied = bounded("apply", "p.yml", cwd=tmp_path)
    assert applied.code == 0, applied.err
    con = sqlite3.connect(tmp_path / "out.db")
    try:
        rows = con.execute("SELECT customer_id, name, since, typeof(since), region FROM customers").fetchall()
    finally:
        con.close()
    assert rows == [("1", "ADA", "2024-01-31", "text", "7-East")]
