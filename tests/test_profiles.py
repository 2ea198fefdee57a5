"""Profiles of one pipeline template, sync groups, disconnect/connect, and where each read started."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import rows, syncengine

PIPELINE = """\
version: 1
name: tenants
vars: {file: none.csv, tenant: none}
sources:
  files: {type: csv, path: "{{ vars.file }}"}
destinations:
  db: {type: sqlite, path: "out-{{ vars.tenant }}.db"}
groups:
  initial: [customers]
  transactions: {syncs: [orders], schedule: {every: 1 day, at: "4:00 AM"}}
syncs:
  customers:
    source: files
    destination: {name: db, table: customers, create_table: true}
    key: id
    mapping:
      fields:
        id: "{{ record.id }}"
        name: "{{ record.name }}"
        secret_seen: "{{ env.TENANT_TOKEN | length }}"
  orders:
    source: files
    destination: {name: db, table: orders, create_table: true}
    key: id
"""

PROFILES = """\
version: 1
profiles:
  acme: {vars: {file: acme.csv, tenant: acme}, env: {TENANT_TOKEN: ACME_TOKEN}}
  beta: {vars: {file: beta.csv, tenant: beta}, env: {TENANT_TOKEN: BETA_TOKEN}}
  gamma: {vars: {file: gamma.csv, tenant: gamma}, env: {TENANT_TOKEN: GAMMA_TOKEN}}
