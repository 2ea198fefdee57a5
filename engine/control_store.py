"""What the control API (:mod:`engine.control_api`) keeps: companies, users and profiles, in their own SQLite file.

Why a file of its own (by default ``.syncengine/control.db``, beside the state): the engine's state holds no
secret by rule, and these rows do hold partners' credentials. Keeping them apart lets an operator back up,
restrict (the file is made ``0600``) and rotate this file without touching the state, and the state stays
shareable for support.

**Credentials are encrypted at rest** with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under the
key in ``SYNCENGINE_CONTROL_KEY`` (or a file named by ``SYNCENGINE_CONTROL_KEY_FILE``). The alternative, storing
only references to secrets kept elsewhere, does not fit the Autofy API: a partner *sends* the passwords in
``POST company`` and expects them to work from then on, with no second channel to put them anywhere else. Each
profile's credentials are one token whose plaintext also names the profile, so a token copied onto another
row does not decrypt as that row's. The key may list several keys separated by commas: the first encrypts,
every one decrypts (rotate by putting a new key first, then :meth:`ControlStore.reencrypt`). A key check
stored at creation makes a wrong key fail at start, not at the first run. Losing the key loses the stored
credentials (partners must send them again); nothing else is lost.

**User tokens** (the desktop sync token ``POST company`` answers) are stored only as their SHA-256: the answer
is the one time the token is shown. The tokens are 28 random characters from 36 (over 140 bits), so a plain
hash cannot be searched backwards; :meth:`ControlStore.user_for_token` checks one.

**Credentials become environment values of the profile's runs only** (:attr:`engine.profiles.Profile.secrets`:
given to that run's ``env``, never written, never in ``os.environ``), under these names (:func:`credential_env`)::

    DataSourceCreds[0]          SOURCE_USERNAME  SOURCE_PASSWORD  SOURCE_ACCESS_TOKEN  SOURCE_ACCESS_TOKEN_SECRET
                                SOURCE_ACCESS_TOKEN_CREATION_DATE  SOURCE_REALM_ID  SOURCE_DATA_SOURCE  SOURCE_ID
    DataSourceCreds[1]          SOURCE_2_USERNAME  SOURCE_2_PASSWORD ...  (the n-th, counting from 1: SOURCE_<n>_*)
    DataDestinationCreds[0]     DESTINATION_USERNAME  DESTINATION_PASSWORD ...
    DataDestinationCreds[1]     DESTINATION_2_USERNAME ...

A company's ``Credentials`` list is split as syncengine's own Autofy destination splits it when it updates a
profile: the first is the source's (``SOURCE_*``), the others the destinations' (``Credentials[1]`` is
``DESTINATION_*``). A property that is null or absent sets no variable (in a template, ``'SOURCE_REALM_ID' in env``
is then false). A template reads them as ``{{ env.SOURCE_PASSWORD }}``; the engine masks those whose names look secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.schedule import Schedule, ScheduleError, parse_schedule

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

log = logging.getLogger("syncengine").getChild("control")

KEY_ENV = "SYNCENGINE_CONTROL_KEY"
"""The environment variable holding the Fernet key (or keys, comma-separated) credentials are encrypted with."""
DEFAULT_DB = Path(".syncengine") / "control.db"
"""Where the control database goes, relative to the folder the state is in."""
FIRST_COMPANY_ID = 5328
"""The seed's example ``UserCompanyID``: the first company gets it, so the seed's profile body works as it is."""
FIRST_USER_ID = 4526
"""The seed's example user ``ID``."""
SCHEMA_VERSION = 1
_KEY_CHECK = b"syncengine control key check"
_MAKE_KEY = ('python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"')
CREDENTIAL_FIELDS = {"username": "USERNAME", "password": "PASSWORD", "accesstoken": "ACCESS_TOKEN",
                     "accesstokensecret": "ACCESS_TOKEN_SECRET",
                     "accesstokencreationdate": "ACCESS_TOKEN_CREATION_DATE", "realmid": "REALM_ID",
                     "datasource": "DATA_SOURCE", "id": "ID"}
