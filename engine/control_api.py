"""The Autofy-compatible control API: a partner's Autofy client code creates, schedules, runs and disconnects
syncengine profiles unchanged (``syncengine serve --control``, off by default).

Why Autofy's API: partners already have client code for Propelware Autofy's partner API
(the Autofy Batch Sync API document, "Autofy Batch Sync API"). Serving the same routes, bodies and
envelope lets that code point at syncengine by changing only its base URL and token.

Routes, below ``/api/v1/`` (paths are case-insensitive, with or without a trailing slash, as IIS serves them)::

    POST company      {"CoName", "SyncProfileTemplate", "Credentials": [...], "Profiles": [], "Users": []}
    POST profiles     a profile document, "ProfileID": null, "UserCompanyID", "TemplateName"  → a new profile
    PUT  profiles     a profile document with "ProfileID": the properties it holds are updated
    POST schedule     {profileId, scheduleInterval, scheduleTime, intervalType: 0 minutes | 1 hours | 2 days}
    POST runsync      {"profileId", "syncId", "dtStartUTC"}
    POST disconnect   {"profileId", "syncId"}

**Authentication.** Every call carries ``AUTHORIZATION: <token>``: the token alone, no scheme, as the seed's C#
sends it. The token is ``SYNCENGINE_CONTROL_TOKEN`` (or the file ``SYNCENGINE_CONTROL_TOKEN_FILE`` names), at
least 16 characters, compared in constant time (:func:`hmac.compare_digest`); a ``Bearer`` prefix is a wrong
token. A missing or wrong token is **HTTP 401** with this body (ASP.NET Web API's own message, in the envelope;
the token sent is never repeated)::

    {"Meta": {"StatusCode": 401, "Severity": "Error",
              "Message": "Authorization has been denied for this request."}, "Detail": null}

**The envelope.** Every answer is ``{"Meta": {"StatusCode", "Severity", "Message"}, "Detail": ...}``. Success
is HTTP 200 with ``{"StatusCode": 0, "Severity": null, "Message": null}``. A **business error** (the request
was understood and refused; nothing changed) is HTTP 200 with ``Severity: "Error"``, a ``Message``, ``Detail:
null`` and one of these codes (the seed names none; they are those of the test fake of Autofy)::

    1 INVALID            a property is missing or wrong (not a GUID, not a date, an unknown syncId...)
    2 TEMPLATE_NOT_FOUND no template of that name in the templates folder, or it is not a valid pipeline
    3 PROFILE_NOT_FOUND  no profile with that id
    4 DISCONNECTED       runsync of a sync id that was disconnected (or of a profile disconnected as a whole)
    5 COMPANY_NOT_FOUND  POST profiles names no company
    6 RUN_IN_PROGRESS    runsync while a run of that profile is queued or running

A transport error keeps the envelope, with ``Meta.StatusCode`` the HTTP status: 404 an unknown path, 405 a
method a route does not take (with ``Allow``), 415 a ``Content-Type`` other than ``application/json`` or
``text/json`` (none at all is taken as JSON), 400 a body that is not a JSON object even when read leniently
(or not UTF-8), 413 a body over the limit, 500 a failure here (details only in the server's log).

**JSON as the .NET service reads it** (Json.NET): property names match **without case** (``profileid`` is
``profileId``; of two spellings the last wins), and the reader is **lenient**: unquoted property names (the
seed's own schedule example has them: ``{ profileId: "...", scheduleInterval: "30", ... }``), single-quoted
strings and trailing commas are accepted. Numbers given as text (``"scheduleInterval": "30"``) are read as
numbers. ``NaN`` and ``Infinity`` are refused; nesting deeper than :data:`MAX_DEPTH` is a 400. A UTF-8 byte
order mark (some .NET writers send one) is skipped. Note that the seed's profile example itself is not JSON
even for Json.NET (its two credential lists lack their closing ``]``): it is answered 400.

**Dates** in answers are the seed's ``M/d/yyyy h:mm:ss AM`` (``3/19/2015 4:42:50 PM``), UTC. ``dtStartUTC``
is taken in that form or in ISO 8601 (a date, or a date and time; one without an offset is UTC).

**Profiles and templates.** ``SyncProfileTemplate`` (``TemplateName`` in a profile document) names a pipeline
file ``<templates folder>/<name>.yml`` (or ``.yaml``; matched without case; letters, digits, ``.``, ``_`` and
``-`` only). A profile is that pipeline loaded as the :class:`~engine.profiles.Profile` named by its GUID: its
state namespace is ``<template>@<profile id>`` (in the template's own state file), its vars are the company's
fields (``profile_id``, ``company_id``, ``co_name``, ``sync_title``, ``user_id``; null ones are left out so the
template's defaults stand; they are partner-supplied text, so a template must not build paths from
``co_name``), and its credentials are its runs' ``env`` values (``SOURCE_PASSWORD``...; the names are in
:mod:`engine.control_store`, which also says how they are kept: encrypted with ``SYNCENGINE_CONTROL_KEY``).
The template is loaded when the profile is made, so a template that is not a valid pipeline is refused then.
Ids: companies from 5328 and users from 4526 (the seed's examples, so the seed's profile body names the first
company), profiles a GUID (accepted in any case, with or without braces).

**Company.** Makes the company, one user (``ID`` and a 28-character ``Token``, answered once and stored only
hashed) and, with a template, its profile; the answer is the seed's: ``Credentials: []`` (no password travels
back), ``Profiles: [{"ID", "CreatedDateTime", "LastSyncTime"}]`` and ``Users``. A company's ``Credentials``:
the first is the source's, the others the destinations' (as syncengine's Autofy destination splits them).
``DataSource``, when given, is one of the seed's list, compared ignoring case and spaces (``AutofyXml`` is
``Autofy XML``).

**Profiles.** POST adds a profile to company ``UserCompanyID``; PUT changes only the properties its document
holds (``TemplateName``, ``CoName``, ``SyncTitle``, ``UserID``; ``DataSourceCreds`` / ``DataDestinationCreds``
each replace that list). Schedule properties: ``EnableScheduler: false`` turns the schedule off (it is kept,
and ``true`` turns it on again); ``EnableScheduler: true`` with ``ScheduleInterval`` above 0 and/or
``ScheduleTime`` changes those parts of the schedule, whose interval type stays the one ``schedule`` set
(minutes when none was: a profile document has no interval type; ``schedule`` is the method that sets one);
``EnableScheduler`` absent or null leaves the schedule alone. Both answer the profile document, passwords
and access tokens null.

**Schedule.** ``intervalType`` is required; ``scheduleInterval`` is a positive whole number (text accepted),
1 when absent; ``scheduleTime`` (``4:00 AM``) counts only with ``intervalType`` 2, as the seed says, but is
checked whenever given. The schedule is stored as given and as a spec of :mod:`engine.schedule` (in the
server's ``schedule_timezone``, UTC by default); :meth:`ControlStore.schedules` gives them to ``serve``'s
scheduler. This module runs no scheduler of its own.

**Run sync.** ``syncId`` names a **group** of the template (``groups:`` in the pipeline); ``"0"`` (the default)
is every sync, unless the template has a group named ``"0"``. Another id is a business error. ``dtStartUTC``
becomes the run's ``since`` as ISO 8601 text (``2016-01-01T12:00:00Z``): each sync reads from there, and the run
history records the start with the reason ``since``. The answer comes at once; the run goes on in a background
thread (at most ``max_runs`` at once; more wait their turn). One run per profile at a time: another runsync
meanwhile is :data:`RUN_IN_PROGRESS`. The last run of each profile is kept for inspection
(:meth:`ControlApp.last_run`); ``LastSyncAttempt`` / ``LastSyncTime`` and ``LastSuccessfulSync`` record it.

**Disconnect.** Disconnects the group ``syncId`` names (``"0"``: every sync of the profile), in the engine's state
(``syncengine status`` shows it; the engine refuses or skips those syncs) and in the control database. Then a
runsync of that sync id (or of any, after ``"0"``) is the business error :data:`DISCONNECTED`; a runsync of
``"0"`` after one group was disconnected runs the other syncs (the run's report shows the group's syncs
``disconnected``). A profile disconnected as a whole leaves :meth:`ControlStore.schedules`. Disconnecting
again succeeds and changes nothing. Autofy's API has no way to connect again.

**Serving** (:func:`make_control_server`): waitress, a fixed pool of threads, a cap on open connections, a body
limit, and idle and whole-request deadlines; on close the requests in flight are answered, then the background
runs are asked to stop after the batch in flight (their cursors stay) and are waited for.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import math
import os
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple, NoReturn
from urllib.parse import unquote

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from engine import api
from engine.config import Pipeline, load_pipeline
from engine.control_store import (
    DEFAULT_DB,
    ControlStore,
    Credentials,
    ProfileRecord,
    key_from_env,
    now_utc,
    read_secret_env,
)
from engine.errors import ConfigError, ConnectError, SyncEngineError
from engine.logs import log_context
from engine.profiles import Profile
from engine.registry import REGISTRY, Registry
from engine.runner import RunOptions, RunReport
from engine.schedule import ScheduleError, parse_schedule

log = logging.getLogger("syncengine").getChild("control")

OK = 0
INVALID = 1
TEMPLATE_NOT_FOUND = 2
PROFILE_NOT_FOUND = 3
DISCONNECTED = 4
COMPANY_NOT_FOUND = 5
RUN_IN_PROGRESS = 6

TOKEN_ENV = "SYNCENGINE_CONTROL_TOKEN"
"""The environment variable holding the partner token every call must carry."""
MIN_TOKEN_LENGTH = 16
DENIED = "Authorization has been denied for this request."
"""ASP.NET Web API's text for a refused token, as the 401 body's ``Meta.Message``."""
PREFIX = "/api/v1/"
ROUTES: dict[str, tuple[str, ...]] = {"company": ("POST",), "profiles": ("POST", "PUT"), "schedule": ("POST",),
                                      "runsync": ("POST",), "disconnect": ("POST",)}
DATA_SOURCES = ("QuickBooks", "QuickBooks Online", "Sage 50", "Salesforce.com", "Fishbowl", "Autofy XML", "CSV")
"""The seed's ``DataSource`` values (compared ignoring case and spaces)."""
ALL_SYNCS = "0"
"""The seed's default ``syncId``: every sync of the profile."""
MAX_BODY_BYTES = 262144
"""Largest request body accepted (bytes); a company with its credentials is a few hundred."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects a body may have (the seed's go 3 deep)."""
MAX_CREDENTIALS = 50
"""Most credential objects one list may hold."""
TOKEN_ALPHABET = string.ascii_uppercase + string.digits
USER_TOKEN_LENGTH = 28
"""The seed's user token: ``KGR6B1VGJQU5MK3P9XUJLGZ0ZPCH``."""
TICK = 0.2
"""Longest wait for socket events before the stop flag is looked at again."""
SWEEP_EVERY = 0.1
"""Seconds between two looks for connections past their idle or request deadline."""
STOP_WAIT = 30.0
"""Longest a close waits for the requests in flight before it closes their connections."""
MAX_HEADER_BYTES = 65536
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SEED_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2})(?::(\d{2}))? ?([AaPp][Mm])")
_HIDDEN = {"password", "accesstoken", "accesstokensecret"}

