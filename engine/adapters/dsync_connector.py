"""The Dsync connector API as a receiver: a Dsync hub pushes entities into any pipeline.

A Dsync hub speaks to a *connector* (ground truth: the aglio page ``004_4d4e63ead88d73a8``): it reads
the connector's data layout, then creates, updates and deletes entities one request at a time, sends
process notifications, and reads every record back for a mass synchronisation. This receiver is that
connector. Each sync that reads from it names one entity (``source: {name: hub, entity: product}``);
the entity name is the route, and the sync's mapping and destination do the rest, as for any push.

Configuration::

    sources:
      hub:
        type: dsync_connector
        auth_token: "{{ env.DSYNC_AUTH_TOKEN }}"      # a secret; required
        entity_tokens: {product: "{{ env.DSYNC_PRODUCT_TOKEN }}"}   # optional, a secret: see below
        per_page: 100                                 # mass sync page size
    syncs:
      product:
        source:
          name: hub
          entity: product                             # required: the engine does not tell route() the sync
          fields: [{name: inventory.qty, type: number}]   # optional layout declarations

``entity`` has no default: ``route(options)`` is the engine's one question about a sync's route and is
not told the sync's name. Entity tokens given by hand are config, not sync options, because options
are not rendered (``{{ env.X }}`` would stay literal) and a token written in the pipeline is a secret
in the file.

Every answer is the seed's envelope ``{"status", "message", "detail", "data"}`` as JSON, ``message``
being the seed's text for the status (the HTTP reason phrase where the seed has none; an update's 200
says ``Created``, as the seed's does). ``detail`` is ``{}`` on success and for 401 and an unexpected
500 (the seed's bodies), and otherwise ``{"message": ...}`` with at most one locator: ``treekey``
(``product.inventory.qty``), ``header``, ``query`` or ``field`` (a key of a body that is not an entity:
``job_id``, ``process_id``).

Routes (repeated slashes collapse and a trailing slash is ignored: the seed's own URIs read
``//datalayout``). Every one needs ``Auth-Token``, compared in constant time; the checks run in this
order, and those that need only the request head run as soon as it has arrived, before any body is read:

1. 401 a wrong or missing ``Auth-Token`` (before anything else, so routes are not revealed);
2. 404 an unknown path or entity; 405 another method (with ``Allow``);
3. 401 a wrong ``Entity-Token``: required on entity writes and on the mass-sync routes (where it picks
   the entity); on ``set_job`` it is optional (the seed sends none) but checked when sent;
4. 400 a missing ``Process-Id`` on an entity write (the seed sends it with every write; it ties the write
   to the hub's process and is logged), a missing or non-UTF-8 ``Entity-Id`` on PUT or DELETE;
5. 411 a chunked body; 400 a ``Content-Length`` that is not one plain number; 413 a body over
   ``max_body_bytes`` (it is not read). ``Content-Type`` is not checked; a body must be UTF-8 JSON.

``GET /datalayout``
    ``data.data_layout``: one entity per sync, with ``entity_name``, ``treekey`` (the name),
    ``endpoint_url`` (``/entity/<name>``, a path: the hub resolves it on the URL it was given),
    ``entity_token`` and ``fields``: the source fields the sync's mapping reads, dotted names becoming
    ``type: object`` fields with nested ``fields``. A leaf is ``type: text`` unless the sync's
    ``fields`` option declares otherwise; the key field comes first, with ``primary_key: true`` and
    ``required: true``, then the fields the mapping reads (sorted), then declared ones it does not read.
    Every field has ``treekey``, ``name`` (the last part of the treekey), ``description`` (the declared
    one, else empty), ``required``, ``multiple`` and ``type``. The key field is the one declared
    ``primary_key``, else the one source field the sync's key copies (``key: sku`` from ``{{ record.sku
    }}``); a key of several fields, a nested one or a template without a declaration is refused at start.
``POST /entity/<name>``
    A create: the body (a JSON object; NaN, Infinity and trailing commas are refused) must hold the key
    field as text or a whole number (400 naming its treekey otherwise). It is delivered as
    ``PushEvent(entity, "create", body, strict=True)``. 201 with ``data: {<key field>: <key>}``.
``PUT /entity/<name>`` with ``Entity-Id``
    An update of that record. A body without the key field (or with it null) gets it from
    ``Entity-Id``; a body whose key differs is refused (400). The body is the WHOLE record as the
    mapping sees it: the engine maps what arrives and does not merge it with what it had, so a mapping
    that reads a field the hub leaves out of a partial update fails that record (use ``default`` in
    the template for fields a hub may omit). 200, message ``Created`` (the seed's), ``data: {}``.
``DELETE /entity/<name>`` with ``Entity-Id``
    A delete of the record ``{<key field>: Entity-Id}``; the body is not read as JSON (the seed sends
    ``{}``). 200 ``data: {}``. Deletes apply in ``mode: mirror`` (in ``upsert`` they are skipped, 200).
``POST /notification``
    The seed's document: a JSON object whose ``process_id`` (or the ``Process-Id`` header) is required,
    the two agreeing when both are sent, ``data`` an object and ``data.notifications`` a list of objects
    when present. It is logged and kept in memory (:attr:`DsyncConnectorReceiver.notifications`, the
    last :data:`KEEP`); 200.
``POST /entity/<name>/set_job``
    ``{"job_id": "..."}``. The seed's own example, ``{"job_id" : "a123456",}``, has a trailing comma, so on
    this route only a comma before ``}`` or ``]`` is dropped before parsing. ``job_id`` must be non-empty
    text. Logged and kept (:attr:`DsyncConnectorReceiver.jobs`); 200.
``GET /api/sync/total`` and ``GET /api/sync/items/?page=N``
    The mass sync of the entity whose ``Entity-Token`` is sent: ``data: {total, per_page}``, and
    ``data: {items: [...]}`` with headers ``Total`` and ``Per-Page``. ``page`` is 1-based, 1 when absent,
    400 when not a whole number from 1 (at most nine digits); a page past the end has no items. Items are
    the destination's records as stored (the mapped shape; objects written as JSON come back as
    objects), read with the destination's ``count`` and ``rows`` (offset paging in the destination's
    order). A destination that cannot be read back answers 501.

Entity writes are answered only after ``deliver`` returned, when the write and the state are durable.
The engine's answer maps to the seed's statuses: 2xx as above (a record the mapping's filter drops is
a success too: the connector took it); 409 a create of a key that exists; 404 an update or delete of a
key that does not; 422 (the mapping or the destination refused the record; it is dead-lettered) is a
400. The engine's answer carries only a text (``key 'p9', field 'inventory.qty' (pipeline.yml:27): 'lots'
is not a decimal number``): when it names a field that is a source field of the entity (the mapping's
output field has the same dotted name), ``detail`` is ``{"treekey": "product.inventory.qty", "message":
"'lots' is not a decimal number"}``; another field is named in the message; the key and the pipeline
file's location are not sent to the hub (the log and the dead letter keep them). 5xx is 500 with the
engine's (redacted) message. An exception in delivery is the seed's bare 500: the state did not advance,
so the hub may send the write again.

Entity tokens: an entity's token is ``entity_tokens[<name>]`` when configured, else derived:
``HMAC-SHA256(key=auth_token, message="syncengine dsync_connector entity token\\0" + name)`` in hex. It is
stable across restarts, differs per entity, and cannot be computed without the Auth-Token; rotating the
Auth-Token rotates every derived token. Tokens must differ between entities (mass sync picks the entity
by its token). No token is ever logged.

Reads and writes: the mass-sync reads and this receiver's deliveries hold one lock, so a page never
sees a write of this receiver half done and ``Total`` and the items of a page agree; the engine
serializes deliveries anyway, so this costs no throughput, only a write waits for a page being read.

The HTTP server is the one the receivers share (``engine.adapters.http_receiver``, the Aljex live receiver's
too): waitress, a fixed pool of ``threads``, at most ``max_connections`` open, head checks before the body,
idle and whole-request timeouts, and on stop (SIGTERM) the requests in flight are answered before it closes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, NamedTuple, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

from engine.adapters.http_receiver import Rendered, WaitressReceiver, WSGIApp, request_headers, server_option
from engine.errors import ConfigError, RunFailed
from engine.interfaces import CREATE, DELETE, UPDATE, Delivery, PushEvent, RouteInfo, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import build, option, schema_of, secret

log = logging.getLogger("syncengine").getChild("dsync_connector")

KEEP = 1000
"""Notifications and job calls kept in memory (the newest), for an embedding program to look at."""
TOKEN_CONTEXT = "syncengine dsync_connector entity token\x00"
"""What a derived entity token is the HMAC of, before the entity name: tokens of other uses never collide."""
MESSAGES = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 409: "Conflict",
            500: "Internal Server Error"}
"""The seed's texts; other statuses take the HTTP reason phrase."""
FIELD_TYPES = ("text", "number", "integer", "boolean", "object")
_ENTITY_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FIXED_ROUTES = {"/datalayout": "datalayout", "/notification": "notification", "/api/sync/total": "total",
                 "/api/sync/items": "items"}
