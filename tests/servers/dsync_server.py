"""A real HTTP server implementing the Dsync connector API (the "destination" a hub pushes into), for tests.

The ground truth is the Dsync connector API document (an aglio page of 2016). Every answer is the
seed's envelope ``{"status", "message", "detail": {}, "data": {...}}``, with the seed's messages. Where the seed is
silent this server does what an integrator would expect, and every such choice is written below, so that a client
written against this server stays honest against a real connector.

Routes (every one needs ``Auth-Token``; a wrong or missing one is the seed's 401 body, before anything else)::

    GET    /datalayout                 the layout document (the seed's, verbatim, by default)
    POST   {endpoint}                  create; headers Entity-Token, Process-Id      -> 201 {<key name>: key}
    PUT    {endpoint}                  partial update; + Entity-Id                   -> 200 "Created" (seed's text)
    DELETE {endpoint}                  delete; + Entity-Id (body ignored)            -> 200
    POST   {endpoint}/set_job          {"job_id": "..."} (trailing commas accepted)  -> 200
    POST   /notification               the seed's notification document             -> 200
    GET    /api/sync/total             Entity-Token picks the entity      -> 200 {"total", "per_page"}
    GET    /api/sync/items/?page=N     Entity-Token picks the entity      -> 200 {"items": [...]}, Total, Per-Page

``{endpoint}`` is the PATH of the entity's ``endpoint_url`` (``/entity/product``; the seed's ``order`` has the absolute
``http://dsync.connector.example/entity/order``: it is served as given in the layout, and this server answers its
path, ``/entity/order``; the client must cope). Repeated slashes collapse and a trailing slash is ignored, since the
seed's own example URIs read ``http://dsync.connector.example//datalayout``.

Layout (the seed's quirks are kept and understood):

* A field's key in an entity document is the LAST segment of its ``treekey``; ``name`` is only a label. So the
  seed's ``{"name": "Product id", "treekey": "order.product_id"}`` is the body key ``product_id``.
* An item of ``data_layout`` without ``entity_name`` is a field that belongs where its treekey says: the seed's
  top-level ``order.gift_message`` object is a field of ``order``. A stray whose parent cannot be found, a duplicated
  key, an unknown ``type`` (``text``, ``number``, ``integer``, ``boolean``, ``object``), a ``foreign_key`` to an
  unknown entity, a missing or shared ``entity_token``, or two entities on one endpoint path: ValueError at start.
* The primary key is the top-level field marked ``primary_key``; when none is marked (the seed's ``order``), the
  FIRST REQUIRED TEXT FIELD (``order.order_id``). Keys are non-empty text, and always required.
* ``foreign_key: "<entity>"`` on a text field (the seed's ``order.product_id``) holds a key of that entity.

Writes:

* Headers are checked in this order: Auth-Token (401), route (404), method (405, with ``Allow``), Entity-Token,
  which must be the path entity's ``entity_token`` (401, the seed's body), then the request's own problems (400).
  ``Process-Id`` is required on entity writes (400 naming the header; ``require_process_id=False`` lifts it).
  Header values are read as UTF-8 when they are valid UTF-8 (http.server decodes them as Latin-1).
* The body of POST and PUT must be a JSON object (strict JSON: no NaN, no trailing comma). The stored record is the
  document as sent, unknown fields included: UNKNOWN FIELDS ARE KEPT, NOT VALIDATED, since the seed's own create
  example sends twenty fields its layout does not list; ``strict_fields=True`` rejects them instead (400).
* Types: ``text`` a string, ``number`` a finite JSON number, ``integer`` a whole one, ``boolean`` true/false,
  ``object`` a JSON object checked against its sub-fields, ``multiple: true`` a JSON list of such values (not null;
  an empty list is fine). ``null`` is the same as absent. A required field inside an object is required only when
  the object is present. Empty text is valid, except for a primary key.
* A 400's ``detail`` is the first problem, and ``errors`` all of them (the first one included)::

      {"treekey": "product.sku", "message": "required", "errors": [{"treekey": "product.sku", ...}, ...]}

  Each problem has ``message`` and at most one locator: ``treekey`` (a layout field; list items as
  ``order.tags[2]``; unknown fields by the treekey they would have), ``header``, ``query``, or ``field`` (a
  body key of a document that is not an entity: ``job_id``, ``process_id``, ``data.notifications``).
  Messages: ``required``, ``must not be empty``, ``must be text``, ``must be a number``, ``must be an integer``,
  ``must be true or false``, ``must be an object``, ``must be a list (multiple)``, ``is not a field of <entity>``,
  ``no <entity> '<key>'`` (foreign key), ``differs from Entity-Id '<id>'``.
* POST of an existing key: 409 ``{"treekey": "<key treekey>", "message": "<entity> '<key>' exists"}``.
  A foreign key naming a record that does not exist (or is only pending, see 202): 400 naming the field.
* PUT merges the body into the record (objects merged recursively, anything else, lists too, replaced; ``null``
  clears), then validates the result; the foreign keys the body sets are checked. A key in the body must equal
  ``Entity-Id`` (keys cannot be renamed). An unknown ``Entity-Id``: 404 ``{"header": "Entity-Id", "message":
  "no <entity> '<id>'"}`` (the seed is silent; a PUT does not create). The answer is the seed's: 200, message
  ``Created``, ``data: {}``.
* DELETE of an unknown ``Entity-Id``: 404 as above. Deleting a record that another record references through a
  foreign key is refused: 400 ``{"treekey": "order.product_id", "message": "product 'X' is referenced by 2
  order(s)"}`` (``restrict_deletes=False`` allows it and leaves the references dangling). :meth:`DsyncServer.delete`
  (server side, "someone else deleted it") is never refused.
* 202: ``accept_later`` picks writes that answer the seed's 202 (``data: {}``) and are applied later. It is a
  mapping entity -> share (a float drawn from ``random.Random(accept_seed)``, one draw per write of that entity in
  arrival order) or -> a collection of keys, or a callable ``(Write) -> bool``. A write is fully checked when it
  arrives (a 202 means it was valid then) and checked again when applied; one that fails then is kept in
  :attr:`DsyncServer.deferred_failures`. Pending writes are invisible: not in reads, totals, pages or foreign-key
  checks. They are applied, in arrival order, by :meth:`DsyncServer.apply_pending` or, when ``accept_delay`` is a
  number, by a background thread that many seconds after arrival.

Other routes:

* ``/notification``: the body must be a JSON object; its ``process_id`` or the ``Process-Id`` header is required,
  and when both are given they must agree; ``data`` must be an object and ``data.notifications`` a list of objects
  when present. A JSON array of documents is not accepted (the seed sends several notifications inside one).
* ``set_job``: the seed's example ``{"job_id" : "a123456",}`` has a trailing comma, so trailing commas before
  ``}`` or ``]`` are dropped on this route only. ``job_id`` is a required non-empty string. ``Entity-Token`` is not
  required (the seed sends none) but is checked when sent. Every call is kept (:attr:`DsyncServer.jobs`).
* Mass sync: ``page`` is 1-based, 1 when absent; not a whole number >= 1: 400 ``{"query": "page"}``; a page past
  the end is 200 with no items. ``per_page`` is the server's (default 100, an attribute that may change while it
  runs); the client cannot choose it. Items are the stored records in INSERTION ORDER (creation order; an update
  keeps the place; a delete then re-create goes to the end). Paging is by offset on the current state, so an item
  added during a read appears on the last page (nothing is skipped or repeated), while an item deleted from a page
  already read moves every later item one place earlier: a reader then misses one item per such delete. ``Total``
  is the count at the time of each page.

Faults and instruments:

* :meth:`DsyncServer.inject` and :meth:`DsyncServer.fail_next` answer the seed's 500 body. ``before``: the request
  is not processed at all; ``after``: it is processed (applied, or queued for 202) and then answered 500, whatever
  its own answer was. A fault is drawn only for an authenticated request to a known route with a valid
  Entity-Token, so it never hides a 401/404/405. ``fail_next`` rules are consumed first; ``inject`` draws two
  numbers from ``random.Random(seed)`` per eligible request (fault?, after?), under the lock: the same sequence of
  eligible requests gives the same faults, whatever the threads.
* ``latency`` seconds are slept at the start of every request. ``counts`` counts ``(method, route, status)``;
  routes are ``/datalayout``, ``/notification``, ``/api/sync/total``, ``/api/sync/items/``, the entity endpoint
  paths and their ``/set_job``, or ``(unknown)``. ``requests`` logs every request (never the Auth-Token).
  ``server_errors`` holds unexpected exceptions (each answered 500 with ``detail.message``); tests keep it empty.

Run it alone: ``python -m tests.servers.dsync_server --port 0 [--latency 0.02] [--seed product=N ...]`` prints its
URL on its first line and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import copy
import hmac
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_AUTH_TOKEN = "080ab6bd49b138594ac9647dc929122adfb983c8"
FIELD_TYPES = ("text", "number", "integer", "boolean", "object")
MESSAGES = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}
LOGGED_HEADERS = ("Content-Type", "Entity-Token", "Process-Id", "Entity-Id")
FIXED_ROUTES = ("/datalayout", "/notification", "/api/sync/total", "/api/sync/items")

# The seed's 200 answer to GET /datalayout, character for character (its quirks are the point: see the docstring).
SEED_LAYOUT_RESPONSE = """{
  "status": 200,
  "message": "OK",
  "detail": {},
  "data": {
    "data_layout": [
      {
        "entity_name": "product",
        "treekey": "product",
        "endpoint_url": "/entity/product",
        "entity_token": "source-1-product-462705796aa4d94d3a35d7254637a943",
        "fields": [
          {
            "treekey": "product.sku",
            "name": "sku",
            "description": "The product sku",
            "required": true,
            "multiple": false,
            "type": "text",
            "primary_key": true
          },
          {
            "name": "inventory",
            "treekey": "product.inventory",
            "type": "object",
            "multiple": false,
            "fields": [
              {
                "treekey": "product.inventory.qty",
                "name": "qty",
                "description": "The product inventory quantity",
                "required": false,
                "multiple": false,
                "type": "number"
              },
              {
                "treekey": "product.inventory.min_qty",
                "name": "min_qty",
                "description": "The product inventory minimum quantity",
                "required": false,
                "multiple": false,
                "type": "number"
              }
            ]
          }
        ]
      },
      {
        "entity_name": "order",
        "treekey": "order",
        "endpoint_url": "http://dsync.connector.example/entity/order",
        "entity_token": "source-1-order-b5503a0ae5f3bc01b6a2da68afd33305",
        "fields": [
          {
            "treekey": "order.order_id",
            "name": "order_id",
            "description": "The order id",
            "required": true,
            "multiple": false,
            "type": "text"
          },
          {
            "treekey": "order.customer_name",
            "name": "customer_name",
            "description": "The customer name for this order",
            "required": false,
            "multiple": false,
            "type": "text"
          },
          {
            "treekey": "order.product_id",
            "name": "Product id",
            "description": "The id of product",
            "required": false,
            "multiple": false,
            "type": "text",
            "foreign_key": "product"
          }
        ]
      },
      {
        "treekey": "order.gift_message",
        "name": "gift_message",
        "multiple": false,
        "type": "object",
        "fields": [
          {
            "treekey": "order.gift_message.gift_message_from",
            "name": "gift_message_from",
            "description": "The sender of the gift message",
            "required": false,
            "multiple": false,
            "type": "text"
          },
          {
            "treekey": "order.gift_message.gift_message_to",
            "name": "gift_message_to",
            "description": "The receiver of the gift message",
            "required": false,
            "multiple": false,
            "type": "text"
          },
          {
            "treekey": "order.gift_message.gift_message_body",
            "name": "gift_message_body",
            "description": "The body of the gift message",
            "required": false,
            "multiple": false,
            "type": "text"
          }
        ]
      }
    ]
  }
}"""


def default_layout() -> list[dict[str, Any]]:
    """A fresh copy of the seed's ``data_layout`` list."""
    layout: list[dict[str, Any]] = json.loads(SEED_LAYOUT_RESPONSE)["data"]["data_layout"]
    return layout