Runner = Callable[[Pipeline, RunOptions], RunReport]
"""How a profile's run is carried out: :func:`engine.api.run` unless the caller routes it elsewhere."""


# --- dates ----------------------------------------------------------------------------------------------------


def seed_date(moment: datetime) -> str:
    """A moment as the seed writes it, in UTC: ``3/19/2015 4:42:50 PM``."""
    moment = moment.astimezone(UTC)
    hour = moment.hour % 12 or 12
    return (f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d}:{moment.second:02d} "
            f"{'AM' if moment.hour < 12 else 'PM'}")


def _seed_or_blank(moment: datetime | None) -> str:
    return seed_date(moment) if moment is not None else ""


def parse_start(text: str) -> datetime | None:
    """``dtStartUTC`` as a UTC moment: the seed's ``M/d/yyyy h:mm:ss AM`` or ISO 8601; ``None`` when neither."""
    text = text.strip()
    found = _SEED_DATE.fullmatch(text)
    try:
        if found:
            month, day, year, hour, minute = (int(g) for g in found.groups()[:5])
            second = int(found.group(6) or 0)
            if not 1 <= hour <= 12:
                return None
            hour = hour % 12 + (12 if found.group(7).upper() == "PM" else 0)
            return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?", text, re.IGNORECASE):
            return None
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def since_text(moment: datetime) -> str:
    """A start moment as the ``since`` the sources are given: ISO 8601 in UTC, ``2016-01-01T12:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- JSON as Json.NET reads it --------------------------------------------------------------------------------


class Business(Exception):
    """A refusal: HTTP ``http`` (200 for a business error) with ``Meta.StatusCode`` ``code``."""

    def __init__(self, code: int, message: str, http: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http = http
        self.headers = headers


def _nesting(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (either quote), checked before any parser recurses."""
    depth = deepest = 0
    quote: str | None = None
    escaped = False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _strict(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants)


