"""The engine's change tracking against an in-memory source and destination."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import memory_adapters as mem
import pytest
from conftest import rows
from memory_adapters import World, run

PIPELINE = """\
version: 1
vars:
  region: EU
sources:
  src: {type: memory, dataset: loads}
destinations:
  dst: {type: memory}
syncs:
  loads:
    source: {name: src, cursor_field: CURSOR}
    destination: dst
    key: id
    mode: MODE
    scope: SCOPE
    mapping:
      fields:
        id: "{{ record.id }}"
        name: "{{ record.name }}"
        ship_date: "{{ record.ship }}"
        region: "{{ vars.region }}"
EXTRA"""


@pytest.fixture(autouse=True)
def fresh_world() -> Iterator[None]:
    """Each test gets an empty world."""
    mem.WORLD = World()
    globals()["WORLD"] = mem.WORLD
    yield


def pipeline_text(text: str) -> str:
    """The test pipeline with the default mode, scope and cursor."""
    return text.replace("MODE", "mirror").replace("SCOPE", "snapshot").replace("EXTRA", "").replace("CURSOR", "null")


def pipeline(tmp_path: Path, mode: str = "mirror", scope: str = "snapshot", extra: str = "",
             cursor: str = "null") -> Path:
    """Write the test pipeline."""
    path = tmp_path / "p.yml"
    text = PIPELINE.replace("MODE", mode).replace("SCOPE", scope).replace("EXTRA", extra).replace("CURSOR", cursor)
    path.write_text(text, encoding="utf-8")
    return path


def load(*records: tuple[str, str, str]) -> None:
    """Set the source's records: (id, name, ship date)."""
    mem.WORLD.records["loads"] = [{"id": i, "name": n, "ship": s, "updated": s} for i, n, s in records]


def counts(report: object) -> tuple[int, int, int, int]:
    """(creates, updates, deletes, errors) of the one sync."""
    sync = report.syncs["loads"].counts  # type: ignore[attr-defined]
    return sync["creates"], sync["updates"], sync["deletes"], sync["errors"]


def test_remote_ids_are_kept_and_handed_back_on_update_and_delete(tmp_path: Path) -> None:
    path = pipeline(tmp_path)
    load(("a", "A", "2026-01-01"), ("b", "B", "2026-01-02"))
    assert counts(run(path)) == (2, 0, 0, 0)
    ids = dict(mem.WORLD.remote_ids)
    load(("a", "A2", "2026-01-01"))
    assert counts(run(path, force_deletes=True)) == (0, 1, 1, 0)
    assert ("update", "a", ids["a"]) in mem.WORLD.writes
    assert ("delete", "b", ids["b"]) in mem.WORLD.writes
    assert mem.WORLD.table == {"a": {"id": "a", "name": "A2", "ship_date": "2026-01-01", "region": "EU"}}


def test_batches_respect_the_destination_limit_and_acknowledge_only_delivered(tmp_path: Path) -> None:
    path = pipeline(tmp_path)
    load(*[(f"k{i}", f"N{i}", "2026-01-01") for i in range(7)])
    mem.WORLD.reject = {"k3": "name is too long"}
    report = run(path)
    assert counts(report) == (6, 0, 0, 1)
    assert sorted(mem.WORLD.acknowledged) == sorted(f"k{i}" for i in range(7) if i != 3)
    assert report.syncs["loads"].errors == ["key 'k3', field 'name': name is too long"]


def test_transient_destination_errors_are_retried(tmp_path: Path) -> None:
    path = pipeline(tmp_path)
    load(("a", "A", "2026-01-01"))
    mem.WORLD.transient_failures = 2
    assert counts(run(path)) == (1, 0, 0, 0)
    mem.WORLD.transient_failures = 99
    load(("a", "A", "2026-01-01"), ("b", "B", "2026-01-01"))
    failed = run(path).syncs["loads"]
    assert failed.status == "failed" and "the destination kept failing: the server is busy" in (failed.message or "")


def test_insert_mode_sends_creates_only(tmp_path: Path) -> None:
    path = pipeline(tmp_path, mode="insert")
    load(("a", "A", "2026-01-01"))
    run(path)
    load(("a", "changed", "2026-01-01"), ("b", "B", "2026-01-01"))
    report = run(path)
    assert counts(report) == (1, 0, 0, 0) and report.syncs["loads"].counts["skipped"] == 1
    assert mem.WORLD.table["a"]["name"] == "A"


def test_a_window_never_deletes_records_that_left_it(tmp_path: Path) -> None:
    path = pipeline(tmp_path, scope="window")
    load(("a", "A", "2026-01-01"), ("b", "B", "2026-01-05"))
    run(path)
    load(("b", "B", "2026-01-05"))
    assert counts(run(path)) == (0, 0, 0, 0)
    assert set(mem.WORLD.table) == {"a", "b"}


