"""A real HTTP server that behaves like the Divalto CRM ("Weavy") data API, for tests and benchmarks.

The ground truth is the Divalto Weavy data API document (French, with its URLs and most of its
example documents cut out). Where it is silent this server does what an integrator would expect, and every such
choice is written below, so that an adapter written against this server stays honest against the real one.

Routes (``{p}`` is the project code; every route but Authenticate needs ``Authorization: Bearer <authToken>``)::

    POST   /v1/Authenticate                          {"scope":"API","projectCode","userName","password"}
    GET    /v1/data/{p}/entities                     [entity, ...]   (the seed's discovery shape)
    GET    /v1/data/{p}/entities/{entity}            entity
    GET    /v1/data/{p}/{entity}?offset=&limit=&srvExport=&srvDateUTCFrom=&includeDeleted=&companyCode=
    POST   /v1/data/{p}/{entity}/filter              {"filters","orderBy","offset","limit",...}
    POST   /v1/data/{p}/{entity}/{code}              create          GET read, PUT partial update,
    DELETE /v1/data/{p}/{entity}/{code}              logical delete  (``?deleteMode=Physical``: physical)
    POST   /v1/data/{p}/exportValidation             {"companyCode"?,"entityName","srvExport","rows":[...]}
    POST   /v1/data/{p}/exportValidation/multiple    [that document, ...]
    POST   /v1/data/{p}/{entity}/import              [row, ...]                          (atomic)
    POST   /v1/data/{p}/dataset                      {"customer":[row], "contact":[...]} (atomic)
    POST   /v1/data/{p}/relationalDataset            {"noResultData","data","deletes","relations"} (atomic)
    POST   /v1/data/{p}/dataset/delete               [{"entityName","rowCodes":[...]}]   (atomic)

Choices where the seed is silent or ambiguous:

* Reads answer what the seed states ("la liste des enregistrements compris entre crochets"): a bare JSON
  array of records. The seed shows no paging envelope, so paging facts travel in headers (``X-Total-Count``,
  ``X-Offset``, ``X-Limit``). ``WeavyServer(list_envelope=True)`` answers ``{"data","offset","limit","total"}``
  instead, for a client written to that shape.
* A record is ``{entity}_ID`` (its code), every field of the entity (``null`` when unset), then ``companyCode``,
  ``srvDateUTC`` (``YYYY-MM-DDTHH:MM:SS.ffffff``, UTC, strictly increasing across the server even within one
  second), ``srvExport`` and ``srvDeleted``. Every change (create, update, relation, logical delete) moves
  ``srvDateUTC`` and resets ``srvExport`` to false; a write that changes nothing changes neither (the seed's
  "mode différentiel", applied to every write route). Setting ``srvExport`` (export validation) is not a change.
* Reads are ordered by ``srvDateUTC`` then code; ``srvDateUTCFrom`` keeps ``srvDateUTC >= value``; ``limit`` is
  1..1000 (default 1000), more is a 400. Unknown query parameters and body keys are a 400, so that a misspelt
  filter fails here instead of being silently ignored.
* Path words ``entities``, ``exportValidation``, ``dataset`` and ``relationalDataset`` cannot be entity names, nor
  ``filter`` and ``import`` codes; codes in a URL are percent-decoded. ``GET .../{entity}/{code}`` answers 404 for
  a logically deleted record unless ``?includeDeleted=true``.
* ``companyCode`` defaults to the company of the logged-in user (``company_code``); codes are unique per project
  (the multi-company case where two companies share a code is not modelled).
* Errors are ``{"status", "message", "errors": [{"entity","rowCode","field","message"}]}``; ``field`` and
  ``rowCode`` are null when an error concerns no single field or row. 401 for a missing, unknown or expired
  token, 403 for a token of another project, 404 for an unknown entity or code, 409 for the create of a code
  that exists (a logically deleted code is revived instead), 415 for a body that is not ``application/json``,
  400 for anything invalid, 429 with ``Retry-After`` (seconds) beyond the quota.
* Create (POST) and update (PUT) answer 200 with the full record; DELETE answers 200 ``{"deletedRow": 1}``.
  System fields (``srvDateUTC``, ``srvExport``, ``srvDeleted``) in a written row are ignored, so a record read
  can be written back as it is; a key field in the body must equal the code in the URL.
* Bulk import upserts: a new code is created (fields absent are null), an existing one is updated with the
  fields given. It answers the seed's ``{"addedRow","updatedRow","statistics"}`` plus ``unchangedRow``.
  A code twice in one batch is an error.
* Dataset (``/dataset``): the document maps entity names to lists of rows, the first key being the main entity
  with exactly one row. Rows are upserted; then, for every other entity named in the document, the rows on the
  server whose foreign key points at a parent row of the document but which the document no longer lists are
  logically deleted (the seed: only linked records of an entity cited in the document are concerned).
  It answers ``{"addedRow","updatedRow","unchangedRow","deletedRow","statistics"}``.
* Relational dataset: ``data`` is ``[{"entityName","rows":[row with its {entity}_ID]}]``, ``deletes`` is
  ``[{"entityName","rowCodes":[...],"deleteMode"?: "Logical"|"Physical"}]``, ``relations`` entries carry the
  seed's ``SourceEntityName``, ``SourceRowCode``, ``TargetEntityName``, ``TargetRowCode``, ``TargetFieldName``
  (camelCase accepted too). Order: data, then relations, then deletes; the answer adds ``deletedRow`` and,
  unless ``noResultData`` is true, ``data``: the resulting records, ``[{"entityName","rows":[...]}]``.
* Dataset delete takes the ``deletes`` array itself (``?deleteMode=Physical`` for all) and answers the seed's
  ``{"deletedRow","statistics"}``. A physical delete of a row that any row still references is an error.
* Export validation is optimistic per row: ``srvExport`` is set where the ``srvDateUTC`` sent equals the
  record's (compared as instants, so fewer fraction digits are fine); it answers 200
  ``{"updatedRow", "conflicts": [{"entityName","rowCode","srvDateUTC","currentSrvDateUTC","message"}],
  "statistics"}``; a code not found is a conflict with ``currentSrvDateUTC`` null. A malformed document is a
  400 and nothing is set.
* Filter body: ``filters`` (all must hold) of ``{"fieldName","operator","value"}`` with operators
  ``eq ne lt le gt ge like in isNull isNotNull`` (or ``= != < <= > >=``; ``like`` is SQL's, case-insensitive;
  a comparison with null is false), ``orderBy`` of ``{"fieldName","direction":"asc"|"desc"}`` (ties by
  ``srvDateUTC`` then code), ``offset``, ``limit``, and the query filters by the same names.
* Types (discovery ``fieldType``): ``text`` (``fieldLength`` characters), ``text(foreignkey)`` (``fieldLength``
  null, as in the seed), ``integer`` (32-bit), ``decimal`` (a JSON number), ``datetime``
  (``YYYY-MM-DDTHH:MM:SS``), ``boolean``, ``binary`` (Base64, ``fieldLength`` bytes when set).
  Field descriptors add ``required``, ``isPrimaryKey``, ``foreignEntity`` and ``readOnly`` to the seed's keys.
* Authenticate answers ``{"authToken","expiresIn","generatedTimeUTC","tokenType":"Bearer","projectCode",
  "userName"}``; the token is opaque. The quota counts every call per client IP in a sliding window
  (``quota`` calls per ``quota_window`` seconds, off when ``quota`` is None); refused calls do not count.
  ``login_count`` counts successful logins; ``requests`` logs every call without its body.

Run it alone: ``python -m tests.servers.weavy_server --port 0 [--seed customer=1000 ...]`` prints its URL on its
first line and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import operator
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

KEY_LENGTH = 50
COMPANY_LENGTH = 20
PAGE_LIMIT = 1000
SYSTEM_FIELDS = ("srvDateUTC", "srvExport", "srvDeleted")
FIELD_TYPES = ("text", "integer", "decimal", "datetime", "boolean", "binary")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_SRV_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?Z?")
_INT32 = (-(2**31), 2**31 - 1)


# ----------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    """One typed field of an entity; ``foreign`` names the entity a text field references by code."""

    name: str
    type: str = "text"
    length: int | None = None
    required: bool = False
    foreign: str | None = None
    translations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name!r}: type {self.type!r} is not one of {FIELD_TYPES}")
        if self.foreign is not None and self.type != "text":
            raise ValueError(f"field {self.name!r}: a foreign key is a text field")

    def describe(self) -> dict[str, Any]:
        """The discovery descriptor, in the seed's shape plus required/key/foreign flags."""
        return {"fieldName": self.name, "translations": _translations(self.translations, self.name),
                "fieldType": "text(foreignkey)" if self.foreign else self.type,
                "fieldLength": None if self.foreign else self.length, "required": self.required,
                "isPrimaryKey": False, "foreignEntity": self.foreign, "readOnly": False}