def lenient_json(text: str) -> Any:
    """JSON as Json.NET reads it: strict JSON, else with unquoted property names, single-quoted strings and
    trailing commas. Raises ``ValueError`` when even that reading fails, or the nesting is over :data:`MAX_DEPTH`.

    (The reading of the test fake of Autofy, ``tests/servers/autofy_server.py``, with bounds added.)
    """
    if _nesting(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    try:
        return _strict(text)
    except ValueError:
        pass
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "'":
            j = i + 1
            chars: list[str] = []
            while j < n and text[j] != "'":
                if text[j] == "\\" and j + 1 < n:
                    chars.append(text[j + 1] if text[j + 1] == "'" else text[j:j + 2])
                    j += 2
                    continue
                chars.append('\\"' if text[j] == '"' else text[j])
                j += 1
            out.append('"' + "".join(chars) + '"')
            i = j + 1
        elif c.isalpha() or c in "_$":
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            word = text[i:j]
            k = j
            while k < n and text[k].isspace():
                k += 1
            out.append(json.dumps(word) if k < n and text[k] == ":" else word)
            i = j
        elif c == ",":
            k = i + 1
            while k < n and text[k].isspace():
                k += 1
            if not (k < n and text[k] in "}]"):
                out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    return _strict("".join(out))


def _squash(text: str) -> str:
    return text.replace(" ", "").lower()


_KNOWN_SOURCES = {_squash(s) for s in DATA_SOURCES}


class Doc:
    """A JSON object read with case-insensitive property names (the last of two spellings wins)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = {str(k).lower(): v for k, v in data.items()}

    def has(self, name: str) -> bool:
        """Whether the property is present (even null)."""
        return name.lower() in self.data

    def get(self, name: str, default: Any = None) -> Any:
        """The property's value, ``default`` when absent."""
        return self.data.get(name.lower(), default)

    def text(self, name: str, *, required: bool = False) -> str | None:
        """A text property (a number is taken as its text, as Json.NET converts it); blank is absent."""
        value = self.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise Business(INVALID, f"{name} is required.")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise Business(INVALID, f"{name} must be a string.")
        return str(value).strip()

    def integer(self, name: str) -> int | None:
        """A whole-number property, given as a number or as its text; ``None`` when absent, null or blank."""
        value = self.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, bool):
            raise Business(INVALID, f"{name} must be a whole number.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,12}\s*", value):
            return int(value)
        raise Business(INVALID, f"{name} must be a whole number.")

    def flag(self, name: str) -> bool | None:
        """A true/false property (``"true"`` as text too); ``None`` when absent or null."""
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise Business(INVALID, f"{name} must be true or false.")
        return value

    def credentials(self, name: str) -> list[dict[str, Any]] | None:
        """A list of credential objects (``None`` when absent or null); a ``DataSource`` must be one of the seed's."""
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise Business(INVALID, f"{name} must be a list.")
        if len(value) > MAX_CREDENTIALS:
            raise Business(INVALID, f"{name} holds more than {MAX_CREDENTIALS} credentials.")
        out = []
        for n, item in enumerate(value):
            if not isinstance(item, dict):
                raise Business(INVALID, f"{name}[{n}] must be an object.")
            source = Doc(item).text("DataSource")
            if source is not None and _squash(source) not in _KNOWN_SOURCES:
                raise Business(INVALID, f"{name}[{n}].DataSource '{source[:60]}' is not one of: "
                                        f"{', '.join(DATA_SOURCES)}.")
            out.append(dict(item))
        return out


