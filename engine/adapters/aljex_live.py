"""The Aljex live sync receiver: form-encoded POSTs, one record each, behind HTTP basic auth.

Each POST carries ``web_sync_table_name`` (the route: which sync), ``web_sync_action`` (create,
update or delete) and one parameter per field. The answer is 200 only after the engine wrote the
record and its state; every refusal is a 4xx that changes nothing: 403 an address outside
``allow_ips``, 401 wrong or missing credentials (compared in constant time), 404 another path or an
unknown table, 405 a method other than POST, 411 no Content-Length, 413 a body over
``max_body_bytes``, 415 another content type or charset, 400 a body that is not UTF-8 form
encoding (a bad percent-escape included), a repeated parameter, or a missing or unknown action.
422 means the record could not be mapped or the destination rejected it (it is dead-lettered),
502 that the destination failed.

The server is waitress, shared with the Dsync connector (``engine.adapters.http_receiver``): one
thread waits on every socket, a fixed pool of ``threads`` answers requests, and at most
``max_connections`` are open (more wait in the listen ``backlog``). Every check that needs only the
request head (address, credentials, method, path, content type and length) runs as soon as the head
has arrived, before any body is read and before an ``Expect: 100-continue`` is answered; a refused
request is answered and its connection closed. A connection silent for ``idle_timeout``, or whose
request is not complete ``request_timeout`` after it began, is closed.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn
from urllib.parse import unquote_to_bytes, urlsplit

from engine.adapters.http_receiver import Rendered, WaitressReceiver, WSGIApp, request_headers, server_option
from engine.errors import ConfigError, RunFailed
from engine.interfaces import ACTIONS, PushEvent, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option, secret

log = logging.getLogger("syncengine").getChild("aljex_live")

FORM = "application/x-www-form-urlencoded"
MAX_FIELDS = 2000
_CHALLENGE = (("WWW-Authenticate", 'Basic realm="syncengine", charset="UTF-8"'),)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class AljexLiveConfig:
    """Receive Aljex live-sync posts over HTTP."""

    username: str = option("User name Aljex sends with HTTP basic auth.", examples=["aljex"])
    password: str | None = secret("Password Aljex sends with HTTP basic auth.",
                                  examples=["{{ env.ALJEX_LIVE_PASSWORD }}"])
    allow_ips: list[str] = option("Addresses or networks (CIDR) allowed to post; empty allows every address. "
                                  "Aljex can say which address its posts come from.", [],
                                  examples=[["203.0.113.7", "198.51.100.0/24"]])
    max_body_bytes: int = server_option("max_body_bytes", "posts")
    path: str = option("URL path that receives the posts; other paths get 404.", "/", pattern="^/",
                       examples=["/", "/aljex/live"])
    table_param: str = option("Parameter that names the table.", "web_sync_table_name")
    action_param: str = option("Parameter that names the action (create, update or delete).", "web_sync_action")
    idle_timeout: float = server_option("idle_timeout")
    request_timeout: float = server_option("request_timeout")
    threads: int = server_option("threads", "posts")
    max_connections: int = server_option("max_connections")
    backlog: int = server_option("backlog")


@dataclass(frozen=True)
class AljexLiveOptions:
    """Which posts a sync receives."""

    table: str = option("The `web_sync_table_name` whose posts this sync receives.", examples=["employees"])


class _Answer(NamedTuple):
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


class _App:
    """The WSGI application: checks (again), reads, decodes and delivers one post."""

    def __init__(self, receiver: AljexLiveReceiver) -> None:
        self.receiver = receiver

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Answer one request with a short plain text."""
        body = self.receiver.render(self.answer(environ)).start(start_response)
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    def answer(self, environ: dict[str, Any]) -> _Answer:
        """Check, read and decode one post, and hand it to the engine."""
        # The head was screened while it arrived; screening again keeps the app safe on its own.
        headers = request_headers(environ)
        refusal = self.receiver.screen(environ["REMOTE_ADDR"], environ["REQUEST_METHOD"],
                                       environ.get("REQUEST_URI") or environ["PATH_INFO"], headers, chunked=False)
        if refusal is not None:
            return refusal
        length = int(headers["CONTENT_LENGTH"])
        body = environ["wsgi.input"].read(length)
        if len(body) < length:
            return _Answer(400, "the body ended early")
        return self.decode_and_deliver(body)

    def decode_and_deliver(self, body: bytes) -> _Answer:
        """Decode a form body into a record and deliver it."""
        config = self.receiver.config
        try:
            params = decode_form(body)
        except UnicodeDecodeError:
            return _Answer(400, "the body is not UTF-8 text")
        except ValueError as exc:
            return _Answer(400, f"the body is not form-encoded: {exc}")
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            return _Answer(400, f"parameter '{repeated[0]}' appears more than once")
        table = params.get(config.table_param, [""])[0]
        action = params.get(config.action_param, [""])[0].strip().lower()
        if not table:
            return _Answer(400, f"missing {config.table_param}")
        if not action:
            return _Answer(400, f"missing {config.action_param}")
        if action not in ACTIONS:
            return _Answer(400, f"unknown {config.action_param} '{action[:40]}'; expected create, update or delete")
        record = {name: values[0] for name, values in params.items()
                  if name not in (config.table_param, config.action_param)}
        deliver = self.receiver.deliver
        if deliver is None:
            return _Answer(503, "the receiver is not serving yet; send the post again")
        try:
            delivery = deliver(PushEvent(table, action, record))
        except Exception:  # noqa: BLE001 - the sender is told and retries; the state did not advance
            log.exception("delivering a %s for %s failed", action, table)
            return _Answer(500, "the record could not be stored; send it again")
        return _Answer(delivery.status, delivery.message)


