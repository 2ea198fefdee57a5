"""A real HTTP server that behaves like Propelware's Autofy partner API, for tests.

The ground truth is the Autofy Batch Sync API document (the "Autofy Batch Sync API" page of the
developer portal). Where it is silent this server does what an ASP.NET Web API service would most likely do, and
every such choice is written below, so that an adapter written against this server stays honest against the real
one.

Routes, below ``/api/v1/`` (``.url``); each needs the header ``AUTHORIZATION: <api token>`` (the token alone, no
scheme, as the seed's C# samples send it)::

    POST company      {"CoName","SyncProfileTemplate","Credentials":[...],"Profiles":[],"Users":[]}
    POST profiles     a profile document with "UserCompanyID" and "TemplateName" ("ProfileID": null)
    PUT  profiles     a profile document with "ProfileID": the fields it holds are updated
    POST schedule     {profileId, scheduleInterval, scheduleTime, intervalType: 0 minutes | 1 hours | 2 days}
    POST runsync      {"profileId","syncId","dtStartUTC"}
    POST disconnect   {"profileId","syncId"}

Every answer is the seed's envelope ``{"Meta": {"StatusCode", "Severity", "Message"}, "Detail": ...}``.

Choices where the seed is silent or ambiguous:

* **Business errors** are HTTP 200 with ``Meta.StatusCode`` other than 0, ``Severity: "Error"``, a ``Message``
  and ``Detail: null``; nothing is changed. The codes (the seed names none) are :data:`INVALID` 1 (a field is
  missing or wrong), :data:`TEMPLATE_NOT_FOUND` 2, :data:`PROFILE_NOT_FOUND` 3, :data:`DISCONNECTED` 4 (a run of a
  disconnected sync) and :data:`COMPANY_NOT_FOUND` 5. A success has ``StatusCode: 0`` and ``Severity`` and
  ``Message`` null, as in the seed.
* **A missing or wrong token** is HTTP 401 with the envelope ``{"Meta": {"StatusCode": 401, "Severity": "Error",
  "Message": "Authorization has been denied for this request."}, "Detail": null}`` (ASP.NET Web API's own
  message, in the service's envelope). The answer never repeats the token sent. The token is compared exactly;
  a ``Bearer`` prefix is a wrong token.
* **Transport errors** keep the envelope too, with ``Meta.StatusCode`` the HTTP status: 404 for an unknown
  path, 405 for a method a route does not take, 400 for a body that is not a JSON object even when read
  leniently, 415 for a body that is not JSON (``Content-Type`` other than ``application/json`` or
  ``text/json``), 500 for a bug here (also listed in :attr:`AutofyServer.server_errors`, which a test expects
  to stay empty).
* **JSON is read as Json.NET reads it**: property names match case-insensitively (``profileid`` is
  ``profileId``; of two names differing only in case the last wins), and leniently: unquoted property names
  (the seed's own schedule example has them), single-quoted strings and trailing commas are accepted.
  Numbers given as text (``"scheduleInterval": "30"``, ``"intervalType": "2"``) are read as numbers, as
  Json.NET converts them.
* **Paths** are case-insensitive (IIS), with or without a trailing slash.
* **Dates** in answers use the seed's format, ``M/d/yyyy h:mm:ss AM`` (``3/19/2015 4:42:50 PM``), in UTC.
  ``dtStartUTC`` must be in that format too (a business error otherwise).
* **Company**: ``SyncProfileTemplate`` names one of the server's :attr:`AutofyServer.templates`; without one only
  the company and its user are made (``Profiles: []``). ``Credentials`` is a list of objects whose
  ``DataSource`` is one of the seed's list (compared ignoring case and spaces, so the example's ``AutofyXml``
  is ``Autofy XML``). Every company gets one user: a numeric text ``ID`` (from 4526 on, as in the example) and
  a 28-character ``Token`` of capitals and digits. The answer echoes the request's ``CoName`` and
  ``SyncProfileTemplate`` with ``Credentials: []`` (as the seed's example answer shows: no password travels
  back), the new profile as ``{"ID","CreatedDateTime","LastSyncTime"}`` (``LastSyncTime`` null until a run) and
  the user. Companies are not unique by name: the same document posted twice makes two companies.
* **Profiles**: ``PUT`` updates only the properties its document holds. ``TemplateName`` must be a known
  template; ``UserID`` (unless 0 or null) must be a user of the profile's company; ``DataSourceCreds`` and
  ``DataDestinationCreds`` replace the profile's credentials (its :attr:`Profile.credentials` become the
  sources then the destinations); ``EnableScheduler: false`` removes the schedule, while the other schedule
  properties of a profile document are ignored (``schedule`` is the method that sets one). ``POST`` adds a
  profile to the company ``UserCompanyID``. Both answer the profile document (the seed's property names),
  passwords null.
* **Schedule**: ``intervalType`` is required (0, 1 or 2); ``scheduleInterval`` is a positive integer, 1 when
  absent; ``scheduleTime`` is ``h:mm AM``/``h:mm PM`` and is kept only with ``intervalType`` 2, as the seed
  says it is used only then. A new schedule replaces the last one. ``Detail`` is null.
* **Run sync** records a :class:`Run` (``syncId`` "0" when absent) and sets the profile's ``LastSyncTime``;
  a sync that was disconnected is a business error (:data:`DISCONNECTED`). ``Detail`` is null.
* **Disconnect** marks ``syncId`` ("0" when absent) of the profile disconnected; disconnecting it again
  succeeds and changes nothing. ``Detail`` is null.

Inspection: :attr:`AutofyServer.companies`, :attr:`AutofyServer.profiles`, :attr:`AutofyServer.runs`,
:attr:`AutofyServer.requests` (every call with its parsed body), :attr:`AutofyServer.route_counts`,
:meth:`AutofyServer.issued_tokens`. Fault injection: :meth:`AutofyServer.fail` answers the next calls of a route
with an HTTP status, doing nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import string
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

OK = 0
INVALID = 1
TEMPLATE_NOT_FOUND = 2
PROFILE_NOT_FOUND = 3
DISCONNECTED = 4
COMPANY_NOT_FOUND = 5

DENIED = "Authorization has been denied for this request."
DEFAULT_TEMPLATES = ("salesforce-qbd", "qbo-csv", "fishbowl-qbd")
DATA_SOURCES = ("QuickBooks", "QuickBooks Online", "Sage 50", "Salesforce.com", "Fishbowl", "Autofy XML", "CSV")
INTERVAL_UNITS = {0: "minutes", 1: "hours", 2: "days"}
ROUTES = {"company": ("POST",), "profiles": ("POST", "PUT"), "schedule": ("POST",), "runsync": ("POST",),
          "disconnect": ("POST",)}
FIRST_USER_ID = 4526
_SEED_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AP]M)")
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2}) ([AP]M)", re.IGNORECASE)


def seed_date(moment: datetime) -> str:
    """A date as the seed writes it: ``3/19/2015 4:42:50 PM``."""
    hour = moment.hour % 12 or 12
    return (f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d}:{moment.second:02d} "
            f"{'AM' if moment.hour < 12 else 'PM'}")


def parse_seed_date(text: str) -> datetime | None:
    """The datetime of a ``M/d/yyyy h:mm:ss AM`` text, or ``None`` when it is not one."""
    found = _SEED_DATE.fullmatch(text.strip())
    if not found:
        return None
    month, day, year, hour, minute, second = (int(g) for g in found.groups()[:6])
    if not 1 <= hour <= 12:
        return None
    hour = hour % 12 + (12 if found.group(7) == "PM" else 0)
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class User:
    """A company's user: the id and the desktop sync token the company answer gives."""

    id: str
    token: str


