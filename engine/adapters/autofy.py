"""Propelware Autofy as a destination: each record provisions a company with its sync profile, which later runs
keep up to date, schedule, start and disconnect. Built on :mod:`engine.adapters.rest` (retries, rate budget).

Autofy's partner API (``https://autofy.propelware.com/api/v1/``) authenticates every call with the partner
token as a bare ``AUTHORIZATION`` header (config ``token``, a secret). It answers an envelope
``{"Meta": {"StatusCode", "Severity", "Message"}, "Detail"}``; a refusal is usually HTTP 200 with
``Meta.StatusCode`` other than 0, which becomes the record's error with ``Meta.Message``. A 401 or 403 means the
token is wrong for every record: the run stops (exit 3) with one line that never holds the token. Connection
errors, timeouts, 408, 429 and 5xx are retried by the REST layer.

**The record** is the ``POST company`` document the mapping makes: ``CoName``, ``SyncProfileTemplate``
(``template`` when the record has none or leaves it blank), ``Credentials`` (a list of objects; their passwords
come from ``{{ env.NAME }}`` in the mapping, so the engine masks them in dead letters and messages) and any other
company property, passed as it is. Property names are matched ignoring case, as Autofy (.NET) does. One field is
the adapter's own and is never sent as such:

``schedule``
    when the profile runs by itself, either as an object ``{every: 30, unit: minutes}``,
    ``{every: 1, unit: days, at: "4:00 AM"}`` (``unit``: minutes, hours or days; ``at`` only with days, as
    Autofy reads ``scheduleTime`` only then; 24-hour ``16:30`` is accepted and sent as ``4:30 PM``), or as the
    same in words, handy for a CSV column: ``"30 minutes"``, ``"every 2 hours"``, ``"every day at 4:00 AM"``,
    ``"daily at 16:30"``. Null, blank or an object of blanks means no schedule. It is checked before anything is
    sent, so a bad schedule never leaves a half-provisioned company.

**Create**: ``POST company``; then ``POST schedule`` when the record has one; then, with ``run_after``,
``POST runsync`` (``syncId`` and ``dtStartUTC`` from the option). **Update**: ``PUT profiles`` with the
profile's ``ProfileID`` and ``UserID``, ``CoName``, ``TemplateName`` (the template) and the credentials split
the way a profile document holds them: the first of ``Credentials`` as ``DataSourceCreds``, the others as
``DataDestinationCreds`` (the seed shows one list for a company and two for a profile without saying how they
correspond: list the source first). Other company properties go only with the create. ``POST schedule``
follows only when the schedule differs from the one last applied; a schedule removed from the record sends
``EnableScheduler: false`` with the profile. **Delete** (``mode: mirror``): ``POST disconnect`` with the
profile id and ``disconnect_sync_id``. Nothing is ever deleted in Autofy: a record that comes back after a
delete provisions a new company.

**The remote id** kept in the state is JSON: ``{"ProfileID", "UserID", "schedule"}`` (the schedule as last
applied, in words, so that an update sends it only when it changed). The company answer also carries each
user's desktop sync token: that token is a credential, and the engine's state must never hold a secret, so it
is **not stored anywhere** (nor logged); whoever needs it reads it in Autofy. Only ids are kept.

A company is made once: when the company exists but a call after it (the schedule, the run) is refused, the
record still counts as sent with its remote id, so no later run makes a second company; the run's warnings
say what was not applied (it is applied again by the record's next change, or ``apply --full-refresh``). When
that call fails because the server cannot be used any more, the record is kept the same way and the run then
stops. One window stays, and the API offers no way to close it (no idempotency key, no lookup of a company by
name): a ``POST company`` whose answer is lost (a timeout, a 5xx after the company was made) is retried by
the REST layer, and may make a second company.

The sync's key is best a template (``key: "{{ record.tenant_id }}"``): a key that is an output field is a
company property like any other, and is sent. Records go ``concurrency`` at once, each outcome committed as it
completes.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.adapters.pooled import each_completed, in_order
from engine.adapters.rest import Reply, RestClient, RestConfig
from engine.errors import ConfigError, ConnectError, RecordError
from engine.interfaces import CREATE, DELETE, Change, Outcome, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import build, option, secret

UNITS = ("minutes", "hours", "days")
"""Autofy's ``intervalType`` is the index: 0 minutes, 1 hours, 2 days."""
_UNIT_WORDS = {"minute": 0, "minutes": 0, "min": 0, "mins": 0, "hour": 1, "hours": 1, "hr": 1, "hrs": 1,
               "day": 2, "days": 2, "hourly": 1, "daily": 2}
