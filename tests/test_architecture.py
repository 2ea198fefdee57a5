"""The shape of the house: the core imports no adapter, exported schemas are current, samples validate."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, syncengine

from engine.adapters import BUILTIN
from engine.registry import REGISTRY
from engine.schema_export import adapter_exports

sys.path.insert(0, str(REPO / "scripts"))
from export_schemas import TARGET, render  # noqa: E402

# The composition roots wire adapters in; everything else in engine/ is the core.
ENTRY_POINTS = {"engine/cli.py", "engine/api.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_core_imports_no_adapter() -> None:
    offenders = []
    for path in sorted((REPO / "engine").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("engine/adapters/") or relative in ENTRY_POINTS:
            continue
        bad = sorted(m for m in imported_modules(path) if m == "engine.adapters" or m.startswith("engine.adapters."))
        if bad:
            offenders.append(f"{relative}: {', '.join(bad)}")
    assert offenders == []


def test_heavy_clients_are_imported_lazily() -> None:
    for path in sorted((REPO / "engine" / "adapters").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
               for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not top & {"paramiko", "zeep", "lxml"}, f"{path.name} imports a heavy client at module level"


def test_exported_adapter_schemas_are_current() -> None:
    REGISTRY.load_modules(BUILTIN)
    exports = adapter_exports(REGISTRY, BUILTIN)
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in TARGET.glob("*.json")}
    assert on_disk == {name: render(doc) for name, doc in exports.items()}, \
        "schemas/adapters/ is stale: run `python scripts/export_schemas.py`"


def test_every_adapter_field_is_documented() -> None:
    REGISTRY.load_modules(BUILTIN)
    for role, names in REGISTRY.adapters.items():
        for name, spec in names.items():
            assert spec.summary, f"{role} {name} has no summary"
            for schema in (spec.config_schema, spec.options_schema):
                for prop, info in schema["properties"].items():
                    assert info.get("description"), f"{role} {name}: '{prop}' has no description"


SAMPLES = sorted(p for p in (REPO / "samples").rglob("*.yml") if "version:" in p.read_text(encoding="utf-8")
                 and p.name != "profiles.yml")  # a profiles file is checked with its pipeline (engine/profiles.py)


@pytest.mark.parametrize("pipeline", SAMPLES, ids=[p.relative_to(REPO).as_posix() for p in SAMPLES])
def test_every_sample_validates(pipeline: Path) -> None:
    result = syncengine("validate", pipeline)
    assert result.code == 0, result.text


def test_schema_command_prints_the_editor_schema() -> None:
    result = syncengine("schema")
    document = json.loads(result.out)
    assert document["title"] == "syncengine pipeline"
    names = document["$defs"]["source_endpoint"]["properties"]["type"]["enum"]
    assert {"csv", "jsonl", "sqlite"} <= set(names)
    csv_branch = next(b for b in document["$defs"]["source_endpoint"]["allOf"]
                      if b["if"]["properties"]["type"]["const"] == "csv")
    assert "delimiter" in csv_branch["then"]["properties"]


def test_adapters_command_lists_and_describes() -> None:
    listing = syncengine("adapters")
    assert listing.code == 0 and "sqlite" in listing.out and "destination" in listing.out
    one = syncengine("adapters", "csv")
    assert "delimiter: Field separator." in one.out
    unknown = syncengine("adapters", "cvs")
    assert unknown.code == 2 and "did you mean 'csv'?" in unknown.err
