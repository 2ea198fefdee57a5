"""The Aljex live sync receiver: form-encoded POSTs, one record each, behind HTTP basic auth.

Each POST carries ``web_sync_table_name`` (the route: which sync), ``web_sync_action`` (create,
update or delete) and one parameter per field. The answer is 200 only after the engine wrote the
record and its state; every refusal is a 4xx that changes nothing: 403 an address outside
``allow_ips``, 401 wrong or missing credentials (compared in constant time), 404 another path or an
unknown table, 405 a method other than POST, 411 no Content-Length, 413 a body over
``max_body_bytes``, 415 another content type or charset, 400 a body that is not UTF-8 form
encoding, a repeated parameter, or a missing or unknown action. 422 means the record could not be
mapped or the destination rejected it (it is dead-lettered), 502 that the destination failed.

On stop (SIGTERM) the server stops accepting, closes idle keep-alive connections, lets the
requests in flight finish and answers them, then closes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from engine.errors import ConfigError, ConnectError, RunFailed
from engine.interfaces import ACTIONS, Delivery, PushEvent
from engine.registry import REGISTRY
from engine.typed_config import option, secret

log = logging.getLogger("syncengine").getChild("aljex_live")

FORM = "application/x-www-form-urlencoded"
MAX_FIELDS = 2000


@dataclass(frozen=True)
class AljexLiveConfig:
    """Receive Aljex live-sync posts over HTTP."""

    username: str = option("User name Aljex sends with HTTP basic auth.", examples=["aljex"])
    password: str | None = secret("Password Aljex sends with HTTP basic auth.",
                                  examples=["{{ env.ALJEX_LIVE_PASSWORD }}"])
    allow_ips: list[str] = option("Addresses or networks (CIDR) allowed to post; empty allows every address. "
                                  "Aljex can say which address its posts come from.", [],
                                  examples=[["203.0.113.7", "198.51.100.0/24"]])
    max_body_bytes: int = option("Largest request body accepted, in bytes (larger posts get 413).", 1048576,
                                 minimum=1)
    path: str = option("URL path that receives the posts; other paths get 404.", "/", pattern="^/",
                       examples=["/", "/aljex/live"])
    table_param: str = option("Parameter that names the table.", "web_sync_table_name")
    action_param: str = option("Parameter that names the action (create, update or delete).", "web_sync_action")
    idle_timeout: float = option("Seconds a silent connection is kept open.", 30.0, exclusiveMinimum=0)


@dataclass(frozen=True)
class AljexLiveOptions:
    """Which posts a sync receives."""

    table: str = option("The `web_sync_table_name` whose posts this sync receives.", examples=["employees"])


class _Server(ThreadingHTTPServer):
    """Tracks connections so a stop closes the idle ones and waits for those mid-request."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], receiver: AljexLiveReceiver, family: int) -> None:
        self.address_family = family
        self.receiver = receiver
        self.deliver: Callable[[PushEvent], Delivery] | None = None
        self.stopping = False
        self.connections: dict[socket.socket, bool] = {}
        self.guard = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, busy: bool | None) -> None:
        """Note a connection as busy (a request is being read or answered), idle, or gone (``None``)."""
        with self.guard:
            if busy is None:
                self.connections.pop(conn, None)
            else:
                self.connections[conn] = busy

    def begin_stop(self) -> None:
        """Refuse further requests and wake the connections that wait for one."""
        with self.guard:
            self.stopping = True
            for conn, busy in self.connections.items():
                if not busy:
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # the peer closed it already; its handler is ending anyway

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a handler failure instead of printing a traceback to stderr."""
        log.exception("request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the body waits for the peer's
    # delayed ACK (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server_version = "syncengine"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # A silent or stalled connection would hold its thread, and a stop, for ever.
        self.connection.settimeout(self.server.receiver.config.idle_timeout)

    def handle_one_request(self) -> None:
        self.server.track(self.connection, False)
        super().handle_one_request()
        if self.server.stopping:
            self.close_connection = True

    def parse_request(self) -> bool:
        self.server.track(self.connection, True)
        return super().parse_request()

    def finish(self) -> None:
        self.server.track(self.connection, None)
        super().finish()

    def handle_expect_100(self) -> bool:
        """Invite the body only from an allowed address with the right credentials."""
        receiver = self.server.receiver
        self.body_read = False
        if not receiver.allowed(self.client_address[0]):
            self.reply(403, "this address may not post here", {})
            return False
        if not receiver.authorized(self.headers.get("Authorization")):
            self.reply(401, "wrong or missing credentials",
                       {"WWW-Authenticate": 'Basic realm="syncengine", charset="UTF-8"'})
            return False
        return super().handle_expect_100()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def do_POST(self) -> None:
        self.body_read = False
        status, message = self.receive()
        headers = {"WWW-Authenticate": 'Basic realm="syncengine", charset="UTF-8"'} if status == 401 else {}
        self.reply(status, message, headers)

    def refuse_method(self) -> None:
        self.body_read = False
        self.reply(405, "only POST is accepted", {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = refuse_method

    def reply(self, status: int, message: str, headers: dict[str, str]) -> None:
        body = (message + "\n").encode("utf-8")
        if not self.body_read:
            # The unread body would be taken for the next request on this connection.
            self.close_connection = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def receive(self) -> tuple[int, str]:
        """Check, read and decode one post, and hand it to the engine: (status, message)."""
        receiver = self.server.receiver
        config = receiver.config
        if not receiver.allowed(self.client_address[0]):
            return 403, "this address may not post here"
        if not receiver.authorized(self.headers.get("Authorization")):
            return 401, "wrong or missing credentials"
        if urlsplit(self.path).path != config.path:
            return 404, f"posts go to {config.path}"
        kind, _, params = (self.headers.get("Content-Type") or "").partition(";")
        if kind.strip().lower() != FORM:
            return 415, f"expected Content-Type {FORM}"
        charset = next((v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
                        if k.strip().lower() == "charset"), "utf-8")
        if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
            return 415, f"charset {charset} is not accepted; send UTF-8"
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
            return 411, "send the body with a Content-Length"
        lengths = self.headers.get_all("Content-Length") or []
        # Exactly one, plain digits: int() would take "+64", " 64" or "6_4", and a second header
        # another server might read differently is how requests get smuggled past a proxy.
        if len(lengths) != 1 or not re.fullmatch(r"[0-9]{1,12}", lengths[0]):
            return 400, "Content-Length must be one plain number"
        length = int(lengths[0])
        if length > config.max_body_bytes:
            return 413, f"the body is over {config.max_body_bytes} bytes"
        body = self.rfile.read(length)
        if len(body) < length:
            return 400, "the body ended early"
        self.body_read = True
        return self.decode_and_deliver(body)

    def decode_and_deliver(self, body: bytes) -> tuple[int, str]:
        config = self.server.receiver.config
        try:
            params = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
                              encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
        except UnicodeDecodeError:
            return 400, "the body is not UTF-8 text"
        except ValueError as exc:
            return 400, f"the body is not form-encoded: {exc}"
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            return 400, f"parameter '{repeated[0]}' appears more than once"
        table = params.get(config.table_param, [""])[0]
        action = params.get(config.action_param, [""])[0].strip().lower()
        if not table:
            return 400, f"missing {config.table_param}"
        if not action:
            return 400, f"missing {config.action_param}"
        if action not in ACTIONS:
            return 400, f"unknown {config.action_param} '{action[:40]}'; expected create, update or delete"
        record = {name: values[0] for name, values in params.items()
                  if name not in (config.table_param, config.action_param)}
        deliver = self.server.deliver
        assert deliver is not None
        try:
            delivery = deliver(PushEvent(table, action, record))
        except Exception:  # noqa: BLE001 - the sender is told and retries; the state did not advance
            log.exception("delivering a %s for %s failed", action, table)
            return 500, "the record could not be stored; send it again"
        return delivery.status, delivery.message


@REGISTRY.receiver("aljex_live", config=AljexLiveConfig, options=AljexLiveOptions)
class AljexLiveReceiver:
    """Aljex live sync: form-encoded HTTP posts, one record each, routed by table name."""

    def __init__(self, config: AljexLiveConfig, base_dir: Path) -> None:
        if not config.username or not config.password:
            raise ConfigError("aljex_live needs a username and a password (from the environment)")
        self.config = config
        self._user = config.username.encode("utf-8")
        self._password = config.password.encode("utf-8")
        try:
            self.networks = [ipaddress.ip_network(a, strict=False) for a in config.allow_ips]
        except ValueError as exc:
            raise ConfigError(f"aljex_live allow_ips: {exc}") from exc
        self.server: _Server | None = None

    def allowed(self, address: str) -> bool:
        """Whether ``address`` may post (always, without an allow-list)."""
        if not self.networks:
            return True
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def authorized(self, header: str | None) -> bool:
        """Check an ``Authorization`` header; user and password are both compared in constant time."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, _, password = decoded.partition(b":")
        # `&`, not `and`: both comparisons always run.
        return hmac.compare_digest(user, self._user) & hmac.compare_digest(password, self._password)

    def open_stream(self, options: AljexLiveOptions, ctx: Any) -> None:
        """A receiver cannot be pulled: ``apply`` reaches this for a live sync, and is told so."""
        raise RunFailed(f"sync '{ctx.sync}' is fed by Aljex live posts; run it with `syncengine serve`")

    def route(self, options: AljexLiveOptions) -> str:
        """The table name a sync receives."""
        return options.table

    def bind(self, host: str, port: int) -> str:
        """Open the listening socket; returns the URL to give Aljex."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.server = _Server((host, port), self, family)
        except OSError as exc:
            raise ConnectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = self.server.server_address[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return f"http://{shown}:{bound}{self.config.path}"

    def serve(self, deliver: Callable[[PushEvent], Delivery], stop: threading.Event) -> None:
        """Answer posts until ``stop`` is set, then finish the requests in flight and close."""
        if self.server is None:
            self.bind("127.0.0.1", 0)
        server = self.server
        assert server is not None
        server.deliver = deliver
        server.timeout = 0.2
        try:
            while not stop.is_set():
                server.handle_request()
        finally:
            server.begin_stop()
            server.server_close()  # closes the listener, then joins the request threads
            self.server = None

    def close(self) -> None:
        """Close a socket that was bound but never served."""
        if self.server is not None:
            self.server.server_close()
            self.server = None
