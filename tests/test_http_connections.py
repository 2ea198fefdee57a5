"""The http destination's own connections: answers parsed as HTTP/1.1 says, TLS verified, idle
connections the server closed replaced, and a proxy from the environment still honoured."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from http_servers import Reply, Request, ScriptedServer

from engine.adapters.http_client import Answer, ConnectionSet, Dropped, TlsFailed, Unreachable, parse_answer
from engine.api import apply

# --- parsing ----------------------------------------------------------------------------------------------


def test_an_answer_is_whole_by_content_length_chunks_or_the_end_of_the_connection() -> None:
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
    assert parse_answer(head + b'{"id": 1', False) is None
    answer, rest, close = parse_answer(head + b'{"id": 1}HTTP', False) or (None, b"", True)
    assert isinstance(answer, Answer) and (answer.status, answer.data, rest, close) == (201, b'{"id": 1}', b"HTTP",
                                                                                       False)
    assert answer.headers.get("content-type") == answer.headers.get("CONTENT-TYPE") == "application/json"

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\n"
    assert parse_answer(chunked, False) is None  # the last chunk's empty line has not come
    whole = parse_answer(chunked + b"X-Trailer: 1\r\n\r\n", False)
    assert whole is not None and whole[0].data == b"abcdefg" and whole[1] == b""

    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome text"
    assert parse_answer(until_close, False) is None
    ended = parse_answer(until_close, True)
    assert ended is not None and ended[0].data == b"some text" and ended[2]

    informational = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    final = parse_answer(informational, False)
    assert final is not None and (final[0].status, final[0].data, final[2]) == (204, b"", True)

    repeated = parse_answer(b"HTTP/1.1 200 OK\r\nVia: a\r\nvia: b\r\nContent-Length: 0\r\n\r\n", False)
    assert repeated is not None and repeated[0].headers["Via"] == "a, b"


@pytest.mark.parametrize("raw", [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_what_is_not_http_is_a_lost_connection(raw: bytes) -> None:
    with pytest.raises(Dropped):
        parse_answer(raw, False)


# --- one connection set against real servers ----------------------------------------------------------------


def exchange(connections: ConnectionSet, url: str, body: bytes = b"{}") -> Answer | BaseException:
    """One POST over ``connections``, waited for."""
    connections.start("tag", "POST", url, b"Content-Type: application/json\r\n", body)
    done = connections.poll(None)
    assert [tag for tag, _ in done] == ["tag"]
    return done[0][1]


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed() -> None:
    """A server closing each connection after one answer (and not saying so) costs a new connection, not a retry."""
    accepted: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            accepted.append(1)
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            # closed here, while the client holds it as idle

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connections = ConnectionSet(f"http://127.0.0.1:{port}/in", 1, 5.0, None)
    try:
        for _ in range(3):
            answer = exchange(connections, f"http://127.0.0.1:{port}/in")
            if isinstance(answer, BaseException):
                raise answer
            assert (answer.status, answer.data) == (200, b"ok")
            threading.Event().wait(0.05)  # the server's close arrives before the next request
    finally:
        connections.close()
        listener.close()
    thread.join(5)
    assert len(accepted) == 3


def test_no_server_is_unreachable_and_a_silent_one_times_out() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    connections = ConnectionSet(f"http://127.0.0.1:{free}/", 1, 5.0, None)
    assert isinstance(exchange(connections, f"http://127.0.0.1:{free}/"), Unreachable)
    connections.close()

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog does) and never answers
    port = silent.getsockname()[1]
    connections = ConnectionSet(f"http://127.0.0.1:{port}/", 1, 0.3, None)
    try:
        result = exchange(connections, f"http://127.0.0.1:{port}/")
        assert isinstance(result, TimeoutError) and "no answer within 0.3s" in str(result)
    finally:
        connections.close()
        silent.close()


# --- TLS ----------------------------------------------------------------------------------------------------


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@contextmanager
def tls_server(folder: Path, script: Callable[[Request], Reply]) -> Iterator[ScriptedServer]:
    """The scripted endpoint behind TLS, with a certificate for 127.0.0.1."""
    _, cert, key = make_certificates(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ScriptedServer(script)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with server:
        yield server


PIPELINE = """\
version: 1
name: tls
sources:
  items: {{type: csv, path: items.csv}}