def decode_form(body: bytes) -> dict[str, list[str]]:
    """Strict form decoding: UTF-8, ``name=value`` pairs joined by ``&``, only valid ``%XX`` escapes."""
    text = body.decode("utf-8")
    fields: dict[str, list[str]] = {}
    if not text:
        return fields
    pairs = text.split("&")
    if len(pairs) > MAX_FIELDS:
        raise ValueError(f"more than {MAX_FIELDS} fields")
    for number, pair in enumerate(pairs, 1):
        name, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"field {number} has no '='")
        # unquote_to_bytes leaves '%ZZ', '%4' and a trailing '%' as they are; here they are errors.
        bad = _BAD_ESCAPE.search(pair)
        if bad is not None:
            raise ValueError(f"field {number} has a bad percent-escape '{pair[bad.start():bad.start() + 3]}'")
        fields.setdefault(_unquote(name), []).append(_unquote(value))
    return fields


def _unquote(text: str) -> str:
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")


@REGISTRY.receiver("aljex_live", config=AljexLiveConfig, options=AljexLiveOptions)
class AljexLiveReceiver(WaitressReceiver[AljexLiveConfig, _Answer]):
    """Aljex live sync: form-encoded HTTP posts, one record each, routed by table name."""

    receiver_name = "aljex_live"

    def __init__(self, config: AljexLiveConfig, base_dir: Path) -> None:
        if not config.username or not config.password:
            raise ConfigError("aljex_live needs a username and a password (from the environment)")
        super().__init__(config)
        self._user = config.username.encode("utf-8")
        self._password = config.password.encode("utf-8")
        try:
            self.networks = [ipaddress.ip_network(a, strict=False) for a in config.allow_ips]
        except ValueError as exc:
            raise ConfigError(f"aljex_live allow_ips: {exc}") from exc
        self.app = _App(self)

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

    def screen(self, address: str, method: str, target: str, headers: Mapping[str, str], *,
               chunked: bool) -> _Answer | None:
        """The refusal for a request head (header names as ``CONTENT_LENGTH``), or ``None`` to read its body."""
        config = self.config
        if not self.allowed(address):
            return _Answer(403, "this address may not post here")
        if not self.authorized(headers.get("AUTHORIZATION")):
            return _Answer(401, "wrong or missing credentials", _CHALLENGE)
        if method != "POST":
            return _Answer(405, "only POST is accepted", (("Allow", "POST"),))
        if urlsplit(target).path != config.path:
            return _Answer(404, f"posts go to {config.path}")
        kind, _, params = (headers.get("CONTENT_TYPE") or "").partition(";")
        if kind.strip().lower() != FORM:
            return _Answer(415, f"expected Content-Type {FORM}")
        charset = next((v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
                        if k.strip().lower() == "charset"), "utf-8")
        if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
            return _Answer(415, f"charset {charset} is not accepted; send UTF-8")
        length = headers.get("CONTENT_LENGTH")
        if chunked or headers.get("TRANSFER_ENCODING") or length is None:
            return _Answer(411, "send the body with a Content-Length")
        # Exactly one, plain digits: int() would take "+64", " 64" or "6_4", and a second header
        # another server might read differently is how requests get smuggled past a proxy (waitress
        # joins repeated headers with ", ", so two of them fail here too).
        if not re.fullmatch(r"[0-9]{1,12}", length):
            return _Answer(400, "Content-Length must be one plain number")
        if int(length) > config.max_body_bytes:
            return _Answer(413, f"the body is over {config.max_body_bytes} bytes")
        return None

    def open_stream(self, options: AljexLiveOptions, ctx: StreamContext) -> NoReturn:
        """A receiver cannot be pulled: ``apply`` reaches this for a live sync, and is told so."""
        raise RunFailed(f"sync '{ctx.sync}' is fed by Aljex live posts; run it with `syncengine serve`")

    def route(self, options: AljexLiveOptions) -> str:
        """The table name a sync receives."""
        return options.table

    # --- the server's hooks (engine.adapters.http_receiver) ----------------------------------------

    def application(self) -> WSGIApp:
        """The WSGI application that reads, decodes and delivers a post."""
        return self.app

    def url_path(self) -> str:
        """The configured ``path``: the URL ``bind`` returns is the one to give Aljex."""
        return self.config.path

    def render(self, answer: _Answer) -> Rendered:
        """An answer as plain text, the form of every answer this receiver sends."""
        body = (answer.message + "\n").encode("utf-8")
        return Rendered(answer.status, (*answer.headers, ("Content-Type", "text/plain; charset=utf-8")), body)

    def waitress_error(self, status: int, text: str) -> _Answer:
        """waitress's refusal in plain text; a failure asks Aljex to send the post again."""
        return _Answer(500, "the server failed; send the post again") if status == 500 else _Answer(status, text)