_SCHEDULE_TEXT = re.compile(r"(?:every\s+)?(?:(\d+)\s*)?([a-z]+)(?:\s+at\s+(.+))?", re.IGNORECASE)
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})\s*(?:([ap])\.?\s*m\.?)?", re.IGNORECASE)
_SEED_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AP]M)")
_START_PATTERN = (r"^(\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M"
                  r"|\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?)?(Z|[+-]00:?00)?)$")
SCHEDULE_FIELD = "schedule"
SCHEDULE_KEYS = ("every", "unit", "at")


@dataclass(frozen=True, kw_only=True)
class AutofyConfig(RestConfig):
    """Autofy's partner API and the partner token Propelware assigned."""

    url: str = option("The API's base URL.", "https://autofy.propelware.com/api/v1/")
    token: str | None = secret("The partner API token, sent as the AUTHORIZATION header of every call.",
                               examples=["{{ env.AUTOFY_TOKEN }}"])
    concurrency: int = option("Records provisioned at once.", 4, minimum=1, maximum=16)


@dataclass(frozen=True)
class RunAfter:
    """Start each profile once it is provisioned (``POST runsync``)."""

    sync_id: str = option("The group of sync operations to run (Autofy's `syncId`).", "0", minLength=1)
    start: str | None = option("How far back the first run reads (`dtStartUTC`, UTC): `M/d/yyyy h:mm:ss AM` or "
                               "ISO 8601; Autofy's own watermark when absent.", None,
                               examples=["1/1/2016 12:00:00 PM", "2016-01-01T12:00:00Z"], pattern=_START_PATTERN)


@dataclass(frozen=True)
class AutofyOptions:
    """How one sync provisions Autofy companies and profiles."""

    template: str | None = option("The sync profile template (`SyncProfileTemplate`) of records that do not map "
                                  "one; Propelware shares the names.", None, examples=["salesforce-qbd"])
    run_after: RunAfter | None = option("Run each newly provisioned profile once (`runsync`); `{}` runs sync id "
                                        "\"0\" from Autofy's own watermark.", None,
                                        examples=[{"sync_id": "0", "start": "1/1/2016 12:00:00 PM"}])
    disconnect_sync_id: str = option("The sync id a delete (mode: mirror) disconnects.", "0", minLength=1)

    def check_output(self, paths: Sequence[tuple[str | int, ...]]) -> list[tuple[tuple[str | int, ...] | None, str]]:
        """At ``validate``: a schedule's members are known, and every record has a template."""
        problems: list[tuple[tuple[str | int, ...] | None, str]] = []
        for path in paths:
            if str(path[0]).lower() != SCHEDULE_FIELD or len(path) == 1:
                continue
            if len(path) > 2 or str(path[1]).lower() not in SCHEDULE_KEYS:
                problems.append((path, "a schedule has `every`, `unit` (minutes, hours or days) and `at` (days "
                                       "only), or is a text such as \"every 30 minutes\""))
        if self.template is None and not any(str(p[0]).lower() == "syncprofiletemplate" for p in paths):
            problems.append((None, "no sync profile template: map SyncProfileTemplate or set the destination's "
                                   "`template`"))
        return problems


