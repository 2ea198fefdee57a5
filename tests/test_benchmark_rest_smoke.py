"""The REST benchmarks with a handful of records, for correctness only (never timing): the Weavy pull +
acknowledge and bulk import (``benchmarks/rest.py``) and the Dsync push (``benchmarks/dsync_push.py``), each client
against its own fresh test server process, must leave on the server exactly what they should, and the reports must
carry every figure. The checks themselves must notice a wrong server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks import dsync_push, rest  # noqa: E402


def _figures(row: dict[str, object]) -> None:
    for kind in ("engine", "bare"):
        figures = row[kind]
        assert isinstance(figures, dict)
        assert len(figures["all_wall"]) == 1
        assert figures["wall"] > 0 and figures["records_per_s"] > 0 and figures["cpu"] > 0
        assert figures["inner"] is not None and 0 < figures["inner"] <= figures["wall"]
    assert row["rate_ratio"] > 0 and row["paired_rate_ratio"] > 0 and row["inner_rate_ratio"] > 0  # type: ignore


def test_weavy_benchmark_pulls_acknowledges_and_imports_with_both_clients() -> None:
    # 25 customers in pages (and imports) of 10 rows: three pages, three acknowledgements, three imports.
    results = rest.run(records=25, repeat=1, latency=0.0, page=10, rows=10, log=None)

    assert results["problems"] == []
    for job in ("pull", "import"):
        _figures(results["jobs"][job])
    pull, bulk = results["jobs"]["pull"], results["jobs"]["import"]
    assert pull["engine"]["requests"] == pull["bare"]["requests"] == {"login": 1, "read": 3, "ack": 3}
    assert bulk["engine"]["requests"] == {"login": 1, "entity": 1, "import": 3}  # the engine reads the entity once
    assert bulk["bare"]["requests"] == {"login": 1, "import": 3}

    text = rest.render(results, "python -m benchmarks.rest --records 25", "test machine")
    assert "| pull + acknowledge |" in text and "| bulk import |" in text and "engine/bare" in text
    assert "NOT met" not in text and "Problems:" not in text


def test_dsync_benchmark_pushes_with_both_clients() -> None:
    results = dsync_push.run(records=12, concurrency=3, repeat=1, latency=0.0, log=None)

    assert results["problems"] == []
    row = results["summary"]
    _figures(row)
    want = {"GET /datalayout 200": 1, "POST /entity/product 201": 12, "POST /notification 200": 1}
    assert row["engine"]["requests"] == row["bare"]["requests"] == want

    text = dsync_push.render(results, "python -m benchmarks.dsync_push --records 12", "test machine")
    assert "(target >= 0.8x)" in text and "entities/s" in text
    assert "one Process-Id: met" in text and "Problems:" not in text


def test_the_checks_notice_a_wrong_server() -> None:
    customers = rest.generate(3)
    want = rest.digest(rest.canonical(c["customer_ID"], c) for c in customers)
    good = {"customers": 3, "exported": 0, "digest": want, "logins": 1, "throttled": 0, "statuses": {"200": 4},
            "server_errors": [], "routes": {"POST /v1/Authenticate": 1, "POST /v1/data/{p}/{entity}/import": 3}}
    result = {"problems": [], "bare": {"added": 3, "errors": []}}
    assert rest.check("import", "bare", result, good, 3, 1, 1, want) == []
    changed = [*customers[:2], {**customers[2], "creditLimit": customers[2]["creditLimit"] + 1}]
    assert rest.digest(rest.canonical(c["customer_ID"], c) for c in changed) != want
    assert rest.check("import", "bare", result, {**good, "digest": "other"}, 3, 1, 1, want)
    assert rest.check("import", "bare", result, {**good, "logins": 2}, 3, 1, 1, want)
    assert rest.check("pull", "bare", {"problems": [], "bare": {"read": 3, "distinct": 3, "acknowledged": 3,
                                                                "conflicts": 0, "digest": want}},
                      {**good, "exported": 2, "routes": {"POST /v1/data/{p}/exportValidation": 3}}, 3, 1, 1, want)

    rows = dsync_push.generate(2)
    digest = rest.digest(dsync_push.canonical(dsync_push.product(r)) for r in rows)
    stats = {"products": 2, "digest": digest, "process_ids": 1, "server_errors": [], "notifications": 1,
             "counts": {"GET /datalayout 200": 1, "POST /entity/product 201": 2, "POST /notification 200": 1}}
    assert dsync_push.check_server(stats, 2, digest) == []
    assert dsync_push.check_server({**stats, "process_ids": 2}, 2, digest)
    assert dsync_push.check_server({**stats, "products": 1}, 2, digest)
    assert dsync_push.check_server({**stats, "counts": {**stats["counts"], "PUT /entity/product 200": 1}}, 2, digest)


def test_update_readme_writes_only_between_its_own_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before = "# Benchmarks\n\n<!-- soap:start -->\nsoap figures\n<!-- soap:end -->\n\n"
    section = "<!-- rest:begin -->\n## REST\n\nprose\n\n<!-- rest:results:start -->\nold\n<!-- rest:results:end -->\n"
    after = "more prose\n<!-- rest:end -->\n"
    readme.write_text(before + section + after, encoding="utf-8")
    rest.update_readme("new figures", path=readme)
    assert readme.read_text(encoding="utf-8") == before + section.replace("\nold\n", "\nnew figures\n") + after

    readme.write_text(before, encoding="utf-8")
    with pytest.raises(SystemExit):
        rest.update_readme("new figures", path=readme)
    assert readme.read_text(encoding="utf-8") == before