@dataclass(frozen=True)
class EntitySpec:
    """An entity: its name (the table without ``sw_data_``) and its fields; the key ``{name}_ID`` is implied."""

    name: str
    fields: tuple[FieldSpec, ...]
    translations: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The key field, ``[nomEntité]_ID``."""
        return f"{self.name}_ID"

    @cached_property
    def _by_name(self) -> dict[str, FieldSpec]:
        return {f.name: f for f in self.fields}

    def field(self, name: str) -> FieldSpec | None:
        """The field of that name, if the entity has one."""
        return self._by_name.get(name)

    def describe(self) -> dict[str, Any]:
        """The discovery document of the seed, with the key field first and the system fields last."""
        key = {"fieldName": self.key, "translations": _translations({}, self.key), "fieldType": "text",
               "fieldLength": KEY_LENGTH, "required": True, "isPrimaryKey": True, "foreignEntity": None,
               "readOnly": False}
        system = [("companyCode", "text", COMPANY_LENGTH, False), ("srvDateUTC", "datetime", None, True),
                  ("srvExport", "boolean", None, True), ("srvDeleted", "boolean", None, True)]
        return {"entityName": self.name, "translations": _translations(self.translations, self.name),
                "key": self.key,
                "fields": [key, *(f.describe() for f in self.fields),
                           *({"fieldName": n, "translations": _translations({}, n), "fieldType": t, "fieldLength": n_,
                              "required": False, "isPrimaryKey": False, "foreignEntity": None, "readOnly": ro}
                             for n, t, n_, ro in system)]}


def _translations(given: Mapping[str, str], default: str) -> list[dict[str, str]]:
    items = given or {"EN": default}
    return [{"languageCode": code, "text": text} for code, text in sorted(items.items())]


def default_entities() -> list[EntitySpec]:
    """``baseuser``, ``customer`` (the seed's example fields), ``contact`` and ``address`` (both FK to customer)."""
    return [
        EntitySpec("baseuser", (FieldSpec("name", length=255, required=True), FieldSpec("email", length=255)),
                   {"DE": "Basis / Benutzer", "EN": "Base / User", "FR": "Base / Utilisateur"}),
        EntitySpec("customer", (
            FieldSpec("CodeCustomer", length=255, translations={"DE": "Kunde", "EN": "Account code",
                                                                 "FR": "Code Tiers"}),
            FieldSpec("baseuser_ID", foreign="baseuser", translations={"DE": "Basis / Benutzer", "EN": "Base / User",
                                                                       "FR": "Base / Utilisateur"}),
            FieldSpec("name", length=255, required=True, translations={"DE": "Name", "EN": "Name", "FR": "Nom"}),
            FieldSpec("creditLimit", "decimal"),
            FieldSpec("employeeCount", "integer"),
            FieldSpec("active", "boolean"),
            FieldSpec("customerSince", "datetime"),
            FieldSpec("logo", "binary", length=65536),
        ), {"DE": "Kunde", "EN": "Customer", "FR": "Client"}),
        EntitySpec("contact", (
            FieldSpec("customer_ID", foreign="customer", required=True),
            FieldSpec("firstName", length=100),
            FieldSpec("lastName", length=100, required=True),
            FieldSpec("email", length=255),
            FieldSpec("phone", length=30),
            FieldSpec("birthDate", "datetime"),
        ), {"DE": "Kontakt", "EN": "Contact", "FR": "Contact"}),
        EntitySpec("address", (
            FieldSpec("customer_ID", foreign="customer", required=True),
            FieldSpec("street", length=255),
            FieldSpec("zipCode", length=10),
            FieldSpec("city", length=100, required=True),
            FieldSpec("country", length=2),
        ), {"DE": "Adresse", "EN": "Address", "FR": "Adresse"}),
    ]


def _type_error(spec: FieldSpec, value: Any) -> str | None:
    """Why ``value`` does not fit ``spec`` (None when it does); null is the caller's business."""
    if spec.type == "text":
        if not isinstance(value, str):
            return "must be a string"
        limit = KEY_LENGTH if spec.foreign else spec.length
        if limit is not None and len(value) > limit:
            return f"is {len(value)} characters long, more than {limit}"
    elif spec.type == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        if not _INT32[0] <= value <= _INT32[1]:
            return "is out of the 32-bit integer range"
    elif spec.type == "decimal":
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return "must be a decimal number (a JSON number, point as separator)"
    elif spec.type == "datetime":
        if not isinstance(value, str) or not _DATETIME.fullmatch(value):
            return "must be a date and time as YYYY-MM-DDTHH:MM:SS"
        try:
            datetime.fromisoformat(value)  # the regex fixed the format; this checks the calendar
        except ValueError:
            return "is not a valid date and time"
    elif spec.type == "boolean":
        if not isinstance(value, bool):
            return "must be true or false"
    elif spec.type == "binary":
        if not isinstance(value, str):
            return "must be a Base64 string"
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return "is not valid Base64"
        if spec.length is not None and len(raw) > spec.length:
            return f"is {len(raw)} bytes, more than {spec.length}"
    return None


def parse_srv_date(value: Any) -> str | None:
    """A client's ``srvDateUTC`` in the server's canonical form (six fraction digits), or None if malformed."""
    if not isinstance(value, str):
        return None
    found = _SRV_DATE.fullmatch(value)
    if not found:
        return None
    try:
        datetime.fromisoformat(found.group(1))
    except ValueError:
        return None
    return f"{found.group(1)}.{(found.group(2) or '')[:6].ljust(6, '0')}"


class _Clock:
    """``srvDateUTC`` values: the UTC time, pushed one microsecond past the last one so it always increases."""

    def __init__(self) -> None:
        self._last = datetime.min

    def next(self) -> str:
        now = datetime.now(UTC).replace(tzinfo=None)
        if now <= self._last:
            now = self._last + timedelta(microseconds=1)
        self._last = now
        return now.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _timespan(seconds: float) -> str:
    """A .NET TimeSpan as the seed's statistics print it (``00:00:16.2361677``)."""
    ticks = round(seconds * 10_000_000)
    whole, frac = divmod(ticks, 10_000_000)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}.{frac:07d}"


# ----------------------------------------------------------------------------------------------- store


