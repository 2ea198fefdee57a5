"""The Divalto "Weavy" CRM data API: a source with export acknowledgement, a destination with per-record,
bulk and relational writes. Built on :mod:`engine.adapters.rest` (token session, rate budget, paging).

**Reading.** Records carry ``{entity}_ID`` (the code), ``srvDateUTC`` (the server's last change),
``srvExport`` and ``srvDeleted``. Every read pages by ``srvDateUTC`` (a keyset: each page asks from
the last ``srvDateUTC`` seen, skipping the codes already read at that instant), never by a growing
offset: in ``mode: export`` the set of unexported rows shrinks while the run acknowledges them, and
an offset would skip rows. A row changed during the read moves to a later ``srvDateUTC`` and is
read again later in the same run. Logically deleted rows (``srvDeleted``) become deletes.

- ``mode: export`` reads the rows not yet exported (``srvExport=0``) and, once the destination holds
  them, marks them exported with ``exportValidation`` (``rowCode`` + the ``srvDateUTC`` read). A row
  changed on the server in between is a *conflict*: it stays unexported, is counted in the run's
  notes, and is read again (later in this run, or by the next). A crash between delivery and
  acknowledgement sends nothing twice (the hashes know what was delivered) and the next run
  acknowledges those rows.
- ``mode: changes`` reads rows changed since the cursor (the largest ``srvDateUTC`` read, as the
  server wrote it); the rows at the cursor's instant are read again and found unchanged.
- ``mode: all`` reads everything: a whole snapshot (so a mirror sync may infer deletes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.adapters.rest import Reply, RestClient, RestConfig, TokenSession
from engine.errors import ConfigError, ConnectError, RecordError
from engine.interfaces import Deleted, DiscoveredField, DiscoveredStream, StreamContext
from engine.registry import REGISTRY
from engine.typed_config import option, secret

PAGE_LIMIT = 1000
"""The most rows one read returns (the service's own limit)."""


@dataclass(frozen=True, kw_only=True)
class WeavyConfig(RestConfig):
    """A Weavy project: the API, the project and the user."""

    url: str = option("The API's base URL (Europe; North America: https://swing-ca.swingmobility.com).",
                      "https://api.weavy.divalto.com")
    project: str = option("The project code.", examples=["ACME"], minLength=1)
    username: str = option("The API user.", examples=["api-sync"], minLength=1)
    password: str | None = secret("The API user's password.", examples=["{{ env.WEAVY_PASSWORD }}"])
    company_code: str | None = option("The company whose rows are read and written; the user's own by default.",
                                      None)
    calls_per_minute: int | None = option(
        "The project's quota of calls per minute from this machine, logins included (the service counts per IP). "
        "Calls wait for a slot instead of being answered 429; every sync and pipeline in the process shares it.",
        60, minimum=1)
    auth_path: str = option("Where to log in.", "/v1/Authenticate")
    data_path: str = option("The data API's root; `{project}` is the project code.", "/v1/data/{project}")
    page_size: int = option("Rows per read (the service returns at most 1000).", PAGE_LIMIT, minimum=1,
                            maximum=PAGE_LIMIT)
    concurrency: int = option("Per-record writes in flight at once.", 4, minimum=1, maximum=32)


class WeavyApi:
    """One project's calls: login, reads, writes; shared by the streams of a source or destination."""

    def __init__(self, config: WeavyConfig, base_dir: Path) -> None:
        if not config.password:
            raise ConfigError("weavy: a password is required (password: \"{{ env.WEAVY_PASSWORD }}\")")
        self.config = config
        self.client = RestClient(config, base_dir, pool_size=config.concurrency + 2)
        self.client.session = TokenSession(self._login)
        self.root = config.data_path.format(project=config.project).rstrip("/")
        self._entities: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _login(self) -> tuple[str, float | None]:
        config = self.config
        reply = self.client.login_call(config.auth_path, {"scope": "API", "projectCode": config.project,
                                                          "userName": config.username,
                                                          "password": config.password})
        if reply.status in (400, 401, 403):
            raise ConnectError(f"Weavy refused the login of user '{config.username}' to project "
                               f"'{config.project}' (HTTP {reply.status})")
        data = self.client.expect(reply).data
        if not isinstance(data, dict) or not data.get("authToken"):
            raise ConnectError("Weavy's login answer holds no authToken")
        expires = data.get("expiresIn")
        return str(data["authToken"]), float(expires) if isinstance(expires, (int, float)) else None

    def path(self, *parts: str) -> str:
        """A data path below the project's root (parts are URL-quoted)."""
        from urllib.parse import quote

        return "/".join([self.root, *(quote(str(p), safe="") for p in parts)])

    def company(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the configured company, if any."""
        return {**params, "companyCode": self.config.company_code} if self.config.company_code else params

    # --- entities ---------------------------------------------------------------------------------------

    def entities(self) -> list[dict[str, Any]]:
        """Every entity the project exposes, with its fields (the discovery document)."""
        data = self.client.expect(self.client.call("GET", self.path("entities"))).data
        if not isinstance(data, list):
            raise ConnectError("Weavy's entity list is not a list")
        return [e for e in data if isinstance(e, dict)]

    def entity(self, name: str) -> dict[str, Any]:
        """One entity's description (fetched once per process)."""
        with self._lock:
            if name in self._entities:
                return self._entities[name]
        reply = self.client.call("GET", self.path("entities", name))
        if reply.status == 404:
            names = [str(e.get("entityName")) for e in self.entities()]
            from engine.schema_errors import did_you_mean

            raise ConfigError(f"Weavy project '{self.config.project}' has no entity '{name}'"
                              + did_you_mean(name, names))
        data = self.client.expect(reply).data
        if not isinstance(data, dict):
            raise ConnectError(f"Weavy's description of entity '{name}' is not an object")
        with self._lock:
            self._entities[name] = data
        return data

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


def discovered(entity: Mapping[str, Any]) -> DiscoveredStream:
    """An entity of the discovery document as the engine's description of a stream."""
    name = str(entity.get("entityName"))
    fields = [DiscoveredField(str(f.get("fieldName")), f.get("fieldType"), bool(f.get("required")))
              for f in entity.get("fields") or [] if isinstance(f, dict)]
    system = [DiscoveredField(n, t) for n, t in ((f"{name}_ID", "text"), ("srvDateUTC", "datetime"),
                                                   ("srvExport", "boolean"), ("srvDeleted", "boolean"),
                                                   ("companyCode", "text"))
              if n not in {f.name for f in fields}]
    return DiscoveredStream(name, tuple(fields + system), key=(f"{name}_ID",))


# --- the source -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeavySourceOptions:
    """What one sync reads from Weavy."""

    entity: str = option("The entity to read (without `sw_data_`).", examples=["customer"], minLength=1)
    mode: Literal["export", "changes", "all"] = option(
        "export: rows not yet exported, marked exported once delivered; changes: rows changed since the "
        "cursor (srvDateUTC); all: every row (a whole snapshot).", "export")
    include_deleted: bool = option("Read logically deleted rows too, as deletes (applied by `mode: mirror` syncs).",
                                   True)
    acknowledge: bool | None = option("Mark delivered rows exported (exportValidation); by default in mode: "
                                      "export only.", None)


class WeavySourceStream:
    """One sync's read: pages by srvDateUTC, acknowledges what was delivered."""

    def __init__(self, api: WeavyApi, options: WeavySourceOptions, ctx: StreamContext) -> None:
        self.api = api
        self.options = options
        self.ctx = ctx
        self.code_field = f"{options.entity}_ID"
        self.acknowledging = options.mode == "export" if options.acknowledge is None else options.acknowledge
        self.latest: str | None = None
        self.conflicts = 0
        self.acknowledged = 0
        self.whole = False

    def read(self, cursor: str | None) -> Iterator[dict[str, Any] | RecordError]:
        """Every row of the read, page by page (see the module's notes on keyset paging)."""
        options = self.options
        params: dict[str, Any] = {}
        if options.include_deleted:
            params["includeDeleted"] = True
        if options.mode == "export":
            params["srvExport"] = 0
        since = cursor if options.mode == "changes" else None
        self.latest = since
        self.whole = options.mode == "all" and cursor is None
        limit = self.api.config.page_size
        path = self.api.path(options.entity)
        at = since
        skip = 0
        read_at: set[str] = set()  # codes already read whose srvDateUTC is `at`
        while True:
            query = self.api.company({**params, "offset": skip, "limit": limit})
            if at is not None:
                query["srvDateUTCFrom"] = at
            reply = self.api.client.call("GET", path, params=query)
            if reply.status == 404:
                raise ConfigError(f"Weavy project '{self.api.config.project}' has no entity '{options.entity}'")
            page = _rows(self.api.client.expect(reply))
            for row in page:
                code = row.get(self.code_field)
                stamp = row.get("srvDateUTC")
                if stamp == at and code in read_at:
                    continue
                if stamp == at:
                    read_at.add(str(code))
                if isinstance(stamp, str) and (self.latest is None or stamp > self.latest):
                    self.latest = stamp
                yield Deleted(row) if row.get("srvDeleted") else row
            if len(page) < limit:
                return
            last = page[-1].get("srvDateUTC")
            if not isinstance(last, str):
                raise ConnectError(f"Weavy rows of '{options.entity}' carry no srvDateUTC to page by")
            if last == at:
                skip += len(page)  # a whole page at one instant: go on within it
            else:
                at, skip = last, 0
                read_at = {str(r.get(self.code_field)) for r in page if r.get("srvDateUTC") == last}

    def acknowledge(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Mark delivered rows exported; a row changed since it was read is a conflict and stays unexported."""
        if not self.acknowledging:
            return
        rows = [{"rowCode": r.get(self.code_field), "srvDateUTC": r.get("srvDateUTC")} for r in records
                if r.get(self.code_field) is not None and r.get("srvDateUTC") is not None]
        for start in range(0, len(rows), PAGE_LIMIT):
            chunk = rows[start:start + PAGE_LIMIT]
            body = self.api.company({"entityName": self.options.entity, "srvExport": True, "rows": chunk})
            reply = self.api.client.expect(self.api.client.call("POST", self.api.path("exportValidation"),
                                                                body=body))
            conflicts = reply.data.get("conflicts") if isinstance(reply.data, dict) else None
            found = len(conflicts) if isinstance(conflicts, list) else 0
            self.conflicts += found
            self.acknowledged += len(chunk) - found

    def finish(self) -> str | None:
        """The cursor (``mode: changes``); a note of the conflicts met."""
        pacing = self.api.client.pacing()
        if pacing:
            self.ctx.note(f"{self.options.entity}: {pacing}")
        if self.conflicts:
            self.ctx.note(f"{self.conflicts} row(s) of '{self.options.entity}' changed on Weavy after they were "
                          "read, so they were not marked exported (a conflict); they are read again")
        return self.latest if self.options.mode == "changes" else None


def _rows(reply: Reply) -> list[dict[str, Any]]:
    data = reply.data
    if isinstance(data, dict):
        data = data.get("data")
    if not isinstance(data, list):
        raise ConnectError("Weavy answered a read that holds no list of rows")
    return [r for r in data if isinstance(r, dict)]


@REGISTRY.source("weavy", config=WeavyConfig, options=WeavySourceOptions)
class WeavySource:
    """Weavy CRM rows: not yet exported (acknowledged once delivered), changed since a cursor, or all."""

    def __init__(self, config: WeavyConfig, base_dir: Path) -> None:
        self.api = WeavyApi(config, base_dir)

    def open_stream(self, options: WeavySourceOptions, ctx: StreamContext) -> WeavySourceStream:
        """One sync's read."""
        return WeavySourceStream(self.api, options, ctx)

    def discover(self) -> list[DiscoveredStream]:
        """The project's entities and their fields."""
        return [discovered(e) for e in self.api.entities()]

    def stream_for(self, options: WeavySourceOptions) -> str | None:
        """The entity a sync reads."""
        return options.entity

    def close(self) -> None:
        """Close the connections."""
        self.api.close()