@dataclass
class Schedule:
    """A profile's schedule as the ``schedule`` method set it."""

    interval: int
    interval_type: int
    time: str | None = None

    @property
    def unit(self) -> str:
        """``minutes``, ``hours`` or ``days``."""
        return INTERVAL_UNITS[self.interval_type]


@dataclass
class Profile:
    """A sync profile, made from a template."""

    id: str
    company_id: int
    template: str
    co_name: str | None
    credentials: list[dict[str, Any]]
    created: datetime
    modified: datetime
    source_credentials: list[dict[str, Any]] | None = None
    destination_credentials: list[dict[str, Any]] | None = None
    schedule: Schedule | None = None
    disconnected: set[str] = field(default_factory=set)
    """The sync ids disconnected."""
    last_sync: datetime | None = None
    title: str | None = None
    user_id: str | None = None


@dataclass
class Company:
    """A company with its users and profiles."""

    id: int
    name: str | None
    template: str | None
    users: list[User]
    profile_ids: list[str]
    created: datetime


@dataclass(frozen=True)
class Run:
    """One ``runsync`` call the server accepted."""

    profile_id: str
    sync_id: str
    dt_start_utc: str | None
    at: datetime


@dataclass(frozen=True)
class AutofyRequest:
    """One call as the server saw it: ``route`` is ``"POST company"`` (lower-case path), ``body`` parsed."""

    method: str
    path: str
    route: str
    status: int
    meta_status: int | None
    body: Any
    authorized: bool
    at: float