# ------------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Schedule:
    """A profile's schedule: every ``every`` ``UNITS[unit]``, at ``at`` (``4:00 AM``, days only)."""

    every: int
    unit: int
    at: str | None = None

    @property
    def text(self) -> str:
        """The schedule in words, as the remote id keeps it: ``30 minutes``, ``1 days at 4:00 AM``."""
        return f"{self.every} {UNITS[self.unit]}" + (f" at {self.at}" if self.at else "")

    def body(self, profile_id: str) -> dict[str, Any]:
        """The ``POST schedule`` document (``scheduleInterval`` as text, as the seed shows it)."""
        body: dict[str, Any] = {"profileId": profile_id, "scheduleInterval": str(self.every),
                                "intervalType": self.unit}
        if self.at:
            body["scheduleTime"] = self.at
        return body


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _time_of_day(value: Any, field: str) -> str:
    """``4:00 AM``, ``4:00am``, ``04:00`` or ``16:30`` as Autofy's ``h:mm AM``."""
    found = _TIME_OF_DAY.fullmatch(str(value).strip())
    if found:
        hour, minute, half = int(found.group(1)), int(found.group(2)), found.group(3)
        if minute < 60 and (1 <= hour <= 12 if half else hour <= 23):
            if half:
                return f"{hour}:{minute:02d} {half.upper()}M"
            return f"{hour % 12 or 12}:{minute:02d} {'AM' if hour < 12 else 'PM'}"
    raise RecordError(f"'{value}' is not a time of day such as 4:00 AM or 16:30", field=field)


def _schedule(every: Any, unit: Any, at: Any, field: str) -> Schedule:
    if _blank(unit):
        raise RecordError("a schedule needs a unit: minutes, hours or days", field=f"{field}.unit")
    code = _UNIT_WORDS.get(str(unit).strip().lower())
    if code is None:
        raise RecordError(f"unit '{unit}' is not one of minutes, hours, days", field=f"{field}.unit")
    if _blank(every):
        count = 1
    elif isinstance(every, int) and not isinstance(every, bool):
        count = every
    elif isinstance(every, str) and every.strip().isdigit():
        count = int(every)
    else:
        raise RecordError(f"every '{every}' is not a whole number", field=f"{field}.every")
    if count < 1:
        raise RecordError("every must be at least 1", field=f"{field}.every")
    if not _blank(at) and code != 2:
        raise RecordError("`at` applies to a schedule in days (Autofy reads scheduleTime only then)",
                          field=f"{field}.at")
    return Schedule(count, code, None if _blank(at) else _time_of_day(at, f"{field}.at"))


def schedule_of(value: Any, field: str = SCHEDULE_FIELD) -> Schedule | None:
    """The record's schedule block, object or words; ``None`` when it says none; :class:`RecordError` when wrong."""
    if _blank(value):
        return None
    if isinstance(value, Mapping):
        members = {str(k).lower(): v for k, v in value.items()}
        unknown = sorted(set(members) - set(SCHEDULE_KEYS))
        if unknown:
            raise RecordError(f"a schedule has every, unit and at; not {', '.join(unknown)}",
                              field=f"{field}.{unknown[0]}")
        if all(_blank(v) for v in members.values()):
            return None
        return _schedule(members.get("every"), members.get("unit"), members.get("at"), field)
    if isinstance(value, str):
        found = _SCHEDULE_TEXT.fullmatch(value.strip())
        if found and found.group(2).lower() in _UNIT_WORDS:
            return _schedule(found.group(1), found.group(2), found.group(3), field)
        raise RecordError(f"'{value}' is not a schedule such as \"every 30 minutes\" or \"every day at 4:00 AM\"",
                          field=field)
    raise RecordError("a schedule is an object {every, unit, at} or a text such as \"every 30 minutes\"",
                      field=field)


def start_of(text: str | None) -> str | None:
    """``run_after.start`` in Autofy's ``M/d/yyyy h:mm:ss AM`` (UTC); an ISO 8601 value is converted."""
    if text is None:
        return None
    try:
        if _SEED_DATE.fullmatch(text):
            moment = datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p")
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
    except ValueError:
        raise ConfigError(f"autofy: run_after.start '{text}' is not a date") from None
    hour = moment.hour % 12 or 12
    return (f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d}:{moment.second:02d} "
            f"{'AM' if moment.hour < 12 else 'PM'}")


@dataclass(frozen=True)
class Provisioned:
    """What the state keeps of a provisioned record (its remote id): ids, and the schedule last applied.

    Never the user's desktop sync token: it is a credential, and the state holds no secret.
    """

    profile_id: str
    user_id: str | None = None
    schedule: str | None = None

    def remote_id(self) -> str:
        """The JSON the state keeps."""
        data = {"ProfileID": self.profile_id, "UserID": self.user_id, "schedule": self.schedule}
        return json.dumps({k: v for k, v in data.items() if v is not None}, sort_keys=True)

    @classmethod
    def parse(cls, remote_id: str | None) -> Provisioned | None:
        """The remote id read back; a bare profile id is accepted too."""
        if not remote_id:
            return None
        try:
            data = json.loads(remote_id)
        except ValueError:
            return cls(remote_id.strip())
        if isinstance(data, dict) and isinstance(data.get("ProfileID"), str) and data["ProfileID"]:
            user, schedule = data.get("UserID"), data.get("schedule")
            return cls(data["ProfileID"], None if user is None else str(user),
                       schedule if isinstance(schedule, str) else None)
        return None