"""

ENV = {"ACME_TOKEN": "a", "BETA_TOKEN": "bb", "GAMMA_TOKEN": "ccc"}


def setup(folder: Path) -> Path:
    (folder / "p.yml").write_text(PIPELINE, encoding="utf-8")
    (folder / "profiles.yml").write_text(PROFILES, encoding="utf-8")
    for n, tenant in enumerate(("acme", "beta", "gamma"), start=1):
        lines = "".join(f"{i},{tenant}-{i}\n" for i in range(n))
        (folder / f"{tenant}.csv").write_text("id,name\n" + lines, encoding="utf-8")
    return folder / "p.yml"


def test_three_profiles_sync_their_own_files_into_their_own_tables_with_separate_states(tmp_path: Path) -> None:
    pipeline = setup(tmp_path)
    result = syncengine("apply", pipeline, "--all-profiles", "--json", env=ENV, cwd=tmp_path)
    assert result.code == 0, result.text
    reports = json.loads(result.out)  # one document for every profile
    assert [(r["profile"], r["pipeline"]) for r in reports] == [
        ("acme", "tenants@acme"), ("beta", "tenants@beta"), ("gamma", "tenants@gamma")]
    for n, tenant in enumerate(("acme", "beta", "gamma"), start=1):
        # Each tenant's own rows, and its own secret through its environment name (1, 2, 3 characters).
        assert rows(tmp_path / f"out-{tenant}.db", "SELECT id, name, secret_seen FROM customers ORDER BY id") == [
            (str(i), f"{tenant}-{i}", n) for i in range(n)]
    status = json.loads(syncengine("status", pipeline, "--all-profiles", "--json", cwd=tmp_path).out)
    assert {(s["pipeline"], s["sync"], s["known"]) for s in status} == {
        ("tenants@acme", "customers", 1), ("tenants@acme", "orders", 1), ("tenants@beta", "customers", 2),
        ("tenants@beta", "orders", 2), ("tenants@gamma", "customers", 3), ("tenants@gamma", "orders", 3)}
    again = syncengine("apply", pipeline, "--profile", "beta", "--json", env=ENV, cwd=tmp_path)
    assert json.loads(again.out)["syncs"]["customers"]["unchanged"] == 2


def test_a_group_runs_only_its_syncs(tmp_path: Path) -> None:
    pipeline = setup(tmp_path)
    result = syncengine("apply", pipeline, "--profile", "gamma", "--group", "initial", "--json", env=ENV,
                        cwd=tmp_path)
    assert result.code == 0, result.text
    assert list(json.loads(result.out)["syncs"]) == ["customers"]
    wrong = syncengine("apply", pipeline, "--profile", "gamma", "--group", "transaction", env=ENV, cwd=tmp_path)
    assert wrong.code == 2 and "unknown group 'transaction' (did you mean 'transactions'?)" in wrong.err


def test_disconnecting_one_profile_skips_only_it_and_apply_refuses_it_by_name(tmp_path: Path) -> None:
    pipeline = setup(tmp_path)
    assert syncengine("disconnect", pipeline, "--profile", "beta", cwd=tmp_path).code == 0
    result = syncengine("apply", pipeline, "--all-profiles", env=ENV, cwd=tmp_path)
    assert result.code == 0, result.text
    assert "beta: skipped: syncs customers, orders are disconnected" in result.err
    assert not (tmp_path / "out-beta.db").exists() and (tmp_path / "out-gamma.db").exists()
    refused = syncengine("apply", pipeline, "--profile", "beta", "--sync", "orders", env=ENV, cwd=tmp_path)
    assert refused.code == 5 and "sync orders is disconnected" in refused.err
    status = json.loads(syncengine("status", pipeline, "--profile", "beta", "--json", cwd=tmp_path).out)
    assert all(s["disconnected"] for s in status)
    assert syncengine("connect", pipeline, "--profile", "beta", "--group", "transactions", cwd=tmp_path).code == 0
    partly = syncengine("apply", pipeline, "--profile", "beta", "--json", env=ENV, cwd=tmp_path)
    report = json.loads(partly.out)
    assert (report["syncs"]["customers"]["status"], report["syncs"]["orders"]["creates"]) == ("disconnected", 2)


def test_the_history_says_where_each_read_started_and_why(tmp_path: Path) -> None:
    pipeline = setup(tmp_path)
    syncengine("apply", pipeline, "--profile", "acme", "--sync", "orders", env=ENV, cwd=tmp_path)
    syncengine("apply", pipeline, "--profile", "acme", "--sync", "orders", "--full-refresh", env=ENV, cwd=tmp_path)
    syncengine("apply", pipeline, "--profile", "acme", "--sync", "orders", "--since", "2026-01-01", env=ENV,
               cwd=tmp_path)
    history = json.loads(syncengine("history", pipeline, "--profile", "acme", "--json", cwd=tmp_path).out)
    assert [(h["start"], h["start_reason"]) for h in history] == [
        ("2026-01-01", "since"), (None, "full-refresh"), (None, "first")]


def test_an_unknown_profile_is_located_with_a_did_you_mean(tmp_path: Path) -> None:
    pipeline = setup(tmp_path)
    result = syncengine("apply", pipeline, "--profile", "acm", env=ENV, cwd=tmp_path)
    assert result.code == 2
    assert "profiles.yml:1:1: profiles: unknown profile 'acm' (did you mean 'acme'?)" in result.err


def test_apply_refuses_a_sync_a_scheduled_job_in_another_process_is_running(tmp_path: Path) -> None:
    import subprocess
    import sys

    from engine.state_store import StateStore, process_owner

    pipeline = setup(tmp_path)
    assert syncengine("apply", pipeline, "--profile", "acme", env=ENV, cwd=tmp_path).code == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host, _, _ = process_owner().split(":")
        stat = Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
        store = StateStore(tmp_path / ".syncengine" / "state.db")
        try:
            assert store.acquire_leases("tenants@acme", ["customers"], "job-1", seconds=300,
                                        owner=f"{host}:{other.pid}:{stat}") == []
        finally:
            store.close()
        refused = syncengine("apply", pipeline, "--profile", "acme", env=ENV, cwd=tmp_path)
        assert refused.code == 3
        assert f"sync 'customers' is being run by a scheduled job right now (serve, pid {other.pid})" in refused.err
        other.kill()
        other.wait(10)
        # Once that process is gone its lease stands in nobody's way.
        assert syncengine("apply", pipeline, "--profile", "acme", env=ENV, cwd=tmp_path).code == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(10)