def test_a_window_with_delete_when_deletes_only_inside_the_bound(tmp_path: Path) -> None:
    extra = "    delete_when: \"{{ record.ship_date >= '2026-01-04' }}\"\n"
    path = pipeline(tmp_path, scope="window", extra=extra)
    load(("old", "O", "2026-01-01"), ("new", "N", "2026-01-05"), ("keep", "K", "2026-01-06"))
    run(path)
    load(("keep", "K", "2026-01-06"))
    # 'old' left the window (shipped before the bound): kept. 'new' should still be in it: deleted.
    assert counts(run(path)) == (0, 0, 1, 0)
    assert set(mem.WORLD.table) == {"old", "keep"}
    state = tmp_path / ".syncengine" / "state.db"
    assert json.loads(rows(state, "SELECT memo FROM records WHERE key = 'old'")[0][0]) == {"ship_date": "2026-01-01"}


def test_the_cursor_advances_only_after_a_good_run_and_since_overrides_it(tmp_path: Path) -> None:
    path = pipeline(tmp_path, scope="increment", cursor="updated")
    load(("a", "A", "2026-01-01"), ("b", "B", "2026-01-03"))
    run(path)
    assert mem.WORLD.cursors_seen == [None]
    run(path)
    assert mem.WORLD.cursors_seen[-1] == "2026-01-03"
    mem.WORLD.transient_failures = 99
    load(("c", "C", "2026-01-09"))
    assert run(path).syncs["loads"].status == "failed"
    mem.WORLD.transient_failures = 0
    run(path)
    assert mem.WORLD.cursors_seen[-1] == "2026-01-03", "a failed run moved the cursor"
    run(path, since="2026-01-01")
    assert mem.WORLD.cursors_seen[-1] == "2026-01-01"


def test_secrets_never_reach_the_state_or_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEM_TOKEN", "s3cr3t-t0ken")
    text = PIPELINE.replace("{type: memory, dataset: loads}",
                            "{type: memory, dataset: loads, token: \"{{ env.MEM_TOKEN }}\"}")
    text = text.replace('region: "{{ vars.region }}"', 'region: "{{ vars.region }}-{{ env.MEM_TOKEN }}"')
    path = tmp_path / "p.yml"
    path.write_text(pipeline_text(text), encoding="utf-8")
    load(("a", "A", "2026-01-01"))
    mem.WORLD.reject = {"a": "refused value s3cr3t-t0ken"}
    report = run(path)
    assert "s3cr3t-t0ken" not in json.dumps(report.to_dict())
    state = (tmp_path / ".syncengine" / "state.db").read_bytes()
    assert b"s3cr3t-t0ken" not in state
    payload = json.loads(rows(tmp_path / ".syncengine" / "state.db", "SELECT payload FROM dead_letters")[0][0])
    assert payload["region"] == "EU-***"


def test_a_literal_secret_is_refused_at_validation(tmp_path: Path) -> None:
    from engine.errors import PipelineInvalid

    text = PIPELINE.replace("{type: memory, dataset: loads}", "{type: memory, dataset: loads, token: hunter22}")
    path = tmp_path / "p.yml"
    path.write_text(pipeline_text(text), encoding="utf-8")
    with pytest.raises(PipelineInvalid) as caught:
        run(path)
    assert str(caught.value) == (f"{path}:5:46: sources.src.token: a secret must not be written in the pipeline; "
                                 "use \"{{ env.NAME }}\" or \"{{ secret_file('path') }}\"")
    assert "hunter22" not in str(caught.value)


def test_template_keys_and_nested_output(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("""\
version: 1
sources:
  src: {type: memory, dataset: loads}
destinations:
  dst: {type: memory}
syncs:
  loads:
    source: src
    destination: dst
    key: "{{ record.id }}-{{ record.ship }}"
    mapping:
      fields:
        Order:
          Id: "{{ record.id }}"
          Lines:
            - Units: "{{ record.name | length }}"
              Flag: true
""", encoding="utf-8")
    load(("a", "AAA", "d1"))
    assert counts(run(path)) == (1, 0, 0, 0)
    assert mem.WORLD.table == {"a-d1": {"Order": {"Id": "a", "Lines": [{"Units": 3, "Flag": True}]}}}


def test_a_snapshot_read_from_a_cursor_infers_no_deletes(tmp_path: Path) -> None:
    path = pipeline(tmp_path, cursor="updated")
    load(("a", "A", "2026-01-01"), ("b", "B", "2026-01-03"))
    run(path)
    report = run(path)
    assert counts(report) == (0, 0, 0, 0)
    assert set(mem.WORLD.table) == {"a", "b"}
    # Nothing went wrong, so nothing is reported as an error; the report says no deletes were inferred.
    assert report.syncs["loads"].errors == [] and report.syncs["loads"].deletes_inferred is False


def test_secret_file_values_are_masked_too(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("file-s3cret-token\n", encoding="utf-8")
    text = PIPELINE.replace('region: "{{ vars.region }}"', "region: \"{{ secret_file('token.txt') }}\"")
    path = tmp_path / "p.yml"
    path.write_text(pipeline_text(text), encoding="utf-8")
    load(("a", "A", "2026-01-01"))
    mem.WORLD.reject = {"a": "refused"}
    report = run(path)
    assert report.syncs["loads"].counts["errors"] == 1
    payload = json.loads(rows(tmp_path / ".syncengine" / "state.db", "SELECT payload FROM dead_letters")[0][0])
    assert payload["region"] == "***"
    assert b"file-s3cret-token" not in (tmp_path / ".syncengine" / "state.db").read_bytes()