class ApiError(Exception):
    """An answer other than 2xx: status, message and the per-row ``errors`` entries."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}


class _Txn:
    """Writes staged over the store and committed all at once, or not at all: the API's atomicity.

    Staged rows are whole records (None for a physical delete); every check reads through the stage, so a row
    may reference another created earlier in the same batch.
    """

    def __init__(self, server: WeavyServer, company: str) -> None:
        self.server = server
        self.company = company
        self.staged: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.errors: list[dict[str, Any]] = []
        self.kinds: set[str] = set()
        self.fk_checks: list[tuple[str, str, str]] = []
        self.physical: list[tuple[str, str]] = []
        self.written: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()

    def error(self, entity: str | None, code: Any, field: str | None, message: str, kind: str = "invalid") -> None:
        self.errors.append({"entity": entity, "rowCode": code, "field": field, "message": message})
        self.kinds.add(kind)

    def spec(self, entity: Any, code: Any = None) -> EntitySpec | None:
        spec = self.server.specs.get(entity) if isinstance(entity, str) else None
        if spec is None:
            self.error(entity if isinstance(entity, str) else None, code, None, f"unknown entity {entity!r}",
                       "notfound")
        return spec

    def get(self, entity: str, code: str) -> dict[str, Any] | None:
        if (entity, code) in self.staged:
            return self.staged[(entity, code)]
        return self.server.rows[entity].get(code)

    def view(self, entity: str) -> Iterator[dict[str, Any]]:
        """Every record of the entity as the batch would leave it (logically deleted included)."""
        stored = self.server.rows[entity]
        for code, rec in stored.items():
            now: dict[str, Any] | None = self.staged[(entity, code)] if (entity, code) in self.staged else rec
            if now is not None:
                yield now
        for (name, code), new in self.staged.items():
            if name == entity and code not in stored and new is not None:
                yield new

    def write(self, spec: EntitySpec, code: Any, values: Any, mode: str) -> dict[str, Any] | None:
        """Create, update or upsert one row; the staged record, or None with errors recorded."""
        entity = spec.name
        if not isinstance(code, str) or not code or len(code) > KEY_LENGTH:
            self.error(entity, code if isinstance(code, str) else None, spec.key,
                       f"the code must be a non-empty string of at most {KEY_LENGTH} characters")
            return None
        if not isinstance(values, dict):
            self.error(entity, code, None, "a row must be a JSON object")
            return None
        current = self.get(entity, code)
        live = current is not None and not current["srvDeleted"]
        if mode == "create" and live:
            self.error(entity, code, spec.key, f"{entity} {code!r} already exists", "conflict")
            return None
        if mode == "update" and not live:
            self.error(entity, code, None, f"{entity} {code!r} not found", "notfound")
            return None
        if live:
            assert current is not None
            new = dict(current)
        else:
            new = {spec.key: code, **{f.name: None for f in spec.fields}, "companyCode": self.company,
                   "srvDateUTC": None, "srvExport": False, "srvDeleted": False}
        before = len(self.errors)
        for name, value in values.items():
            if name == spec.key:
                if value != code:
                    self.error(entity, code, name, f"the key {value!r} differs from the code {code!r}")
            elif name in SYSTEM_FIELDS:
                continue  # read-only, so a record read can be sent back as it is
            elif name == "companyCode":
                if not isinstance(value, str) or not value or len(value) > COMPANY_LENGTH:
                    self.error(entity, code, name, f"must be a non-empty string of at most {COMPANY_LENGTH} "
                                                   "characters")
                else:
                    new[name] = value
            elif (fspec := spec.field(name)) is None:
                self.error(entity, code, name, f"unknown field {name!r} of {entity}")
            elif value is None:
                new[name] = None
            elif (problem := _type_error(fspec, value)) is not None:
                self.error(entity, code, name, f"{name} {problem}")
            else:
                new[name] = value
        for fspec in spec.fields:
            if fspec.required and new[fspec.name] is None:
                self.error(entity, code, fspec.name, f"{fspec.name} is required")
        if len(self.errors) > before:
            return None
        for fspec in spec.fields:
            if fspec.foreign and new[fspec.name] is not None and (not live or current is None
                                                                  or current[fspec.name] != new[fspec.name]):
                self.fk_checks.append((entity, code, fspec.name))
        self.written.add((entity, code))
        if live and new == current:
            return new  # the differential mode: nothing to write, the date does not move
        self.staged[(entity, code)] = new
        return new

    def delete(self, spec: EntitySpec, code: Any, physical: bool) -> None:
        """Stage a logical (``srvDeleted``) or physical delete."""
        current = self.get(spec.name, code) if isinstance(code, str) else None
        if current is None or (current["srvDeleted"] and not physical):
            self.error(spec.name, code if isinstance(code, str) else None, None, f"{spec.name} {code!r} not found",
                       "notfound")
            return
        if physical:
            self.staged[(spec.name, code)] = None
            self.physical.append((spec.name, code))
        else:
            self.staged[(spec.name, code)] = {**current, "srvDeleted": True}

    def check_references(self) -> None:
        """Foreign keys written must name a live row; a physically deleted row must be referenced by none."""
        for entity, code, name in self.fk_checks:
            rec = self.get(entity, code)
            if rec is None or rec["srvDeleted"] or rec[name] is None:
                continue
            fspec = self.server.specs[entity].field(name)
            assert fspec is not None and fspec.foreign is not None
            parent = self.get(fspec.foreign, rec[name])
            if parent is None:
                self.error(entity, code, name, f"{name} references an unknown {fspec.foreign} {rec[name]!r}")
            elif parent["srvDeleted"]:
                self.error(entity, code, name, f"{name} references a deleted {fspec.foreign} {rec[name]!r}")
        if not self.physical:
            return
        referrers: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for spec in self.server.specs.values():
            for fspec in spec.fields:
                if fspec.foreign:
                    referrers[fspec.foreign].append((spec.name, fspec.name))
        index: dict[tuple[str, str], dict[str, str]] = {}
        for target, code in self.physical:
            for entity, name in referrers[target]:
                if (entity, name) not in index:
                    index[(entity, name)] = {r[name]: r[f"{entity}_ID"] for r in self.view(entity)
                                             if r[name] is not None}
                child = index[(entity, name)].get(code)
                if child is not None:
                    self.error(target, code, None, f"{target} {code!r} is still referenced by {entity} {child!r} "
                                                   f"({name}); cascade deletes are not handled")
                    break

    def commit(self) -> None:
        """Apply the stage; each changed row gets the next ``srvDateUTC`` and ``srvExport`` false."""
        rows = self.server.rows
        for (entity, code), rec in self.staged.items():
            old = rows[entity].pop(code, None)
            if rec is None or (rec["srvDeleted"] and (old is None or not old["srvDeleted"])):
                self.counts["deletedRow"] += 1
            else:
                self.counts["addedRow" if old is None else "updatedRow"] += 1
            if rec is not None:
                rec["srvDateUTC"] = self.server.clock.next()
                rec["srvExport"] = False
                rows[entity][code] = rec  # re-inserted last: dict order stays srvDateUTC order
        self.counts["unchangedRow"] = len(self.written - set(self.staged))

    def finish(self, message: str, *, batch: bool = True) -> None:
        """Check, then commit, or raise with every error (nothing written): 400 for a batch, else 404/409/400."""
        if not self.errors:
            self.check_references()
        if self.errors:
            status = 400 if batch else 404 if self.kinds == {"notfound"} else 409 if self.kinds == {"conflict"} else 400
            raise ApiError(status, f"{message}: nothing was written", self.errors)
        self.commit()


# ----------------------------------------------------------------------------------------------- HTTP


@dataclass
class WeavyRequest:
    """One request as the server saw it (no body: it may carry a password)."""

    method: str
    path: str
    query: dict[str, str]
    route: str
    status: int
    client_ip: str
    user: str | None
    body_size: int
    at: float


@dataclass
class _Reply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Token:
    user: str
    project: str
    expires: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`WeavyServer.requests` instead."""

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
            self.close_connection = True
            return
        reply = self.server.owner._answer(self.command, self.path, self.headers, body, self.client_address[0])
        data = b"" if reply.payload is None else json.dumps(reply.payload, ensure_ascii=False).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
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

    def __init__(self, owner: WeavyServer, address: tuple[str, int]) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (and about connections stop() closed); print anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("1", "true", "True", 1):
        return True
    if value in ("0", "false", "False", 0):
        return False
    raise ApiError(400, f"{name} must be true/false or 1/0", [_err(None, None, name, f"{name}: {value!r}")])