_METHODS = {"datalayout": ("GET",), "total": ("GET",), "items": ("GET",), "notification": ("POST",),
            "set_job": ("POST",), "entity": ("POST", "PUT", "DELETE")}
_ACTIONS = {"POST": CREATE, "PUT": UPDATE, "DELETE": DELETE}
# The field a Delivery's message names (RecordError.describe: "key 'K', field 'F' (file:line): ...").
_FIELD_IN_MESSAGE = re.compile(r"(?:^|, )field '([A-Za-z0-9_.\[\]]+)'(?: \([^()]*\))?: ")


@dataclass(frozen=True)
class DsyncConnectorConfig:
    """Receive a Dsync hub's entity pushes (the Dsync connector API)."""

    auth_token: str | None = secret("The Auth-Token the hub sends with every request; derived entity tokens are "
                                    "keyed with it.", examples=["{{ env.DSYNC_AUTH_TOKEN }}"])
    entity_tokens: dict[str, str] | None = secret(
        "Entity-Token per entity name, for a hub that already has tokens; an entity not listed gets one derived "
        "from auth_token (HMAC-SHA256, hex), which GET /datalayout shows the hub.",
        examples=[{"product": "{{ env.DSYNC_PRODUCT_TOKEN }}"}])
    per_page: int = option("Records per page of the mass sync (/api/sync/items).", 100, minimum=1, maximum=10000)
    max_body_bytes: int = server_option("max_body_bytes")
    idle_timeout: float = server_option("idle_timeout")
    request_timeout: float = server_option("request_timeout")
    threads: int = server_option("threads")
    max_connections: int = server_option("max_connections")
    backlog: int = server_option("backlog")