class Business(Exception):
    """A business error: HTTP 200 (unless ``http`` says otherwise) with ``Meta.StatusCode`` ``code``."""

    def __init__(self, code: int, message: str, http: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http = http


# ----------------------------------------------------------------------------------------------- JSON


def lenient_json(text: str) -> Any:
    """JSON as Json.NET reads it: strict JSON, else with unquoted names, single quotes and trailing commas.

    Raises ``ValueError`` when even the lenient reading fails.
    """
    try:
        return json.loads(text)
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
    return json.loads("".join(out))


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
        """A text property (numbers are converted, as Json.NET does); blank is absent."""
        value = self.get(name)
        if value is None or value == "":
            if required:
                raise Business(INVALID, f"{name} is required.")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Business(INVALID, f"{name} must be a string.")
        return str(value)

    def integer(self, name: str) -> int | None:
        """An integer property, given as a number or as its text; ``None`` when absent or null."""
        value = self.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise Business(INVALID, f"{name} must be an integer.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise Business(INVALID, f"{name} must be an integer.")

    def credentials(self, name: str) -> list[dict[str, Any]]:
        """A list of credential objects; each ``DataSource`` one of the seed's list."""
        value = self.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise Business(INVALID, f"{name} must be a list.")
        known = {_squash(s) for s in DATA_SOURCES}
        out = []
        for n, item in enumerate(value):
            if not isinstance(item, dict):
                raise Business(INVALID, f"{name}[{n}] must be an object.")
            source = Doc(item).text("DataSource")
            if source is None:
                raise Business(INVALID, f"{name}[{n}].DataSource is required.")
            if _squash(source) not in known:
                raise Business(INVALID, f"{name}[{n}].DataSource '{source}' is not one of: {', '.join(DATA_SOURCES)}.")
            out.append(dict(item))
        return out


def _squash(text: str) -> str:
    return text.replace(" ", "").lower()


def _public(credentials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Credentials as an answer shows them: secrets null."""
    hidden = {"password", "accesstoken", "accesstokensecret"}
    return [{k: (None if k.lower() in hidden else v) for k, v in c.items()} for c in credentials]


# ----------------------------------------------------------------------------------------------- HTTP


@dataclass
class _Reply:
    status: int
    payload: Any


def _envelope(code: int = OK, message: str | None = None, detail: Any = None) -> dict[str, Any]:
    return {"Meta": {"StatusCode": code, "Severity": None if code == OK else "Error", "Message": message},
            "Detail": detail}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`AutofyServer.requests` instead."""

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
        reply = self.server.owner._answer(self.command, self.path, self.headers, body)
        data = json.dumps(reply.payload, ensure_ascii=False).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads: stop() leaves nothing running

    def __init__(self, owner: AutofyServer, address: tuple[str, int]) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (and connections stop() closed); print anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class AutofyServer:
    """The Autofy partner API on ``host:port`` (port 0: any free one), served by a background thread from creation.

    Use as a context manager or call :meth:`stop`. ``api_token`` is the partner token the ``AUTHORIZATION``
    header must carry; ``templates`` the sync templates the server knows.
    """

    def __init__(self, *, api_token: str = "PW-PARTNER-TOKEN-0001", templates: Iterable[str] = DEFAULT_TEMPLATES,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_token = api_token
        self.templates = set(templates)
        self.lock = threading.RLock()
        self.companies: dict[int, Company] = {}
        self.profiles: dict[str, Profile] = {}
        self.runs: list[Run] = []
        self.requests: list[AutofyRequest] = []
        self.route_counts: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self._faults: dict[str, list[int]] = {}
        self._next_company = 5328
        self._next_user = FIRST_USER_ID
        self._connections: set[socket.socket] = set()
        self._httpd = _HttpServer(self, (host, port))
        self.host = host
        self.port: int = self._httpd.server_port
        self._stopped = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="autofy-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The API's base URL, ending ``/api/v1/`` as the seed's does."""
        return f"http://{self.host}:{self.port}/api/v1/"

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

    def __enter__(self) -> AutofyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self.lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ---------------------------------------------------------------------------------- for tests

    def fail(self, route: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` authorised calls of ``route`` (``"POST company"``) with HTTP ``status``."""
        with self.lock:
            self._faults.setdefault(route, []).extend([status] * times)

    def issued_tokens(self) -> list[str]:
        """Every user token the server handed out."""
        with self.lock:
            return [u.token for c in self.companies.values() for u in c.users]

    def company_of(self, profile_id: str) -> Company:
        """The company a profile belongs to."""
        with self.lock:
            return self.companies[self.profiles[profile_id].company_id]

    def profiles_named(self, co_name: str) -> list[Profile]:
        """The profiles whose ``CoName`` is ``co_name``."""
        with self.lock:
            return [p for p in self.profiles.values() if p.co_name == co_name]

    def calls(self, route: str) -> list[AutofyRequest]:
        """The logged calls of one route (``"PUT profiles"``)."""
        with self.lock:
            return [r for r in self.requests if r.route == route]

    def reset_log(self) -> None:
        """Forget the request log and the route counts."""
        with self.lock:
            self.requests.clear()
            self.route_counts.clear()

    # ---------------------------------------------------------------------------------- dispatch

    def _answer(self, method: str, target: str, headers: Message[str, str], body: bytes) -> _Reply:
        path = urlsplit(target).path
        name = path.lower().rstrip("/")
        route = f"{method} {name.rsplit('/', 1)[-1]}"
        parsed: Any = None
        authorized = False
        try:
            if not name.startswith("/api/v1/") or name.count("/") != 3 or name[8:] not in ROUTES:
                raise Business(404, f"No HTTP resource was found that matches the request URI '{path}'.", 404)
            authorized = headers.get("Authorization") == self.api_token
            if not authorized:
                raise Business(401, DENIED, 401)
            if method not in ROUTES[name[8:]]:
                raise Business(405, f"The requested resource does not support http method '{method}'.", 405)
            with self.lock:
                faults = self._faults.get(route)
                fault = faults.pop(0) if faults else None
            if fault is not None:
                raise Business(fault, f"injected HTTP {fault}", fault)
            kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind not in ("application/json", "text/json"):
                raise Business(415, f"The request entity's media type '{kind}' is not supported.", 415)
            try:
                parsed = lenient_json(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise Business(400, f"The request body is not valid JSON: {exc}", 400) from None
            if not isinstance(parsed, dict):
                raise Business(400, "The request body must be a JSON object.", 400)
            with self.lock:
                detail = getattr(self, f"_{method.lower()}_{name[8:]}")(Doc(parsed))
            reply = _Reply(200, _envelope(OK, None, detail))
        except Business as exc:
            reply = _Reply(exc.http, _envelope(exc.code, exc.message))
        except Exception as exc:  # a bug here must show in the test, not as a hung client
            with self.lock:
                self.server_errors.append(f"{route}: {exc!r}")
            reply = _Reply(500, _envelope(500, f"An error has occurred: {exc!r}"))
        with self.lock:
            self.route_counts[route] += 1
            meta = reply.payload["Meta"]["StatusCode"]
            self.requests.append(AutofyRequest(method, path, route, reply.status, meta, parsed, authorized,
                                               time.time()))
        return reply

    # ---------------------------------------------------------------------------------- the methods

    def _template(self, name: str | None) -> str:
        if name is None:
            raise Business(INVALID, "SyncProfileTemplate is required.")
        if name not in self.templates:
            raise Business(TEMPLATE_NOT_FOUND, f"The sync profile template '{name}' was not found.")
        return name

    def _profile(self, doc: Doc, name: str) -> Profile:
        ident = doc.text(name, required=True)
        profile = self.profiles.get((ident or "").lower())
        if profile is None:
            raise Business(PROFILE_NOT_FOUND, f"The sync profile '{ident}' was not found.")
        return profile

    def _new_profile(self, company: Company, template: str, co_name: str | None,
                     credentials: list[dict[str, Any]]) -> Profile:
        now = datetime.now(UTC)
        profile = Profile(str(uuid.uuid4()), company.id, template, co_name, credentials, now, now,
                          user_id=company.users[0].id if company.users else None)
        self.profiles[profile.id] = profile
        company.profile_ids.append(profile.id)
        return profile

    def _post_company(self, doc: Doc) -> dict[str, Any]:
        co_name = doc.text("CoName")
        template = doc.text("SyncProfileTemplate")
        if template is not None:
            self._template(template)
        credentials = doc.credentials("Credentials")
        user = User(str(self._next_user), "".join(secrets.choice(string.ascii_uppercase + string.digits)
                                                  for _ in range(28)))
        self._next_user += 1
        company = Company(self._next_company, co_name, template, [user], [], datetime.now(UTC))
        self._next_company += 1
        self.companies[company.id] = company
        profiles = []
        if template is not None:
            profile = self._new_profile(company, template, co_name, credentials)
            profiles.append({"ID": profile.id, "CreatedDateTime": seed_date(profile.created), "LastSyncTime": None})
        return {"CoName": co_name, "SyncProfileTemplate": template, "Credentials": [], "Profiles": profiles,
                "Users": [{"ID": user.id, "Token": user.token}]}

    def _profile_document(self, profile: Profile) -> dict[str, Any]:
        company = self.companies[profile.company_id]
        schedule = profile.schedule
        sources = profile.credentials if profile.source_credentials is None else profile.source_credentials
        return {"AppID": "", "LastSyncAttempt": seed_date(profile.last_sync) if profile.last_sync else "",
                "LastSuccessfulSync": "", "LastSuccessfulSyncTime": "", "DataFile": "",
                "CoName": profile.co_name or "", "SyncTitle": profile.title or "",
                "LastModifiedDateTime": seed_date(profile.modified), "CreatedDateTime": seed_date(profile.created),
                "UserCompanyID": company.id, "LastModifiedByUserID": 0, "CreatedByUserID": 0,
                "TemplateName": profile.template, "ProfileID": profile.id,
                "UserID": int(profile.user_id) if profile.user_id else 0,
                "EnableScheduler": schedule is not None, "ScheduleInterval": schedule.interval if schedule else 0,
                "ScheduleTime": schedule.time if schedule else None, "DataSourceCreds": _public(sources),
                "DataDestinationCreds": _public(profile.destination_credentials or [])}

    def _post_profiles(self, doc: Doc) -> dict[str, Any]:
        if doc.text("ProfileID") is not None:
            raise Business(INVALID, "ProfileID must be null to add a profile; use PUT to update one.")
        company_id = doc.integer("UserCompanyID")
        company = self.companies.get(company_id if company_id is not None else -1)
        if company is None:
            raise Business(COMPANY_NOT_FOUND, f"The company '{company_id}' was not found.")
        template = self._template(doc.text("TemplateName"))
        sources, destinations = doc.credentials("DataSourceCreds"), doc.credentials("DataDestinationCreds")
        profile = self._new_profile(company, template, doc.text("CoName") or company.name, sources + destinations)
        profile.source_credentials, profile.destination_credentials = sources, destinations
        profile.title = doc.text("SyncTitle")
        return self._profile_document(profile)

    def _put_profiles(self, doc: Doc) -> dict[str, Any]:
        profile = self._profile(doc, "ProfileID")
        company = self.companies[profile.company_id]
        template = self._template(doc.text("TemplateName")) if doc.text("TemplateName") is not None else None
        user_id = doc.integer("UserID") if doc.has("UserID") else None
        if user_id and str(user_id) not in {u.id for u in company.users}:
            raise Business(INVALID, f"The user '{user_id}' does not belong to company '{company.id}'.")
        sources = doc.credentials("DataSourceCreds") if doc.has("DataSourceCreds") else None
        destinations = doc.credentials("DataDestinationCreds") if doc.has("DataDestinationCreds") else None
        enable = doc.get("EnableScheduler")
        if enable is not None and not isinstance(enable, bool):
            raise Business(INVALID, "EnableScheduler must be true or false.")
        # Validated; now changed.
        if template is not None:
            profile.template = template
        if user_id:
            profile.user_id = str(user_id)
        if doc.has("CoName"):
            profile.co_name = doc.text("CoName")
        if doc.has("SyncTitle"):
            profile.title = doc.text("SyncTitle")
        if sources is not None or destinations is not None:
            profile.source_credentials = sources if sources is not None else profile.source_credentials or []
            profile.destination_credentials = (destinations if destinations is not None
                                               else profile.destination_credentials or [])
            profile.credentials = [*profile.source_credentials, *profile.destination_credentials]
        if enable is False:
            profile.schedule = None
        profile.modified = datetime.now(UTC)
        return self._profile_document(profile)

    def _post_schedule(self, doc: Doc) -> None:
        profile = self._profile(doc, "profileId")
        kind = doc.integer("intervalType")
        if kind not in INTERVAL_UNITS:
            raise Business(INVALID, "intervalType must be 0 (minutes), 1 (hours) or 2 (days).")
        interval = doc.integer("scheduleInterval")
        if interval is not None and interval < 1:
            raise Business(INVALID, "scheduleInterval must be a positive integer.")
        at = doc.text("scheduleTime")
        if at is not None:
            found = _TIME_OF_DAY.fullmatch(at.strip())
            if not found or not 1 <= int(found.group(1)) <= 12 or int(found.group(2)) > 59:
                raise Business(INVALID, f"scheduleTime '{at}' is not a time of day such as 4:00 AM.")
        profile.schedule = Schedule(interval or 1, kind, at.strip().upper() if at is not None and kind == 2 else None)
        profile.modified = datetime.now(UTC)

    def _post_runsync(self, doc: Doc) -> None:
        profile = self._profile(doc, "profileId")
        sync_id = doc.text("syncId") or "0"
        start = doc.text("dtStartUTC")
        if start is not None and parse_seed_date(start) is None:
            raise Business(INVALID, f"dtStartUTC '{start}' is not a date such as 1/1/2016 12:00:00 PM.")
        if sync_id in profile.disconnected:
            raise Business(DISCONNECTED, f"The sync '{sync_id}' of profile '{profile.id}' is disconnected.")
        now = datetime.now(UTC)
        self.runs.append(Run(profile.id, sync_id, start, now))
        profile.last_sync = now

    def _post_disconnect(self, doc: Doc) -> None:
        profile = self._profile(doc, "profileId")
        profile.disconnected.add(doc.text("syncId") or "0")
        profile.modified = datetime.now(UTC)