def _int(value: Any, name: str, low: int, high: int | None) -> int:
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, int) or isinstance(number, bool) or number < low or (high is not None
                                                                                     and number > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be an integer {bound}", [_err(None, None, name, f"{name}: {value!r}")])
    return number


def _err(entity: str | None, code: Any, name: str | None, message: str) -> dict[str, Any]:
    return {"entity": entity, "rowCode": code, "field": name, "message": message}


def _fits(kind: str, value: Any) -> bool:
    """Whether a filter value has the JSON type of a field of that type (a mismatch is a 400, not no match)."""
    if kind in ("integer", "decimal"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str)


def _condition(name: str, op: str, value: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda rec: _compare(op, rec[name], value)


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    """Nulls first, as SQL Server sorts them ascending."""
    return lambda rec: (rec[name] is not None, rec[name] if rec[name] is not None else 0)


def _like(pattern: str) -> re.Pattern[str]:
    parts = ("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _compare(op: str, have: Any, want: Any) -> bool:
    if op == "isNull":
        return have is None
    if op == "isNotNull":
        return have is not None
    if have is None:
        return False  # SQL: a comparison with null is never true
    if op == "in":
        return bool(have in want)
    if op == "like":
        return isinstance(have, str) and _like(str(want)).fullmatch(have) is not None
    try:
        return bool(_COMPARISONS[op](have, want))
    except TypeError:
        return False  # a value of another type never matches


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
                                                     "le": operator.le, "gt": operator.gt, "ge": operator.ge}


_OPERATORS = {"eq": "eq", "=": "eq", "==": "eq", "ne": "ne", "!=": "ne", "<>": "ne", "lt": "lt", "<": "lt",
              "le": "le", "<=": "le", "gt": "gt", ">": "gt", "ge": "ge", ">=": "ge", "like": "like", "in": "in",
              "isNull": "isNull", "isNotNull": "isNotNull"}
_QUERY_FILTERS = ("offset", "limit", "srvExport", "srvDateUTCFrom", "includeDeleted", "companyCode")


def _read_json(headers: Message[str, str], body: bytes) -> Any:
    """The JSON body; the seed asks for ``Content-Type: application/json`` on every write."""
    kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    try:
        return json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


class WeavyServer:
    """The Weavy data API on ``host:port`` (port 0: any free one), served by a background thread from creation.

    Use as a context manager or call :meth:`stop`. Settings that are plain attributes (``latency``, ``quota``,
    ``quota_window``, ``token_ttl``, ``import_row_limit``, ``list_envelope``) may be changed while it runs.
    """

    def __init__(self, *, project: str = "DEMO", users: Mapping[str, str] | None = None, company_code: str = "01",
                 entities: Iterable[EntitySpec] | None = None, token_ttl: float = 3600.0, quota: int | None = None,
                 quota_window: float = 60.0, latency: float = 0.0, import_row_limit: int = 1000,
                 list_envelope: bool = False, host: str = "127.0.0.1", port: int = 0) -> None:
        self.project = project
        self.users = dict(users or {"apiuser": "Weavy-Pa55word"})
        self.company_code = company_code
        self.specs = {spec.name: spec for spec in (entities if entities is not None else default_entities())}
        for spec in self.specs.values():
            for fspec in spec.fields:
                if fspec.foreign is not None and fspec.foreign not in self.specs:
                    raise ValueError(f"{spec.name}.{fspec.name} references unknown entity {fspec.foreign!r}")
        self.token_ttl = token_ttl
        self.quota = quota
        self.quota_window = quota_window
        self.latency = latency
        self.import_row_limit = import_row_limit
        self.list_envelope = list_envelope
        self.rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.specs}
        self.clock = _Clock()
        self.lock = threading.RLock()
        self.login_count = 0
        self.throttled_count = 0
        self.route_counts: Counter[str] = Counter()
        self.requests: list[WeavyRequest] = []
        self.server_errors: list[str] = []
        self._tokens: dict[str, _Token] = {}
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self._connections: set[socket.socket] = set()
        self._api = _Api(self)
        self._httpd = _HttpServer(self, (host, port))
        self.host = host
        self.port: int = self._httpd.server_port
        self._stopped = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="weavy-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash (``{url}/v1/Authenticate``)."""
        return f"http://{self.host}:{self.port}"

    def data_url(self, *parts: str) -> str:
        """``{url}/v1/data/{project}/...``."""
        return "/".join([self.url, "v1", "data", self.project, *parts])

    def stop(self) -> None:
        """Stop serving, close every open connection and join every thread (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
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

    def __enter__(self) -> WeavyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self.lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ---------------------------------------------------------------------------------- helpers for tests

    def seed(self, entity: str, count: int, *, start: int = 1, prefix: str | None = None,
             make: Callable[[int], Mapping[str, Any]] | None = None) -> list[str]:
        """Create ``count`` valid records (codes ``CUS000001``...); ``make(i)`` overrides fields of row ``i``.

        A required foreign key with no value takes the existing live parents in turn.
        """
        spec = self.specs[entity]
        prefix = prefix if prefix is not None else entity[:3].upper()
        with self.lock:
            parents = {f.name: [c for c, r in self.rows[f.foreign].items() if not r["srvDeleted"]]
                       for f in spec.fields if f.foreign and f.required}
            txn = _Txn(self, self.company_code)
            codes = []
            for i in range(start, start + count):
                code = f"{prefix}{i:06d}"
                values = {**self._sample(spec, i, parents), **(make(i) if make else {})}
                txn.write(spec, code, values, "create")
                codes.append(code)
            self._finish(txn, f"seeding {entity}")
        return codes

    @staticmethod
    def _sample(spec: EntitySpec, i: int, parents: Mapping[str, list[str]]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for f in spec.fields:
            if f.foreign:
                if f.required:
                    if not parents[f.name]:
                        raise ValueError(f"seed {spec.name}: no {f.foreign} to reference in {f.name}")
                    values[f.name] = parents[f.name][(i - 1) % len(parents[f.name])]
            elif f.type == "text":
                values[f.name] = f"{f.name} {i}"[: f.length or None]
            elif f.type == "integer":
                values[f.name] = i
            elif f.type == "decimal":
                values[f.name] = round(i * 1.25, 2)
            elif f.type == "boolean":
                values[f.name] = i % 2 == 0
            elif f.type == "datetime":
                values[f.name] = (datetime(2020, 1, 1) + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S")
            elif f.type == "binary":
                values[f.name] = base64.b64encode(f"{spec.name}-{i}".encode()).decode()
        return values

    def upsert(self, entity: str, code: str, **fields: Any) -> dict[str, Any]:
        """Create or update one record server-side (validated as the API would); the record."""
        with self.lock:
            txn = _Txn(self, self.company_code)
            txn.write(self.specs[entity], code, fields, "upsert")
            self._finish(txn, f"upsert {entity} {code}")
            return dict(self.rows[entity][code])

    def change(self, entity: str, code: str, **fields: Any) -> dict[str, Any]:
        """Change a record server-side, as a CRM user would: ``srvDateUTC`` moves even with no field given."""
        with self.lock:
            txn = _Txn(self, self.company_code)
            rec = txn.write(self.specs[entity], code, fields, "update")
            if rec is not None and (entity, code) not in txn.staged:
                txn.staged[(entity, code)] = rec  # a touch: nothing changed but the date
            self._finish(txn, f"change {entity} {code}")
            return dict(self.rows[entity][code])

    def delete(self, entity: str, code: str, *, physical: bool = False) -> None:
        """Delete a record server-side: logically (``srvDeleted``, date moved) unless ``physical``."""
        with self.lock:
            txn = _Txn(self, self.company_code)
            txn.delete(self.specs[entity], code, physical)
            self._finish(txn, f"delete {entity} {code}")

    def _finish(self, txn: _Txn, what: str) -> None:
        try:
            txn.finish(what)
        except ApiError as exc:
            raise ValueError(f"{exc.message}: {exc.errors}") from None

    def record(self, entity: str, code: str) -> dict[str, Any] | None:
        """A copy of one record (logically deleted included), or None."""
        with self.lock:
            rec = self.rows[entity].get(code)
            return dict(rec) if rec is not None else None

    def records(self, entity: str, *, include_deleted: bool = True) -> list[dict[str, Any]]:
        """Copies of the records in ``srvDateUTC`` order."""
        with self.lock:
            return [dict(r) for r in self.rows[entity].values() if include_deleted or not r["srvDeleted"]]

    def export_flags(self, entity: str) -> dict[str, bool]:
        """``srvExport`` by code."""
        with self.lock:
            return {code: r["srvExport"] for code, r in self.rows[entity].items()}

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, without waiting for ``token_ttl``."""
        with self.lock:
            for token in self._tokens.values():
                token.expires = 0.0

    def reset_log(self) -> None:
        """Forget the request log, the route counts and the login/429 counters."""
        with self.lock:
            self.requests.clear()
            self.route_counts.clear()
            self.login_count = self.throttled_count = 0

    # ---------------------------------------------------------------------------------- dispatch

    def _answer(self, method: str, target: str, headers: Message[str, str], body: bytes, ip: str) -> _Reply:
        if self.latency:
            time.sleep(self.latency)
        split = urlsplit(target)
        parts = [unquote(p) for p in split.path.split("/") if p]
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        route = f"{method} {split.path}"
        user: str | None = None
        try:
            route = self._route_name(method, parts)
            self._admit(ip)
            if len(parts) == 2 and parts[0] == "v1" and parts[1].lower() == "authenticate":
                reply = self._authenticate(method, headers, body)
            elif len(parts) >= 4 and parts[0] == "v1" and parts[1] == "data":
                user, company = self._authorize(headers, parts[2])
                reply = self._api.data(method, parts[3:], query, headers, body, company)
            else:
                raise ApiError(404, f"no route {split.path}")
        except ApiError as exc:
            reply = _Reply(exc.status, {"status": exc.status, "message": exc.message, "errors": exc.errors},
                           exc.headers)
        except Exception as exc:  # a bug here must show in the test, not as a hung client
            with self.lock:
                self.server_errors.append(f"{route}: {exc!r}")
            reply = _Reply(500, {"status": 500, "message": f"server error: {exc!r}", "errors": []})
        with self.lock:
            self.route_counts[route] += 1
            self.requests.append(WeavyRequest(method, split.path, query, route, reply.status, ip, user, len(body),
                                              time.time()))
        return reply

    @staticmethod
    def _route_name(method: str, parts: list[str]) -> str:
        """The route template a request matched, the key of :attr:`route_counts`."""
        if len(parts) < 4 or parts[:2] != ["v1", "data"]:
            return f"{method} /" + "/".join(parts)
        rest = parts[3:]
        fixed = {("entities",), ("exportValidation",), ("exportValidation", "multiple"), ("dataset",),
                 ("dataset", "delete"), ("relationalDataset",)}
        if tuple(rest) in fixed:
            shape = "/".join(rest)
        elif rest[0] == "entities" and len(rest) == 2:
            shape = "entities/{entity}"
        elif len(rest) == 1:
            shape = "{entity}"
        elif len(rest) == 2 and rest[1] in ("filter", "import"):
            shape = "{entity}/" + rest[1]
        elif len(rest) == 2:
            shape = "{entity}/{code}"
        else:
            shape = "/".join(rest)
        return f"{method} /v1/data/{{p}}/{shape}"

    def _admit(self, ip: str) -> None:
        """The per-IP quota: a sliding window of ``quota_window`` seconds; a refusal is not a call."""
        if self.quota is None:
            return
        now = time.monotonic()
        with self.lock:
            calls = self._calls[ip]
            while calls and calls[0] <= now - self.quota_window:
                calls.popleft()
            if len(calls) >= self.quota:
                self.throttled_count += 1
                wait = max(1, math.ceil(calls[0] + self.quota_window - now))
                raise ApiError(429, f"quota of {self.quota} calls per {self.quota_window:g} s exceeded; retry in "
                                    f"{wait} s", headers={"Retry-After": str(wait)})
            calls.append(now)

    def _authenticate(self, method: str, headers: Message[str, str], body: bytes) -> _Reply:
        if method != "POST":
            raise ApiError(405, "Authenticate takes POST", headers={"Allow": "POST"})
        doc = _read_json(headers, body)
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in
                                                ("scope", "projectCode", "userName", "password")):
            raise ApiError(400, "expected {\"scope\":\"API\",\"projectCode\",\"userName\",\"password\"}")
        if doc["scope"] != "API":
            raise ApiError(400, "scope must be \"API\"")
        user = doc["userName"]
        known = self.users.get(user)
        matches = known is not None and secrets.compare_digest(known.encode(), doc["password"].encode())
        if doc["projectCode"] != self.project or not matches:
            raise ApiError(401, "invalid project code, user name or password")
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.login_count += 1
            self._tokens[token] = _Token(user, self.project, time.monotonic() + self.token_ttl)
        return _Reply(200, {"authToken": token, "expiresIn": math.ceil(self.token_ttl),
                            "generatedTimeUTC": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                            "tokenType": "Bearer", "projectCode": self.project, "userName": user})

    def _authorize(self, headers: Message[str, str], project: str) -> tuple[str, str]:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        with self.lock:
            found = self._tokens.get(token.strip())
            if found is None:
                raise ApiError(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
            if found.expires <= time.monotonic():
                raise ApiError(401, "token expired", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if project != found.project:
            raise ApiError(403, f"the token does not give access to project {project!r}")
        return found.user, self.company_code


class _Api:
    """The data routes behind authentication: reads, unit writes, atomic batches and export validation."""

    def __init__(self, server: WeavyServer) -> None:
        self.server = server

    def data(self, method: str, rest: list[str], query: dict[str, str], headers: Message[str, str], body: bytes,
             company: str) -> _Reply:
        """Answer ``/v1/data/{p}/<rest>`` for an authenticated user of ``company``; raises :class:`ApiError`."""
        def only(*methods: str) -> None:
            if method not in methods:
                raise ApiError(405, f"{method} is not allowed here", headers={"Allow": ", ".join(methods)})

        def spec_of(name: str) -> EntitySpec:
            spec = self.server.specs.get(name)
            if spec is None:
                raise ApiError(404, f"unknown entity {name!r}")
            return spec

        head = tuple(rest)
        if head == ("entities",):
            only("GET")
            return _Reply(200, [s.describe() for s in self.server.specs.values()])
        if len(rest) == 2 and rest[0] == "entities":
            only("GET")
            return _Reply(200, spec_of(rest[1]).describe())
        if head in (("exportValidation",), ("exportValidation", "multiple")):
            only("POST")
            return self._export_validation(_read_json(headers, body), len(rest) == 2, company)
        if head == ("dataset",):
            only("POST")
            return self._dataset(_read_json(headers, body), company)
        if head == ("dataset", "delete"):
            only("POST")
            self._check_query(query, ("deleteMode",))
            return self._dataset_delete(_read_json(headers, body), query.get("deleteMode"), company)
        if head == ("relationalDataset",):
            only("POST")
            return self._relational(_read_json(headers, body), company)
        spec = spec_of(rest[0])
        if len(rest) == 1:
            only("GET")
            self._check_query(query, _QUERY_FILTERS)
            return self._select(spec, query, company)
        if len(rest) == 2 and rest[1] == "filter":
            only("POST")
            return self._filter(spec, _read_json(headers, body), company)
        if len(rest) == 2 and rest[1] == "import":
            only("POST")
            return self._import(spec, _read_json(headers, body), company)
        if len(rest) == 2:
            only("GET", "POST", "PUT", "DELETE")
            return self._crud(method, spec, rest[1], query, headers, body, company)
        raise ApiError(404, "no route " + "/".join(rest))

    def _spec_named(self, name: Any) -> EntitySpec | None:
        """The entity a document names, or None (for anything that is not a known name, a list included)."""
        return self.server.specs.get(name) if isinstance(name, str) else None

    @staticmethod
    def _check_query(query: Mapping[str, str], allowed: Iterable[str]) -> None:
        unknown = sorted(set(query) - set(allowed))
        if unknown:
            raise ApiError(400, f"unknown query parameter(s) {unknown}; allowed: {sorted(allowed)}",
                           [_err(None, None, name, "unknown query parameter") for name in unknown])

    # ---------------------------------------------------------------------------------- reads

    def _select(self, spec: EntitySpec, options: Mapping[str, Any], company: str,
                conditions: Sequence[tuple[str, str, Any]] = (), order: Sequence[tuple[str, bool]] = ()) -> _Reply:
        offset = _int(options.get("offset", 0), "offset", 0, None)
        limit = _int(options.get("limit", PAGE_LIMIT), "limit", 1, PAGE_LIMIT)
        include_deleted = _flag(options.get("includeDeleted", False), "includeDeleted")
        export = _flag(options["srvExport"], "srvExport") if options.get("srvExport") is not None else None
        since = None
        if options.get("srvDateUTCFrom") is not None:
            since = parse_srv_date(options["srvDateUTCFrom"])
            if since is None:
                raise ApiError(400, "srvDateUTCFrom must be YYYY-MM-DDTHH:MM:SS[.fffffff]",
                               [_err(spec.name, None, "srvDateUTCFrom", repr(options["srvDateUTCFrom"]))])
        wanted = options.get("companyCode") or company
        with self.server.lock:
            # dict order is srvDateUTC order (the clock only moves forward and a change re-inserts the row),
            # which is the default order: srvDateUTC, then code. So srvDateUTCFrom is a bisection.
            rows = list(self.server.rows[spec.name].values())
            first = bisect_left(rows, since, key=lambda r: r["srvDateUTC"]) if since is not None else 0
            found = [r for r in islice(rows, first, None) if r["companyCode"] == wanted
                     and (include_deleted or not r["srvDeleted"]) and (export is None or r["srvExport"] is export)]
            for name, op, value in conditions:
                test = _condition(name, op, value)
                found = [r for r in found if test(r)]
            for name, descending in reversed(order):  # stable sorts, last key first
                found.sort(key=_sort_key(name), reverse=descending)
            page = [dict(r) for r in found[offset:offset + limit]]  # values are scalars: a shallow copy is enough
        headers = {"X-Total-Count": str(len(found)), "X-Offset": str(offset), "X-Limit": str(limit)}
        if self.server.list_envelope:
            return _Reply(200, {"data": page, "offset": offset, "limit": limit, "total": len(found)}, headers)
        return _Reply(200, page, headers)

    def _filter(self, spec: EntitySpec, body: Any, company: str) -> _Reply:
        doc: dict[str, Any] = {} if body is None else body
        if not isinstance(doc, dict):
            raise ApiError(400, "the filter document must be a JSON object")
        self._check_body(doc, ("filters", "orderBy", *_QUERY_FILTERS), spec.name)
        types = {spec.key: "text", "companyCode": "text", "srvDateUTC": "datetime", "srvExport": "boolean",
                 "srvDeleted": "boolean", **{f.name: f.type for f in spec.fields}}
        names = set(types)
        errors: list[dict[str, Any]] = []
        for key in ("filters", "orderBy"):
            if not isinstance(doc.get(key) or [], list):
                raise ApiError(400, f"{key} is a JSON array", [_err(spec.name, None, key, "not a JSON array")])
        conditions: list[tuple[str, str, Any]] = []
        for item in doc.get("filters") or []:
            if not isinstance(item, dict) or set(item) - {"fieldName", "operator", "value"}:
                errors.append(_err(spec.name, None, None, f"a filter is {{fieldName, operator, value}}: {item!r}"))
                continue
            name, op = item.get("fieldName"), _OPERATORS.get(str(item.get("operator", "eq")))
            value = item.get("value")
            if not isinstance(name, str) or name not in names:
                errors.append(_err(spec.name, None, name if isinstance(name, str) else None, "unknown field"))
            elif op is None:
                errors.append(_err(spec.name, None, name, f"unknown operator {item.get('operator')!r}; "
                                                          f"use one of {sorted(set(_OPERATORS.values()))}"))
            elif op == "in" and not isinstance(value, list):
                errors.append(_err(spec.name, None, name, "the value of 'in' must be a list"))
            elif op not in ("isNull", "isNotNull") and value is None:
                errors.append(_err(spec.name, None, name, "use isNull/isNotNull to compare with null"))
            elif op not in ("isNull", "isNotNull") and not all(
                    _fits(types[name], v) and (op != "like" or isinstance(v, str))
                    for v in (value if isinstance(value, list) else [value])):
                errors.append(_err(spec.name, None, name, f"{value!r} does not fit a {types[name]} field"))
            else:
                if name == "srvDateUTC" and op != "in" and value is not None:
                    value = parse_srv_date(value) or value
                conditions.append((name, op, value))
        order: list[tuple[str, bool]] = []
        for item in doc.get("orderBy") or []:
            name = item.get("fieldName") if isinstance(item, dict) else None
            direction = str(item.get("direction", "asc")).lower() if isinstance(item, dict) else ""
            if not isinstance(name, str) or name not in names or direction not in ("asc", "desc"):
                errors.append(_err(spec.name, None, name if isinstance(name, str) else None,
                                   f"orderBy entries are {{fieldName, direction: asc|desc}}: {item!r}"))
            else:
                order.append((name, direction == "desc"))
        if errors:
            raise ApiError(400, "invalid filter", errors)
        return self._select(spec, doc, company, conditions, order)

    @staticmethod
    def _check_body(doc: Mapping[str, Any], allowed: Iterable[str], entity: str | None) -> None:
        unknown = sorted(set(doc) - set(allowed))
        if unknown:
            raise ApiError(400, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}",
                           [_err(entity, None, name, "unknown key") for name in unknown])

    # ---------------------------------------------------------------------------------- writes

    def _crud(self, method: str, spec: EntitySpec, code: str, query: dict[str, str], headers: Message[str, str],
              body: bytes, company: str) -> _Reply:
        if method == "GET":
            self._check_query(query, ("includeDeleted",))
            with self.server.lock:
                rec = self.server.rows[spec.name].get(code)
                if rec is None or (rec["srvDeleted"] and not _flag(query.get("includeDeleted", False),
                                                                   "includeDeleted")):
                    raise ApiError(404, f"{spec.name} {code!r} not found")
                return _Reply(200, dict(rec))
        if method == "DELETE":
            self._check_query(query, ("deleteMode",))
            physical = self._delete_mode(query.get("deleteMode"))
            with self.server.lock:
                txn = _Txn(self.server, company)
                txn.delete(spec, code, physical)
                txn.finish(f"delete of {spec.name} {code!r} refused", batch=False)
            return _Reply(200, {"deletedRow": 1})
        self._check_query(query, ())
        doc = _read_json(headers, body)
        with self.server.lock:
            txn = _Txn(self.server, company)
            txn.write(spec, code, doc, "create" if method == "POST" else "update")
            txn.finish(f"{'create' if method == 'POST' else 'update'} of {spec.name} {code!r} refused", batch=False)
            return _Reply(200, dict(self.server.rows[spec.name][code]))

    @staticmethod
    def _delete_mode(value: str | None) -> bool:
        if value is None or value.lower() == "logical":
            return False
        if value.lower() == "physical":
            return True
        raise ApiError(400, f"deleteMode must be Logical or Physical, not {value!r}")

    def _limit(self, count: int, what: str) -> None:
        if count > self.server.import_row_limit:
            raise ApiError(400, f"{what}: {count} rows, more than the limit of {self.server.import_row_limit} per call",
                           [_err(None, None, None, f"at most {self.server.import_row_limit} rows per call")])

    def _stats(self, started: float, counts: Mapping[str, int], *keys: str) -> dict[str, Any]:
        took = time.perf_counter() - started
        answer: dict[str, Any] = {k: counts.get(k, 0) for k in keys}
        answer["statistics"] = {"queryCount": sum(answer.values()) + 1, "queryDurationTotal": _timespan(took),
                                "executionDuration": _timespan(took)}
        return answer

    def _import(self, spec: EntitySpec, doc: Any, company: str) -> _Reply:
        started = time.perf_counter()
        if not isinstance(doc, list):
            raise ApiError(400, "the import document is a JSON array of rows")
        self._limit(len(doc), f"import of {spec.name}")
        with self.server.lock:
            txn = _Txn(self.server, company)
            self._write_rows(txn, spec, doc)
            txn.finish(f"import of {spec.name} refused")
        return _Reply(200, self._stats(started, txn.counts, "addedRow", "updatedRow", "unchangedRow"))

    @staticmethod
    def _write_rows(txn: _Txn, spec: EntitySpec, rows: list[Any]) -> list[str]:
        """Upsert rows that carry their own key; a code twice in one batch is an error."""
        seen: set[str] = set()
        codes = []
        for index, row in enumerate(rows):
            code = row.get(spec.key) if isinstance(row, dict) else None
            if not isinstance(code, str) or not code:
                txn.error(spec.name, None, spec.key, f"row {index}: {spec.key} is required")
                continue
            if code in seen:
                txn.error(spec.name, code, spec.key, f"row {index}: {code!r} appears twice in the batch")
                continue
            seen.add(code)
            codes.append(code)
            txn.write(spec, code, row, "upsert")
        return codes

    def _dataset(self, doc: Any, company: str) -> _Reply:
        started = time.perf_counter()
        if not isinstance(doc, dict) or not doc:
            raise ApiError(400, "the dataset is a JSON object of entity name to rows, the main entity first")
        batches: list[tuple[EntitySpec, list[Any]]] = []
        errors = []
        for name, rows in doc.items():
            spec = self.server.specs.get(name)
            if spec is None:
                errors.append(_err(name, None, None, f"unknown entity {name!r}"))
                continue
            rows = [rows] if isinstance(rows, dict) and not batches else rows
            if not isinstance(rows, list):
                errors.append(_err(name, None, None, "the rows of an entity are a JSON array"))
                continue
            if not batches and len(rows) != 1:
                errors.append(_err(name, None, None, f"the main entity ({name}) must have exactly one row, "
                                                     f"not {len(rows)}"))
            batches.append((spec, rows))
        if errors:
            raise ApiError(400, "invalid dataset: nothing was written", errors)
        self._limit(sum(len(rows) for _, rows in batches), "dataset")
        with self.server.lock:
            txn = _Txn(self.server, company)
            present = {spec.name: set(self._write_rows(txn, spec, rows)) for spec, rows in batches}
            if not txn.errors:
                # Rows linked to a parent of the document, of an entity the document names, but no longer in it.
                for spec, _ in batches[1:]:
                    links = [f for f in spec.fields if f.foreign in present]
                    doomed = [r[spec.key] for r in txn.view(spec.name)
                              if not r["srvDeleted"] and r[spec.key] not in present[spec.name]
                              and any(r[f.name] in present[f.foreign or ""] for f in links)]
                    for code in doomed:
                        txn.delete(spec, code, physical=False)
            txn.finish("dataset refused")
        return _Reply(200, self._stats(started, txn.counts, "addedRow", "updatedRow", "unchangedRow", "deletedRow"))

    def _parse_deletes(self, deletes: Any, default_mode: str | None) -> list[tuple[EntitySpec, list[Any], bool]]:
        if not isinstance(deletes, list):
            raise ApiError(400, "deletes is a JSON array of {entityName, rowCodes, deleteMode?}")
        out = []
        errors = []
        for item in deletes:
            if not isinstance(item, dict) or set(item) - {"entityName", "rowCodes", "deleteMode"} \
                    or not isinstance(item.get("rowCodes"), list):
                errors.append(_err(None, None, None, f"a delete is {{entityName, rowCodes: [...], deleteMode?}}: "
                                                     f"{item!r}"))
                continue
            spec = self._spec_named(item.get("entityName"))
            if spec is None:
                errors.append(_err(None, None, "entityName", f"unknown entity {item.get('entityName')!r}"))
                continue
            out.append((spec, item["rowCodes"], self._delete_mode(item.get("deleteMode", default_mode))))
        if errors:
            raise ApiError(400, "invalid deletes: nothing was written", errors)
        return out

    def _dataset_delete(self, doc: Any, mode: str | None, company: str) -> _Reply:
        started = time.perf_counter()
        deletes = self._parse_deletes(doc, mode)
        self._limit(sum(len(codes) for _, codes, _ in deletes), "dataset delete")
        with self.server.lock:
            txn = _Txn(self.server, company)
            for spec, codes, physical in deletes:
                for code in codes:
                    txn.delete(spec, code, physical)
            txn.finish("dataset delete refused")
        return _Reply(200, self._stats(started, txn.counts, "deletedRow"))

    def _relational(self, doc: Any, company: str) -> _Reply:
        started = time.perf_counter()
        if not isinstance(doc, dict):
            raise ApiError(400, "the relational dataset is a JSON object {noResultData, data, deletes, relations}")
        self._check_body(doc, ("noResultData", "data", "deletes", "relations"), None)
        no_result = _flag(doc.get("noResultData", False), "noResultData")
        data, relations = doc.get("data") or [], doc.get("relations") or []
        errors = []
        batches: list[tuple[EntitySpec, list[Any]]] = []
        if not isinstance(data, list):
            raise ApiError(400, "data is a JSON array of {entityName, rows}")
        for item in data:
            if not isinstance(item, dict) or set(item) != {"entityName", "rows"} or not isinstance(item["rows"], list):
                errors.append(_err(None, None, None, f"a data entry is {{entityName, rows: [...]}}: {item!r}"))
            elif (spec := self._spec_named(item["entityName"])) is None:
                errors.append(_err(None, None, "entityName", f"unknown entity {item['entityName']!r}"))
            else:
                batches.append((spec, item["rows"]))
        parsed_relations = []
        names = ("SourceEntityName", "SourceRowCode", "TargetEntityName", "TargetRowCode", "TargetFieldName")
        if not isinstance(relations, list):
            raise ApiError(400, "relations is a JSON array")
        for item in relations:
            fixed = {k[:1].upper() + k[1:]: v for k, v in item.items()} if isinstance(item, dict) else {}
            if set(fixed) != set(names) or not all(isinstance(v, str) for v in fixed.values()):
                errors.append(_err(None, None, None, f"a relation has exactly {list(names)} as strings: {item!r}"))
            else:
                parsed_relations.append(fixed)
        deletes = self._parse_deletes(doc.get("deletes") or [], None)
        if errors:
            raise ApiError(400, "invalid relational dataset: nothing was written", errors)
        self._limit(sum(len(r) for _, r in batches) + len(parsed_relations)
                    + sum(len(c) for _, c, _ in deletes), "relational dataset")
        with self.server.lock:
            txn = _Txn(self.server, company)
            touched: dict[str, list[str]] = defaultdict(list)
            merged: dict[str, list[Any]] = defaultdict(list)
            for spec, rows in batches:
                merged[spec.name].extend(rows)  # one entity in two entries is one batch: a code twice is an error
            for name, rows in merged.items():
                touched[name].extend(self._write_rows(txn, self.server.specs[name], rows))
            for rel in parsed_relations:
                target = txn.spec(rel["TargetEntityName"], rel["TargetRowCode"])
                if target is None or txn.spec(rel["SourceEntityName"], rel["SourceRowCode"]) is None:
                    continue
                fspec = target.field(rel["TargetFieldName"])
                if fspec is None or fspec.foreign != rel["SourceEntityName"]:
                    txn.error(target.name, rel["TargetRowCode"], rel["TargetFieldName"],
                              f"{rel['TargetFieldName']} is not a foreign key of {target.name} to "
                              f"{rel['SourceEntityName']}")
                    continue
                if txn.write(target, rel["TargetRowCode"], {fspec.name: rel["SourceRowCode"]}, "update") is not None:
                    touched[target.name].append(rel["TargetRowCode"])
            for spec, codes, physical in deletes:
                for code in codes:
                    txn.delete(spec, code, physical)
            txn.finish("relational dataset refused")
            answer = self._stats(started, txn.counts, "addedRow", "updatedRow", "unchangedRow", "deletedRow")
            if not no_result:
                answer["data"] = [{"entityName": name, "rows": [dict(self.server.rows[name][c])
                                                                for c in dict.fromkeys(codes)
                                                                if c in self.server.rows[name]
                                                                and not self.server.rows[name][c]["srvDeleted"]]}
                                  for name, codes in touched.items()]
        return _Reply(200, answer)

    def _export_validation(self, doc: Any, multiple: bool, company: str) -> _Reply:
        started = time.perf_counter()
        docs = doc if multiple else [doc]
        if not isinstance(docs, list):
            raise ApiError(400, "exportValidation/multiple takes a JSON array of validation documents")
        errors = []
        plan: list[tuple[EntitySpec, bool, str, list[tuple[Any, Any, str | None]]]] = []
        for item in docs:
            if not isinstance(item, dict) or set(item) - {"companyCode", "entityName", "srvExport", "rows"}:
                errors.append(_err(None, None, None, "a validation document is {companyCode?, entityName, "
                                                     f"srvExport, rows}}: {item!r}"))
                continue
            spec = self._spec_named(item.get("entityName"))
            if spec is None:
                errors.append(_err(None, None, "entityName", f"unknown entity {item.get('entityName')!r}"))
                continue
            if not isinstance(item.get("srvExport"), bool | int) or item.get("srvExport") not in (0, 1):
                errors.append(_err(spec.name, None, "srvExport", "srvExport (true/false) is required"))
                continue
            if not isinstance(item.get("rows"), list):
                errors.append(_err(spec.name, None, "rows", "rows (a JSON array) is required"))
                continue
            rows = []
            for row in item["rows"]:
                if not isinstance(row, dict) or set(row) != {"rowCode", "srvDateUTC"}:
                    errors.append(_err(spec.name, None, None, f"a row is {{rowCode, srvDateUTC}}: {row!r}"))
                    continue
                sent = parse_srv_date(row["srvDateUTC"])
                if sent is None:
                    errors.append(_err(spec.name, row["rowCode"], "srvDateUTC", "not a date YYYY-MM-DDTHH:MM:SS.f"))
                rows.append((row["rowCode"], row["srvDateUTC"], sent))
            plan.append((spec, bool(item["srvExport"]), item.get("companyCode") or company, rows))
        if errors:
            raise ApiError(400, "invalid export validation: nothing was set", errors)
        updated = 0
        conflicts = []
        with self.server.lock:
            for spec, value, wanted_company, rows in plan:
                for code, raw, sent in rows:
                    rec = self.server.rows[spec.name].get(code) if isinstance(code, str) else None
                    if rec is None or rec["companyCode"] != wanted_company:
                        conflicts.append({"entityName": spec.name, "rowCode": code, "srvDateUTC": raw,
                                          "currentSrvDateUTC": None, "message": "record not found"})
                    elif rec["srvDateUTC"] != sent:
                        conflicts.append({"entityName": spec.name, "rowCode": code, "srvDateUTC": raw,
                                          "currentSrvDateUTC": rec["srvDateUTC"],
                                          "message": "the record changed on the server since it was read"})
                    else:
                        rec["srvExport"] = value
                        updated += 1
        answer = self._stats(started, {"updatedRow": updated}, "updatedRow")
        answer["conflicts"] = conflicts
        return _Reply(200, answer)


# ----------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM (or SIGINT); the URL is the first line printed."""
    parser = argparse.ArgumentParser(prog="python -m tests.servers.weavy_server",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--project", default="DEMO")
    parser.add_argument("--user", default="apiuser")
    parser.add_argument("--password", default=os.environ.get("WEAVY_PASSWORD", "Weavy-Pa55word"),
                        help="or WEAVY_PASSWORD, which keeps it out of the process list")
    parser.add_argument("--company", default="01")
    parser.add_argument("--token-ttl", type=float, default=3600.0)
    parser.add_argument("--quota", type=int, default=None, help="calls per window per client IP (default: none)")
    parser.add_argument("--quota-window", type=float, default=60.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--import-row-limit", type=int, default=1000)
    parser.add_argument("--list-envelope", action="store_true", help="answer reads as {data, offset, limit, total}")
    parser.add_argument("--seed", action="append", default=[], metavar="ENTITY=N",
                        help="create N records of ENTITY before serving (parents first)")
    args = parser.parse_args(argv)
    server = WeavyServer(project=args.project, users={args.user: args.password}, company_code=args.company,
                         token_ttl=args.token_ttl, quota=args.quota, quota_window=args.quota_window,
                         latency=args.latency, import_row_limit=args.import_row_limit,
                         list_envelope=args.list_envelope, host=args.host, port=args.port)
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
