"""The SFTP destination against a real SFTP server: one CSV per run, placed atomically, staged until uploaded."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from servers.sftp_server import SftpServer

from engine import api

LOADS = ('pro,status,rate,notes\r\n'
         '000101,In Transit,"1,250.00","Dock 4\r\nsay ""hi"""\r\n'
         '000102,Delivered,980.5,Bélanger\r\n')

PIPELINE = """
version: 1
name: drop
sources:
  loads_csv: {{type: csv, path: loads.csv}}
destinations:
  partner:
    type: sftp
    host: 127.0.0.1
    port: {port}
    username: aljex
    password: "{{{{ env.DROP_SFTP_PASSWORD }}}}"
    known_hosts: known_hosts
syncs:
  loads:
    source: loads_csv
    destination:
      name: partner
      directory: inbound
      filename: "{filename}"
{extra}
    mapping:
      fields:
        pro: "{{{{ record.pro }}}}"
        status: "{{{{ record.status }}}}"
        rate: "{{{{ record.rate | decimal }}}}"
        notes: "{{{{ record.notes }}}}"
    key: pro
    mode: mirror
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SftpServer]:
    """An SFTP server with an ``inbound`` directory."""
    root = tmp_path / "remote"
    (root / "inbound").mkdir(parents=True)
    with SftpServer(root) as srv:
        yield srv


def pipeline(tmp_path: Path, server: SftpServer, monkeypatch: pytest.MonkeyPatch, *,
             filename: str = "loads_{{ run.started_at | date('%Y%m%d') }}.csv", extra: str = "") -> Path:
    """Write the pipeline, its CSV and known_hosts; set the password in the environment."""
    folder = tmp_path / "local"
    folder.mkdir(exist_ok=True)
    (folder / "loads.csv").write_text(LOADS, encoding="utf-8", newline="")
    (folder / "known_hosts").write_text(server.known_hosts_line(), encoding="utf-8")
    extra = "\n".join(f"      {line}" for line in extra.splitlines())
    path = folder / "pipeline.yml"
    path.write_text(PIPELINE.format(port=server.port, filename=filename, extra=extra), encoding="utf-8")
    monkeypatch.setenv("DROP_SFTP_PASSWORD", server.password)
    return path


def remote_files(server: SftpServer) -> list[str]:
    """Names in the remote ``inbound`` directory."""
    return sorted(p.name for p in (server.root / "inbound").iterdir())


def test_a_run_writes_one_csv_named_by_the_template(tmp_path: Path, server: SftpServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline(tmp_path, server, monkeypatch, extra="columns: [pro, rate, notes]\nquoting: nonnumeric")
    report = api.apply(path)
    assert report.exit_code == 0, report.to_dict()
    name = f"loads_{datetime.now(UTC):%Y%m%d}.csv"
    assert remote_files(server) == [name], "a .part file was left behind, or the name is wrong"
    raw = (server.root / "inbound" / name).read_bytes().decode("utf-8")
    assert raw.splitlines()[0] == '"pro","rate","notes"'
    assert '"000101",1250.00,"Dock 4\r\nsay ""hi"""' in raw
    assert list(csv.reader(io.StringIO(raw, newline=""))) == [
        ["pro", "rate", "notes"], ["000101", "1250.00", 'Dock 4\r\nsay "hi"'], ["000102", "980.5", "Bélanger"]]
    assert not any((tmp_path / "local" / ".syncengine" / "outbox").rglob("*.csv")), "the staged copy was kept"
    again = api.apply(path)
    assert again.syncs["loads"].counts["unchanged"] == 2
    assert remote_files(server) == [name], "a run without changes uploaded a file"


def test_each_run_sends_only_its_changes_and_deletes_carry_an_action(
        tmp_path: Path, server: SftpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline(tmp_path, server, monkeypatch, filename="loads_{{ run.id }}.csv", extra="action_column: action")
    first = api.apply(path)
    assert first.exit_code == 0
    source = tmp_path / "local" / "loads.csv"
    source.write_text(LOADS.replace("000102,Delivered,980.5,Bélanger\r\n", ""), encoding="utf-8", newline="")
    second = api.apply(path)
    assert second.syncs["loads"].counts["deletes"] == 1
    newest = (server.root / "inbound" / f"loads_{second.run_id}.csv").read_bytes().decode("utf-8")
    assert newest == "pro,status,rate,notes,action\r\n000102,,,,delete\r\n"
    assert len(remote_files(server)) == 2


def test_a_delete_without_an_action_column_stops_the_sync(tmp_path: Path, server: SftpServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline(tmp_path, server, monkeypatch, filename="loads_{{ run.id }}.csv")
    assert api.apply(path).exit_code == 0
    source = tmp_path / "local" / "loads.csv"
    source.write_text(LOADS.replace("000102,Delivered,980.5,Bélanger\r\n", ""), encoding="utf-8", newline="")
    report = api.apply(path)
    assert report.syncs["loads"].status == "failed"
    assert "set action_column" in (report.syncs["loads"].message or "")


def test_a_file_that_cannot_be_placed_stays_staged_and_goes_with_the_next_run(
        tmp_path: Path, server: SftpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline(tmp_path, server, monkeypatch, filename="loads.csv")
    taken = server.root / "inbound" / "loads.csv"
    taken.write_text("not ours\n", encoding="utf-8")
    report = api.apply(path)
    sync = report.syncs["loads"]
    assert sync.status == "failed" and "inbound/loads.csv already exists" in (sync.message or ""), sync.message
    assert taken.read_text(encoding="utf-8") == "not ours\n", "the existing file was replaced"
    staged = tmp_path / "local" / ".syncengine" / "outbox" / "drop" / "loads" / "loads.csv"
    assert staged.read_bytes().count(b"\r\n") == 4  # header, two rows, one line break in a field
    taken.unlink()  # the partner picked its file up
    retry = api.apply(path)
    assert retry.exit_code == 0 and retry.syncs["loads"].counts["unchanged"] == 2
    assert taken.read_bytes().startswith(b"pro,status,rate,notes\r\n000101,")
    assert not staged.exists() and remote_files(server) == ["loads.csv"]


def test_a_refused_host_key_stages_nothing(tmp_path: Path, server: SftpServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline(tmp_path, server, monkeypatch)
    (tmp_path / "local" / "known_hosts").write_text("", encoding="utf-8")
    report = api.apply(path)
    sync = report.syncs["loads"]
    assert sync.status == "failed" and "unknown host key" in (sync.message or "")
    assert server.password not in (sync.message or "")
    assert remote_files(server) == [] and not (tmp_path / "local" / ".syncengine" / "outbox").exists()
    assert server.auth_attempts == 0
