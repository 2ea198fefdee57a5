"""``syncengine discover``: ask the adapters that can describe their data what they hold, and keep it.

Each discoverable source and destination (see :class:`~engine.interfaces.Discoverable`) is opened
with its config rendered through the :class:`~engine.runner.Engine`, so ``{{ env.NAME }}`` works as
under ``apply``. What they report is written to a JSON cache, ``discovery.json`` beside the state
database, with when and from which adapter. ``validate`` reads that cache (and never connects
anywhere): a mapping that reads ``record.X`` from a discovered stream without a field ``X`` is a
located problem. An entry whose endpoint config or sync options changed since it was written is
ignored, as is a cache that is missing or unreadable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError

from engine.errors import PipelineInvalid, Problem, SyncEngineError
from engine.interfaces import Discoverable, DiscoveredStream
from engine.schema_errors import did_you_mean
from engine.templating import make_environment
from engine.yaml_source import Located, YamlPath, format_path, load_located

if TYPE_CHECKING:  # the config module calls into this one, so these are imported for typing only
    from engine.config import Endpoint, Pipeline, SyncSpec
    from engine.runner import Engine

CACHE_NAME = "discovery.json"
CACHE_FORMAT = 1
_GUARDS = frozenset({"default", "d", "coalesce"})
"""Filters and functions that accept a missing field, so a read under them is no mistake."""
_LISTED_FIELDS = 30
"""A stream with at most this many fields has them listed in a problem that has no did-you-mean."""


def cache_path(state_path: Path) -> Path:
    """Where the discovery cache of a pipeline lives: beside its state database."""
    return state_path.parent / CACHE_NAME


def fingerprint(value: Any) -> str:
    """A short digest of a typed config or options value (still templated), to tell when a cache entry is stale."""
    plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
    text = json.dumps(plain, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stream_data(stream: DiscoveredStream) -> dict[str, Any]:
    data: dict[str, Any] = {"name": stream.name, "key": list(stream.key),
                            "fields": [{"name": f.name, "type": f.type, "required": f.required}
                                       for f in stream.fields]}
    if stream.closed:
        data["closed"] = True
    return data


def _discoverable(endpoint: Endpoint) -> bool | None:
    """Whether an endpoint's adapter can describe its data; ``None`` when only an instance can tell."""
    factory = endpoint.spec.factory
    if isinstance(factory, type):
        return issubclass(factory, Discoverable)  # the capability is declared by the class's methods
    return None


