"""The plain-Python fast path gives exactly what the Jinja path gives, on every shipped mapping.

Each sample pipeline's syncs are compiled as a run would compile them; realistic records (the
quick start's CSV, the generated Aljex exports, the benchmark's loads) and damaged copies of them
go through both paths. Where the fast path produces a record, the Jinja path must produce the
same one, value for value and type for type (the record hash depends on it); where it cannot, the
Jinja path decides, so errors stay located.
"""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aljex_data
import pytest
from conftest import REPO

from engine.adapters.csv_file import CsvConfig, read_csv
from engine.api import load
from engine.interfaces import RunInfo
from engine.mapping import CompiledMapping
from engine.runner import Engine

RUN = RunInfo("run1", datetime(2026, 11, 24, 6, 0, tzinfo=UTC), "2026-11-23")


def rows_of(text: str) -> list[dict[str, Any]]:
    """CSV text as records, the way the CSV and SFTP sources read it."""
    return [r for r in read_csv(io.StringIO(text.lstrip("\ufeff"), newline=""), CsvConfig(path="x"), "x")
            if isinstance(r, dict)]


def damaged(records: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Copies with one field emptied, garbled or removed."""
    out = []
    for record in records:
        for field in list(record)[:6]:
            out.append({**record, field: ""})
            out.append({**record, field: rng.choice(["abc", "12.5x", "  ", "0007", "3/19/2015 4:42:50 PM"])})
            out.append({k: v for k, v in record.items() if k != field})
    return out


def compare(mapping: CompiledMapping, records: list[dict[str, Any]]) -> int:
    """Both paths on every record; returns how many records the fast path produced."""
    assert mapping._fast is not None, "this mapping should be translated"
    produced = 0
    for record in records:
        try:
            fast = mapping._fast(dict(record))
        except Exception:  # noqa: BLE001 - the Jinja path takes over; nothing to compare
            continue
        produced += 1
        slow = mapping._render(dict(record))
        assert repr(fast) == repr(slow), f"fast and Jinja paths differ for {record}"
    return produced


def mappings_of(pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CompiledMapping]:
    """Every sync's compiled mapping, as a run compiles it."""
    for name in ("BENCH_INPUT", "BENCH_DB", "ALJEX_SFTP_HOST", "ALJEX_SFTP_PORT", "ALJEX_SFTP_USER",
                 "ALJEX_SFTP_PASSWORD", "ALJEX_SFTP_DIRECTORY", "ALJEX_LIVE_PASSWORD"):
        monkeypatch.setenv(name, "x")
    loaded = load(pipeline)
    engine = Engine(loaded, state_path=":memory:", dry_run=True)
    try:
        return {name: m for name, sync in loaded.syncs.items()
                if isinstance(m := engine.mapping(sync, RUN), CompiledMapping)}
    finally:
        engine.close()


def test_quickstart_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = mappings_of(REPO / "samples/quickstart/pipeline.yml", monkeypatch)["customers"]
    records = rows_of((REPO / "samples/quickstart/customers.csv").read_text(encoding="utf-8"))
    assert compare(mapping, records) == len(records)
    assert compare(mapping, damaged(records, random.Random(1))) > 0


@pytest.mark.parametrize("sample", ["morning", "live"])
def test_aljex_mappings(sample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mappings = mappings_of(REPO / f"samples/aljex/{sample}/pipeline.yml", monkeypatch)
    checked = 0
    for spec in aljex_data.files():
        if spec.table not in mappings:
            continue
        records = [r for day in range(aljex_data.DAYS) for r in rows_of(aljex_data.export_text(spec, day).decode())]
        assert compare(mappings[spec.table], records) == len(records), spec.name
        compare(mappings[spec.table], damaged(records[:20], random.Random(2)))
        checked += 1
    assert checked >= 4


def test_benchmark_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.generate import COLUMNS, make_row

    mapping = mappings_of(REPO / "benchmarks/loads_pipeline.yml", monkeypatch)["loads"]
    rng = random.Random(7)
    records = [dict(zip(COLUMNS, make_row(rng, n), strict=True)) for n in range(1, 2001)]
    assert compare(mapping, records) == len(records)
    assert compare(mapping, damaged(records[:50], rng)) > 0


def test_templates_outside_the_subset_keep_the_jinja_path(tmp_path: Path) -> None:
    from engine.mapping import FieldTemplate
    from engine.templating import make_environment

    fields = [FieldTemplate(("id",), "{{ record.id }}", "m:1", True),
              FieldTemplate(("n",), "{% for x in record.xs %}{{ x }}{% endfor %}", "m:2", True)]
    mapping = CompiledMapping(make_environment(), fields, key_fields=("id",), key_template=None,
                              filter_template=None, context={"vars": {}, "env": {}, "run": RUN})
    assert mapping._fast is None
    mapped = mapping.map({"id": "a", "xs": [1, 2]})
    assert mapped is not None and mapped.values == {"id": "a", "n": "12"}