@dataclass(frozen=True)
class Tenant:
    """A mapped record, checked: the company document and what the other calls need of it."""

    company: dict[str, Any]
    template: str
    co_name: Any
    credentials: list[dict[str, Any]]
    schedule: Schedule | None


def tenant_of(values: Mapping[str, Any], default_template: str | None) -> Tenant:
    """The ``POST company`` document of a mapped record (the seed's order first), its template and schedule."""
    named: dict[str, str] = {}
    rest: dict[str, Any] = {}
    schedule_value: Any = None
    schedule_field = SCHEDULE_FIELD
    for name, value in values.items():
        low = name.lower()
        if low == SCHEDULE_FIELD:
            schedule_value, schedule_field = value, name
        elif low in ("coname", "syncprofiletemplate", "credentials", "profiles", "users"):
            named[low] = name
        else:
            rest[name] = value
    schedule = schedule_of(schedule_value, schedule_field)
    given = values.get(named["syncprofiletemplate"]) if "syncprofiletemplate" in named else None
    template = default_template if _blank(given) else str(given).strip()
    if not template:
        raise RecordError("no sync profile template: map SyncProfileTemplate or set the destination's `template`",
                          field="SyncProfileTemplate")
    credentials_field = named.get("credentials", "Credentials")
    credentials = values.get(credentials_field) if "credentials" in named else None
    if credentials is None:
        credentials = []
    if not isinstance(credentials, list) or not all(isinstance(c, dict) for c in credentials):
        raise RecordError("Credentials must be a list of objects (UserName, Password, DataSource...)",
                          field=credentials_field)
    co_name = values.get(named["coname"]) if "coname" in named else None
    company: dict[str, Any] = {
        "CoName": co_name, "SyncProfileTemplate": template, "Credentials": credentials,
        "Profiles": values.get(named["profiles"]) if "profiles" in named else [],
        "Users": values.get(named["users"]) if "users" in named else [],
        **rest}
    return Tenant(company, template, co_name, credentials, schedule)


# ------------------------------------------------------------------------------------------ the API


class AutofyApi:
    """The partner API's calls, each judged by its envelope; shared by the streams of a destination."""

    def __init__(self, config: AutofyConfig, base_dir: Path) -> None:
        if not config.token:
            raise ConfigError("autofy: a token is required (token: \"{{ env.AUTOFY_TOKEN }}\")")
        if config.username or config.password:
            # Inherited from the HTTP settings, but the REST client sends no basic auth: say so, not ignore them.
            raise ConfigError("autofy: username and password are not used; Autofy takes the partner `token`")
        self.config = config
        self.client = RestClient(config, base_dir, pool_size=config.concurrency + 2)
        # A bare token, not "Bearer ...": the seed's samples set it as the whole header value.
        self._auth = {"AUTHORIZATION": config.token}

    def call(self, method: str, path: str, body: Mapping[str, Any], what: str) -> Any:
        """One call; its ``Detail`` when ``Meta.StatusCode`` is 0.

        Raises :class:`RecordError` with Autofy's message when it refuses (HTTP 200 with a non-zero status, or
        another 4xx, or a 5xx after the retries), :class:`ConnectError` when the token is refused.
        """
        reply = self.client.call(method, path, body=dict(body), headers=self._auth)
        return judge(reply, what)

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


