"""Whether a mapping is pure, and its version: what lets a rerun skip the records that did not change.

A mapping is **pure** when its output depends only on the source record and on values fixed
before the run: the template texts, ``vars``, the ``env`` values it reads by name and the
engine's own version. For a pure mapping, a source record whose raw hash (the record's values,
keyed by the mapping's version) equals the one stored with the last acknowledged delivery of its
key needs no mapping at all: it is unchanged. Anything else makes the mapping **impure**, decided
once when the pipeline is compiled, and an impure mapping runs for every record:

- ``run.*`` (the run's id and start time change every run);
- a filter, test or global function the engine does not know to be pure: ``random``,
  ``secret_file`` (a file that may change between runs), a plugin's filter;
- ``env`` used other than as ``env.NAME`` / ``env['NAME']`` (which value it reads is not known).

A changed template, ``vars`` value or ``env`` value that a template reads changes the version, so
every record is mapped once again; so does a new engine version (its filters may have changed).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, nodes

from engine import __version__
from engine.filters import BOUNDED, FILTERS
from engine.templating import SyncEnvironment, attribute_uses

IMPURE_FILTERS = frozenset({"random"})
"""Filters whose result is not a function of their input."""
PURE_GLOBALS = frozenset({"range", "dict", "namespace", "cycler", "joiner"})
"""Global functions whose result depends only on their arguments (``secret_file`` reads a file: impure)."""
_JINJA = Environment()
JINJA_TESTS = frozenset(_JINJA.tests)
_KNOWN_FILTERS = frozenset(_JINJA.filters) | frozenset(FILTERS) | frozenset(BOUNDED)
del _JINJA


@dataclass(frozen=True)
class Purity:
    """A mapping's verdict: its version when pure, else why it is not."""

    version: bytes | None
    reason: str | None = None

    @property
    def pure(self) -> bool:
        """Whether unchanged raw records may skip the mapping."""
        return self.version is not None


def why_impure(env: SyncEnvironment, source: str) -> str | None:
    """Why one template is impure, or ``None`` when its output depends only on its inputs."""
    ast = env.parse(source)
    for name in ast.find_all(nodes.Name):
        if name.name == "run":
            return "it reads run.* (different every run)"
    for node in ast.find_all(nodes.Filter):
        if node.name in IMPURE_FILTERS or node.name not in _KNOWN_FILTERS:
            return f"it uses the filter '{node.name}', not known to be pure"
    for test in ast.find_all(nodes.Test):
        if test.name not in JINJA_TESTS:
            return f"it uses the test '{test.name}', not known to be pure"
    for call in ast.find_all(nodes.Call):
        callee = call.node
        if isinstance(callee, nodes.Name) and callee.name not in PURE_GLOBALS:
            return f"it calls {callee.name}(), not known to be pure"
    for const in ast.find_all(nodes.Const):
        # map('random'), select('...'): a filter or test named by a string.
        if isinstance(const.value, str) and const.value in IMPURE_FILTERS:
            return f"it names the filter '{const.value}'"
    uses = sum(1 for node in ast.find_all(nodes.Name) if node.name == "env")
    if uses != len(list(attribute_uses(ast, "env"))):
        return "it reads env other than by a fixed name (env.NAME)"
    return None


def env_names(env: SyncEnvironment, sources: Iterable[str]) -> list[str]:
    """The ``env`` names the templates read, sorted."""
    return sorted({attr for source in sources for attr, _ in attribute_uses(env.parse(source), "env")})


def mapping_purity(env: SyncEnvironment, sources: list[str], context: Mapping[str, Any]) -> Purity:
    """The verdict on a mapping made of ``sources`` (every template of it: fields, key, filter)."""
    for source in sources:
        reason = why_impure(env, source)
        if reason is not None:
            return Purity(None, f"'{_short(source)}': {reason}")
    env_view = context.get("env")
    read: dict[str, Any] = {}
    for name in env_names(env, sources):
        try:
            read[name] = env_view[name] if env_view is not None else None
        except Exception:  # noqa: BLE001 - an unset variable fails the mapping itself, with its location
            read[name] = None
    text = json.dumps({"engine": __version__, "templates": sources, "vars": context.get("vars"), "env": read},
                      sort_keys=True, default=repr, ensure_ascii=False)
    return Purity(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())


def _short(source: str) -> str:
    one_line = " ".join(source.split())
    return one_line if len(one_line) <= 60 else one_line[:57] + "..."


_BARE_FIELD = re.compile(r"""\A\{\{-?\s*record(?:\.([A-Za-z_]\w*)|\[\s*(['"])([^'"\\]+)\2\s*\])\s*-?\}\}\Z""")


def bare_field(source: Any) -> str | None:
    """The source column a template copies as it is (``{{ record.id }}``), else ``None``."""
    if not isinstance(source, str):
        return None
    match = _BARE_FIELD.match(source)
    if match is None:
        return None
    return match.group(1) or match.group(3)


@dataclass(frozen=True)
class RawSkip:
    """How a sync recognises unchanged raw records: the mapping's version and the column its key copies."""

    version: bytes
    column: str

    def hasher(self) -> Callable[[dict[str, Any]], bytes]:
        """A function from a raw record to its 16-byte hash under this version (names and values, typed)."""
        names_key: dict[tuple[str, ...], bytes] = {}
        version = self.version
        blake2b = hashlib.blake2b

        def raw_hash(record: dict[str, Any]) -> bytes:
            names = tuple(record)
            key = names_key.get(names)
            if key is None:
                if len(names_key) > 4096:  # records that vary their fields
                    names_key.clear()
                key = names_key[names] = blake2b(repr(names).encode("utf-8", "surrogatepass"), digest_size=16,
                                                 key=version).digest()
            values = tuple(record.values())
            try:
                # Text values (a CSV row): joined, which is injective while no value holds the separator.
                text = "\x1f".join(values)
                if text.count("\x1f") == len(values) - 1:
                    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, key=key,
                                   salt=b"j").digest()
            except TypeError:
                pass  # a value that is not text: its repr keeps the type (1 and '1' differ)
            return blake2b(repr(values).encode("utf-8", "surrogatepass"), digest_size=16, key=key,
                           salt=b"r").digest()

        return raw_hash

    def header_key(self, header: list[str]) -> bytes:
        """The hash key of rows under ``header`` (the header's names under the mapping's version)."""
        return hashlib.blake2b(repr(tuple(header)).encode("utf-8", "surrogatepass"), digest_size=16,
                               key=self.version).digest()

    def keyed_hash(self, header: list[str]) -> Callable[[], Any]:
        """A fresh hash of joined rows under ``header``: ``update`` it with the row's text joined by ``\\x1f``
        (UTF-8), then ``digest``. Set up once and copied per row: keying is a whole block's work, a third
        of a short row's hash."""
        return hashlib.blake2b(digest_size=16, key=self.header_key(header), salt=b"j").copy

    def row_hasher(self, header: list[str]) -> Callable[[list[str]], bytes]:
        """:meth:`hasher` for rows of text under ``header``: the same hash as the row's dict would have."""
        key = self.header_key(header)
        blake2b = hashlib.blake2b
        separators = len(header) - 1
        joined = self.keyed_hash(header)

        def raw_hash(row: list[str]) -> bytes:
            text = "\x1f".join(row)
            if text.count("\x1f") == separators:
                h = joined()
                h.update(text.encode("utf-8", "surrogatepass"))
                digest: bytes = h.digest()
                return digest
            return blake2b(repr(tuple(row)).encode("utf-8", "surrogatepass"), digest_size=16, key=key,
                           salt=b"r").digest()

        return raw_hash
