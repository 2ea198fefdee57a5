"""Read a pipeline file, validate it in two phases, and return it typed.

Phase one checks the envelope against ``schemas/pipeline.schema.json``; phase two checks each
source and destination block against its adapter's own schema, each sync's per-adapter options,
its mapping (files resolved, every template compiled and the names it uses checked) and its
references. Every problem is collected and raised together as :class:`PipelineInvalid`, each
located as ``file:line:col: yaml.path: message``. Nothing is opened or run here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from engine.errors import PipelineInvalid, Problem
from engine.interfaces import ChecksOutput
from engine.mapping import FieldTemplate
from engine.profiles import PROFILES_FILE, SEPARATOR, Profile, find_profile, load_profiles, profiles_path
from engine.registry import REGISTRY, AdapterSpec, Registry, Role
from engine.schema_errors import did_you_mean, validate_block
from engine.templating import (
    CONTEXT_NAMES,
    EnvView,
    attribute_uses,
    check_template,
    env_names,
    is_template,
    looks_secret,
    make_environment,
)
from engine.typed_config import build
from engine.yaml_source import Located, YamlPath, format_path, load_located

ALL_GROUP = "all"
"""The default group: every sync (unless the pipeline names a group so)."""
DEFAULT_STATE = ".syncengine/state.db"
CONFIG_NAMES = ("vars", "env")


SECRET_KEY_NAME = re.compile(r"authorization|token|secret|passw|api[-_]?key|cookie|credential", re.IGNORECASE)


def config_templates(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path, text) of every templated string in a config block, at any depth."""
    if isinstance(value, str):
        if is_template(value):
            yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from config_templates(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from config_templates(item, (*path, i))


def is_secret_path(path: tuple[str | int, ...], secrets: Sequence[str]) -> bool:
    """Whether a config value holds a secret: a secret field, or an entry (a header) named like one."""
    return bool(path) and (path[0] in secrets or any(
        isinstance(part, str) and SECRET_KEY_NAME.search(part) for part in path[1:]))


def _shipped(folder: str) -> Traversable:
    """A folder shipped with the package (``schemas``, ``mappings``).

    Installed, it is the subpackage ``engine.<folder>``; imported straight from a source checkout
    (the repository on ``sys.path``, whatever is installed), it is the top-level folder beside ``engine/``.
    """
    try:
        return resources.files(f"engine.{folder}")
    except ModuleNotFoundError:
        return Path(str(resources.files("engine"))).resolve().parent / folder


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``schemas/``."""
    text = _shipped("schemas").joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def shipped_mappings() -> Path:
    """The folder of mapping files shipped with the package."""
    return Path(str(_shipped("mappings")))


@dataclass(frozen=True)
class Endpoint:
    """A configured source or destination: its adapter and typed (still templated) config."""

    name: str
    role: Role
    spec: AdapterSpec
    config: object
    location: str
    locations: Mapping[tuple[str | int, ...], str] = field(default_factory=dict)
    """``file:line:col`` of each templated value in the block, by its path below the block."""


@dataclass(frozen=True)
class GroupSpec:
    """A mapping's ``group:``: adjacent source rows with the same ``by`` value become one record.

    The mapping's ``fields`` render over the group's first row; ``fields`` here render once per row
    into the list at ``into`` (``LineItems``: order lines from a CSV become one order's items).
    ``by`` is a source field name, or a template over ``record`` (with its location).
    """

    by: str
    by_is_template: bool
    into: tuple[str, ...]
    fields: tuple[FieldTemplate, ...]
    location: str


@dataclass(frozen=True)
class SyncSpec:
    """One sync, validated and typed."""

    name: str
    source: str
    source_options: object
    destination: str
    destination_options: object
    key_fields: tuple[str, ...]
    key_template: tuple[str, str] | None
    mode: str
    scope: str
    fields: tuple[FieldTemplate, ...] | None
    filter_template: tuple[str, str] | None
    batch_size: int
    max_delete_share: float
    enabled: bool
    location: str
    delete_when: tuple[str, str] | None = None
    memo_fields: tuple[str, ...] = ()
    max_error_share: float = 0.5
    max_errors: int | None = None
    group: GroupSpec | None = None
    arrow: bool = True
    """Whether the sync may read its source with pyarrow where that reads exactly what the row reader would."""

    @property
    def deletes_missing(self) -> bool:
        """Whether keys missing from the source may be deleted: a mirrored snapshot, or a window with a condition."""
        return self.mode == "mirror" and (self.scope == "snapshot" or self.delete_when is not None)


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline."""

    path: Path
    name: str
    base_dir: Path
    vars: dict[str, Any]
    state_path: Path
    sources: dict[str, Endpoint]
    destinations: dict[str, Endpoint]
    syncs: dict[str, SyncSpec]
    secret_env: frozenset[str] = field(default_factory=frozenset)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Named sets of syncs (``apply --group``), in the pipeline's sync order."""
    schedules: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    """Schedule specs: the pipeline's under ``None``, a group's under its name (a profile's win)."""
    template: str = ""
    """The pipeline's own name; ``name`` adds ``@profile`` when a profile is loaded."""
    profile: str | None = None
    env_aliases: dict[str, str] = field(default_factory=dict)
    """The profile's environment names: ``env.NAME`` reads the variable named here instead."""
    env_values: dict[str, str] = field(default_factory=dict, repr=False)
    """The profile's own secret values for ``env.NAME`` (control-API profiles); never written anywhere."""

    profiles_file: Path | None = None

    def env(self) -> EnvView:
        """``env`` as this pipeline's templates see it."""
        return EnvView(self.env_aliases, self.env_values)

    def group_syncs(self, group: str) -> tuple[str, ...]:
        """The syncs of a group (every sync for the default group, ``all``), or a configuration error."""
        if group in self.groups:
            return self.groups[group]
        if group == ALL_GROUP and ALL_GROUP not in self.groups:
            return tuple(self.syncs)
        from engine.errors import ConfigError
        from engine.schema_errors import did_you_mean

        known = [*self.groups, ALL_GROUP]
        raise ConfigError(f"unknown group '{group}'{did_you_mean(group, known)}; the groups are: {', '.join(known)}")


class _Checker:
    """Collects problems while it builds the typed pipeline."""

    def __init__(self, located: Located, base_dir: Path, registry: Registry) -> None:
        self.located = located
        self.base_dir = base_dir
        self.registry = registry
        self.problems: list[Problem] = []
        self.env = make_environment(base_dir)
        self.vars: dict[str, Any] = {}
        self.secret_env: set[str] = set()
        self.last_group: GroupSpec | None = None

    def at(self, path: YamlPath, located: Located | None = None) -> str:
        loc = located or self.located
        line, _ = loc.where(path)
        return f"{loc.file}:{line}"

    def template(self, source: str, path: YamlPath, names: tuple[str, ...],
                 located: Located | None = None) -> bool:
        loc = located or self.located
        ast, problems = check_template(self.env, source, names=names, variables=self.vars)
        line, col = loc.where(path)
        for t_line, message in problems:
            self.problems.append(Problem(loc.file, line + t_line - 1, col if t_line == 1 else 1,
                                         format_path(path), message))
        if ast is not None:
            for name in env_names(ast):
                if looks_secret(name):
                    self.secret_env.add(name)
        return ast is not None and not problems

    # --- sources and destinations -------------------------------------------------------------

    def endpoint(self, role: str, name: str, block: Any) -> Endpoint | None:
        path: YamlPath = (f"{role}s", name)
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return None
        kind = block["type"]
        roles: tuple[Role, ...] = ("source", "receiver") if role == "source" else ("destination",)
        spec = next((s for r in roles if (s := self.registry.get(r, kind)) is not None), None)
        if spec is None:
            names = sorted({n for r in roles for n in self.registry.names(r)})
            hint = did_you_mean(kind, names) or f"; known: {', '.join(names)}"
            self.problems.append(self.located.problem((*path, "type"), f"unknown {role} adapter '{kind}'{hint}"))
            return None
        schema = spec.config_schema
        schema = {**schema, "properties": {"type": {"const": kind}, **schema["properties"]}}
        before = len(self.problems)
        self.problems.extend(validate_block(schema, block, self.located, path))
        for key in spec.secrets:
            value = block.get(key)
            if isinstance(value, str) and not is_template(value):
                self.problems.append(self.located.problem(
                    (*path, key), "a secret must not be written in the pipeline; use "
                    "\"{{ env.NAME }}\" or \"{{ secret_file('path') }}\""))
        locations: dict[tuple[str | int, ...], str] = {}
        for rel, value in config_templates({k: v for k, v in block.items() if k != "type"}):
            # Every template at any depth (a header's bearer token too) is checked where it stands.
            self.template(value, (*path, *rel), CONFIG_NAMES)
            line, col = self.located.where((*path, *rel))
            locations[rel] = f"{self.located.file}:{line}:{col}"
            if is_secret_path(rel, spec.secrets):
                ast, _ = check_template(self.env, value, names=CONFIG_NAMES, variables=self.vars)
                if ast is not None:
                    self.secret_env.update(env_names(ast))
        if len(self.problems) > before:
            return None
        config: Any = build(spec.config_type, {k: v for k, v in block.items() if k != "type"})
        return Endpoint(name, spec.role, spec, config, self.at(path), locations)

    # --- syncs --------------------------------------------------------------------------------

    def reference(self, sync_path: YamlPath, which: str, value: Any,
                  endpoints: dict[str, Endpoint], declared: dict[str, Any]) -> tuple[str, Any] | None:
        path = (*sync_path, which)
        if isinstance(value, str):
            name, options, opt_path = value, {}, path
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            name, options, opt_path = value["name"], {k: v for k, v in value.items() if k != "name"}, path
        else:
            return None
        if name not in declared:
            self.problems.append(self.located.problem(
                path if isinstance(value, str) else (*path, "name"),
                f"unknown {which} '{name}'" + did_you_mean(name, list(declared))
                + (f"; declared: {', '.join(declared)}" if declared else f"; no {which}s are declared")))
            return None
        endpoint = endpoints.get(name)
        if endpoint is None:
            return None
        schema = endpoint.spec.options_schema
        schema = {**schema, "properties": {"name": {"type": "string"}, **schema["properties"]}}
        before = len(self.problems)
        self.problems.extend(validate_block(schema, value if isinstance(value, dict) else {"name": name},
                                            self.located, opt_path))
        for key, option in options.items():
            if isinstance(option, str) and is_template(option):
                # An option rendered per record (an adapter's TEMPLATE_NAMES) may use the names it provides.
                extra = getattr(endpoint.spec.options_type, "TEMPLATE_NAMES", {}).get(key, ())
                self.template(option, (*path, key), ("vars", "env", "run", *extra))
        if len(self.problems) > before:
            return None
        return name, build(endpoint.spec.options_type, options)

    def resolve_mapping_file(self, ref: str, path: YamlPath) -> Path | None:
        for candidate in (self.base_dir / ref, self.base_dir / "mappings" / ref, shipped_mappings() / ref):
            if candidate.is_file():
                return candidate
        self.problems.append(self.located.problem(
            path, f"mapping file '{ref}' not found beside the pipeline, in its mappings/ folder, "
                  "or among the shipped mappings"))
        return None

    def group(self, value: Any, path: YamlPath, loc: Located) -> GroupSpec | None:
        """A mapping's ``group:`` block (its shape was checked by the schema), or ``None`` when it is wrong."""
        by, into, fields = value["by"], value["into"], value["fields"]
        by_template = is_template(by)
        if by_template and not self.template(by, (*path, "by"), ("record", "vars", "env"), loc):
            return None
        leaves: list[FieldTemplate] = []
        ok = all([self._leaves((name,), v, (*path, "fields", name), loc, leaves) for name, v in fields.items()])
        if not ok:
            return None
        return GroupSpec(by, by_template, tuple(into.split(".")), tuple(leaves), self.at(path, loc))

    def mapping(self, sync_path: YamlPath, spec: Any) -> tuple[list[FieldTemplate] | None, Any, Any, bool]:
        """(fields, filter (source, location), default key, ok) of a sync's mapping; its ``group:`` goes to
        ``self.last_group``."""
        fields: dict[str, tuple[Any, YamlPath, Located]] = {}
        filter_template: tuple[str, str] | None = None
        default_key: Any = None
        ok = True
        self.last_group = None
        file_ref = spec if isinstance(spec, str) else spec.get("file") if isinstance(spec, dict) else None
        if file_ref is not None and not isinstance(file_ref, str):
            return None, None, None, False  # the envelope check has said what is wrong
        if spec is None:
            return None, None, None, True
        if file_ref is not None:
            ref_path = (*sync_path, "mapping") if isinstance(spec, str) else (*sync_path, "mapping", "file")
            found = self.resolve_mapping_file(file_ref, ref_path)
            if found is None:
                return None, None, None, False
            try:
                shown = str(found.relative_to(Path.cwd())) if found.is_relative_to(Path.cwd()) else str(found)
                mloc = load_located(found, shown)
            except PipelineInvalid as exc:
                self.problems.extend(exc.problems)
                return None, None, None, False
            before = len(self.problems)
            self.problems.extend(validate_block(load_schema("mapping.schema.json"), mloc.data, mloc))
            if len(self.problems) > before:
                return None, None, None, False
            for name, value in mloc.data["fields"].items():
                fields[name] = (value, ("fields", name), mloc)
            if "filter" in mloc.data:
                src = mloc.data["filter"]
                if self.template(src, ("filter",), ("record", "vars", "env", "run"), mloc):
                    filter_template = (src, self.at(("filter",), mloc))
                else:
                    ok = False
            default_key = mloc.data.get("key")
            if "group" in mloc.data:
                self.last_group = self.group(mloc.data["group"], ("group",), mloc)
                ok = ok and self.last_group is not None
        if isinstance(spec, dict):
            if isinstance(spec.get("group"), dict):
                self.last_group = self.group(spec["group"], (*sync_path, "mapping", "group"), self.located)
                ok = ok and self.last_group is not None
            overrides = spec.get("fields")
            if overrides is not None and not isinstance(overrides, dict):
                return None, None, None, False  # the envelope check has said what is wrong
            for name, value in (overrides or {}).items():
                if value is None:
                    fields.pop(name, None)
                else:
                    fields[name] = (value, (*sync_path, "mapping", "fields", name), self.located)
            if isinstance(spec.get("filter"), str):
                src = spec["filter"]
                path = (*sync_path, "mapping", "filter")
                if self.template(src, path, CONTEXT_NAMES):
                    filter_template = (src, self.at(path))
                else:
                    ok = False
        if not fields:
            # A misspelt key ('feilds') is already reported with its did-you-mean; "no fields" would only hide it.
            where = format_path((*sync_path, "mapping"))
            if not any(p.path == where or p.path.startswith(f"{where}.") for p in self.problems):
                self.problems.append(self.located.problem((*sync_path, "mapping"), "the mapping has no fields"))
            return None, None, None, False
        leaves: list[FieldTemplate] = []
        for name, (value, path, loc) in fields.items():
            ok = self._leaves((name,), value, path, loc, leaves) and ok
        group = self.last_group
        if group is not None and any(f.path[:len(group.into)] == group.into for f in leaves):
            at = next(f.location for f in leaves if f.path[:len(group.into)] == group.into)
            self.problems.append(Problem(*_file_line(group.location), format_path((*sync_path, "mapping")),
                                         f"'{'.'.join(group.into)}' is both a field and the group's `into` (at {at}); "
                                         "the group's rows fill it"))
            ok = False
        return leaves, filter_template, default_key, ok

    def _leaves(self, out_path: tuple[str | int, ...], value: Any, path: YamlPath, loc: Located,
                leaves: list[FieldTemplate]) -> bool:
        if isinstance(value, dict):
            if not value:
                leaves.append(FieldTemplate(out_path, {}, self.at(path, loc), False))
                return True
            return all([self._leaves((*out_path, k), v, (*path, k), loc, leaves) for k, v in value.items()])
        if isinstance(value, list):
            if not value:
                leaves.append(FieldTemplate(out_path, [], self.at(path, loc), False))
                return True
            return all([self._leaves((*out_path, i), v, (*path, i), loc, leaves) for i, v in enumerate(value)])
        if is_template(value):
            good = self.template(value, path, CONTEXT_NAMES, loc)
            leaves.append(FieldTemplate(out_path, value, self.at(path, loc), True))
            return good
        leaves.append(FieldTemplate(out_path, value, self.at(path, loc), False))
        return True

    def output_problems(self, sync_path: YamlPath, options: ChecksOutput, fields: list[FieldTemplate],
                        group: GroupSpec | None) -> bool:
        """The destination's own check of what the mapping makes (field names, required ones, shapes)."""
        leaves: dict[tuple[str | int, ...], str] = {f.path: f.location for f in fields}
        if group is not None:
            leaves.update({(*group.into, "*", *f.path): f.location for f in group.fields})
        found = options.check_output(list(leaves))
        for at, message in found:
            location = None
            if at is not None:
                # A missing member points at its parent's first leaf (DeliveryDetail's, for AddressLine1).
                location = leaves.get(at) or next((loc for p, loc in leaves.items() if p[:len(at) - 1] == at[:-1]
                                                   and len(at) > 1), None)
            if location is None and fields:
                location = fields[0].location  # a member the mapping lacks: point at its fields
            file, line, col = _file_line(location or (group.location if group else None) or self.at(sync_path))
            shown = ".".join(str(p) for p in at) if at else format_path((*sync_path, "mapping"))
            self.problems.append(Problem(file, line, col, shown, message))
        return not found

    def schedules(self, data: dict[str, Any]) -> None:
        """Each schedule of the pipeline (its own, its groups') parsed now, so `validate` finds a bad one."""
        from engine.schedule import ScheduleError, parse_schedule

        found: list[YamlPath] = [("schedule",)] if isinstance(data.get("schedule"), dict) else []
        groups = data.get("groups")
        if isinstance(groups, dict):
            found += [("groups", name, "schedule") for name, block in groups.items()
                      if isinstance(block, dict) and isinstance(block.get("schedule"), dict)]
        for path in found:
            value: Any = data
            for part in path:
                value = value[part]
            try:
                parse_schedule(value, path)
            except ScheduleError as exc:
                self.problems.append(self.located.problem(exc.path or path, exc.message))

    def groups(self, groups: dict[str, Any], syncs: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """The pipeline's groups, each in the pipeline's sync order; an unknown sync is a located problem."""
        out: dict[str, tuple[str, ...]] = {}
        for name, block in groups.items():
            members = block.get("syncs") if isinstance(block, dict) else block
            if not isinstance(members, list):
                continue  # the schema check has said what is wrong
            base: YamlPath = ("groups", name, "syncs") if isinstance(block, dict) else ("groups", name)
            for i, member in enumerate(members):
                if isinstance(member, str) and member not in syncs:
                    self.problems.append(self.located.problem(
                        (*base, i), f"unknown sync '{member}'" + did_you_mean(member, list(syncs))))
            out[name] = tuple(s for s in syncs if s in members)
        return out

    def sync(self, name: str, block: Any, sources: dict[str, Endpoint], destinations: dict[str, Endpoint],
             declared_sources: dict[str, Any], declared_destinations: dict[str, Any]) -> SyncSpec | None:
        path: YamlPath = ("syncs", name)
        if not isinstance(block, dict):
            return None
        src = self.reference(path, "source", block.get("source"), sources, declared_sources)
        dst = self.reference(path, "destination", block.get("destination"), destinations, declared_destinations)
        fields, filter_template, default_key, mapping_ok = self.mapping(path, block.get("mapping"))
        if isinstance(block.get("filter"), str):
            if self.template(block["filter"], (*path, "filter"), CONTEXT_NAMES):
                filter_template = (block["filter"], self.at((*path, "filter")))
            else:
                mapping_ok = False
        key = block.get("key", default_key)
        key_fields: tuple[str, ...] = ()
        key_template: tuple[str, str] | None = None
        key_path = (*path, "key")
        if key is None and "key" in block:
            return None  # `key:` with no value: the envelope check has said so at its line
        if key is None:
            self.problems.append(self.located.problem(
                path, "missing required key 'key' (the record key: an output field, a list of them, "
                      "or a template); it may also come from the mapping file"))
            return None
        if isinstance(key, str) and is_template(key):
            if self.template(key, key_path, CONTEXT_NAMES):
                key_template = (key, self.at(key_path))
            else:
                mapping_ok = False
        elif isinstance(key, (str, list)):
            key_fields = (key,) if isinstance(key, str) else tuple(key)
            if fields is not None:
                outputs = list(dict.fromkeys(str(f.path[0]) for f in fields))
                for i, k in enumerate(key_fields):
                    if isinstance(k, str) and k not in outputs:
                        at = key_path if isinstance(key, str) else (*key_path, i)
                        self.problems.append(self.located.problem(
                            at, f"key field '{k}' is not an output field of the mapping" + did_you_mean(k, outputs)))
                        mapping_ok = False
        mode = block.get("mode", "upsert")
        scope = block.get("scope", "snapshot")
        delete_when: tuple[str, str] | None = None
        memo_fields: tuple[str, ...] = ()
        if isinstance(block.get("delete_when"), str):
            when_path = (*path, "delete_when")
            if scope != "window" or mode != "mirror":
                self.problems.append(self.located.problem(
                    when_path, "delete_when applies to a sync with scope: window and mode: mirror "
                               f"(this one has scope: {scope}, mode: {mode})"))
                mapping_ok = False
            elif self.template(block["delete_when"], when_path, ("record", "vars", "run")):
                delete_when = (block["delete_when"], self.at(when_path))
                ast = self.env.parse(block["delete_when"])
                memo_fields = tuple(sorted({a for a, _ in attribute_uses(ast, "record")}))
            else:
                mapping_ok = False
        if dst is not None and fields is not None and mapping_ok and isinstance(dst[1], ChecksOutput):
            mapping_ok = self.output_problems(path, dst[1], fields, self.last_group) and mapping_ok
        envelope = f"syncs.{name}"
        if src is None or dst is None or not mapping_ok or any(
                p.path == envelope or p.path.startswith((f"{envelope}.", f"{envelope}[")) for p in self.problems):
            return None
        return SyncSpec(
            name=name, source=src[0], source_options=src[1], destination=dst[0], destination_options=dst[1],
            key_fields=key_fields, key_template=key_template, mode=mode, scope=scope,
            fields=tuple(fields) if fields is not None else None, filter_template=filter_template,
            batch_size=int(block.get("batch_size", 5000)),
            max_delete_share=float(block.get("max_delete_share", 0.5)),
            max_error_share=float(block.get("max_error_share", 0.5)),
            max_errors=block.get("max_errors"),
            enabled=bool(block.get("enabled", True)), location=self.at(path),
            delete_when=delete_when, memo_fields=memo_fields, group=self.last_group,
            arrow=bool(block.get("arrow", True)))


def _file_line(location: str) -> tuple[str, int, int]:
    """(file, line, column) of a ``file:line`` location."""
    file, _, line = location.rpartition(":")
    return file, int(line) if line.isdigit() else 1, 1


def _discovered_field_problems(file: Path, located: Located, data: dict[str, Any], sources: dict[str, Endpoint],
                               destinations: dict[str, Endpoint], syncs: dict[str, SyncSpec]) -> list[Problem]:
    """Source fields the mappings read that ``syncengine discover`` did not find, and output fields a
    destination's discovered layout does not take (nothing without its cache)."""
    from engine.discovery import output_field_problems, record_field_problems  # late: discovery uses our types

    base_dir = file.resolve().parent
    state = data.get("state")
    state_path = state.get("path") if isinstance(state, dict) else None
    name = data["name"] if isinstance(data.get("name"), str) and data["name"] else file.stem
    where = base_dir / (state_path if isinstance(state_path, str) else DEFAULT_STATE)
    return (record_field_problems(name, located, base_dir, where, sources, syncs)
            + output_field_problems(name, where, destinations, syncs))


def load_pipeline(path: str | Path, registry: Registry = REGISTRY, *, display: str | None = None,
                  overrides: dict[str, Any] | None = None, profile: str | Profile | None = None) -> Pipeline:
    """Validate a pipeline file and return it typed; raise :class:`PipelineInvalid` with every problem.

    ``overrides`` set or replace ``vars`` entries (``--var``) before any template is checked. With
    ``profile``, the pipeline is that profile's instance (see :mod:`engine.profiles`): its vars
    over the pipeline's (``--var`` over both), its environment names, its own state namespace.
    """
    file = Path(path)
    if not file.is_file():
        raise PipelineInvalid([Problem(display or str(path), 1, 1, "", "no such pipeline file")])
    located = load_located(file, display or str(path))
    base_dir = file.resolve().parent
    checker = _Checker(located, base_dir, registry)
    data = located.data
    if not isinstance(data, dict):
        raise PipelineInvalid([located.problem((), "a pipeline must be a mapping of keys to values")])
    checker.problems.extend(validate_block(load_schema("pipeline.schema.json"), data, located))
    declared_vars = data.get("vars")
    profiles_file = profiles_path(file, data)
    chosen: Profile | None = profile if isinstance(profile, Profile) else None
    if isinstance(profile, str):
        if profiles_file is None:
            raise PipelineInvalid([located.problem((), f"--profile {profile}: the pipeline has no profiles file "
                                                       f"({PROFILES_FILE} beside it, or a `profiles:` key)")])
        chosen = find_profile(load_profiles(profiles_file, _shown(profiles_file)), profile, _shown(profiles_file))
    checker.vars = {**(declared_vars if isinstance(declared_vars, dict) else {}),
                    **(chosen.vars if chosen else {}), **(overrides or {})}

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    sources = {n: e for n, b in section("sources").items() if (e := checker.endpoint("source", n, b))}
    destinations = {n: e for n, b in section("destinations").items()
                    if (e := checker.endpoint("destination", n, b))}
    syncs = {n: s for n, b in section("syncs").items()
             if (s := checker.sync(n, b, sources, destinations, section("sources"), section("destinations")))}
    groups = checker.groups(section("groups"), section("syncs"))
    checker.schedules(data)
    checker.problems.extend(_discovered_field_problems(file, located, data, sources, destinations, syncs))
    if checker.problems:
        raise PipelineInvalid(checker.problems)
    state = data.get("state") or {}
    template = data.get("name") or file.stem
    schedules: dict[str | None, dict[str, Any]] = {}
    if isinstance(data.get("schedule"), dict):
        schedules[None] = data["schedule"]
    for name, block in section("groups").items():
        if isinstance(block, dict) and isinstance(block.get("schedule"), dict):
            schedules[name] = block["schedule"]
    if chosen is not None:
        if chosen.schedule is not None:
            schedules[None] = chosen.schedule
        schedules.update(chosen.group_schedules)
    return Pipeline(
        path=file, name=f"{template}{SEPARATOR}{chosen.name}" if chosen else template, base_dir=base_dir,
        vars=checker.vars, state_path=base_dir / state.get("path", DEFAULT_STATE), sources=sources,
        destinations=destinations, syncs=syncs, secret_env=frozenset(checker.secret_env), groups=groups,
        schedules=schedules, template=template, profile=chosen.name if chosen else None,
        env_aliases=dict(chosen.env) if chosen else {}, env_values=dict(chosen.secrets) if chosen else {},
        profiles_file=profiles_file)


def _shown(path: Path) -> str:
    """A path as messages show it: relative to the working folder when it is below it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