@dataclass(frozen=True)
class DsyncField:
    """One field of an entity's layout as declared; undeclared fields the mapping reads are text."""

    name: str = option("The source field, dotted for one inside an object.", examples=["inventory.qty"],
                       pattern=_FIELD_NAME.pattern)
    type: Literal["text", "number", "integer", "boolean", "object"] = option("Its type in the layout.", "text")
    required: bool = option("Whether the layout marks it required (the key field always is).", False)
    multiple: bool = option("Whether it holds a list of values.", False)
    description: str | None = option("Its description in the layout.", None)
    primary_key: bool = option("It is the entity's key: Entity-Id fills it, and a create is answered with it. "
                               "Needed when the sync's key is not a plain copy of one top-level field.", False)


@dataclass(frozen=True)
class DsyncConnectorOptions:
    """Which entity a sync receives, and how its layout reads."""

    entity: str = option("The entity name: the hub writes to /entity/<entity>.", examples=["product"],
                         pattern=_ENTITY_NAME)
    fields: list[dict[str, Any]] = option(
        "Declared layout fields (type, required, multiple, description, primary_key), merged by name over the "
        "fields the mapping reads; a declared name the mapping does not read is added.", [],
        items=schema_of(DsyncField), examples=[[{"name": "inventory.qty", "type": "number"}]])


class _Reply(NamedTuple):
    """One answer: the HTTP status, the envelope document and extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def envelope(status: int, data: Mapping[str, Any] | None = None, detail: Mapping[str, Any] | None = None,
             message: str | None = None) -> dict[str, Any]:
    """The seed's answer document; ``message`` defaults to the seed's text for ``status``."""
    text = message if message is not None else MESSAGES.get(status) or HTTPStatus(status).phrase
    return {"status": status, "message": text, "detail": dict(detail or {}), "data": dict(data or {})}


def _reply(status: int, data: Mapping[str, Any] | None = None, detail: Mapping[str, Any] | None = None, *,
           message: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, envelope(status, data, detail, message), headers)


def _problem(status: int, message: str, **locator: str) -> _Reply:
    """A refusal whose detail says what was wrong, and where (``treekey``, ``header``, ``query`` or ``field``)."""
    return _reply(status, detail={**locator, "message": message})


UNAUTHORIZED = _reply(401)
"""The seed's 401: no detail, so a wrong token says nothing about what else would have been accepted."""