@dataclass
class DiscoveryResult:
    """What ``discover`` found: the cache document, and one line per endpoint that could not be read."""

    document: dict[str, Any]
    """The pipeline's entry in the cache: when, and per source and destination its adapter and streams."""
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Endpoints whose adapter cannot describe its data, as ``sources.name (type)``."""


def discover_pipeline(pipeline: Pipeline, engine: Engine) -> DiscoveryResult:
    """Open every discoverable endpoint of the pipeline and collect its streams and the stream of each sync.

    A config that cannot be rendered (an unset variable) raises :class:`ConfigError` before anything is
    opened; an endpoint that cannot be opened or read is an error line, and the others are still read.
    """
    document: dict[str, Any] = {"discovered_at": _now(), "sources": {}, "destinations": {}, "syncs": {}}
    result = DiscoveryResult(document)
    endpoints = [("sources", e) for e in pipeline.sources.values()]
    endpoints += [("destinations", e) for e in pipeline.destinations.values()]
    wanted = [(section, e) for section, e in endpoints if _discoverable(e) is not False]
    # Every config first, so an unset variable fails once, before any connection is opened.
    configs = {(section, e.name): engine.render_config(e) for section, e in wanted}
    adapters: dict[tuple[str, str], Any] = {}
    opened: list[Any] = []
    try:
        for section, endpoint in endpoints:
            label = f"{section}.{endpoint.name} ({endpoint.spec.name})"
            if (section, endpoint.name) not in configs:
                result.skipped.append(label)
                continue
            try:
                adapter = endpoint.spec.factory(configs[(section, endpoint.name)], pipeline.base_dir)
                opened.append(adapter)
                if not isinstance(adapter, Discoverable):
                    result.skipped.append(label)
                    continue
                streams = adapter.discover()
            except SyncEngineError as exc:
                result.errors.append(engine.redactor.text(f"{label}: {exc}"))
                continue
            except Exception as exc:  # noqa: BLE001 - a third-party adapter's bug is this endpoint's error line
                result.errors.append(engine.redactor.text(f"{label}: unexpected {type(exc).__name__}: {exc}"))
                continue
            adapters[(section, endpoint.name)] = adapter
            document[section][endpoint.name] = {
                "adapter": endpoint.spec.name, "role": endpoint.role, "config": fingerprint(endpoint.config),
                "discovered_at": _now(), "streams": [_stream_data(s) for s in streams]}
        _choose_streams(pipeline, adapters, document)
    finally:
        for adapter in opened:
            try:
                adapter.close()
            except Exception:  # noqa: BLE001, S110 - what was discovered stands; closing has nothing to add
                pass
    return result


def _choose_streams(pipeline: Pipeline, adapters: Mapping[tuple[str, str], Any], document: dict[str, Any]) -> None:
    """Record, for each sync, the stream its options select on each discovered side."""
    for name, sync in pipeline.syncs.items():
        entry: dict[str, Any] = {}
        for side, section, endpoint_name, options in (
                ("source", "sources", sync.source, sync.source_options),
                ("destination", "destinations", sync.destination, sync.destination_options)):
            adapter = adapters.get((section, endpoint_name))
            if adapter is not None:
                entry[side] = {"endpoint": endpoint_name, "options": fingerprint(options),
                               "stream": adapter.stream_for(options)}
        if entry:
            document["syncs"][name] = entry


def write_cache(path: Path, pipeline: str, entry: Mapping[str, Any]) -> None:
    """Put a pipeline's entry in the cache (the other pipelines that share its state folder keep theirs).

    An endpoint this discovery could not read keeps what an earlier discovery found (and the syncs'
    choices of its streams), so a failed run never wipes a good layout. The file is written whole or
    not at all, so a reader never sees half of it.
    """
    document = read_cache(path) or {"format": CACHE_FORMAT, "pipelines": {}}
    before = document["pipelines"].get(pipeline)
    entry = {**entry, "sources": dict(entry.get("sources") or {}),
             "destinations": dict(entry.get("destinations") or {}),
             "syncs": {k: dict(v) for k, v in (entry.get("syncs") or {}).items()}}
    if isinstance(before, dict):
        for section in ("sources", "destinations"):
            for name, old in (before.get(section) or {}).items():
                if name not in entry[section]:
                    entry[section][name] = old
                    side = "source" if section == "sources" else "destination"
                    for sync, chosen in (before.get("syncs") or {}).items():
                        if isinstance(chosen, dict) and isinstance(chosen.get(side), dict) \
                                and chosen[side].get("endpoint") == name:
                            entry["syncs"].setdefault(sync, {}).setdefault(side, chosen[side])
    document["pipelines"][pipeline] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_cache(path: Path) -> dict[str, Any] | None:
    """The cache, or ``None`` when it is missing, unreadable or of another format (it is only a hint)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT \
            or not isinstance(document.get("pipelines"), dict):
        return None
    return document


@dataclass(frozen=True)
class KnownStream:
    """A sync's source stream as the cache describes it."""

    endpoint: str
    name: str
    fields: tuple[str, ...]
    discovered_at: str


def source_stream(cache: Mapping[str, Any], sync: SyncSpec, endpoint: Endpoint) -> KnownStream | None:
    """The discovered stream a sync reads, when the cache still matches the endpoint's config and the sync's options."""
    try:
        entry = cache["sources"][endpoint.name]
        chosen = cache["syncs"][sync.name]["source"]
        if entry["adapter"] != endpoint.spec.name or entry["config"] != fingerprint(endpoint.config):
            return None
        if chosen["endpoint"] != endpoint.name or chosen["options"] != fingerprint(sync.source_options):
            return None
        if not isinstance(chosen["stream"], str):
            return None
        stream = next(s for s in entry["streams"] if s["name"] == chosen["stream"])
        names = tuple(str(f["name"]) for f in stream["fields"])
        return KnownStream(endpoint.name, chosen["stream"], names, str(entry.get("discovered_at", "")))
    except (KeyError, TypeError, AttributeError, StopIteration):
        return None  # no entry, or a cache edited by hand: it changes nothing