def judge(reply: Reply, what: str) -> Any:
    """The ``Detail`` of a successful envelope, else the error it means (see :meth:`AutofyApi.call`)."""
    meta = reply.data.get("Meta") if isinstance(reply.data, dict) else None
    message = str(meta.get("Message") or "").strip() if isinstance(meta, dict) else ""
    if reply.status in (401, 403):
        # Never the request's headers: only what the server said, which holds no token.
        raise ConnectError(f"Autofy refused the API token (HTTP {reply.status})" + (f": {message}" if message else ""))
    if not 200 <= reply.status < 300:
        raise RecordError(f"Autofy answered HTTP {reply.status} to {what}: {message or reply.text[:200]}")
    if not isinstance(meta, dict):
        raise RecordError(f"Autofy answered {what} without its Meta envelope: {reply.text[:200]}")
    code = meta.get("StatusCode")
    if code not in (0, "0"):
        raise RecordError(f"Autofy refused {what}: {message or 'no message'} (StatusCode {code})")
    return reply.data.get("Detail")


def _created(detail: Any) -> tuple[str, str | None]:
    """The new profile's id and the company user's id from a company answer (the user's token is left alone)."""
    profiles = detail.get("Profiles") if isinstance(detail, dict) else None
    users = detail.get("Users") if isinstance(detail, dict) else None
    profile = profiles[0] if isinstance(profiles, list) and profiles and isinstance(profiles[0], dict) else {}
    user = users[0] if isinstance(users, list) and users and isinstance(users[0], dict) else {}
    ident = profile.get("ID")
    if not isinstance(ident, str) or not ident:
        raise RecordError("Autofy made the company but its answer names no profile (Detail.Profiles[0].ID)")
    user_id = user.get("ID")
    return ident, None if user_id is None else str(user_id)


# ------------------------------------------------------------------------------------------ the stream