destinations:
  sink:
    type: http
    url: "{url}"
    format: json
    concurrency: 2
    timeout: 5
    max_retries: 1
    backoff: 0.05
{extra}syncs:
  items:
    source: items
    destination: sink
    key: id
    mapping:
      fields:
        id: "{{{{ record.id }}}}"
        name: "{{{{ record.name }}}}"
"""


def write(folder: Path, url: str, extra: str = "") -> Path:
    (folder / "items.csv").write_text("id,name\n" + "".join(f"k{i},item {i}\n" for i in range(20)), encoding="utf-8")
    path = folder / "p.yml"
    path.write_text(PIPELINE.format(url=url, extra=extra), encoding="utf-8")
    return path


def created(request: Request) -> Reply:
    """201 with the record's remote id."""
    body = json.loads(request.body)
    return Reply(201, json.dumps({"id": f"R-{body['id']}"}).encode(), {"Content-Type": "application/json"})


def test_https_is_verified_against_ca_file_and_a_stranger_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    with tls_server(tmp_path / "certs", created) as server:
        url = server.url.replace("http://", "https://") + "/items"
        good = write(tmp_path, url, "    ca_file: certs/ca.pem\n")
        report = apply(good, state=str(tmp_path / "state.db"))
        sync = report.syncs["items"]
        assert (sync.status, sync.counts["creates"]) == ("ok", 20), sync.message
        assert len(server.requests) == 20 and len({r.client_port for r in server.requests}) <= 2

        (tmp_path / "other").mkdir()
        stranger, _, _ = make_certificates(tmp_path / "other")  # a CA that did not sign the server's certificate
        bad = write(tmp_path, url, f"    ca_file: {stranger.relative_to(tmp_path).as_posix()}\n")
        report = apply(bad, state=str(tmp_path / "other.db"))
        sync = report.syncs["items"]
        assert (sync.status, report.exit_code) == ("failed", 3)
        assert "TLS verification of https://127.0.0.1" in (sync.message or ""), sync.message


def test_tls_failures_are_named_by_the_connection_set(tmp_path: Path) -> None:
    with tls_server(tmp_path, created) as server:
        url = server.url.replace("http://", "https://") + "/items"
        connections = ConnectionSet(url, 1, 5.0, ssl.create_default_context())  # the system's CAs: not this one
        try:
            assert isinstance(exchange(connections, url), TlsFailed)
        finally:
            connections.close()


# --- a proxy ------------------------------------------------------------------------------------------------


def test_a_proxy_from_the_environment_carries_the_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set the requests go to the proxy, absolute-form, through the urllib3 pool."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ScriptedServer(created) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        pipeline = write(tmp_path, "http://sink.invalid/items")
        report = apply(pipeline, state=str(tmp_path / "state.db"))
        sync = report.syncs["items"]
        assert (sync.status, sync.counts["creates"]) == ("ok", 20), sync.message
        assert {r.path for r in proxy.requests} == {"http://sink.invalid/items"}


def test_an_unreachable_endpoint_stops_the_run_with_its_address(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    report = apply(write(tmp_path, f"http://127.0.0.1:{free}/items"), state=str(tmp_path / "state.db"))
    sync = report.syncs["items"]
    assert (sync.status, report.exit_code) == ("failed", 3)
    assert f"cannot reach http://127.0.0.1:{free} after 2 attempts" in (sync.message or ""), sync.message


def test_an_oversized_answer_is_refused_before_it_fills_the_memory() -> None:
    from engine.adapters.http_client import MAX_ANSWER_BYTES

    announced = f"HTTP/1.1 201 Created\r\nContent-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n{{".encode()
    with pytest.raises(Dropped, match="announces"):
        parse_answer(announced, False)
    endless = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n" + b"ffff\r\n"
               + b"x" * (MAX_ANSWER_BYTES + 70000))
    with pytest.raises(Dropped, match="over 16 MiB"):
        parse_answer(endless, False)
    small = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
    parsed = parse_answer(small, False)
    assert parsed is not None and parsed[0].status == 201 and parsed[0].data == b"{}"