def envelope(status: int, data: Mapping[str, Any] | None = None, detail: Mapping[str, Any] | None = None,
             message: str | None = None) -> dict[str, Any]:
    """The seed's answer document; ``message`` defaults to the seed's text for ``status``."""
    return {"status": status, "message": message if message is not None else MESSAGES[status],
            "detail": dict(detail or {}), "data": dict(data or {})}


# ----------------------------------------------------------------------------------------------- layout


@dataclass
class FieldSpec:
    """One layout field; ``key`` (the last treekey segment) is its name in an entity document."""

    key: str
    treekey: str
    label: str
    type: str = "text"
    required: bool = False
    multiple: bool = False
    primary_key: bool = False
    foreign_key: str | None = None
    fields: list[FieldSpec] = field(default_factory=list)


@dataclass
class EntitySpec:
    """One entity of the layout: where it is written (``path``), its token, its fields and its primary key."""

    name: str
    treekey: str
    path: str
    token: str
    fields: list[FieldSpec]
    key: FieldSpec | None = None

    @property
    def key_field(self) -> FieldSpec:
        """The primary key field (set by :func:`parse_layout`)."""
        assert self.key is not None
        return self.key


def _norm_path(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one: the seed's example URIs have ``//``."""
    path = "/" + re.sub(r"/{2,}", "/", path).strip("/")
    return path


def _parse_field(doc: Any, where: str) -> FieldSpec:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: a field must be a JSON object, not {doc!r}")
    treekey = doc.get("treekey") or doc.get("name")
    if not isinstance(treekey, str) or not treekey.strip("."):
        raise ValueError(f"{where}: a field needs a treekey")
    key = treekey.rsplit(".", 1)[-1]
    ftype = doc.get("type", "text")
    if ftype not in FIELD_TYPES:
        raise ValueError(f"{treekey}: type {ftype!r} is not one of {FIELD_TYPES}")
    subs = [_parse_field(sub, treekey) for sub in doc.get("fields") or []]
    if subs and ftype != "object":
        raise ValueError(f"{treekey}: only an object field has fields")
    foreign = doc.get("foreign_key") or None
    if foreign is not None and (ftype != "text" or not isinstance(foreign, str)):
        raise ValueError(f"{treekey}: a foreign key is a text field naming an entity")
    return FieldSpec(key, treekey, str(doc.get("name", key)), ftype, bool(doc.get("required", False)),
                     bool(doc.get("multiple", False)), bool(doc.get("primary_key", False)), foreign, subs)


def parse_layout(layout: Sequence[Any]) -> dict[str, EntitySpec]:
    """The entities of a ``data_layout`` list, with stray fields attached where their treekeys say."""
    entities: dict[str, EntitySpec] = {}
    strays: list[FieldSpec] = []
    for i, item in enumerate(layout):
        if not isinstance(item, Mapping):
            raise ValueError(f"data_layout[{i}] must be a JSON object")
        if "entity_name" not in item:
            strays.append(_parse_field(item, f"data_layout[{i}]"))
            continue
        name = item["entity_name"]
        if not isinstance(name, str) or not name or name in entities:
            raise ValueError(f"data_layout[{i}]: entity_name {name!r} is empty, not text or repeated")
        token = item.get("entity_token")
        if not isinstance(token, str) or not token:
            raise ValueError(f"entity {name}: an entity_token is required (Entity-Token is checked against it)")
        treekey = str(item.get("treekey") or name)
        path = _norm_path(unquote(urlsplit(str(item.get("endpoint_url") or f"/entity/{name}")).path))
        entities[name] = EntitySpec(name, treekey, path, token,
                                    [_parse_field(f, treekey) for f in item.get("fields") or []])
    containers: dict[str, list[FieldSpec]] = {}

    def index(treekey: str, fields: list[FieldSpec]) -> None:
        containers[treekey] = fields
        for f in fields:
            if f.type == "object":
                index(f.treekey, f.fields)

    for spec in entities.values():
        index(spec.treekey, spec.fields)
    while strays:  # a stray may hang under another stray: attach until nothing moves
        left = []
        for stray in strays:
            parent = containers.get(stray.treekey.rpartition(".")[0])
            if parent is None:
                left.append(stray)
            else:
                parent.append(stray)
                if stray.type == "object":
                    index(stray.treekey, stray.fields)
        if len(left) == len(strays):
            raise ValueError(f"no entity or object field for the top-level fields {[s.treekey for s in left]}")
        strays = left
    for treekey, fields in containers.items():
        keys = [f.key for f in fields]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{treekey}: repeated field keys {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    tokens, paths = Counter(s.token for s in entities.values()), Counter(s.path for s in entities.values())
    for spec in entities.values():
        if tokens[spec.token] > 1:
            raise ValueError(f"entity {spec.name}: its entity_token is shared (mass sync picks the entity by it)")
        if paths[spec.path] > 1 or spec.path in FIXED_ROUTES or spec.path in {p + "/set_job" for p in paths}:
            raise ValueError(f"entity {spec.name}: endpoint path {spec.path} is not its own")
        marked = [f for f in spec.fields if f.primary_key]
        if len(marked) > 1:
            raise ValueError(f"entity {spec.name}: more than one primary_key field")
        candidates = marked or [f for f in spec.fields if f.required and f.type == "text" and not f.multiple]
        if not candidates:
            raise ValueError(f"entity {spec.name}: no primary_key field and no required text field to be the key")
        spec.key = candidates[0]
        if spec.key.type != "text" or spec.key.multiple:
            raise ValueError(f"entity {spec.name}: the primary key {spec.key.treekey} must be a single text field")
        for _, fspec in _walk(spec.fields):
            if fspec.foreign_key is not None and fspec.foreign_key not in entities:
                raise ValueError(f"{fspec.treekey}: foreign_key {fspec.foreign_key!r} is not an entity")
    return entities


def _walk(fields: list[FieldSpec], depth: int = 0) -> Iterator[tuple[int, FieldSpec]]:
    for f in fields:
        yield depth, f
        yield from _walk(f.fields, depth + 1)


# ----------------------------------------------------------------------------------------------- documents


def _problem(message: str, **locator: str) -> dict[str, Any]:
    return {**locator, "message": message}


class ApiError(Exception):
    """An answer other than success, raised from anywhere in a request's handling."""

    def __init__(self, status: int, detail: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = dict(detail or {})
        self.headers = dict(headers or {})


def _bad(problems: list[dict[str, Any]]) -> ApiError:
    """A 400 whose detail is the first problem plus the list of all of them."""
    return ApiError(400, {**problems[0], "errors": problems})


def _type_problem(spec: FieldSpec, value: Any) -> str | None:
    if spec.type == "text":
        return None if isinstance(value, str) else "must be text"
    if spec.type == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    if spec.type == "object":
        return None if isinstance(value, dict) else "must be an object"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "must be a number" if spec.type == "number" else "must be an integer"
    if spec.type == "integer" and not isinstance(value, int):
        return "must be an integer"
    return None


def _check_fields(fields: list[FieldSpec], doc: Mapping[str, Any], treekey: str, owner: str, strict: bool,
                  key: FieldSpec | None, problems: list[dict[str, Any]]) -> None:
    """Append to ``problems`` what is wrong with ``doc`` against ``fields`` (``key`` is always required)."""
    for f in fields:
        value = doc.get(f.key)
        if value is None:
            if f.required or f is key:
                problems.append(_problem("required", treekey=f.treekey))
            continue
        items = [(f.treekey, value)]
        if f.multiple:
            if not isinstance(value, list):
                problems.append(_problem("must be a list (multiple)", treekey=f.treekey))
                continue
            items = [(f"{f.treekey}[{i}]", item) for i, item in enumerate(value)]
        for where, item in items:
            if item is None:
                problems.append(_problem("required", treekey=where))
            elif (message := _type_problem(f, item)) is not None:
                problems.append(_problem(message, treekey=where))
            elif f.type == "object":
                _check_fields(f.fields, item, f.treekey, owner, strict, None, problems)
            elif f is key and item == "":
                problems.append(_problem("must not be empty", treekey=where))
    if strict:
        known = {f.key for f in fields}
        problems.extend(_problem(f"is not a field of {owner}", treekey=f"{treekey}.{name}")
                        for name in doc if name not in known)


def _foreign_values(fields: list[FieldSpec], doc: Mapping[str, Any]) -> Iterator[tuple[FieldSpec, str]]:
    """Every (foreign key field, key) pair a document holds, inside objects and lists too."""
    for f in fields:
        value = doc.get(f.key)
        if value is None:
            continue
        for item in value if f.multiple and isinstance(value, list) else [value]:
            if f.foreign_key is not None and isinstance(item, str):
                yield f, item
            elif f.type == "object" and isinstance(item, dict):
                yield from _foreign_values(f.fields, item)


def _merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` updated with ``new``, objects merged recursively; builds new dicts, never changes ``old``."""
    merged = dict(old)
    for name, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(merged[name], value)
        else:
            merged[name] = copy.deepcopy(value)
    return merged


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _drop_trailing_commas(text: str) -> str:
    """``text`` without the commas that only precede ``}`` or ``]`` (string contents untouched)."""
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


def _json_object(body: bytes, *, lenient: bool = False) -> dict[str, Any]:
    """The body as a JSON object, or a 400; ``lenient`` drops trailing commas (set_job only)."""
    try:
        text = body.decode("utf-8")
        if lenient:
            text = _drop_trailing_commas(text)
        doc = json.loads(text, parse_constant=_reject_constant) if text.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad([_problem(f"the body is not JSON: {exc}")]) from None
    if not isinstance(doc, dict):
        raise _bad([_problem("the body must be a JSON object")])
    return doc


def _header(headers: Message[str, str], name: str) -> str | None:
    """A header value, read as UTF-8 when its bytes are (http.server hands them over as Latin-1)."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8").strip()
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value.strip()


# ----------------------------------------------------------------------------------------------- records


@dataclass
class Write:
    """One entity write as the server understood it: what ``accept_later`` callables see and ``pending`` holds.

    ``due`` is a :func:`time.monotonic` deadline (None: only :meth:`DsyncServer.apply_pending` applies it).
    """

    method: str
    entity: str
    key: str
    body: dict[str, Any]
    process_id: str | None
    at: float = field(default_factory=time.time)
    due: float | None = None


@dataclass
class DeferredFailure:
    """A write answered 202 that could not be applied later (the state had changed): what it would have answered."""

    write: Write
    status: int
    detail: dict[str, Any]


@dataclass
class Notification:
    """One ``POST /notification``: its process id (header, else body) and the document as sent."""

    process_id: str
    body: dict[str, Any]
    at: float


@dataclass
class Job:
    """One ``set_job`` call."""

    entity: str
    job_id: str
    process_id: str | None
    at: float


@dataclass
class DsyncRequest:
    """One request as the server saw it: no body, and never the Auth-Token (only whether it was right)."""

    method: str
    path: str
    route: str
    entity: str | None
    status: int
    headers: dict[str, str]
    authorized: bool
    fault: str | None
    accepted_later: bool
    at: float
    seconds: float


@dataclass
class _Reply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _FaultRule:
    """A ``fail_next`` rule (``remaining`` > 0, ``when`` fixed) or the ``inject`` rule (drawn from ``rng``)."""

    when: str | None
    remaining: int
    rate: float
    after_share: float
    entities: frozenset[str] | None
    methods: frozenset[str] | None
    rng: random.Random | None = None

    def matches(self, method: str, entity: str | None) -> bool:
        return ((self.methods is None or method in self.methods)
                and (self.entities is None or entity in self.entities))


@dataclass
class _Context:
    """What is known of a request while it is handled, for the log."""

    route: str = "(unknown)"
    entity: str | None = None
    authorized: bool = False
    fault: str | None = None
    accepted_later: bool = False


AcceptLater = Mapping[str, float | Collection[str]] | Callable[[Write], bool]


# ----------------------------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: do not wait for a delayed ACK
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`DsyncServer.requests` instead."""

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client died mid-request: a server never sees it
            return
        reply = self.server.owner._answer(self.command, self.path, self.headers, body)
        data = json.dumps(reply.payload, ensure_ascii=False).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads: stop() leaves nothing running

    def __init__(self, owner: DsyncServer, address: tuple[str, int]) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (and about connections stop() closed); print anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


# ----------------------------------------------------------------------------------------------- server


class DsyncServer:
    """The Dsync connector API on ``host:port`` (port 0: any free one), served by a background thread from creation.

    Use as a context manager or call :meth:`stop`. ``latency``, ``per_page``, ``accept_later``, ``accept_delay``,
    ``strict_fields``, ``restrict_deletes`` and ``require_process_id`` are plain attributes that may change while
    it runs. ``layout`` is a ``data_layout`` list or a document holding one (``{"data_layout": [...]}`` or the
    whole answer ``{"data": {"data_layout": [...]}}``); it is served as given.
    """

    def __init__(self, *, auth_token: str = DEFAULT_AUTH_TOKEN, layout: Any = None, per_page: int = 100,
                 latency: float = 0.0, accept_later: AcceptLater | None = None, accept_delay: float | None = None,
                 accept_seed: int = 0, strict_fields: bool = False, restrict_deletes: bool = True,
                 require_process_id: bool = True, host: str = "127.0.0.1", port: int = 0) -> None:
        if layout is None:
            layout = default_layout()
        elif isinstance(layout, Mapping):
            layout = (layout.get("data") or layout).get("data_layout")
        if not isinstance(layout, Sequence) or isinstance(layout, str | bytes):
            raise ValueError("layout must be a data_layout list (or a document holding one)")
        if per_page < 1:
            raise ValueError("per_page must be at least 1")
        self.layout: list[Any] = copy.deepcopy(list(layout))
        self.specs = parse_layout(self.layout)
        self.auth_token = auth_token
        self.per_page = per_page
        self.latency = latency
        self.accept_later = accept_later
        self.accept_delay = accept_delay
        self.strict_fields = strict_fields
        self.restrict_deletes = restrict_deletes
        self.require_process_id = require_process_id
        self.lock = threading.RLock()
        # Stored records are replaced, never changed in place, so an answer may serialise them outside the lock.
        self.rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.specs}
        self.counts: Counter[tuple[str, str, int]] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.requests: list[DsyncRequest] = []
        self.server_errors: list[str] = []
        self.deferred_failures: list[DeferredFailure] = []
        self._notifications: list[Notification] = []
        self._jobs: list[Job] = []
        self._pending: list[Write] = []
        self._accept_rng = random.Random(accept_seed)
        self._fail_next: list[_FaultRule] = []
        self._injection: _FaultRule | None = None
        self._seeded: Counter[str] = Counter()
        self._by_path = {spec.path: spec for spec in self.specs.values()}
        self._by_token = {spec.token: spec for spec in self.specs.values()}
        self._connections: set[socket.socket] = set()
        self._wake = threading.Condition(self.lock)
        self._stopping = False
        self._stopped = False
        self._httpd = _HttpServer(self, (host, port))
        self.host = host
        self.port: int = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="dsync-server", daemon=True)
        self._applier = threading.Thread(target=self._apply_loop, name="dsync-applier", daemon=True)
        self._thread.start()
        self._applier.start()

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash (``{url}/datalayout``)."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving, close every open connection and join every thread (idempotent); pending writes stay."""
        if self._stopped:
            return
        self._stopped = True
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._httpd.shutdown()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its client
        self._httpd.server_close()
        self._thread.join(5)
        self._applier.join(5)

    def __enter__(self) -> DsyncServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self.lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ---------------------------------------------------------------------------------- state, for tests

    def records(self, entity: str) -> dict[str, dict[str, Any]]:
        """A copy of the applied records of ``entity``, key -> record, in insertion (= mass sync) order."""
        with self.lock:
            return copy.deepcopy(self.rows[entity])

    def record(self, entity: str, key: str) -> dict[str, Any] | None:
        """A copy of one applied record, or None."""
        with self.lock:
            found = self.rows[entity].get(key)
            return copy.deepcopy(found) if found is not None else None

    def seed(self, entity: str, count: int, *, start: int | None = None, prefix: str | None = None,
             make: Callable[[int], Mapping[str, Any]] | None = None) -> list[str]:
        """Create ``count`` valid records of ``entity`` (keys ``PRO000001``...), checked as a POST would be.

        Numbering continues after the previous ``seed`` of that entity unless ``start`` is given. Every field gets
        a value (products get their nested ``inventory``); a foreign key takes the existing parents in turn and is
        left out when there are none; ``make(i)`` overrides fields of record ``i``.
        """
        spec = self.specs[entity]
        prefix = prefix if prefix is not None else entity[:3].upper()
        keys: list[str] = []
        with self.lock:
            first = start if start is not None else self._seeded[entity] + 1
            parents = {f.foreign_key: list(self.rows[f.foreign_key]) for _, f in _walk(spec.fields)
                       if f.foreign_key is not None}
            for i in range(first, first + count):
                doc = _sample(spec.fields, i, parents)
                doc[spec.key_field.key] = f"{prefix}{i:06d}"
                if make is not None:
                    doc.update(make(i))
                key = doc.get(spec.key_field.key)
                try:
                    self._execute(Write("POST", entity, key if isinstance(key, str) else "", doc, None), apply=True)
                except ApiError as exc:
                    raise ValueError(f"seed {entity} #{i}: {exc.status} {exc.detail}") from None
                keys.append(str(key))
            self._seeded[entity] = max(self._seeded[entity], first + count - 1)
        return keys

    def upsert(self, entity: str, record: Mapping[str, Any]) -> str:
        """Create or replace one record server side, checked as a POST would be (but never 409); its key."""
        spec = self.specs[entity]
        doc = copy.deepcopy(dict(record))
        problems: list[dict[str, Any]] = []
        _check_fields(spec.fields, doc, spec.treekey, spec.name, self.strict_fields, spec.key_field, problems)
        if problems:
            raise ValueError(f"upsert {entity}: {problems}")
        key = str(doc[spec.key_field.key])
        with self.lock:
            try:
                self._check_foreign(spec, doc)
            except ApiError as exc:
                raise ValueError(f"upsert {entity}: {exc.detail['errors']}") from None
            self.rows[entity][key] = doc  # a replaced record keeps its place in the mass sync order
        return key

    def delete(self, entity: str, key: str) -> bool:
        """Delete one record server side (never refused; references may dangle); whether it existed."""
        with self.lock:
            return self.rows[entity].pop(key, None) is not None

    @property
    def pending(self) -> list[Write]:
        """The writes answered 202 and not applied yet, in arrival order."""
        with self.lock:
            return list(self._pending)

    def apply_pending(self) -> int:
        """Apply every pending write now, in arrival order; how many were applied (failures: ``deferred_failures``)."""
        with self.lock:
            writes, self._pending = self._pending, []
            return sum(self._apply(write) for write in writes)

    @property
    def notifications(self) -> list[Notification]:
        """Every notification received, in order."""
        with self.lock:
            return list(self._notifications)

    @property
    def jobs(self) -> list[Job]:
        """Every ``set_job`` call received, in order."""
        with self.lock:
            return list(self._jobs)

    def job(self, entity: str) -> str | None:
        """The last job id set for ``entity``."""
        with self.lock:
            return next((j.job_id for j in reversed(self._jobs) if j.entity == entity), None)

    def count(self, method: str | None = None, route: str | None = None, status: int | None = None) -> int:
        """How many requests matched (None matches anything)."""
        with self.lock:
            return sum(n for (m, r, s), n in self.counts.items()
                       if method in (None, m) and route in (None, r) and status in (None, s))

    def reset_log(self) -> None:
        """Forget requests, counts and fault counts (not the data)."""
        with self.lock:
            self.requests.clear()
            self.counts.clear()
            self.fault_counts.clear()

    # ---------------------------------------------------------------------------------- faults

    def inject(self, rate: float = 0.1, after_share: float = 0.5, seed: int = 1,
               entities: Collection[str] | None = None, methods: Collection[str] | None = None) -> None:
        """From now on, answer a ``rate`` share of eligible requests with the seed's 500, ``after_share`` of them
        after applying them; replaces a previous ``inject``. ``entities``/``methods`` narrow what is eligible
        (a request without an entity, such as ``/datalayout``, is eligible only when ``entities`` is None).
        """
        if not 0 <= rate <= 1 or not 0 <= after_share <= 1:
            raise ValueError("rate and after_share are shares between 0 and 1")
        with self.lock:
            self._injection = _FaultRule(None, 0, rate, after_share, _set(entities, str),
                                         _set(methods, str.upper), random.Random(seed))

    def fail_next(self, n: int = 1, when: str = "before", entities: Collection[str] | None = None,
                  methods: Collection[str] | None = None) -> None:
        """Answer the next ``n`` eligible requests with the seed's 500, ``when`` "before" or "after" applying them.

        These rules are consumed before ``inject`` draws, the oldest first.
        """
        if when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        if n > 0:
            with self.lock:
                self._fail_next.append(_FaultRule(when, n, 1.0, 0.0, _set(entities, str), _set(methods, str.upper)))

    def clear_faults(self) -> None:
        """No more faults (``fault_counts`` stay)."""
        with self.lock:
            self._fail_next.clear()
            self._injection = None

    def _draw_fault(self, method: str, entity: str | None) -> str | None:
        with self.lock:
            for rule in self._fail_next:
                if rule.matches(method, entity):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._fail_next.remove(rule)
                    return rule.when
            rule_ = self._injection
            if rule_ is None or rule_.rng is None or not rule_.matches(method, entity):
                return None
            hit, after = rule_.rng.random() < rule_.rate, rule_.rng.random() < rule_.after_share
            return ("after" if after else "before") if hit else None

    # ---------------------------------------------------------------------------------- dispatch

    def _answer(self, method: str, target: str, headers: Message[str, str], body: bytes) -> _Reply:
        started = time.monotonic()
        if self.latency > 0:
            time.sleep(self.latency)
        path = _norm_path(unquote(urlsplit(target).path))
        ctx = _Context()
        try:
            reply = self._serve(method, path, urlsplit(target).query, headers, body, ctx)
        except ApiError as exc:
            reply = _Reply(exc.status, envelope(exc.status, detail=exc.detail), exc.headers)
        except Exception as exc:  # a bug here must show in the test, not as a hung client
            with self.lock:
                self.server_errors.append(f"{method} {path}: {exc!r}")
            reply = _Reply(500, envelope(500, detail={"message": f"server error: {exc!r}"}))
        logged = {name: value for name in LOGGED_HEADERS if (value := _header(headers, name)) is not None}
        with self.lock:
            self.counts[(method, ctx.route, reply.status)] += 1
            if ctx.fault is not None:
                self.fault_counts[ctx.fault] += 1
            self.requests.append(DsyncRequest(method, path, ctx.route, ctx.entity, reply.status, logged,
                                              ctx.authorized, ctx.fault, ctx.accepted_later, time.time(),
                                              time.monotonic() - started))
        return reply

    def _route(self, path: str) -> tuple[str, EntitySpec | None, str]:
        """(route name, entity of the path, action) for a normalised path."""
        if path in FIXED_ROUTES:
            return ("/api/sync/items/" if path == "/api/sync/items" else path), None, path
        if path in self._by_path:
            return path, self._by_path[path], "entity"
        base, _, last = path.rpartition("/")
        if last == "set_job" and base in self._by_path:
            return path, self._by_path[base], "set_job"
        return "(unknown)", None, ""

    def _serve(self, method: str, path: str, query: str, headers: Message[str, str], body: bytes,
               ctx: _Context) -> _Reply:
        token = _header(headers, "Auth-Token")
        if token is None or not hmac.compare_digest(token.encode(), self.auth_token.encode()):
            raise ApiError(401)
        ctx.authorized = True
        ctx.route, spec, action = self._route(path)
        if not action:
            raise ApiError(404, {"message": f"no route {path}"})
        allowed = {"entity": ("POST", "PUT", "DELETE"), "/notification": ("POST",), "set_job": ("POST",)}.get(
            action, ("GET",))
        if method not in allowed:
            raise ApiError(405, {"message": f"{method} is not allowed on {ctx.route}"}, {"Allow": ", ".join(allowed)})
        entity_token = _header(headers, "Entity-Token")
        if action in ("/api/sync/total", "/api/sync/items"):
            spec = self._by_token.get(entity_token or "")
            if spec is None:
                raise ApiError(401)
        elif spec is not None and (action == "entity" or entity_token is not None):
            if entity_token is None or not hmac.compare_digest(entity_token.encode(), spec.token.encode()):
                raise ApiError(401)
        ctx.entity = spec.name if spec is not None else None
        ctx.fault = self._draw_fault(method, ctx.entity)
        if ctx.fault == "before":
            return _Reply(500, envelope(500))
        if ctx.fault is None:
            return self._handle(method, action, spec, parse_qs(query, keep_blank_values=True), headers, body, ctx)
        try:  # "after": the request is processed as usual, then its answer is lost
            self._handle(method, action, spec, parse_qs(query, keep_blank_values=True), headers, body, ctx)
        except ApiError:
            pass
        return _Reply(500, envelope(500))

    def _handle(self, method: str, action: str, spec: EntitySpec | None, query: dict[str, list[str]],
                headers: Message[str, str], body: bytes, ctx: _Context) -> _Reply:
        if action == "/datalayout":
            return _Reply(200, envelope(200, {"data_layout": self.layout}))
        if action == "/notification":
            return self._notification(headers, body)
        assert spec is not None
        if action == "set_job":
            return self._set_job(spec, headers, body)
        if action == "/api/sync/total":
            with self.lock:
                return _Reply(200, envelope(200, {"total": len(self.rows[spec.name]), "per_page": self.per_page}))
        if action == "/api/sync/items":
            return self._items(spec, query)
        return self._write(method, spec, headers, body, ctx)

    # ---------------------------------------------------------------------------------- routes

    def _write(self, method: str, spec: EntitySpec, headers: Message[str, str], body: bytes, ctx: _Context) -> _Reply:
        process_id = _header(headers, "Process-Id")
        if self.require_process_id and not process_id:
            raise _bad([_problem("required", header="Process-Id")])
        if method == "POST":
            doc = _json_object(body)
            key = doc.get(spec.key_field.key)
            key = key if isinstance(key, str) else ""
        else:
            key = _header(headers, "Entity-Id") or ""
            if not key:
                raise _bad([_problem("required", header="Entity-Id")])
            doc = _json_object(body) if method == "PUT" else {}
        write = Write(method, spec.name, key, doc, process_id)
        with self.lock:
            self._execute(write, apply=False)
            if self._defer(write):
                delay = self.accept_delay
                write.due = None if delay is None else time.monotonic() + delay
                self._pending.append(write)
                self._wake.notify_all()
                ctx.accepted_later = True
                return _Reply(202, envelope(202))
            return self._execute(write, apply=True)

    def _defer(self, write: Write) -> bool:
        rule = self.accept_later
        if rule is None:
            return False
        if callable(rule):
            return bool(rule(write))
        share = rule.get(write.entity)
        if share is None:
            return False
        if isinstance(share, int | float) and not isinstance(share, bool):
            return self._accept_rng.random() < share
        return isinstance(share, Collection) and write.key in share

    def _execute(self, write: Write, *, apply: bool) -> _Reply:
        """Check a write against the current state (raising its ApiError) and, when ``apply``, make it."""
        spec = self.specs[write.entity]
        table = self.rows[write.entity]
        key_field = spec.key_field
        if write.method == "POST":
            problems: list[dict[str, Any]] = []
            _check_fields(spec.fields, write.body, spec.treekey, spec.name, self.strict_fields, key_field, problems)
            if problems:
                raise _bad(problems)
            if write.key in table:
                raise ApiError(409, _problem(f"{spec.name} {write.key!r} exists", treekey=key_field.treekey))
            self._check_foreign(spec, write.body)
            if apply:
                table[write.key] = copy.deepcopy(write.body)
            return _Reply(201, envelope(201, {key_field.key: write.key}))
        current = table.get(write.key)
        if current is None:
            raise ApiError(404, _problem(f"no {spec.name} {write.key!r}", header="Entity-Id"))
        if write.method == "PUT":
            sent_key = write.body.get(key_field.key)
            if sent_key is not None and sent_key != write.key:
                raise _bad([_problem(f"differs from Entity-Id {write.key!r}", treekey=key_field.treekey)])
            merged = _merge(current, write.body)
            problems = []
            _check_fields(spec.fields, merged, spec.treekey, spec.name, self.strict_fields, key_field, problems)
            if problems:
                raise _bad(problems)
            self._check_foreign(spec, write.body)
            if apply:
                table[write.key] = merged
            return _Reply(200, envelope(200, message="Created"))  # the seed's text for an update
        if self.restrict_deletes:
            refs = self._referrers(spec.name, write.key)
            if refs:
                raise _bad([_problem(f"{spec.name} {write.key!r} is referenced by {m} {o}(s)", treekey=t)
                            for (t, o), m in refs.items()])
        if apply:
            del table[write.key]
        return _Reply(200, envelope(200))

    def _check_foreign(self, spec: EntitySpec, doc: Mapping[str, Any]) -> None:
        problems = [_problem(f"no {f.foreign_key} {value!r}", treekey=f.treekey)
                    for f, value in _foreign_values(spec.fields, doc)
                    if f.foreign_key is not None and value not in self.rows[f.foreign_key]]
        if problems:
            raise _bad(problems)

    def _referrers(self, entity: str, key: str) -> Counter[tuple[str, str]]:
        """(treekey, referring entity) -> how many references to ``entity`` ``key`` there are."""
        refs: Counter[tuple[str, str]] = Counter()
        for other in self.specs.values():
            if not any(f.foreign_key == entity for _, f in _walk(other.fields)):
                continue
            for record in self.rows[other.name].values():
                for f, value in _foreign_values(other.fields, record):
                    if f.foreign_key == entity and value == key:
                        refs[(f.treekey, other.name)] += 1
        return refs

    def _apply(self, write: Write) -> bool:
        try:
            self._execute(write, apply=True)
        except ApiError as exc:
            self.deferred_failures.append(DeferredFailure(write, exc.status, exc.detail))
            return False
        return True

    def _apply_loop(self) -> None:
        """Apply pending writes when their ``due`` time comes (only those with one)."""
        with self._wake:
            while not self._stopping:
                now = time.monotonic()
                due = [w for w in self._pending if w.due is not None and w.due <= now]
                if due:
                    self._pending = [w for w in self._pending if w.due is None or w.due > now]
                    for write in due:
                        self._apply(write)
                    continue
                later = [w.due for w in self._pending if w.due is not None]
                self._wake.wait(min(later) - now if later else None)

    def _items(self, spec: EntitySpec, query: dict[str, list[str]]) -> _Reply:
        raw = query.get("page", ["1"])[-1]
        if not raw.isdigit() or int(raw) < 1:
            raise _bad([_problem("must be a whole number from 1", query="page")])
        page = int(raw)
        with self.lock:
            per_page = self.per_page
            table = self.rows[spec.name]
            total = len(table)
            items = list(islice(table.values(), (page - 1) * per_page, page * per_page))
        return _Reply(200, envelope(200, {"items": items}), {"Total": str(total), "Per-Page": str(per_page)})

    def _notification(self, headers: Message[str, str], body: bytes) -> _Reply:
        doc = _json_object(body)
        header_id, body_id = _header(headers, "Process-Id"), doc.get("process_id")
        if not header_id and body_id in (None, ""):
            raise _bad([_problem("required", header="Process-Id")])
        if header_id and body_id not in (None, "") and str(body_id) != header_id:
            raise _bad([_problem(f"differs from the Process-Id header {header_id!r}", field="process_id")])
        data = doc.get("data")
        if data is not None and not isinstance(data, dict):
            raise _bad([_problem("must be an object", field="data")])
        notes = (data or {}).get("notifications")
        if notes is not None and (not isinstance(notes, list) or not all(isinstance(n, dict) for n in notes)):
            raise _bad([_problem("must be a list of objects", field="data.notifications")])
        with self.lock:
            self._notifications.append(Notification(header_id or str(body_id), doc, time.time()))
        return _Reply(200, envelope(200))

    def _set_job(self, spec: EntitySpec, headers: Message[str, str], body: bytes) -> _Reply:
        doc = _json_object(body, lenient=True)
        job_id = doc.get("job_id")
        if job_id is None or job_id == "":
            raise _bad([_problem("required", field="job_id")])
        if not isinstance(job_id, str):
            raise _bad([_problem("must be text", field="job_id")])
        with self.lock:
            self._jobs.append(Job(spec.name, job_id, _header(headers, "Process-Id"), time.time()))
        return _Reply(200, envelope(200))


def _set(values: Collection[str] | None, norm: Callable[[str], str]) -> frozenset[str] | None:
    if isinstance(values, str):
        values = [values]
    return None if values is None else frozenset(norm(v) for v in values)


def _sample(fields: list[FieldSpec], i: int, parents: Mapping[str, list[str]]) -> dict[str, Any]:
    """A valid document for record ``i``: every field filled, foreign keys from ``parents`` in turn."""
    doc: dict[str, Any] = {}
    for f in fields:
        value: Any
        if f.foreign_key is not None:
            keys = parents.get(f.foreign_key) or []
            if not keys:
                continue
            value = keys[(i - 1) % len(keys)]
        elif f.type == "object":
            value = _sample(f.fields, i, parents)
        elif f.type == "text":
            value = f"{f.key} {i}"
        elif f.type == "boolean":
            value = i % 2 == 0
        else:
            value = (i * 7 + len(f.key)) % 500
        doc[f.key] = [value] if f.multiple else value
    return doc


# ----------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM (or SIGINT); the URL is the first line printed."""
    parser = argparse.ArgumentParser(prog="python -m tests.servers.dsync_server",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument("--layout", default=None, help="a JSON file: a data_layout list or a document holding one")
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--accept-later", action="append", default=[], metavar="ENTITY=SHARE",
                        help="answer that share of the writes of ENTITY 202 and apply them later")
    parser.add_argument("--accept-delay", type=float, default=1.0, help="seconds before a 202 write is applied")
    parser.add_argument("--seed", action="append", default=[], metavar="ENTITY=N",
                        help="create N records of ENTITY before serving (parents first)")
    args = parser.parse_args(argv)
    layout = None
    if args.layout:
        with open(args.layout, encoding="utf-8") as handle:
            layout = json.load(handle)
    accept = {name: float(share) for name, _, share in (item.partition("=") for item in args.accept_later)}
    server = DsyncServer(auth_token=args.auth_token, layout=layout, per_page=args.per_page, latency=args.latency,
                         accept_later=accept or None, accept_delay=args.accept_delay, host=args.host,
                         port=args.port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        for item in args.seed:
            entity, _, count = item.partition("=")
            server.seed(entity, int(count))
        print(server.url, flush=True)
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