class AutofyStream:
    """One sync's provisioning: a company per new record, profile updates, schedules, runs, disconnects."""

    max_batch: int | None = None
    """No cap: outcomes are committed as they complete."""

    def __init__(self, api: AutofyApi, options: AutofyOptions, ctx: StreamContext,
                 executor: ThreadPoolExecutor) -> None:
        self.api = api
        self.options = options
        self.ctx = ctx
        self.executor = executor
        self.run_after = _run_after(options.run_after)
        self.start = start_of(self.run_after.start) if self.run_after else None
        self.broken: ConnectError | None = None
        """A failure after a company was made: that record was kept; the run stops at the next record."""
        self._lock = threading.Lock()
        self.done = {"companies": 0, "updates": 0, "schedules": 0, "runs": 0, "disconnects": 0, "rejected": 0}

    def count(self, what: str) -> None:
        """Count one call's success (from several threads)."""
        with self._lock:
            self.done[what] += 1

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Every change, answered in order (the engine prefers :meth:`write_each`)."""
        return in_order(self.write_each(changes), len(changes))

    def write_each(self, changes: Sequence[Change]) -> Iterator[list[tuple[int, Outcome]]]:
        """Send the changes, ``concurrency`` at once, yielding outcomes as they complete (a failure that stops
        the run comes after the outcomes that completed with it: a company just made keeps its ids)."""
        if changes:
            yield from each_completed(self.executor, self.api.config.concurrency, changes, self.send)

    def send(self, change: Change) -> Outcome:
        """One change: create, update or disconnect."""
        if self.broken is not None:
            raise self.broken
        try:
            if change.action == DELETE:
                return self.disconnect(change)
            tenant = tenant_of(change.values or {}, self.options.template)
            if change.action == CREATE:
                return self.create(change, tenant)
            return self.update(change, tenant)
        except RecordError as exc:
            self.count("rejected")
            return Outcome(False, error=exc.message, field=exc.field)

    def create(self, change: Change, tenant: Tenant) -> Outcome:
        """``POST company``, then its schedule and run; once the company exists the record is kept, come what may."""
        profile_id, user_id = _created(self.api.call("POST", "company", tenant.company, "the company"))
        self.count("companies")
        applied: str | None = None
        try:
            if tenant.schedule is not None:
                self.api.call("POST", "schedule", tenant.schedule.body(profile_id), "the schedule")
                self.count("schedules")
                applied = tenant.schedule.text
            if self.run_after is not None:
                body = {"profileId": profile_id, "syncId": self.run_after.sync_id}
                if self.start:
                    body["dtStartUTC"] = self.start
                self.api.call("POST", "runsync", body, "the run")
                self.count("runs")
        except RecordError as exc:
            self.ctx.warn(f"{self.ctx.sync}: '{change.key}' was provisioned (profile {profile_id}) but {exc.message}; "
                          "it is applied again with the record's next change, or `apply --full-refresh`")
        except ConnectError as exc:
            with self._lock:
                self.broken = self.broken or exc
            self.ctx.warn(f"{self.ctx.sync}: '{change.key}' was provisioned (profile {profile_id}) but its schedule "
                          "or run was not applied before the run stopped")
        return Outcome(True, remote_id=Provisioned(profile_id, user_id, applied).remote_id())

    def update(self, change: Change, tenant: Tenant) -> Outcome:
        """``PUT profiles``, then the schedule when it changed."""
        known = Provisioned.parse(change.remote_id)
        if known is None:
            raise RecordError("the state holds no Autofy profile id for this record, so it cannot be updated")
        body: dict[str, Any] = {"ProfileID": known.profile_id}
        if known.user_id is not None:
            body["UserID"] = int(known.user_id) if known.user_id.isdigit() else known.user_id
        if tenant.co_name is not None:
            body["CoName"] = tenant.co_name
        body.update({"TemplateName": tenant.template, "DataSourceCreds": tenant.credentials[:1],
                     "DataDestinationCreds": tenant.credentials[1:]})
        if tenant.schedule is None and known.schedule is not None:
            body["EnableScheduler"] = False
        self.api.call("PUT", "profiles", body, "the profile")
        self.count("updates")
        applied = None if tenant.schedule is None else known.schedule
        if tenant.schedule is not None and tenant.schedule.text != known.schedule:
            self.api.call("POST", "schedule", tenant.schedule.body(known.profile_id), "the schedule")
            self.count("schedules")
            applied = tenant.schedule.text
        return Outcome(True, remote_id=Provisioned(known.profile_id, known.user_id, applied).remote_id())

    def disconnect(self, change: Change) -> Outcome:
        """``POST disconnect`` of the record's profile."""
        known = Provisioned.parse(change.remote_id)
        if known is None:
            raise RecordError("the state holds no Autofy profile id for this record, so it cannot be disconnected")
        self.api.call("POST", "disconnect", {"profileId": known.profile_id,
                                             "syncId": self.options.disconnect_sync_id}, "the disconnect")
        self.count("disconnects")
        return Outcome(True)

    def finish(self) -> None:
        """Say what was done; a failure kept back (see :meth:`create`) stops the run now."""
        done = self.done
        parts = [f"{n} {label}" for label, n in (("compan(ies) provisioned", done["companies"]),
                                                  ("profile update(s)", done["updates"]),
                                                  ("schedule(s) set", done["schedules"]),
                                                  ("run(s) started", done["runs"]),
                                                  ("profile(s) disconnected", done["disconnects"]),
                                                  ("record(s) refused", done["rejected"])) if n]
        if parts:
            self.ctx.note(f"Autofy: {', '.join(parts)}")
        pacing = self.api.client.pacing()
        if pacing:
            self.ctx.note(f"Autofy: {pacing}")
        if self.broken is not None:
            raise self.broken


def _run_after(value: object) -> RunAfter | None:
    """The ``run_after`` option as a :class:`RunAfter`: the engine builds a nested dataclass only when it cannot
    be null, so a given block arrives here as the mapping the pipeline holds."""
    if value is None or isinstance(value, RunAfter):
        return value
    if isinstance(value, Mapping):
        return build(RunAfter, dict(value))
    raise ConfigError("autofy: run_after is a block such as {sync_id: \"0\", start: \"1/1/2016 12:00:00 PM\"}")


@REGISTRY.destination("autofy", config=AutofyConfig, options=AutofyOptions)
class AutofyDestination:
    """Propelware Autofy: a company and sync profile per record, kept up to date, scheduled, run and disconnected."""

    def __init__(self, config: AutofyConfig, base_dir: Path) -> None:
        self.api = AutofyApi(config, base_dir)
        self._executor: ThreadPoolExecutor | None = None

    def open_stream(self, options: AutofyOptions, ctx: StreamContext) -> AutofyStream:
        """One sync's provisioning."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.api.config.concurrency, thread_name_prefix="autofy")
        return AutofyStream(self.api, options, ctx, self._executor)

    def close(self) -> None:
        """Stop the threads, close the connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self.api.close()
