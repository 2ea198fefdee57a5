"""The Aljex morning export over a real SFTP server: three days of files into SQLite, and the refusals.

The server is paramiko's server side on 127.0.0.1 (``tests/servers/sftp_server.py``); the pipeline
is ``samples/aljex/morning/pipeline.yml`` itself, run through the CLI as a subprocess.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aljex_data
import paramiko
import pytest
from conftest import REPO, Result, syncengine
from servers.sftp_server import SftpServer

DIRECTORY = "outbound"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SftpServer]:
    """An SFTP server serving ``tmp_path/remote``, stopped after the test."""
    root = tmp_path / "remote"
    (root / DIRECTORY).mkdir(parents=True)
    with SftpServer(root) as srv:
        yield srv


@pytest.fixture
def morning(tmp_path: Path, server: SftpServer) -> Path:
    """A private copy of the sample pipeline with a known_hosts file for the test server."""
    target = tmp_path / "morning"
    shutil.copytree(REPO / "samples" / "aljex" / "morning", target,
                    ignore=shutil.ignore_patterns("out", ".syncengine", "known_hosts"))
    (target / "known_hosts").write_text(server.known_hosts_line(), encoding="utf-8")
    return target / "pipeline.yml"


def env_for(server: SftpServer, **changes: str) -> dict[str, str]:
    """The environment the sample pipeline reads its connection from."""
    return {"ALJEX_SFTP_HOST": "127.0.0.1", "ALJEX_SFTP_PORT": str(server.port), "ALJEX_SFTP_USER": server.username,
            "ALJEX_SFTP_PASSWORD": server.password, "ALJEX_SFTP_DIRECTORY": DIRECTORY, **changes}


def apply(pipeline: Path, server: SftpServer, *args: str, **env: str) -> tuple[Result, dict[str, Any]]:
    """``syncengine apply --json`` and its parsed report."""
    result = syncengine("apply", pipeline, "--json", *args, env=env_for(server, **env))
    try:
        report = json.loads(result.out)
    except json.JSONDecodeError:
        report = {}
    return result, report


def table(db: Path, name: str, columns: list[str]) -> dict[str, dict[str, Any]]:
    """A table's rows by its first column."""
    con = sqlite3.connect(db)
    try:
        cols = ", ".join(f'"{c}"' for c in columns)
        return {row[0]: dict(zip(columns, row, strict=True)) for row in con.execute(f"SELECT {cols} FROM {name}")}
    finally:
        con.close()


def test_three_mornings_leave_the_database_as_expected(morning: Path, server: SftpServer) -> None:
    remote = server.root / DIRECTORY
    db = morning.parent / "out" / "aljex.db"
    files = aljex_data.files()
    for day in range(aljex_data.DAYS):
        aljex_data.write_exports(remote, day)
        result, report = apply(morning, server)
        assert result.code == 0, result.text
        for spec in files:
            got = table(db, spec.table, list(spec.columns))
            assert got == aljex_data.expected(spec, day), f"day {day}, {spec.name}"
            for key in aljex_data.left_window(spec, day):
                assert key in got, f"day {day}: {spec.name} record {key} left the window and was deleted"
        assert server.password not in result.text
    assert server.connections == aljex_data.DAYS, "one SSH connection per run, shared by the thirteen syncs"
    syncs = report["syncs"]
    # Day 3: the active load and the recently delivered one that vanished are deletes; the load that
    # merely aged out of the window stays; one employee left the snapshot.
    assert (syncs["loads"]["deletes"], syncs["invoicing"]["deletes"], syncs["employees"]["deletes"]) == (2, 1, 1)
    loads = table(db, "loads", ["pro", "status", "notes", "rate", "ship_date", "updated"])
    assert loads["000002"]["status"] == "Delivered", "left the window on day 2 and must stay"
    assert loads["000005"]["notes"] == "Dock 4\r\nCall ahead, then wait (rev 1)", "aged out on day 3, must stay"
    assert "000003" not in loads and "000004" not in loads
    customers = table(db, "customers", ["id", "name", "address", "zip", "credit_limit", "created"])
    assert customers["000001"]["name"] == 'Ask for "Big" Al' and customers["000001"]["zip"] == "07701"
    assert customers["000005"]["address"] == "Smith, Jones & Co"
    assert customers["000001"]["address"] == "Bélanger Trânsport — Montréal"
    assert (customers["000001"]["credit_limit"], customers["000004"]["credit_limit"]) == ("1250.00", None)
    assert customers["000004"]["created"][10:] in ("T16:03:50-04:00", "T16:03:50-05:00")
    employees = table(db, "employees", ["id", "email", "type", "status"])
    assert "000003" not in employees, "left the snapshot: deleted"
    assert employees["000002"]["status"] == 'Ask for "Big" Al (rev 1)'
    assert employees["000004"]["email"] is None and employees["000001"]["email"] == "andré.0@example.com"