def _encode(reply: _Reply) -> bytes:
    try:
        text = json.dumps(reply.body, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # a NaN or infinity read back from the destination: JSON has no such number
        text = json.dumps(envelope(500, detail={"message": "a value could not be sent as JSON"}))
    return text.encode("utf-8")


@dataclass
class _Entity:
    """One entity the receiver serves: its route, token, key field, layout and read-back."""

    name: str
    token: bytes
    declared: tuple[DsyncField, ...]
    sync: str = ""
    fields: tuple[str, ...] = ()
    key: str | None = None
    count: Callable[[], int] | None = None
    rows: Callable[[int, int], list[dict[str, Any]]] | None = None
    layout: dict[str, Any] = field(default_factory=dict)

    def treekey(self, path: str) -> str:
        """The treekey of a source field (``product.inventory.qty``)."""
        return f"{self.name}.{path}"


@dataclass(frozen=True)
class _Call:
    """A request whose head passed the checks: what it asks for, and the headers it will need."""

    kind: str
    method: str
    entity: _Entity | None
    query: str
    length: int
    process_id: str | None = None
    entity_id: str | None = None


@dataclass(frozen=True)
class Notification:
    """A process notification as it arrived (kept in :attr:`DsyncConnectorReceiver.notifications`)."""

    process_id: str
    document: dict[str, Any]
    at: float


@dataclass(frozen=True)
class Job:
    """A ``set_job`` call (kept in :attr:`DsyncConnectorReceiver.jobs`)."""

    entity: str
    job_id: str
    process_id: str | None
    at: float


def derive_token(auth_token: str, entity: str) -> str:
    """The default Entity-Token of ``entity``: an HMAC of its name keyed with the Auth-Token (see the module doc)."""
    message = (TOKEN_CONTEXT + entity).encode("utf-8")
    return hmac.new(auth_token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _header_bytes(value: str) -> bytes:
    """A header value as the bytes that were sent (WSGI and waitress hand them over as Latin-1 text)."""
    return value.encode("latin-1", errors="replace")


def _split_target(target: str) -> tuple[str, str]:
    """(normalised path, query) of a request target; ``//datalayout`` is a path here, not a host."""
    if not target.startswith("/"):
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    path, _, query = target.partition("#")[0].partition("?")
    path = unquote(path, errors="replace")
    return "/" + re.sub(r"/{2,}", "/", path).strip("/"), query


def _drop_trailing_commas(text: str) -> str:
    """``text`` without the commas that only precede ``}`` or ``]``; string contents are left alone."""
    out: list[str] = []
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char == "," and text[i + 1:].lstrip()[:1] in ("}", "]"):
            continue
        out.append(char)
    return "".join(out)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_object(body: bytes, *, lenient: bool = False) -> dict[str, Any] | _Reply:
    """The body as a JSON object, or the 400 saying why not; ``lenient`` drops trailing commas first."""
    try:
        text = body.decode("utf-8")
        if lenient:
            text = _drop_trailing_commas(text)
        doc = json.loads(text, parse_constant=_reject_constant) if text.strip() else None
    except UnicodeDecodeError:
        return _problem(400, "the body is not UTF-8")
    except RecursionError:
        return _problem(400, "the body is nested too deeply")
    except ValueError as exc:
        return _problem(400, f"the body is not JSON: {exc}")
    if not isinstance(doc, dict):
        return _problem(400, "the body must be a JSON object")
    return doc


def _key_text(value: Any) -> str | None:
    """A key as text: text as it is, a whole number in digits; anything else has no key text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None  # a float key would not survive the round trip through the mapping's key text


def _declared(options: DsyncConnectorOptions) -> tuple[DsyncField, ...]:
    """The options' declared fields as :class:`DsyncField` (the pipeline loader leaves them as checked dicts)."""
    declared: list[DsyncField] = []
    for item in options.fields:
        if isinstance(item, DsyncField):
            declared.append(item)
            continue
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ConfigError(f"dsync_connector entity {options.entity}: each of `fields` needs a name")
        one = build(DsyncField, dict(item))
        if not _FIELD_NAME.match(one.name) or one.type not in FIELD_TYPES:
            raise ConfigError(f"dsync_connector entity {options.entity}: field {one.name!r} of type {one.type!r} "
                              f"is not a dotted field name with one of the types {', '.join(FIELD_TYPES)}")
        declared.append(one)
    names = [d.name for d in declared]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"dsync_connector entity {options.entity}: fields declared twice: {', '.join(repeated)}")
    return tuple(declared)


def _layout_fields(entity: _Entity) -> list[dict[str, Any]]:
    """The layout's ``fields``: the key first, then what the mapping reads, then the other declared fields."""
    by_name = {d.name: d for d in entity.declared}
    order = [*([entity.key] if entity.key else []), *entity.fields, *by_name]
    tree: dict[str, Any] = {}  # name -> subtree (a dict) for an object, None for a leaf; in layout order
    for path in dict.fromkeys(order):
        parts = path.split(".")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[:depth + 1])
            child = node.get(part)
            if child is None:
                if part in node or (prefix in by_name and by_name[prefix].type != "object"):
                    raise ConfigError(f"dsync_connector entity {entity.name}: field {prefix} holds fields, so it "
                                      "must be of type object")
                child = node[part] = {}
            node = child
        last, decl = parts[-1], by_name.get(path)
        if last not in node:
            node[last] = {} if decl is not None and decl.type == "object" else None
        elif isinstance(node[last], dict) and decl is not None and decl.type != "object":
            raise ConfigError(f"dsync_connector entity {entity.name}: field {path} holds fields, so it must be of "
                              "type object")

    def render(subtree: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
        out = []
        for name, children in subtree.items():
            path = f"{prefix}{name}"
            decl = by_name.get(path)
            is_key = path == entity.key
            doc: dict[str, Any] = {
                "treekey": entity.treekey(path), "name": name,
                "description": decl.description if decl is not None and decl.description else "",
                "required": bool(is_key or (decl is not None and decl.required)),
                "multiple": bool(decl is not None and decl.multiple),
                "type": "object" if children is not None else (decl.type if decl is not None else "text"),
            }
            if is_key:
                doc["primary_key"] = True
            if children is not None:
                doc["fields"] = render(children, f"{path}.")
            out.append(doc)
        return out

    return render(tree, "")


@REGISTRY.receiver("dsync_connector", config=DsyncConnectorConfig, options=DsyncConnectorOptions)
class DsyncConnectorReceiver(WaitressReceiver[DsyncConnectorConfig, _Reply]):
    """Dsync connector API: a Dsync hub creates, updates and deletes entities, and reads them back."""

    receiver_name = "dsync_connector"

    def __init__(self, config: DsyncConnectorConfig, base_dir: Path) -> None:
        if not config.auth_token:
            raise ConfigError("dsync_connector needs an auth_token (from the environment)")
        super().__init__(config)
        self._auth = config.auth_token.encode("utf-8")
        self.entities: dict[str, _Entity] = {}
        self.notifications: deque[Notification] = deque(maxlen=KEEP)
        self.jobs: deque[Job] = deque(maxlen=KEEP)
        self.lock = threading.Lock()
        """Held by each delivery and each mass-sync read (see the module doc)."""

    # --- the engine's side ---------------------------------------------------------------------

    def route(self, options: DsyncConnectorOptions) -> str:
        """The entity a sync receives; its token and declared fields are kept for the layout."""
        name = options.entity
        if not re.match(_ENTITY_NAME, name):
            raise ConfigError(f"dsync_connector: entity name {name!r} is not a plain name")
        tokens = self.config.entity_tokens or {}
        token = tokens.get(name) or derive_token(self.config.auth_token or "", name)
        entity = _Entity(name, token.encode("utf-8"), _declared(options))
        keys = [d.name for d in entity.declared if d.primary_key]
        if len(keys) > 1 or any("." in k for k in keys):
            raise ConfigError(f"dsync_connector entity {name}: declare one top-level primary_key field, "
                              f"not {', '.join(keys)}")
        entity.key = keys[0] if keys else None
        self.entities[name] = entity
        entity.layout = self._layout(entity)
        return name

    def describe_routes(self, routes: Sequence[RouteInfo]) -> None:
        """Learn each entity's source fields, key and read-back; refuse what the connector API cannot serve."""
        for info in routes:
            entity = self.entities.get(info.route)
            if entity is None:
                continue
            entity.sync, entity.fields, entity.count, entity.rows = info.sync, info.fields, info.count, info.rows
            if entity.key is None:
                if len(info.key) != 1 or "." in info.key[0]:
                    shown = ", ".join(info.key) or "a template"
                    raise ConfigError(
                        f"sync '{info.sync}': the Dsync connector addresses a record by one top-level field (the "
                        f"Entity-Id), but the sync's key is {shown}; declare that field in the source's fields "
                        "with primary_key: true")
                entity.key = info.key[0]
            entity.layout = self._layout(entity)
        unknown = sorted(set(self.config.entity_tokens or {}) - set(self.entities))
        if unknown:
            raise ConfigError(f"dsync_connector entity_tokens names {', '.join(unknown)}, which no sync receives; "
                              f"the entities are: {', '.join(self.entities)}")
        tokens = [e.token for e in self.entities.values()]
        if len(set(tokens)) != len(tokens):
            raise ConfigError("dsync_connector: two entities have the same entity token (the mass sync picks the "
                              "entity by its token)")

    def _layout(self, entity: _Entity) -> dict[str, Any]:
        return {"entity_name": entity.name, "treekey": entity.name, "endpoint_url": f"/entity/{entity.name}",
                "entity_token": entity.token.decode("utf-8"), "fields": _layout_fields(entity)}

    def open_stream(self, options: DsyncConnectorOptions, ctx: StreamContext) -> NoReturn:
        """A receiver cannot be pulled: ``apply`` reaches this for a sync a hub pushes to, and is told so."""
        raise RunFailed(f"sync '{ctx.sync}' is fed by a Dsync hub; run it with `syncengine serve`")

    # --- checks on the request head --------------------------------------------------------------

    def screen(self, address: str, method: str, target: str, headers: Mapping[str, str], *,
               chunked: bool) -> _Reply | None:
        """The refusal for a request head (header names as ``AUTH_TOKEN``), or ``None`` to read its body."""
        result = self.examine(method, target, headers, chunked=chunked)
        return result if isinstance(result, _Reply) else None

    def examine(self, method: str, target: str, headers: Mapping[str, str], *, chunked: bool) -> _Call | _Reply:
        """Check a request head in the documented order: what it asks for, or the answer refusing it."""
        sent = headers.get("AUTH_TOKEN")
        if sent is None or not hmac.compare_digest(_header_bytes(sent.strip()), self._auth):
            return UNAUTHORIZED
        path, query = _split_target(target)
        kind = _FIXED_ROUTES.get(path, "")
        entity: _Entity | None = None
        if not kind:
            parts = path.split("/")
            if len(parts) in (3, 4) and parts[1] == "entity" and (len(parts) == 3 or parts[3] == "set_job"):
                kind = "entity" if len(parts) == 3 else "set_job"
                entity = self.entities.get(parts[2])
                if entity is None:
                    return _problem(404, f"no entity '{parts[2][:100]}'; this connector serves: "
                                         f"{', '.join(self.entities)}")
            else:
                return _problem(404, f"no route {path[:100]}")
        allowed = _METHODS[kind]
        if method not in allowed:
            return _Reply(405, envelope(405, detail={"message": f"{method[:20]} is not allowed here"}),
                          (("Allow", ", ".join(allowed)),))
        token = headers.get("ENTITY_TOKEN")
        if kind in ("total", "items"):
            entity = self._entity_by_token(token)
            if entity is None:
                return UNAUTHORIZED
        elif entity is not None and (kind == "entity" or token is not None):
            if token is None or not hmac.compare_digest(_header_bytes(token.strip()), entity.token):
                return UNAUTHORIZED
        process_id = (headers.get("PROCESS_ID") or "").strip() or None
        entity_id: str | None = None
        if kind == "entity":
            if process_id is None:
                return _problem(400, "required", header="Process-Id")
            if method != "POST":
                raw = (headers.get("ENTITY_ID") or "").strip()
                if not raw:
                    return _problem(400, "required", header="Entity-Id")
                try:
                    entity_id = _header_bytes(raw).decode("utf-8")
                except UnicodeDecodeError:
                    return _problem(400, "is not UTF-8", header="Entity-Id")
        length = headers.get("CONTENT_LENGTH")
        if chunked or headers.get("TRANSFER_ENCODING"):
            return _problem(411, "send the body with a Content-Length")
        # Exactly one, plain digits: two headers (joined with ", ") or "+64" could be read otherwise by a proxy.
        if length is not None and not re.fullmatch(r"[0-9]{1,12}", length):
            return _problem(400, "Content-Length must be one plain number")
        size = int(length or 0)
        if size > self.config.max_body_bytes:
            return _problem(413, f"the body is over {self.config.max_body_bytes} bytes")
        return _Call(kind, method, entity, query, size, process_id, entity_id)

    def _entity_by_token(self, token: str | None) -> _Entity | None:
        """The entity whose token was sent; every token is compared (in constant time), whichever matches."""
        sent = _header_bytes((token or "").strip())
        found = None
        for entity in self.entities.values():
            if hmac.compare_digest(sent, entity.token) and token:
                found = entity
        return found

    # --- answering -------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application: one request, one JSON envelope."""
        try:
            reply = self.answer(environ)
        except Exception:  # noqa: BLE001 - the seed's bare 500; nothing of the failure reaches the sender
            log.exception("dsync_connector: answering %s %s failed", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO", "")[:100])
            reply = _reply(500)
        return [self.render(reply).start(start_response)]

    def answer(self, environ: dict[str, Any]) -> _Reply:
        """Check (again: the app is safe on its own), read the body, and answer the route."""
        headers = request_headers(environ)
        target = environ.get("REQUEST_URI") or environ["PATH_INFO"]
        call = self.examine(environ["REQUEST_METHOD"], target, headers, chunked=False)
        if isinstance(call, _Reply):
            return call
        body = environ["wsgi.input"].read(call.length) if call.length else b""
        if len(body) < call.length:
            return _problem(400, "the body ended early")
        if call.kind == "datalayout":
            return _reply(200, {"data_layout": [e.layout for e in self.entities.values()]})
        if call.kind == "notification":
            return self.notification(call, body)
        assert call.entity is not None
        if call.kind == "set_job":
            return self.set_job(call, call.entity, body)
        if call.kind in ("total", "items"):
            return self.mass_sync(call, call.entity)
        return self.write(call, call.entity, body)

    def write(self, call: _Call, entity: _Entity, body: bytes) -> _Reply:
        """An entity create, update or delete, answered once the engine made it durable."""
        key = entity.key
        if key is None:
            return _problem(500, "the entity has no key field; the receiver was not told its routes")
        action = _ACTIONS[call.method]
        if action == DELETE:
            record: dict[str, Any] = {key: call.entity_id}
        else:
            doc = _json_object(body)
            if isinstance(doc, _Reply):
                return doc
            record = doc
            sent = record.get(key)
            if action == CREATE:
                if sent is None or sent == "":
                    return _problem(400, "required", treekey=entity.treekey(key))
                if _key_text(sent) is None:
                    return _problem(400, "must be text", treekey=entity.treekey(key))
            elif sent is None:
                record = {**record, key: call.entity_id}
            elif _key_text(sent) != call.entity_id:
                return _problem(400, f"differs from Entity-Id '{call.entity_id}'", treekey=entity.treekey(key))
        if self.deliver is None:
            return _problem(500, "the receiver is not serving yet; send the write again")
        log.debug("%s of %s %r (process %r)", action, entity.name, record.get(key), call.process_id)
        try:
            with self.lock:
                delivery = self.deliver(PushEvent(entity.name, action, record, strict=True))
        except Exception:  # noqa: BLE001 - the hub is told and retries; the state did not advance
            log.exception("dsync_connector: delivering a %s for %s failed", action, entity.name)
            return _reply(500)
        return self.translate(delivery, action, entity, record)

    def translate(self, delivery: Delivery, action: str, entity: _Entity, record: Mapping[str, Any]) -> _Reply:
        """The engine's answer as the seed's status and envelope."""
        status, message = delivery.status, delivery.message
        key = entity.key or ""
        if 200 <= status < 300:
            if action == CREATE:
                return _reply(201, {key: record.get(key)})
            return _reply(200, message="Created" if action == UPDATE else None)  # "Created": the seed's text
        if status == 409:
            return _problem(409, message, treekey=entity.treekey(key))
        if status == 404:
            return _problem(404, message, header="Entity-Id")
        if status == 422:
            found = _FIELD_IN_MESSAGE.search(message)
            if found is None:
                return _problem(400, message)
            # The hub is told what is wrong with which field; not the key it sent, nor the pipeline file's path.
            name, text = found.group(1), message[found.end():]
            if name in entity.fields or name == entity.key or any(d.name == name for d in entity.declared):
                return _problem(400, text, treekey=entity.treekey(name))
            return _problem(400, f"field '{name}': {text}")
        if 400 <= status < 500:
            return _problem(400, message)
        return _problem(500, message)

    def notification(self, call: _Call, body: bytes) -> _Reply:
        """Keep and log a process notification."""
        doc = _json_object(body)
        if isinstance(doc, _Reply):
            return doc
        header_id, body_id = call.process_id, _key_text(doc.get("process_id"))
        if doc.get("process_id") not in (None, "") and body_id is None:
            return _problem(400, "must be text", field="process_id")
        if not header_id and not body_id:
            return _problem(400, "required", header="Process-Id")
        if header_id and body_id and header_id != body_id:
            return _problem(400, f"differs from the Process-Id header '{header_id[:100]}'", field="process_id")
        data = doc.get("data")
        if data is not None and not isinstance(data, dict):
            return _problem(400, "must be an object", field="data")
        notes = (data or {}).get("notifications")
        if notes is not None and (not isinstance(notes, list) or not all(isinstance(n, dict) for n in notes)):
            return _problem(400, "must be a list of objects", field="data.notifications")
        process_id = header_id or body_id or ""
        self.notifications.append(Notification(process_id, doc, time.time()))
        log.info("notification for process %r: status %r, %r; %d item(s)", process_id[:100],
                 str(doc.get("status"))[:20], str(doc.get("message"))[:200], len(notes or ()))
        return _reply(200)

    def set_job(self, call: _Call, entity: _Entity, body: bytes) -> _Reply:
        """Keep and log a job set for an entity (the seed's body has a trailing comma: accepted)."""
        doc = _json_object(body, lenient=True)
        if isinstance(doc, _Reply):
            return doc
        job_id = doc.get("job_id")
        if job_id is None or job_id == "":
            return _problem(400, "required", field="job_id")
        if not isinstance(job_id, str):
            return _problem(400, "must be text", field="job_id")
        self.jobs.append(Job(entity.name, job_id, call.process_id, time.time()))
        log.info("job %r set for %s", job_id[:100], entity.name)
        return _reply(200)

    def mass_sync(self, call: _Call, entity: _Entity) -> _Reply:
        """``/api/sync/total`` or a page of ``/api/sync/items/``, read back from the destination."""
        per_page = self.config.per_page
        count, rows = entity.count, entity.rows
        if count is None or rows is None:
            return _problem(501, f"the destination of sync '{entity.sync or entity.name}' cannot be read back, so "
                                 "there is nothing to serve for a mass sync")
        if call.kind == "total":
            with self.lock:
                total = count()
            return _reply(200, {"total": total, "per_page": per_page})
        pages = parse_qs(call.query, keep_blank_values=True).get("page") or ["1"]
        raw = pages[-1]
        if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:
            return _problem(400, "must be a whole number from 1", query="page")
        with self.lock:
            total = count()
            items = rows((int(raw) - 1) * per_page, per_page)
        return _reply(200, {"items": items}, headers=(("Total", str(total)), ("Per-Page", str(per_page))))

    # --- the server's hooks (engine.adapters.http_receiver) ----------------------------------------

    def application(self) -> WSGIApp:
        """The receiver itself is the WSGI application (:meth:`__call__`)."""
        return self

    def render(self, reply: _Reply) -> Rendered:
        """A reply as JSON, the form of every answer this receiver sends."""
        return Rendered(reply.status, (*reply.headers, ("Content-Type", "application/json")), _encode(reply))

    def waitress_error(self, status: int, text: str) -> _Reply:
        """waitress's refusal in the seed's envelope; a failure is the seed's bare 500."""
        return _reply(500) if status == 500 else _problem(status, text)