def _public(credentials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Credentials as an answer shows them: passwords and access tokens null."""
    return [{k: (None if str(k).lower() in _HIDDEN else v) for k, v in c.items()} for c in credentials]


def envelope(code: int = OK, message: str | None = None, detail: Any = None) -> dict[str, Any]:
    """The seed's answer document."""
    return {"Meta": {"StatusCode": code, "Severity": None if code == OK else "Error", "Message": message},
            "Detail": detail}


# --- the application -----------------------------------------------------------------------------------------


class Reply(NamedTuple):
    """One answer: HTTP status, headers and the body (the envelope, as JSON)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def document(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


def _reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Reply(status, (*headers, ("Content-Type", "application/json; charset=utf-8"),
                          ("Cache-Control", "no-store")), body)


@dataclass
class RunRecord:
    """One run a ``runsync`` started, kept (the last per profile) for inspection."""

    profile_id: str
    sync_id: str
    group: str | None
    since: str | None
    accepted: datetime
    status: str = "queued"
    """``queued``, ``running``, ``ok`` (exit 0), ``errors`` (records failed, exit 1), ``failed`` or ``cancelled``."""
    started: datetime | None = None
    finished: datetime | None = None
    report: dict[str, Any] | None = None
    """The run's report (:meth:`RunReport.to_dict`), secrets masked by the engine."""
    error: str | None = None
    """Why the run could not be carried out (or stopped before its end)."""
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


def _check_settings(templates_dir: Path, token: str) -> None:
    """A weak token or a missing templates folder is refused before anything is opened or written."""
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or token != token.strip():
        raise ConfigError(f"the control API token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                          "without surrounding spaces (make one with: python -c \"import secrets; "
                          "print(secrets.token_urlsafe(32))\")")
    if not templates_dir.is_dir():
        raise ConfigError(f"the control API's templates folder {templates_dir} does not exist")


class ControlApp:
    """The control API as a WSGI application (and :meth:`handle` for one request as plain values).

    ``templates_dir`` holds the templates (``<name>.yml``), ``store`` what the API made (the app owns it: its
    :meth:`close` closes it), ``token`` the partner token, ``runner`` how a run is carried out (the pipeline is
    loaded with the profile's vars and decrypted credentials; :func:`engine.api.run` by default). Templates are
    loaded with ``registry``, which must hold the adapters (the entry points' ``register_builtins`` does it).
    """

    def __init__(self, templates_dir: Path, store: ControlStore, token: str, runner: Runner | None = None, *,
                 registry: Registry = REGISTRY, max_runs: int = 4, schedule_timezone: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        _check_settings(templates_dir, token)
        if schedule_timezone is not None:
            parse_schedule({"every": "1 day", "timezone": schedule_timezone}, ("schedule_timezone",))
        self.templates_dir = templates_dir
        self.store = store
        self._token = token.encode("ascii")
        self._runner: Runner = runner or (lambda pipeline, options: api.run(pipeline, options))
        self._registry = registry
        self.max_body_bytes = max_body_bytes
        self.schedule_timezone = schedule_timezone
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=max_runs, thread_name_prefix="syncengine-control-run")
        self._closed = False

    # --- plumbing -------------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application: one request, one envelope."""
        length_text = environ.get("CONTENT_LENGTH") or "0"
        length = int(length_text) if length_text.isdigit() else 0
        if length > self.max_body_bytes:
            reply = _reply(413, envelope(413, f"The request body is over {self.max_body_bytes} bytes."))
        else:
            body = environ["wsgi.input"].read(length) if length else b""  # waitress gives a de-chunked length
            target = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
            headers = {"authorization": environ.get("HTTP_AUTHORIZATION"), "content-type": environ.get("CONTENT_TYPE")}
            reply = self.handle(environ["REQUEST_METHOD"], target, {k: v for k, v in headers.items() if v is not None},
                                body)
        start_response(f"{reply.status} {HTTPStatus(reply.status).phrase}",
                       [*reply.headers, ("Content-Length", str(len(reply.body)))])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else reply.body]

    def authorized(self, header: str | None) -> bool:
        """Whether an ``AUTHORIZATION`` header carries the token (compared in constant time)."""
        sent = (header or "").strip().encode("latin-1", errors="replace")  # WSGI gives header bytes as Latin-1
        return hmac.compare_digest(sent, self._token) and bool(header)

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one request (header names in any case); never raises."""
        named = {k.lower(): v for k, v in headers.items()}
        path = unquote(target.partition("#")[0].partition("?")[0], errors="replace")
        name = re.sub(r"/{2,}", "/", path).lower().rstrip("/")
        route = name[len(PREFIX):] if name.startswith(PREFIX) else ""
        try:
            if route not in ROUTES:
                raise Business(404, f"No HTTP resource was found that matches the request URI '{path[:200]}'.", 404)
            if not self.authorized(named.get("authorization")):
                raise Business(401, DENIED, 401)
            if method not in ROUTES[route]:
                raise Business(405, f"The requested resource does not support http method '{method[:20]}'.", 405,
                               (("Allow", ", ".join(ROUTES[route])),))
            kind = (named.get("content-type") or "").split(";")[0].strip().lower()
            if kind not in ("application/json", "text/json", ""):
                raise Business(415, f"The request entity's media type '{kind[:60]}' is not supported for this "
                                    "resource; send application/json.", 415)
            if len(body) > self.max_body_bytes:
                raise Business(413, f"The request body is over {self.max_body_bytes} bytes.", 413)
            try:
                parsed = lenient_json(body.decode("utf-8-sig"))
            except UnicodeDecodeError:
                raise Business(400, "The request body is not UTF-8 text.", 400) from None
            except (ValueError, RecursionError) as exc:
                raise Business(400, f"The request body is not valid JSON: {str(exc)[:200]}", 400) from None
            if not isinstance(parsed, dict):
                raise Business(400, "The request body must be a JSON object.", 400)
            detail = getattr(self, f"_{method.lower()}_{route}")(Doc(parsed))
            return _reply(200, envelope(OK, None, detail))
        except Business as exc:
            if exc.http == 200:
                log.info("control: %s %s refused (%d): %s", method, route, exc.code, exc.message)
            return _reply(exc.http, envelope(exc.code, exc.message), exc.headers)
        except Exception:  # noqa: BLE001 - a bug is logged here; the caller gets the envelope, not a traceback
            log.exception("control: %s %s failed", method[:20], route or path[:100])
            return _reply(500, envelope(500, "An error has occurred."))

    # --- templates and profiles --------------------------------------------------------------------------------

    def template_file(self, name: str) -> tuple[str, Path]:
        """The template a name means: (its name as the file spells it, its file); unknown is a business error."""
        if not _TEMPLATE_NAME.fullmatch(name) or ".." in name:
            raise Business(TEMPLATE_NOT_FOUND, f"The sync profile template '{name[:100]}' was not found.")
        found: tuple[str, Path] | None = None
        for path in sorted(self.templates_dir.iterdir()):
            if path.suffix.lower() in (".yml", ".yaml") and path.is_file() and path.stem.lower() == name.lower():
                if found is None or path.stem == name:
                    found = (path.stem, path)
        if found is None:
            raise Business(TEMPLATE_NOT_FOUND, f"The sync profile template '{name}' was not found.")
        return found

    def _profile_vars(self, record: ProfileRecord) -> dict[str, Any]:
        values = {"profile_id": record.id, "company_id": record.company_id, "co_name": record.co_name,
                  "sync_title": record.sync_title, "user_id": record.user_id}
        return {k: v for k, v in values.items() if v is not None}

    def load(self, record: ProfileRecord, *, template: str | None = None,
             credentials: Credentials | None = None) -> Pipeline:
        """The profile's pipeline: its template loaded as the profile (vars, and credentials as ``env`` values)."""
        _, path = self.template_file(template or record.template)
        # The profile's schedule is its instance's own (``Pipeline.schedules[None]``), which is what the
        # scheduler's jobs are made from; a run does not look at it.
        schedule = record.schedule_spec if record.schedule_enabled else None
        profile = Profile(name=record.id, vars=self._profile_vars(record), schedule=schedule,
                          secrets=credentials.env() if credentials is not None else {})
        return load_pipeline(path, self._registry, profile=profile)

    def scheduled_pipelines(self) -> list[Pipeline]:
        """Every profile that runs by itself (:meth:`ControlStore.schedules`), loaded as its runs load it
        (credentials included) with its schedule as the instance's own: what ``engine.scheduler.jobs_of`` takes.

        A profile whose template no longer loads is logged and left out, so one broken template does not
        keep the others from running. Read when called: a schedule set later needs another call.
        """
        out: list[Pipeline] = []
        for profile_id in self.store.schedules():
            record = self.store.profile(profile_id)
            if record is None:
                continue
            try:
                pipeline = self.load(record, credentials=self.store.credentials(profile_id))
            except (ConfigError, Business) as exc:
                log.error("control: profile %s is scheduled but cannot be loaded: %s", profile_id, exc)
                continue
            # Autofy's schedule is the whole profile's (syncId 0: every sync): the template's group schedules,
            # which would take their syncs off it, do not apply to a profile scheduled through the API.
            spec = pipeline.schedules.get(None)
            out.append(dataclasses.replace(pipeline, schedules={None: spec}) if spec is not None else pipeline)
        return out

    def _usable(self, record: ProfileRecord, template: str | None = None) -> Pipeline:
        """The profile's pipeline for a request; a template that is not a valid pipeline is a business error
        (checked when a profile is made or changes template, so it is refused then, not at its first run)."""
        name = template or record.template
        try:
            return self.load(record, template=name)
        except ConfigError as exc:
            log.error("control: template %s cannot be loaded as profile %s: %s", name, record.id, exc)
            raise Business(TEMPLATE_NOT_FOUND, f"The sync profile template '{name}' cannot be used: it is not "
                                               "a valid pipeline (the server's log says why).") from None

    def _record(self, doc: Doc, name: str) -> ProfileRecord:
        ident = doc.text(name, required=True)
        assert ident is not None
        try:
            key = str(uuid.UUID(ident))
        except ValueError:
            raise Business(INVALID, f"{name} '{ident[:60]}' is not a GUID.") from None
        record = self.store.profile(key)
        if record is None:
            raise Business(PROFILE_NOT_FOUND, f"The sync profile '{key}' was not found.")
        return record

    def _group(self, pipeline: Pipeline, sync_id: str) -> str | None:
        """The template group a ``syncId`` names (``None``: every sync); another id is a business error."""
        if sync_id in pipeline.groups:
            return sync_id
        if sync_id == ALL_SYNCS:
            return None
        known = ", ".join([*pipeline.groups, ALL_SYNCS])
        raise Business(INVALID, f"syncId '{sync_id[:60]}' is not a sync group of template '{pipeline.template}'; "
                                f"its sync ids are: {known}.")

    def _document(self, record: ProfileRecord) -> dict[str, Any]:
        """A profile as the seed's profile document (passwords and access tokens null)."""
        credentials = self.store.credentials(record.id)
        given = record.schedule_given or {}
        interval = given.get("scheduleInterval")
        return {"AppID": "", "LastSyncAttempt": _seed_or_blank(record.last_sync_attempt),
                "LastSuccessfulSync": _seed_or_blank(record.last_successful_sync),
                "LastSuccessfulSyncTime": _seed_or_blank(record.last_successful_sync), "DataFile": "",
                "CoName": record.co_name or "", "SyncTitle": record.sync_title or "",
                "LastModifiedDateTime": seed_date(record.modified), "CreatedDateTime": seed_date(record.created),
                "UserCompanyID": record.company_id, "LastModifiedByUserID": 0, "CreatedByUserID": 0,
                "TemplateName": record.template, "ProfileID": record.id, "UserID": record.user_id or 0,
                "EnableScheduler": record.schedule_enabled, "ScheduleInterval": int(interval or 0),
                "ScheduleTime": given.get("scheduleTime"), "DataSourceCreds": _public(credentials.sources),
                "DataDestinationCreds": _public(credentials.destinations)}

    def _spec(self, interval: int | None, kind: int | None, at: str | None) -> dict[str, Any]:
        """The schedule spec of Autofy's triple, checked; a wrong part is a business error saying which."""
        if kind not in (0, 1, 2):
            raise Business(INVALID, "intervalType must be 0 (minutes), 1 (hours) or 2 (days).")
        if interval is not None and interval < 1:
            raise Business(INVALID, "scheduleInterval must be a whole number above 0.")
        spec: dict[str, Any] = {"interval": interval or 1, "interval_type": kind}
        try:
            if at is not None:
                parse_schedule({"interval": 1, "interval_type": 2, "time": at})  # checked whatever the type
                if kind == 2:
                    spec["time"] = at
            if self.schedule_timezone is not None:
                spec["timezone"] = self.schedule_timezone
            parse_schedule(spec)
        except ScheduleError as exc:
            raise Business(INVALID, f"The schedule is not valid: {exc}") from None
        return spec

    def _profile_schedule(self, doc: Doc, record: ProfileRecord | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The schedule a profile document's ``EnableScheduler: true`` sets: (triple given, spec), checked."""
        interval = doc.integer("ScheduleInterval")
        at = doc.text("ScheduleTime")
        given = dict(record.schedule_given if record and record.schedule_given else
                     {"scheduleInterval": None, "scheduleTime": None, "intervalType": 0})
        if interval:
            given["scheduleInterval"] = interval
        if at is not None:
            given["scheduleTime"] = at
        if not given.get("scheduleInterval") and not (record and record.schedule_given):
            raise Business(INVALID, "EnableScheduler needs a ScheduleInterval above 0 (or a schedule set with the "
                                    "schedule method).")
        kind = Doc(given).integer("intervalType")
        return given, self._spec(Doc(given).integer("scheduleInterval"), kind, Doc(given).text("scheduleTime"))

    def _apply_disconnects(self, record: ProfileRecord) -> None:
        """Disconnect again, in the state of the profile's (new) template, what was disconnected before."""
        if not record.disconnected:
            return
        pipeline = self.load(record)
        for sync_id in sorted(record.disconnected):
            if sync_id != ALL_SYNCS and sync_id not in pipeline.groups:
                log.warning("control: profile %s: template %s has no group '%s' to keep disconnected", record.id,
                            record.template, sync_id)
                continue
            api.set_connected(pipeline, connected=False, group=None if sync_id == ALL_SYNCS else sync_id)

    # --- the routes ------------------------------------------------------------------------------------------------

    def _post_company(self, doc: Doc) -> dict[str, Any]:
        co_name = doc.text("CoName")
        template = doc.text("SyncProfileTemplate")
        given = doc.credentials("Credentials") or []
        credentials = Credentials(given[:1], given[1:])
        profile_id = str(uuid.uuid4())
        if template is not None:
            template = self.template_file(template)[0]
            draft = ProfileRecord(profile_id, 0, template, co_name, None, None, now_utc(), now_utc(), None, None,
                                  False, None, None, frozenset())
            self._usable(draft, template)
        token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(USER_TOKEN_LENGTH))
        made = self.store.create_company(co_name, template, credentials, profile_id=profile_id, token=token)
        log.info("control: company %d made%s", made.company.id,
                 f" with profile {profile_id} of template {template}" if template else "")
        profiles = []
        if made.profile is not None:
            profiles.append({"ID": made.profile.id, "CreatedDateTime": seed_date(made.profile.created),
                             "LastSyncTime": None})
        return {"CoName": co_name, "SyncProfileTemplate": template, "Credentials": [], "Profiles": profiles,
                "Users": [{"ID": str(made.user.id), "Token": made.token}]}

    def _user(self, doc: Doc, company_id: int) -> int | None:
        """``UserID`` when given (not 0): it must be a user of the company."""
        user_id = doc.integer("UserID")
        if not user_id:
            return None
        if user_id not in {u.id for u in self.store.users(company_id)}:
            raise Business(INVALID, f"The user '{user_id}' does not belong to company '{company_id}'.")
        return user_id

    def _post_profiles(self, doc: Doc) -> dict[str, Any]:
        if doc.text("ProfileID") is not None:
            raise Business(INVALID, "ProfileID must be null to add a profile; PUT updates one.")
        company_id = doc.integer("UserCompanyID")
        company = self.store.company(company_id) if company_id is not None else None
        if company is None:
            raise Business(COMPANY_NOT_FOUND, f"The company '{company_id}' was not found.")
        template = self.template_file(doc.text("TemplateName", required=True) or "")[0]
        users = self.store.users(company.id)
        user_id = self._user(doc, company.id) or (users[0].id if users else None)
        credentials = Credentials(doc.credentials("DataSourceCreds") or [], doc.credentials("DataDestinationCreds")
                                  or [])
        profile_id = str(uuid.uuid4())
        draft = ProfileRecord(profile_id, company.id, template, doc.text("CoName") or company.co_name,
                              doc.text("SyncTitle"), user_id, now_utc(), now_utc(), None, None, False, None, None,
                              frozenset())
        self._usable(draft, template)
        schedule = self._profile_schedule(doc, None) if doc.flag("EnableScheduler") else None
        record = self.store.add_profile(profile_id, company.id, template, co_name=draft.co_name,
                                        sync_title=draft.sync_title, user_id=user_id, credentials=credentials)
        if schedule is not None:
            self.store.set_schedule(profile_id, *schedule)
            record = self.store.profile(profile_id) or record
        log.info("control: profile %s of template %s added to company %d", profile_id, template, company.id)
        return self._document(record)

    def _put_profiles(self, doc: Doc) -> dict[str, Any]:
        record = self._record(doc, "ProfileID")
        changes: dict[str, Any] = {}
        template = doc.text("TemplateName")
        if template is not None:
            template = self.template_file(template)[0]
            if template != record.template:
                self._usable(record, template)
                changes["template"] = template
        if doc.has("UserID") and doc.integer("UserID"):
            changes["user_id"] = self._user(doc, record.company_id)
        if doc.has("CoName"):
            changes["co_name"] = doc.text("CoName")
        if doc.has("SyncTitle"):
            changes["sync_title"] = doc.text("SyncTitle")
        sources, destinations = doc.credentials("DataSourceCreds"), doc.credentials("DataDestinationCreds")
        credentials = None
        if sources is not None or destinations is not None:
            old = self.store.credentials(record.id)
            credentials = Credentials(old.sources if sources is None else sources,
                                      old.destinations if destinations is None else destinations)
        enable = doc.flag("EnableScheduler")
        schedule = self._profile_schedule(doc, record) if enable else None
        if enable is False:
            changes["schedule_enabled"] = 0
        updated = self.store.update_profile(record.id, changes, credentials=credentials)
        if schedule is not None:
            self.store.set_schedule(record.id, *schedule)
            updated = self.store.profile(record.id) or updated
        if "template" in changes:
            self._apply_disconnects(updated)
        return self._document(updated)

    def _post_schedule(self, doc: Doc) -> None:
        record = self._record(doc, "profileId")
        given = {"scheduleInterval": doc.get("scheduleInterval"), "scheduleTime": doc.get("scheduleTime"),
                 "intervalType": doc.get("intervalType")}
        if doc.get("intervalType") is None:
            raise Business(INVALID, "intervalType is required: 0 (minutes), 1 (hours) or 2 (days).")
        spec = self._spec(doc.integer("scheduleInterval"), doc.integer("intervalType"), doc.text("scheduleTime"))
        self.store.set_schedule(record.id, given, spec)
        log.info("control: profile %s scheduled: %s", record.id, parse_schedule(spec).describe())

    def _post_runsync(self, doc: Doc) -> None:
        record = self._record(doc, "profileId")
        sync_id = doc.text("syncId") or ALL_SYNCS
        start = doc.text("dtStartUTC")
        moment = parse_start(start) if start is not None else None
        if start is not None and moment is None:
            raise Business(INVALID, f"dtStartUTC '{start[:60]}' is not a date such as 1/1/2016 12:00:00 PM "
                                    "(or ISO 8601).")
        group = self._group(self._usable(record), sync_id)
        if ALL_SYNCS in record.disconnected or sync_id in record.disconnected:
            which = ALL_SYNCS if ALL_SYNCS in record.disconnected else sync_id
            raise Business(DISCONNECTED, f"The sync '{which}' of profile '{record.id}' is disconnected.")
        run = RunRecord(record.id, sync_id, group, since_text(moment) if moment else None, now_utc())
        with self._lock:
            if self._closed:
                raise Business(503, "The server is stopping; send the request again later.", 503)
            current = self._runs.get(record.id)
            if current is not None and current.status in ("queued", "running"):
                raise Business(RUN_IN_PROGRESS, f"A run of profile '{record.id}' is already in progress.")
            self._runs[record.id] = run
            self._executor.submit(self._execute, run)
        log.info("control: run of profile %s (sync id %s%s) accepted", record.id, sync_id,
                 f", since {run.since}" if run.since else "")

    def _post_disconnect(self, doc: Doc) -> None:
        record = self._record(doc, "profileId")
        sync_id = doc.text("syncId") or ALL_SYNCS
        pipeline = self._usable(record)
        group = self._group(pipeline, sync_id)
        api.set_connected(pipeline, connected=False, group=group)
        if self.store.disconnect(record.id, sync_id):
            log.info("control: profile %s: sync id %s disconnected", record.id, sync_id)

    # --- runs ----------------------------------------------------------------------------------------------------

    def _execute(self, run: RunRecord) -> None:
        """Carry out one accepted run (in a worker thread); whatever happens ends in ``run``, never raised."""
        try:
            if self._stop.is_set():
                run.status, run.error = "cancelled", "the server stopped before the run began"
                return
            record = self.store.profile(run.profile_id)
            if record is None:
                raise ConfigError(f"profile {run.profile_id} no longer exists")
            pipeline = self.load(record, credentials=self.store.credentials(record.id))
            run.started = now_utc()
            run.status = "running"
            self.store.mark_attempt(record.id, run.started)
            with log_context(profile=record.id):
                report = self._runner(pipeline, RunOptions(group=run.group, since=run.since, stop=self._stop))
            run.report = report.to_dict()
            run.error = report.error
            run.status = {0: "ok", 1: "errors"}.get(report.exit_code, "failed")
            if report.exit_code == 0:
                self.store.mark_success(record.id, run.started)
            log.info("control: run of profile %s ended: %s", run.profile_id, run.status)
        except Business as exc:  # the template went away between the request and the run
            run.status, run.error = "failed", exc.message
        except SyncEngineError as exc:
            run.status, run.error = "failed", str(exc)
            log.warning("control: run of profile %s failed: %s", run.profile_id, exc)
        except Exception as exc:  # noqa: BLE001 - a worker must record its end, or the profile stays "running"
            log.exception("control: run of profile %s failed", run.profile_id)
            run.status, run.error = "failed", f"unexpected {type(exc).__name__} (the server's log has the details)"
        finally:
            run.finished = now_utc()
            run.done.set()

    def last_run(self, profile_id: str) -> RunRecord | None:
        """A copy of the last run ``runsync`` started for a profile (queued, running or ended), or ``None``."""
        with self._lock:
            run = self._runs.get(str(uuid.UUID(profile_id)))
        return replace(run, report=dict(run.report) if run.report else None) if run is not None else None

    def wait_for_runs(self, timeout: float | None = None) -> bool:
        """Wait until every accepted run has ended; returns whether they all did within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not run.done.wait(left):
                return False
        return True

    def close(self) -> None:
        """Ask the runs to stop after the batch in flight, wait for them, then close the store (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._executor.shutdown(wait=True)
        self.store.close()


# --- serving ---------------------------------------------------------------------------------------------------


class _ErrorTask(ErrorTask):  # type: ignore[misc]  # waitress ships no type information
    """Answers a request waitress could not take (malformed, too large) with the envelope, naming no server."""

    def execute(self) -> None:
        """Write the answer; the connection closes after it."""
        error = self.request.error
        code = int(error.code)
        limit = self.channel.server.adj.max_request_body_size - 1
        message = {400: "The request is not valid HTTP.", 413: f"The request body is over {limit} bytes.",
                   431: f"The request head is over {MAX_HEADER_BYTES} bytes."}.get(code, str(error.reason))
        if code >= 500:
            message = "An error has occurred."
        body = json.dumps(envelope(code, message)).encode("utf-8")
        try:
            self.status = f"{code} {HTTPStatus(code).phrase}"
        except ValueError:
            self.status = f"{code} Error"
        self.response_headers.extend([("Content-Type", "application/json; charset=utf-8")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(b"" if getattr(self.request, "command", "") == "HEAD" else body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    """One client connection, which knows when its unfinished request began (for the request deadline)."""

    error_task_class = _ErrorTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        self.began: float | None = None
        super().__init__(server, sock, addr, adj, map)

    def received(self, data: bytes) -> bool:
        """Hand bytes to the parser and note when a new request starts or the current one completes."""
        before = self.request
        result = bool(super().received(data))
        if self.request is None:
            self.began = None
        elif self.request is not before:
            self.began = time.monotonic()
        return result


class ControlServer:
    """The control API on a listening socket: :meth:`serve_forever` answers until :meth:`close`.

    Limits: ``threads`` answer requests, at most ``max_connections`` are open (more wait in the ``backlog``),
    a body over the app's ``max_body_bytes`` is refused (413), a connection silent for ``idle_timeout`` or
    whose request is not complete ``request_timeout`` after it began is closed.
    """

    def __init__(self, host: str, port: int, app: ControlApp, *, threads: int = 8, max_connections: int = 200,
                 backlog: int = 128, idle_timeout: float = 30.0, request_timeout: float = 30.0) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConnectError(f"the control API cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # waitress warns on every queued request once all threads are busy: a burst would log a line per request.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self._server: Any = create_server(
            app, map={}, sockets=[sock], threads=threads, connection_limit=max_connections + 2, backlog=backlog,
            channel_timeout=max(1, math.ceil(idle_timeout)), max_request_body_size=app.max_body_bytes + 1,
            max_request_header_size=MAX_HEADER_BYTES, expose_tracebacks=False, ident="", asyncore_use_poll=True,
            log_socket_errors=False, clear_untrusted_proxy_headers=False)
        self._server.channel_class = _Channel
        bound = sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound}{PREFIX}"
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._serving = False
        self._closed = False
        self._done = threading.Event()

    def serve_forever(self) -> None:
        """Answer requests until :meth:`close` (from another thread), then answer those in flight and return."""
        with self._state:
            if self._closed:
                return
            self._serving = True
        server = self._server
        try:
            next_sweep = 0.0
            while not self._stop.is_set():
                wasyncore.loop(timeout=TICK, use_poll=True, map=server._map, count=1)
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + SWEEP_EVERY
        finally:
            try:
                self._drain()
            finally:
                self._done.set()

    def _sweep(self) -> None:
        """Close connections silent for ``idle_timeout`` or with a request unfinished after ``request_timeout``."""
        silent_since = time.time() - self.idle_timeout  # waitress stamps activity with time.time()
        begun_before = time.monotonic() - self.request_timeout
        for channel in list(self._server.active_channels.values()):
            if channel.requests:
                continue  # a complete request is being answered: busy, not slow
            if channel.last_activity < silent_since or (channel.began is not None and channel.began < begun_before):
                channel.will_close = True

    def _drain(self) -> None:
        """Stop accepting, close idle connections, let the requests in flight be answered, then close."""
        server = self._server
        wasyncore.dispatcher.close(server)  # the listener only; the wake-up pipe is still needed
        deadline = time.monotonic() + STOP_WAIT
        while server.active_channels and time.monotonic() < deadline:
            for channel in list(server.active_channels.values()):
                with channel.requests_lock:
                    request = channel.request
                    uploading = request is not None and request.headers_finished and not request.completed
                    if not channel.requests and not uploading:
                        channel.close_when_flushed = True
            self._sweep()
            wasyncore.loop(timeout=0.05, use_poll=True, map=server._map, count=1)
        server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(server._map)

    def close(self) -> None:
        """Stop serving (answering the requests in flight), then close the app: its runs are asked to stop after
        the batch in flight and waited for, and its store is closed. Idempotent; callable from any thread."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        self._stop.set()
        if serving:
            self._done.wait(STOP_WAIT + 10)
        else:
            self._server.task_dispatcher.shutdown(timeout=5)
            wasyncore.close_all(self._server._map)
        self.app.close()


def make_control_server(host: str, port: int, app: ControlApp, **limits: Any) -> tuple[
        str, Callable[[], None], Callable[[], None]]:
    """Listen on ``host:port`` (0: any free port): (the base URL, ending ``/api/v1/``; serve_forever; close).

    Run ``serve_forever`` in a thread of its own; ``close`` (any thread, idempotent) makes it return after the
    requests in flight are answered, then closes ``app``. ``limits`` are :class:`ControlServer`'s keywords.
    """
    server = ControlServer(host, port, app, **limits)
    return server.url, server.serve_forever, server.close


def control_app_from_env(templates_dir: str | Path, db_path: str | Path | None = None, *,
                         environ: Mapping[str, str] | None = None, runner: Runner | None = None,
                         registry: Registry = REGISTRY, max_runs: int = 4,
                         schedule_timezone: str | None = None) -> ControlApp:
    """The control app ``serve --control`` runs: token from ``SYNCENGINE_CONTROL_TOKEN``, key from
    ``SYNCENGINE_CONTROL_KEY`` (each or its ``_FILE``); either unset is a :class:`ConfigError` saying how to
    make one. ``db_path`` defaults to ``.syncengine/control.db`` under the working folder."""
    env = os.environ if environ is None else environ
    token = read_secret_env(TOKEN_ENV, env)
    if not token:
        raise ConfigError(f"--control needs {TOKEN_ENV} (or {TOKEN_ENV}_FILE): the token partners send in the "
                          "AUTHORIZATION header. Make one with: python -c \"import secrets; "
                          "print(secrets.token_urlsafe(32))\"")
    key = key_from_env(env)
    _check_settings(Path(templates_dir), token)
    store = ControlStore(Path(db_path) if db_path is not None else DEFAULT_DB, key)
    try:
        return ControlApp(Path(templates_dir), store, token, runner, registry=registry, max_runs=max_runs,
                          schedule_timezone=schedule_timezone)
    except BaseException:
        store.close()
        raise


__all__ = ["ALL_SYNCS", "COMPANY_NOT_FOUND", "DENIED", "DISCONNECTED", "INVALID", "OK", "PROFILE_NOT_FOUND",
           "RUN_IN_PROGRESS", "TEMPLATE_NOT_FOUND", "TOKEN_ENV", "ControlApp", "ControlServer", "Doc", "Reply",
           "RunRecord", "control_app_from_env", "envelope", "lenient_json", "make_control_server", "parse_start",
           "seed_date", "since_text"]