"""Credential property (lower case, as matched) → the suffix of its environment name."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS companies (
    id INTEGER PRIMARY KEY, co_name TEXT, template TEXT, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, company_id INTEGER NOT NULL REFERENCES companies(id),
    token_sha256 TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY, company_id INTEGER NOT NULL REFERENCES companies(id), template TEXT NOT NULL,
    co_name TEXT, sync_title TEXT, user_id INTEGER, created TEXT NOT NULL, modified TEXT NOT NULL,
    credentials BLOB NOT NULL, schedule TEXT, schedule_enabled INTEGER NOT NULL DEFAULT 0,
    last_sync_attempt TEXT, last_successful_sync TEXT);
CREATE TABLE IF NOT EXISTS disconnected (
    profile_id TEXT NOT NULL REFERENCES profiles(id), sync_id TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (profile_id, sync_id));
"""


def now_utc() -> datetime:
    """The current moment in UTC, to the second (the seed's date format has no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def token_digest(token: str) -> str:
    """How a user token is stored: its SHA-256 in hex (the token itself is never stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_secret_env(name: str, environ: Mapping[str, str]) -> str | None:
    """``name`` from the environment, else the contents of the file ``name_FILE`` names (Docker secrets)."""
    value = environ.get(name)
    if value:
        return value.strip()
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{name}_FILE names {path}, which cannot be read ({type(exc).__name__})") from None
    return None


def make_cipher(keys: str) -> MultiFernet:
    """The cipher for one key or several comma-separated ones (the first encrypts); a bad key is a ConfigError.

    The error never shows the key: it is a secret, and a wrong one is as sensitive as a right one.
    """
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:  # pragma: no cover - installed with paramiko; said clearly should a slim install lack it
        raise ConfigError("--control needs the 'cryptography' package (pip install cryptography)") from None
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise ConfigError(f"{KEY_ENV} is empty; make a key with: {_MAKE_KEY}")
    ciphers = []
    for n, part in enumerate(parts, 1):
        try:
            ciphers.append(Fernet(part.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            which = f"key {n} of {KEY_ENV}" if len(parts) > 1 else KEY_ENV
            raise ConfigError(f"{which} is not a Fernet key (32 bytes in URL-safe base64, 44 characters); make "
                              f"one with: {_MAKE_KEY}") from None
    return MultiFernet(ciphers)


def key_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The control key from ``SYNCENGINE_CONTROL_KEY`` (or ``_FILE``); unset is a ConfigError saying how to make one."""
    value = read_secret_env(KEY_ENV, os.environ if environ is None else environ)
    if not value:
        raise ConfigError(f"--control needs {KEY_ENV}: partners' credentials are stored encrypted with it. Make a "
                          f"key with: {_MAKE_KEY} and set {KEY_ENV} (or {KEY_ENV}_FILE) from your secret store. "
                          "Keep it safe: without it the stored credentials cannot be read")
    return value


def credential_env(sources: Sequence[Mapping[str, Any]],
                   destinations: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The environment values a profile's credentials give its runs (the mapping is in the module doc)."""
    out: dict[str, str] = {}
    for prefix, items in (("SOURCE", sources), ("DESTINATION", destinations)):
        for n, item in enumerate(items, 1):
            stem = prefix if n == 1 else f"{prefix}_{n}"
            for name, value in item.items():
                suffix = CREDENTIAL_FIELDS.get(str(name).lower())
                if suffix is None or value is None or isinstance(value, dict | list):
                    continue
                out[f"{stem}_{suffix}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


@dataclass(frozen=True)
class Credentials:
    """A profile's credentials, decrypted: the source's and the destinations' objects as the partner sent them."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    destinations: list[dict[str, Any]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment values of the profile's runs (:func:`credential_env`)."""
        return credential_env(self.sources, self.destinations)


@dataclass(frozen=True)
class Company:
    """A company: made by ``POST company``, with one user."""

    id: int
    co_name: str | None
    template: str | None
    created: datetime


@dataclass(frozen=True)
class User:
    """A company's user; the token is not here (only its hash is kept)."""

    id: int
    company_id: int


@dataclass(frozen=True)
class ProfileRecord:
    """A sync profile as stored (without its credentials, which :meth:`ControlStore.credentials` decrypts)."""

    id: str
    company_id: int
    template: str
    co_name: str | None
    sync_title: str | None
    user_id: int | None
    created: datetime
    modified: datetime
    schedule_given: dict[str, Any] | None
    """The Autofy triple as the partner sent it (``scheduleInterval``, ``scheduleTime``, ``intervalType``)."""
    schedule_spec: dict[str, Any] | None
    """The same as a schedule spec :func:`engine.schedule.parse_schedule` reads."""
    schedule_enabled: bool
    last_sync_attempt: datetime | None
    last_successful_sync: datetime | None
    disconnected: frozenset[str]
    """The sync ids disconnected (``"0"``: the whole profile)."""


@dataclass(frozen=True)
class NewCompany:
    """What ``POST company`` made: the company, its user with the token (shown this once), and its profile."""

    company: Company
    user: User
    token: str
    profile: ProfileRecord | None


class ControlStore:
    """The control database; every method is safe to call from several threads (one connection, one lock)."""

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self._cipher = make_cipher(key)
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Made owner-only before SQLite writes anything into it.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")  # replaced ciphertexts do not linger in free pages
            self._db.execute("PRAGMA busy_timeout = 5000")
            with self._tx():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._check_key()
        except BaseException:
            self._db.close()
            raise

    # --- plumbing -------------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction, under the lock: everything in it is written, or nothing."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _check_key(self) -> None:
        """Store a key check in a new database; in an old one, check the key decrypts it."""
        from cryptography.fernet import InvalidToken

        row = self._db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('key_check', ?)", (self._cipher.encrypt(_KEY_CHECK),))
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        try:
            ok = self._cipher.decrypt(bytes(row[0])) == _KEY_CHECK
        except InvalidToken:
            ok = False
        if not ok:
            raise ConfigError(f"{KEY_ENV} does not open {self.path}: it was made with another key (the stored "
                              "credentials can only be read with that key; give it, possibly after a new key "
                              "separated by a comma)")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _seal(self, profile_id: str, credentials: Credentials) -> bytes:
        plain = json.dumps({"profile": profile_id, "sources": credentials.sources,
                            "destinations": credentials.destinations}, ensure_ascii=False)
        return self._cipher.encrypt(plain.encode("utf-8"))

    def _unseal(self, profile_id: str, token: bytes) -> Credentials:
        from cryptography.fernet import InvalidToken

        try:
            doc = json.loads(self._cipher.decrypt(token))
        except InvalidToken:
            raise ConfigError(f"the credentials of profile {profile_id} cannot be decrypted with {KEY_ENV}") from None
        if not isinstance(doc, dict) or doc.get("profile") != profile_id:
            raise ConfigError(f"the credentials stored for profile {profile_id} belong to another profile")
        return Credentials(list(doc.get("sources") or []), list(doc.get("destinations") or []))

    def _profile_row(self, profile_id: str) -> ProfileRecord | None:
        row = self._db.execute(
            "SELECT id, company_id, template, co_name, sync_title, user_id, created, modified, schedule, "
            "schedule_enabled, last_sync_attempt, last_successful_sync FROM profiles WHERE id = ?",
            (profile_id,)).fetchone()
        if row is None:
            return None
        schedule = json.loads(row[8]) if row[8] else None
        off = frozenset(r[0] for r in self._db.execute(
            "SELECT sync_id FROM disconnected WHERE profile_id = ?", (profile_id,)))
        return ProfileRecord(row[0], row[1], row[2], row[3], row[4], row[5], datetime.fromisoformat(row[6]),
                             datetime.fromisoformat(row[7]), schedule["given"] if schedule else None,
                             schedule["spec"] if schedule else None, bool(row[9]), _moment(row[10]),
                             _moment(row[11]), off)

    def _insert_profile(self, db: sqlite3.Connection, profile_id: str, company_id: int, template: str,
                        co_name: str | None, sync_title: str | None, user_id: int | None,
                        credentials: Credentials, at: datetime) -> None:
        db.execute("INSERT INTO profiles (id, company_id, template, co_name, sync_title, user_id, created, modified, "
                   "credentials) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (profile_id, company_id, template, co_name, sync_title, user_id, _iso(at), _iso(at),
                    self._seal(profile_id, credentials)))

    # --- companies and users ----------------------------------------------------------------------------

    def create_company(self, co_name: str | None, template: str | None, credentials: Credentials, *,
                       profile_id: str, token: str) -> NewCompany:
        """A company, its user (with ``token``, stored hashed) and, with a template, its profile ``profile_id``."""
        at = now_utc()
        with self._tx() as db:
            company_id = db.execute("SELECT COALESCE(MAX(id) + 1, ?) FROM companies",
                                    (FIRST_COMPANY_ID,)).fetchone()[0]
            db.execute("INSERT INTO companies VALUES (?, ?, ?, ?)", (company_id, co_name, template, _iso(at)))
            user_id = db.execute("SELECT COALESCE(MAX(id) + 1, ?) FROM users", (FIRST_USER_ID,)).fetchone()[0]
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (user_id, company_id, token_digest(token), _iso(at)))
            if template is not None:
                self._insert_profile(db, profile_id, company_id, template, co_name, None, user_id, credentials, at)
            profile = self._profile_row(profile_id) if template is not None else None
        return NewCompany(Company(company_id, co_name, template, at), User(user_id, company_id), token, profile)

    def company(self, company_id: int) -> Company | None:
        """A company by id."""
        with self._lock:
            row = self._db.execute("SELECT id, co_name, template, created FROM companies WHERE id = ?",
                                   (company_id,)).fetchone()
        return Company(row[0], row[1], row[2], datetime.fromisoformat(row[3])) if row else None

    def users(self, company_id: int) -> list[User]:
        """A company's users."""
        with self._lock:
            rows = self._db.execute("SELECT id, company_id FROM users WHERE company_id = ? ORDER BY id",
                                    (company_id,)).fetchall()
        return [User(r[0], r[1]) for r in rows]

    def user_for_token(self, token: str) -> User | None:
        """The user whose desktop sync token this is, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT id, company_id FROM users WHERE token_sha256 = ?",
                                   (token_digest(token),)).fetchone()
        return User(row[0], row[1]) if row else None

    # --- profiles -----------------------------------------------------------------------------------------

    def add_profile(self, profile_id: str, company_id: int, template: str, *, co_name: str | None,
                    sync_title: str | None, user_id: int | None, credentials: Credentials) -> ProfileRecord:
        """Add a profile to a company."""
        with self._tx() as db:
            self._insert_profile(db, profile_id, company_id, template, co_name, sync_title, user_id, credentials,
                                 now_utc())
            made = self._profile_row(profile_id)
        assert made is not None
        return made

    def profile(self, profile_id: str) -> ProfileRecord | None:
        """A profile by id (the canonical lower-case GUID text)."""
        with self._lock:
            return self._profile_row(profile_id)

    def profile_ids(self) -> list[str]:
        """Every profile's id, oldest first."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM profiles ORDER BY created, id")]

    def credentials(self, profile_id: str) -> Credentials:
        """A profile's credentials, decrypted (for its run, or to answer with their public parts)."""
        with self._lock:
            row = self._db.execute("SELECT credentials FROM profiles WHERE id = ?", (profile_id,)).fetchone()
        if row is None:
            raise KeyError(profile_id)
        return self._unseal(profile_id, bytes(row[0]))

    def update_profile(self, profile_id: str, changes: Mapping[str, Any], *,
                       credentials: Credentials | None = None) -> ProfileRecord:
        """Change some of ``template``, ``co_name``, ``sync_title``, ``user_id``, ``schedule_enabled``; and/or
        replace the credentials. The modification time is set."""
        allowed = {"template", "co_name", "sync_title", "user_id", "schedule_enabled"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"not profile columns: {', '.join(sorted(unknown))}")
        with self._tx() as db:
            for column, value in changes.items():
                db.execute(f"UPDATE profiles SET {column} = ? WHERE id = ?", (value, profile_id))
            if credentials is not None:
                db.execute("UPDATE profiles SET credentials = ? WHERE id = ?",
                           (self._seal(profile_id, credentials), profile_id))
            db.execute("UPDATE profiles SET modified = ? WHERE id = ?", (_iso(now_utc()), profile_id))
            updated = self._profile_row(profile_id)
        if updated is None:
            raise KeyError(profile_id)
        return updated

    def reencrypt(self) -> int:
        """Encrypt every profile's credentials (and the key check) again with the first key; returns how many.

        For a key rotation: set ``SYNCENGINE_CONTROL_KEY=new,old``, call this, then drop the old key.
        """
        with self._tx() as db:
            rows = db.execute("SELECT id, credentials FROM profiles").fetchall()
            for profile_id, token in rows:
                db.execute("UPDATE profiles SET credentials = ? WHERE id = ?",
                           (self._cipher.rotate(bytes(token)), profile_id))
            db.execute("UPDATE meta SET value = ? WHERE name = 'key_check'", (self._cipher.encrypt(_KEY_CHECK),))
        return len(rows)

    # --- schedules, runs and disconnects ----------------------------------------------------------------

    def set_schedule(self, profile_id: str, given: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
        """Set (and enable) a profile's schedule: the triple as given, and the spec it parses to."""
        parse_schedule(dict(spec))  # a spec that cannot be read back is never stored
        with self._tx() as db:
            db.execute("UPDATE profiles SET schedule = ?, schedule_enabled = 1, modified = ? WHERE id = ?",
                       (json.dumps({"given": dict(given), "spec": dict(spec)}), _iso(now_utc()), profile_id))

    def schedules(self) -> dict[str, Schedule]:
        """Profile id → its schedule, for the ``serve`` scheduler: enabled schedules of profiles not disconnected
        as a whole (sync id ``"0"``). A group disconnected on its own still runs with the rest; the engine skips
        its syncs. A stored spec that no longer parses (a time zone gone from the system) is left out, logged."""
        out: dict[str, Schedule] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT id, schedule FROM profiles WHERE schedule_enabled = 1 AND schedule IS NOT NULL AND id NOT IN "
                "(SELECT profile_id FROM disconnected WHERE sync_id = '0') ORDER BY created, id").fetchall()
        for profile_id, text in rows:
            try:
                out[profile_id] = parse_schedule(json.loads(text)["spec"])
            except (ScheduleError, ValueError, KeyError, TypeError) as exc:
                log.warning("control: the schedule of profile %s cannot be read (%s); it does not run by itself",
                            profile_id, exc)
        return out

    def disconnect(self, profile_id: str, sync_id: str) -> bool:
        """Mark a sync id of a profile disconnected; returns whether it was connected."""
        with self._tx() as db:
            cursor = db.execute("INSERT OR IGNORE INTO disconnected VALUES (?, ?, ?)",
                                (profile_id, sync_id, _iso(now_utc())))
            changed = cursor.rowcount > 0
            if changed:
                db.execute("UPDATE profiles SET modified = ? WHERE id = ?", (_iso(now_utc()), profile_id))
        return changed

    def mark_attempt(self, profile_id: str, at: datetime) -> None:
        """A run of the profile started at ``at``."""
        with self._tx() as db:
            db.execute("UPDATE profiles SET last_sync_attempt = ? WHERE id = ?", (_iso(at), profile_id))

    def mark_success(self, profile_id: str, at: datetime) -> None:
        """The run of the profile that started at ``at`` ended well."""
        with self._tx() as db:
            db.execute("UPDATE profiles SET last_successful_sync = ? WHERE id = ?", (_iso(at), profile_id))


__all__ = ["DEFAULT_DB", "KEY_ENV", "Company", "ControlStore", "Credentials", "NewCompany", "ProfileRecord", "User",
           "credential_env", "key_from_env", "make_cipher", "read_secret_env", "token_digest"]