def test_an_unchanged_file_is_not_read_again(morning: Path, server: SftpServer) -> None:
    aljex_data.write_exports(server.root / DIRECTORY, 0)
    first, _ = apply(morning, server)
    assert first.code == 0, first.text
    again, report = apply(morning, server)
    assert again.code == 0, again.text
    syncs = report["syncs"]
    assert syncs["quotes"]["read"] == 0 and syncs["payments_received"]["read"] == 0
    assert syncs["employees"]["read"] == 0 and syncs["employees"]["deletes"] == 0, "a skipped snapshot deleted"
    assert all(s["creates"] + s["updates"] + s["deletes"] == 0 for s in syncs.values())
    quotes = server.root / DIRECTORY / "quotes.csv"
    quotes.write_bytes(quotes.read_bytes() + b'000099,0000001,Trenton NJ,99.00,Open,3/19/2015 4:42:50 PM\r\n')
    changed, report = apply(morning, server)
    assert (report["syncs"]["quotes"]["read"], report["syncs"]["quotes"]["creates"]) == (4, 1), changed.text


def archive_quotes(morning: Path, server: SftpServer) -> Path:
    """Make the quotes sync archive what it read into done/, write day 0's exports; returns the remote folder."""
    text = morning.read_text(encoding="utf-8").replace(
        "{name: aljex_sftp, files: quotes.csv}", "{name: aljex_sftp, files: quotes.csv, archive_directory: done}")
    morning.write_text(text, encoding="utf-8")
    remote = server.root / DIRECTORY
    (remote / "done").mkdir()
    aljex_data.write_exports(remote, 0)
    return remote


def test_processed_files_move_to_the_archive(morning: Path, server: SftpServer) -> None:
    remote = archive_quotes(morning, server)
    result, report = apply(morning, server, "--sync", "quotes", "--sync", "debits")
    assert result.code == 0, result.text
    assert report["syncs"]["quotes"]["creates"] == 3
    assert not (remote / "quotes.csv").exists() and (remote / "done" / "quotes.csv").exists()
    assert (remote / "debits.csv").exists(), "only the sync that asks for it archives"
    again, report = apply(morning, server, "--sync", "quotes")
    assert again.code == 0 and report["syncs"]["quotes"]["read"] == 0


def test_a_file_sent_again_is_archived_when_its_unchanged_rows_were_not_mapped(morning: Path,
                                                                              server: SftpServer) -> None:
    remote = archive_quotes(morning, server)
    sent = (remote / "quotes.csv").read_bytes()
    result, _ = apply(morning, server, "--sync", "quotes")
    assert result.code == 0, result.text
    # The same export again with one more quote: the three known rows are recognised by their raw hash
    # (not mapped), and still count as delivered, so the file moves to the archive.
    (remote / "done" / "quotes.csv").unlink()
    (remote / "quotes.csv").write_bytes(sent + b'000099,0000001,Trenton NJ,99.00,Open,3/19/2015 4:42:50 PM\r\n')
    again, report = apply(morning, server, "--sync", "quotes")
    assert again.code == 0, again.text
    quotes = report["syncs"]["quotes"]
    assert (quotes["creates"], quotes["unchanged"], quotes["unmapped"]) == (1, 3, 3)
    assert not (remote / "quotes.csv").exists() and (remote / "done" / "quotes.csv").exists()


