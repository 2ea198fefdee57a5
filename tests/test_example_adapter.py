"""The example adapter of ``docs/adapters.md`` works as the page says: the page shows the file verbatim, a
third party installs it through the entry-point group and runs it with the CLI, it keeps the contract
kit, and mypy checks it against its role's protocol."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO, rows, syncengine

from engine.testing import check_destination, check_source

DOC = REPO / "docs" / "adapters.md"
EXAMPLE = REPO / "docs" / "examples" / "example_adapter.py"


def block_after(marker: str) -> str:
    """The fenced code block that follows a marker line in the page."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(marker)
    found = re.compile(r"```[a-z]*\n(.*?)^```$", re.S | re.M).search(text, start)
    assert found is not None, f"no code block after {marker!r}"
    return found.group(1)


def test_the_page_shows_the_example_verbatim() -> None:
    assert block_after("<!-- docs/examples/example_adapter.py, verbatim") == EXAMPLE.read_text(encoding="utf-8")


def test_every_excerpt_on_the_page_is_in_the_example() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = EXAMPLE.read_text(encoding="utf-8")
    excerpts = [m.start() for m in re.finditer("<!-- excerpt -->", text)]
    assert len(excerpts) >= 3
    for start in excerpts:
        found = re.compile(r"```python\n(.*?)^```$", re.S | re.M).search(text, start)
        assert found is not None
        assert found.group(1) in example, f"an excerpt drifted from the example:\n{found.group(1)}"


def install(tmp_path: Path) -> dict[str, str]:
    """Install the example as a third-party package would be: a dist-info with its entry point, on the path."""
    plugins = tmp_path / "plugins"
    dist = plugins / "example_adapter-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-adapter\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[syncengine.adapters]\njson_file = example_adapter\n", encoding="utf-8")
    path = [str(plugins), str(EXAMPLE.parent), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p)}


def test_a_third_party_runs_the_example_through_the_cli(tmp_path: Path) -> None:
    env = install(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    pipeline = project / "pipeline.yml"
    pipeline.write_text(block_after("<!-- example pipeline:"), encoding="utf-8")
    csv = project / "customers.csv"
    csv.write_text("id,name,balance\n1,Ada,3.5\n2,Bob,5\n3,Cy,0\n", encoding="utf-8")
    exported = project / "out" / "customers.json"
    warehouse = project / "out" / "warehouse.db"

    described = syncengine("adapters", "json_file", env=env)
    assert described.code == 0, described.text
    assert "indent: Indent the JSON by this many spaces" in described.out
    valid = syncengine("validate", pipeline, env=env)
    assert valid.code == 0, valid.text

    first = syncengine("apply", pipeline, env=env)
    assert first.code == 0, first.text
    assert "customers: 3 creates, 0 updates, 0 deletes, 0 errors" in first.out
    assert "copy: 3 creates, 0 updates, 0 deletes, 0 errors" in first.out
    assert json.loads(exported.read_text(encoding="utf-8")) == [
        {"id": 1, "name": "Ada", "balance": 3.5}, {"id": 2, "name": "Bob", "balance": 5.0},
        {"id": 3, "name": "Cy", "balance": 0.0}]

    again = syncengine("apply", pipeline, env=env)
    assert again.code == 0 and "customers: 0 creates, 0 updates, 0 deletes, 0 errors" in again.out, again.text

    # One changed row, one removed (an inferred delete, its key as text), one the destination refuses.
    csv.write_text("id,name,balance\n1,Ada,3.5\n2,Bob,6\n4,Dee,nan\n", encoding="utf-8")
    third = syncengine("apply", pipeline, env=env)
    assert third.code == 1, third.text
    assert "customers: 0 creates, 1 updates, 1 deletes, 1 errors" in third.out
    assert "copy: 0 creates, 1 updates, 1 deletes, 0 errors" in third.out
    assert json.loads(exported.read_text(encoding="utf-8")) == [
        {"id": 1, "name": "Ada", "balance": 3.5}, {"id": 2, "name": "Bob", "balance": 6.0}]
    assert rows(warehouse, "SELECT id, name, balance FROM customers ORDER BY id") == [(1, "Ada", 3.5), (2, "Bob", 6.0)]
    dead = syncengine("dead-letters", pipeline, env=env)
    assert "key '4': not valid JSON" in dead.out, dead.text


def test_the_example_keeps_the_contracts(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        importlib.import_module("example_adapter")  # registers json_file, as its entry point would
    finally:
        sys.path.remove(str(EXAMPLE.parent))

    def read_back() -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads((tmp_path / "out" / "things.json").read_text(encoding="utf-8"))
        return data

    check_destination("json_file", {"directory": "out", "indent": None}, {"file": "things.json"}, read_back,
                      tmp_path, rejected={"id": 9, "name": "bad", "qty": float("nan")})
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name != "things.json"], "a temporary file was left"

    (tmp_path / "in").mkdir()
    things = [{"id": 1, "name": "one"}, {"id": 2, "name": "two", "tags": ["a"]}]
    (tmp_path / "in" / "things.json").write_text(json.dumps([things[0], "not an object", things[1]]),
                                                 encoding="utf-8")
    check_source("json_file", {"directory": "in"}, {"file": "things.json"}, things, tmp_path, expected_errors=1,
                 expect_whole=True, ordered=True)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """A linter over a file, with the project's own configuration."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_the_example_is_lint_clean_and_mypy_checks_it_against_the_protocol(tmp_path: Path) -> None:
    lint = run_tool("ruff", "check", EXAMPLE)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    typed = run_tool("mypy", "--strict", EXAMPLE)
    assert typed.returncode == 0, typed.stdout + typed.stderr
    # A stream without `write` no longer keeps the destination protocol: mypy says so where it is registered.
    broken = tmp_path / "broken_adapter.py"
    source = EXAMPLE.read_text(encoding="utf-8")
    assert "    def write(self, changes" in source
    broken.write_text(source.replace("    def write(self, changes", "    def send(self, changes"), encoding="utf-8")
    refused = run_tool("mypy", "--strict", broken)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert 'incompatible type "type[JsonFileDestination]"' in refused.stdout
    assert "Destination[JsonFileOptions]" in refused.stdout