def _record_field(node: nodes.Node) -> str | None:
    """The field name of ``record.X`` or ``record['X']``, else ``None``."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "record":
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == "record" \
            and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


def strict_record_reads(ast: nodes.Template) -> list[tuple[str, int]]:
    """(field, template line) of each ``record.X`` a template reads where a missing field is an error.

    A field the template reads anywhere through ``default``, ``coalesce``, ``record.get('X')``,
    ``is defined`` or ``'X' in record`` is left out everywhere in that template: such a template
    expects the field to be missing sometimes (and may guard its other reads with an ``if``).
    """
    guarded: set[str] = set()
    reads: list[tuple[str, int]] = []

    def walk(node: nodes.Node, parent: nodes.Node | None) -> None:
        name = _record_field(node)
        if name is not None:
            guard = (isinstance(parent, nodes.Filter) and parent.name in _GUARDS
                     or isinstance(parent, nodes.Test) and parent.name in ("defined", "undefined")
                     or isinstance(parent, nodes.Call) and (parent.node is node or isinstance(parent.node, nodes.Name)
                                                            and parent.node.name in _GUARDS))
            if guard:
                guarded.add(name)
            else:
                reads.append((name, node.lineno))
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr == "get" \
                and isinstance(node.node.node, nodes.Name) and node.node.node.name == "record" and node.args \
                and isinstance(node.args[0], nodes.Const) and isinstance(node.args[0].value, str):
            guarded.add(node.args[0].value)
        if isinstance(node, nodes.Compare) and isinstance(node.expr, nodes.Const) and isinstance(node.expr.value, str) \
                and any(op.op in ("in", "notin") and isinstance(op.expr, nodes.Name) and op.expr.name == "record"
                        for op in node.ops):
            guarded.add(node.expr.value)
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(ast, None)
    return [(name, line) for name, line in reads if name not in guarded]


def destination_stream(cache: Mapping[str, Any], sync: SyncSpec,
                       endpoint: Endpoint) -> tuple[str, list[dict[str, Any]]] | None:
    """(name, fields) of the closed stream a sync writes, when the cache still matches config and options."""
    try:
        entry = cache["destinations"][endpoint.name]
        chosen = cache["syncs"][sync.name]["destination"]
        if entry["adapter"] != endpoint.spec.name or entry["config"] != fingerprint(endpoint.config):
            return None
        if chosen["endpoint"] != endpoint.name or chosen["options"] != fingerprint(sync.destination_options):
            return None
        stream = next(s for s in entry["streams"] if s["name"] == chosen["stream"])
        if not stream.get("closed"):
            return None
        return str(stream["name"]), [f for f in stream["fields"] if isinstance(f, dict)]
    except (KeyError, TypeError, AttributeError, StopIteration):
        return None


def output_field_problems(pipeline: str, state_path: Path, destinations: Mapping[str, Endpoint],
                          syncs: Mapping[str, SyncSpec]) -> list[Problem]:
    """A problem for each output field a mapping makes that the destination's discovered layout lacks, and for
    each required field of the layout the mapping never makes (only for closed streams: a connector's layout)."""
    document = read_cache(cache_path(state_path))
    cache = document["pipelines"].get(pipeline) if document is not None else None
    if not isinstance(cache, dict):
        return []
    problems: list[Problem] = []
    for sync in syncs.values():
        endpoint = destinations.get(sync.destination)
        known = destination_stream(cache, sync, endpoint) if endpoint is not None and sync.fields else None
        if known is None:
            continue
        stream, fields = known
        names = {str(f["name"]) for f in fields}
        leaves = [(tuple(str(p) for p in f.path if not isinstance(p, int)), f.location) for f in sync.fields or ()]
        if sync.group is not None:
            leaves += [((*sync.group.into, *(str(p) for p in f.path if not isinstance(p, int))), f.location)
                       for f in sync.group.fields]
        made: set[str] = set()
        for path, location in leaves:
            dotted = ".".join(path)
            made.update(".".join(path[:i]) for i in range(1, len(path) + 1))
            hint = did_you_mean(dotted, sorted(names))
            if dotted in names or not hint:
                continue  # a name with no near match is an extra field the layout does not list, not a typo
            file, _, line = location.rpartition(":")
            problems.append(Problem(file, int(line) if line.isdigit() else 1, 1,
                                    f"syncs.{sync.name}.mapping.fields.{dotted}",
                                    f"'{dotted}' is not a field of '{stream}' in the layout of destination "
                                    f"'{endpoint.name if endpoint else ''}'{hint}"))
        for f in fields:
            name = str(f["name"])
            parent = name.rpartition(".")[0]
            if f.get("required") and name not in made and (not parent or parent in made):
                file, _, line = sync.location.rpartition(":")
                problems.append(Problem(file, int(line) if line.isdigit() else 1, 1, f"syncs.{sync.name}.mapping",
                                        f"the layout of '{stream}' requires '{name}', which the mapping does not make"))
    return problems


def _templates(sync: SyncSpec) -> Iterator[tuple[str, str, list[YamlPath]]]:
    """(source, ``file:line``, the YAML paths it may stand at) of each sync template that reads the source record."""
    base: YamlPath = ("syncs", sync.name)
    for f in sync.fields or ():
        if f.is_template:
            yield f.source, f.location, [(*base, "mapping", "fields", *f.path), ("fields", *f.path)]
    if sync.filter_template is not None:
        yield (sync.filter_template[0], sync.filter_template[1],
               [(*base, "mapping", "filter"), (*base, "filter"), ("filter",)])
    if sync.key_template is not None:
        yield sync.key_template[0], sync.key_template[1], [(*base, "key"), ("key",)]


def _position(located: Located, location: str, candidates: list[YamlPath]) -> tuple[YamlPath, int, int]:
    """The path, line and column of a template given its ``file:line`` and the paths it may stand at."""
    line = int(location.rsplit(":", 1)[1])
    for path in candidates:
        where = located.values.get(path)
        if where is not None and where[0] == line:
            return path, where[0], where[1]
    return (), line, 1


def record_field_problems(pipeline: str, located: Located, base_dir: Path, state_path: Path,
                          sources: Mapping[str, Endpoint], syncs: Mapping[str, SyncSpec]) -> list[Problem]:
    """A located problem for each ``record.X`` a sync's templates read that its discovered source stream lacks."""
    document = read_cache(cache_path(state_path))
    cache = document["pipelines"].get(pipeline) if document is not None else None
    if not isinstance(cache, dict):
        return []
    env = make_environment(base_dir)
    files: dict[str, Located | None] = {located.file: located}
    problems: list[Problem] = []
    for sync in syncs.values():
        endpoint = sources.get(sync.source)
        known = source_stream(cache, sync, endpoint) if endpoint is not None else None
        if known is None:
            continue
        have = set(known.fields)
        for source, location, candidates in _templates(sync):
            try:
                ast = env.parse(source)
            except TemplateError:
                continue  # validation has reported it
            missing = [(name, line) for name, line in dict.fromkeys(strict_record_reads(ast)) if name not in have]
            if not missing:
                continue
            file = location.rsplit(":", 1)[0]
            if file not in files:
                try:
                    files[file] = load_located(Path(file), file)
                except (PipelineInvalid, OSError):
                    files[file] = None
            loc = files[file]
            path, line, col = _position(loc, location, candidates) if loc is not None else \
                ((), int(location.rsplit(":", 1)[1]), 1)
            for name, t_line in missing:
                hint = did_you_mean(name, list(known.fields))
                if not hint and len(known.fields) <= _LISTED_FIELDS:
                    hint = f"; it has {', '.join(known.fields)}"
                problems.append(Problem(
                    file, line + t_line - 1, col if t_line == 1 else 1, format_path(path),
                    f"record.{name}: no field '{name}' in the stream '{known.name}' of source "
                    f"'{known.endpoint}'{hint}; discovered {known.discovered_at} (run `syncengine discover` again "
                    "if it changed)"))
    return problems


def summary_lines(result: DiscoveryResult) -> list[str]:
    """The discovery as text: each endpoint, its streams and fields, and the stream of each sync."""
    lines: list[str] = []
    document = result.document
    for section in ("sources", "destinations"):
        for name, entry in document[section].items():
            streams = entry["streams"]
            lines.append(f"{section}.{name} ({entry['adapter']}): {len(streams)} "
                         f"stream{'s' if len(streams) != 1 else ''}")
            for stream in streams:
                key = set(stream["key"])
                shown = []
                for f in stream["fields"]:
                    notes = [n for n in (f["type"], "key" if f["name"] in key else None,
                                         "required" if f["required"] else None) if n]
                    shown.append(f"{f['name']} ({', '.join(notes)})" if notes else f["name"])
                lines.append(f"  {stream['name']}: {', '.join(shown) or '(no fields)'}")
    for name, entry in document["syncs"].items():
        for side in ("source", "destination"):
            if side in entry:
                stream = entry[side]["stream"]
                lines.append(f"sync {name}: {side} {entry[side]['endpoint']}"
                             + (f", stream {stream}" if stream else " (the options name no stream)"))
    for skipped in result.skipped:
        lines.append(f"{skipped}: cannot describe its data; skipped")
    return lines


__all__ = ["CACHE_NAME", "DiscoveryResult", "cache_path", "discover_pipeline", "read_cache",
           "record_field_problems", "strict_record_reads", "summary_lines", "write_cache"]