def test_a_file_with_an_undelivered_record_is_not_archived(morning: Path, server: SftpServer) -> None:
    remote = archive_quotes(morning, server)
    with (remote / "quotes.csv").open("ab") as handle:
        handle.write(b"a,row,that,does,not,fit,the,header,at,all,x,y,z\r\n")
    result, report = apply(morning, server, "--sync", "quotes")
    assert result.code == 1 and report["syncs"]["quotes"]["errors"] == 1, result.text
    assert (remote / "quotes.csv").exists() and not (remote / "done" / "quotes.csv").exists()


def assert_refused(pipeline: Path, server: SftpServer, result: Result, expected: str) -> None:
    """Exit 3, the run ends with one line naming the problem, the secret nowhere, nothing written."""
    assert result.code == 3, result.text
    lines = result.text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.text
    assert server.password not in result.text
    assert not (pipeline.parent / "out").exists(), "the destination was touched"


def test_a_wrong_password_is_one_clear_line(morning: Path, server: SftpServer) -> None:
    aljex_data.write_exports(server.root / DIRECTORY, 0)
    result = syncengine("apply", morning, env=env_for(server, ALJEX_SFTP_PASSWORD="not-the-password"))
    assert_refused(morning, server, result, f"sftp 127.0.0.1:{server.port}: authentication failed for user aljex")
    assert "not-the-password" not in result.text
    assert server.connections == 1, "every sync tried to connect again"


def test_an_unknown_host_key_is_refused_with_its_fingerprint(morning: Path, server: SftpServer) -> None:
    aljex_data.write_exports(server.root / DIRECTORY, 0)
    (morning.parent / "known_hosts").write_text("", encoding="utf-8")
    result = syncengine("apply", morning, env=env_for(server))
    offered = server.host_key.fingerprint  # paramiko's own SHA256 rendering, computed independently
    assert_refused(morning, server, result, f'unknown host key: the server offered ecdsa-sha2-nistp256 {offered}')
    assert f'host_key_fingerprint: "{offered}"' in result.text
    assert server.auth_attempts == 0, "credentials were sent to an unverified server"


def test_a_changed_host_key_is_refused(morning: Path, server: SftpServer) -> None:
    aljex_data.write_exports(server.root / DIRECTORY, 0)
    other = paramiko.ECDSAKey.generate()
    (morning.parent / "known_hosts").write_text(server.known_hosts_line(other), encoding="utf-8")
    result = syncengine("apply", morning, env=env_for(server))
    assert_refused(morning, server, result, "host key changed")
    assert server.auth_attempts == 0


def test_an_unreachable_server_is_one_clear_line(morning: Path, server: SftpServer) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    result = syncengine("apply", morning, env={**env_for(server), "ALJEX_SFTP_PORT": str(closed_port)})
    assert_refused(morning, server, result, f"sftp 127.0.0.1:{closed_port}: unreachable")


def test_a_pinned_fingerprint_and_a_private_key_connect(morning: Path, server: SftpServer, tmp_path: Path) -> None:
    client_key = paramiko.ECDSAKey.generate()
    server.client_keys.append(client_key)
    key_file = tmp_path / "client_key"
    client_key.write_private_key_file(str(key_file))
    text = morning.read_text(encoding="utf-8").replace(
        '    password: "{{ env.ALJEX_SFTP_PASSWORD }}"\n    known_hosts: known_hosts\n',
        '    private_key: "{{ env.ALJEX_SFTP_KEY }}"\n    host_key_fingerprint: "{{ env.ALJEX_SFTP_HOST_KEY }}"\n')
    morning.write_text(text, encoding="utf-8")
    (morning.parent / "known_hosts").unlink()
    aljex_data.write_exports(server.root / DIRECTORY, 0)
    env = {**env_for(server), "ALJEX_SFTP_KEY": key_file.read_text(encoding="utf-8"),
           "ALJEX_SFTP_HOST_KEY": server.host_key.fingerprint}
    result = syncengine("apply", morning, "--sync", "employees", env=env)
    assert result.code == 0, result.text
    assert "employees: 5 creates" in result.out
    assert server.auth_attempts == 1
