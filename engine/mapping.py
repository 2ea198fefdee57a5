"""Templates compiled once into one evaluation: the one door through which the engine evaluates a template.

:class:`CompiledTemplates` is the only way a template is evaluated: a mapping's fields with its
``filter:`` and key template (:class:`CompiledMapping`), and, one template at a time through
:func:`compile_template`, a key template without a mapping, ``delete_when``, adapter options (the
http destination's ``idempotency_key``, the sftp destination's ``filename``) and configuration
values. The path is decided inside: a set the plain-Python translation covers
(:mod:`engine.fast_mapping`) runs as generated Python, and any other set, or a record that path
cannot produce, runs as one Jinja function (:class:`~engine.jinja_internals.CompiledSlots`); both
give the same values and the same errors.

On the Jinja path every field template becomes a top-level ``{% set %}`` of one combined template,
so one call per record computes every field with native types, behind the ``filter:`` condition.
The Jinja context object is built once and reused: per record only ``record`` changes and the field
slots are reset. When a record fails, each field is rendered on its own to name the field that failed.

What a mapping makes is bounded: a value over :data:`~engine.limits.MAX_VALUE` characters, or a
record whose values together pass :data:`~engine.limits.MAX_RECORD`, is a record error. A value
copied unchanged from the source record does not count: the limits are on what templates make.
"""

from __future__ import annotations

import json
import keyword
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from jinja2 import Undefined
from jinja2.exceptions import TemplateError

from engine.errors import RecordError
from engine.fast_mapping import Unsupported, compile_fast, size_of_made
from engine.filters import FilterError
from engine.jinja_internals import CompiledSlots, Slot
from engine.limits import MAX_RECORD, MAX_VALUE, LimitError, measure
from engine.templating import SyncEnvironment

_ITERATORS = frozenset({types.GeneratorType, type(reversed([])), type(iter([])), type(iter(())), type(iter("")),
                        map, filter, zip})
_NOT_DATA = frozenset({types.MethodType, types.BuiltinMethodType, types.FunctionType, type({}.get),
                       type(str.upper)}) | _ITERATORS
"""Types a template may produce that are not data: a dict method reached through a missing field, a generator."""


def _data_only(values: Mapping[str, Any]) -> bool:
    """Whether no top-level value is undefined or a method or a generator (one look at the few types)."""
    kinds = set(map(type, values.values()))
    return not (kinds & _NOT_DATA or any(issubclass(kind, Undefined) for kind in kinds))


_JINJA = object()
"""The fast path did not produce the record: render it with Jinja."""
KEEP = "syncengine_keep"
KEY = "syncengine_key"


@dataclass(frozen=True)
class FieldTemplate:
    """One output leaf: its path in the output, its template source or constant, and its YAML line."""

    path: tuple[str | int, ...]
    source: Any
    location: str
    is_template: bool

    @property
    def name(self) -> str:
        """Dotted name for messages: ``DeliveryDetail.City``, ``LineItems[0].Units``."""
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out


class MappedRecord:
    """The result of mapping one source record."""

    __slots__ = ("key", "values")

    def __init__(self, key: str, values: dict[str, Any]) -> None:
        self.key = key
        self.values = values


def _slot(i: int) -> str:
    return f"syncengine_f{i}"


_RESERVED = {"record", "vars", "env", "run", "loop", "self", "super", "caller", "varargs", "kwargs", KEEP, KEY}


def _assignable(name: str) -> bool:
    """Whether an output field can be a template variable of its own name."""
    return name.isidentifier() and not keyword.iskeyword(name) and name not in _RESERVED \
        and not name.startswith("syncengine_")


def record_key(values: Mapping[str, Any], key_fields: tuple[str, ...], template_key: Any,
               location: str | None) -> str:
    """The state key of a record: its key fields' values, or the key template's value."""
    if key_fields:
        try:
            parts = tuple(values[k] for k in key_fields)
        except KeyError as exc:
            raise RecordError(f"the record has no key field {exc}") from None
    else:
        parts = (template_key,)
    if None in parts or "" in parts:
        raise RecordError("the record key is empty", field=",".join(key_fields) or "key", location=location)
    return parts[0] if len(parts) == 1 and parts[0].__class__ is str else key_string(parts)


def key_string(values: tuple[Any, ...]) -> str:
    """The state-store key for one record: the value itself, or a JSON list for composite keys."""
    if len(values) == 1:
        value = values[0]
        return value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(list(values), default=str, ensure_ascii=False)


class CompiledTemplates:
    """Templates compiled once into one evaluation; the only way the engine evaluates a template.

    ``fields`` are the output leaves (templates and constants); ``key_template`` and
    ``filter_template`` are (source, location); ``context`` holds the names fixed for the run
    (``vars``, ``env``, ``run``...), and ``record`` is given per evaluation. A template that is a
    single expression keeps its native type unless ``text``, which renders every template to text.
    """

    def __init__(self, env: SyncEnvironment, fields: Sequence[FieldTemplate], *, context: Mapping[str, Any],
                 key_fields: tuple[str, ...] = (), key_template: tuple[str, str] | None = None,
                 filter_template: tuple[str, str] | None = None, text: bool = False) -> None:
        self.fields = list(fields)
        self.key_fields = key_fields
        self._context = dict(context)
        self._single: dict[str, Callable[[Mapping[str, Any]], Any]] = {}
        self._constants: dict[int, Any] = {}
        slots: list[Slot] = []
        # Fast path: a flat mapping whose names are safe template variables assigns each field under
        # its own name, so the context's variables *are* the output record (no copy per record).
        self._direct = all(len(f.path) == 1 and _assignable(str(f.path[0])) for f in fields)
        self._slots = [str(f.path[0]) if self._direct else _slot(i) for i, f in enumerate(fields)]
        for i, f in enumerate(fields):
            if f.is_template:
                slots.append(Slot(self._slots[i], env.parse(f.source), text))
            elif self._direct:
                slots.append(Slot(self._slots[i], None, constant=f.source))
            else:
                self._constants[i] = f.source
        self._filter_at = filter_template[1] if filter_template else None
        self._key_at = key_template[1] if key_template else None
        # For the size check: which field each slot holds, and what the constants outside the slots weigh.
        self._slot_field = {self._slots[i]: f for i, f in enumerate(fields)}
        if key_template is not None:
            self._slot_field[KEY] = FieldTemplate(("key",), key_template[0], key_template[1], True)
        self._constant_size = sum(measure(value) for value in self._constants.values())
        # What the size check counts per record, decided now from each template's kind (as on the fast path).
        leaves = [(self._slots[i], f.source, f.is_template) for i, f in enumerate(fields) if i not in self._constants]
        if key_template is not None:
            leaves.append((KEY, key_template[0], True))
        self._size = size_of_made(env, leaves, self._context)
        if key_template is not None:
            slots.insert(0, Slot(KEY, env.parse(key_template[0])))
            self._single[KEY] = _one(env, key_template[0])
        guard = None
        if filter_template is not None:
            guard = (KEEP, env.parse(filter_template[0]))
            self._single[KEEP] = _one(env, filter_template[0])
        self._jinja = CompiledSlots(env, slots, guard=guard, context=self._context)
        # Each template on its own, to name the one that fails; a set of one template is its own
        # (compile_template's case: it is compiled once).
        alone = self._alone(slots[0].name) if len(slots) == 1 and guard is None else None
        for i, f in enumerate(fields):
            if f.is_template:
                self._single[_slot(i)] = alone or _one(env, f.source, text)
        self._build = self._builder()
        self._fast: Callable[[dict[str, Any]], tuple[dict[str, Any], Any] | None] | None = None
        if not text:  # the translation gives native values; rendering to text is Jinja's alone
            try:
                self._fast = compile_fast(
                    env, [(f.path, f.source, f.is_template) for f in fields],
                    key_template=key_template[0] if key_template else None,
                    filter_template=filter_template[0] if filter_template else None, context=self._context)
            except Unsupported:
                self._fast = None  # outside the translated subset: the Jinja path alone

    def _builder(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A function from the slots dict to the output record (flat fast path, nested general path)."""
        constants = self._constants
        if self._direct:
            extra = [name for name in (KEEP, KEY) if name in self._single]

            def direct(v: dict[str, Any]) -> dict[str, Any]:
                for name in extra:
                    del v[name]
                return v
            return direct
        if all(len(f.path) == 1 for f in self.fields):
            names = [str(f.path[0]) for f in self.fields]
            slots = [_slot(i) for i in range(len(self.fields))]
            if not constants:
                def flat(v: dict[str, Any]) -> dict[str, Any]:
                    return dict(zip(names, map(v.__getitem__, slots), strict=True))
                return flat

            def flat_with_constants(v: dict[str, Any]) -> dict[str, Any]:
                return {n: (constants[i] if i in constants else v[s])
                        for i, (n, s) in enumerate(zip(names, slots, strict=True))}
            return flat_with_constants

        def nested(v: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for i, f in enumerate(self.fields):
                value = constants[i] if i in constants else v[_slot(i)]
                _put(out, f.path, value)
            return out
        return nested

    def evaluate(self, record: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        """(values, template key) of one record, or ``None`` when ``filter:`` drops it; raises :class:`RecordError`."""
        if self._fast is not None:
            try:
                return self._fast(record)
            except Exception:  # noqa: BLE001, S110 - not swallowed: the Jinja path below gives the value or the error
                pass
        return self._render(record)

    def value(self, **names: Any) -> Any:
        """The value of a set of one template (:func:`compile_template`'s) for ``names`` over the compiled context.

        Raises the template's own error. Given only ``record``, the generated path answers when it
        can, as for :meth:`evaluate`.
        """
        if self._fast is not None and names.keys() == {"record"}:
            try:
                result = self._fast(names["record"])
            except Exception:  # noqa: BLE001, S110 - not swallowed: the Jinja path below gives the value or the error
                result = None
            if result is not None:
                return result[0][str(self.fields[0].path[0])]
        return self._single[_slot(0)]({**self._context, **names})

    def _alone(self, slot: str) -> Callable[[Mapping[str, Any]], Any]:
        """For a set of one template: its value on the Jinja path, as a function of all its names."""
        jinja = self._jinja

        def render(names: Mapping[str, Any]) -> Any:
            return _checked(jinja.run_with(names)[slot])

        return render

    def _render(self, record: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        """(values, template key) through the compiled Jinja template; ``None`` when filtered out."""
        try:
            slots = self._jinja.run(record)
            if KEEP in slots and not slots[KEEP]:
                return None
            template_key = slots.get(KEY)
            # A field that read a missing value holds an Undefined; one look at the few value types finds it.
            if not _data_only(slots):
                raise self._explain(record)
            if self._size is not None and self._size(slots) + self._constant_size > MAX_VALUE:
                too_big = self._oversized(record, slots)
                if too_big is not None:
                    raise too_big
            values = self._build(slots)
        except (TemplateError, FilterError, ArithmeticError, TypeError, ValueError, LookupError,
                RecursionError) as exc:  # a macro calling itself too deep is this record's error too
            raise self._explain(record, exc) from None
        return values, template_key

    def _oversized(self, record: dict[str, Any], slots: dict[str, Any]) -> RecordError | None:
        """The error for a value over MAX_VALUE or a record over MAX_RECORD, counting only what templates made.

        A value that is one of the source record's own values is not counted. The fast path's
        generated check counts at least as much (see :mod:`engine.fast_mapping`), so both paths agree.
        """
        inputs = set(map(id, record.values()))
        total = self._constant_size
        for slot, value in slots.items():
            if slot == KEEP or id(value) in inputs:
                continue
            size = measure(value, MAX_RECORD)
            if size > MAX_VALUE:
                shown = f"more than {MAX_RECORD:,}" if size > MAX_RECORD else f"{size:,}"
                field = self._slot_field.get(slot)
                return RecordError(f"the value has {shown} characters; a mapped value may have at most "
                                   f"{MAX_VALUE:,}", key=self._slot_key(slots), field=field.name if field else slot,
                                   location=field.location if field else None)
            total += size
        if total > MAX_RECORD:
            return RecordError(f"the mapped values have {total:,} characters together; a mapped record may have "
                               f"at most {MAX_RECORD:,}", key=self._slot_key(slots))
        return None

    def _slot_key(self, slots: dict[str, Any]) -> str | None:
        """The record's key from its slots, if it can be made (for messages only)."""
        try:
            return record_key(self._build(dict(slots)), self.key_fields, slots.get(KEY), None)
        except Exception:  # noqa: BLE001 - there is no key to report
            return None

    def _explain(self, record: dict[str, Any], cause: BaseException | None = None) -> RecordError:
        """Render field by field to find the first failure; slow, and only on the error path.

        A limit of the whole evaluation (loop iterations, work) may be reached only when every
        field runs together; then no single field fails and the error names the limit itself.
        """
        base = {**self._context, "record": record}
        rendered: dict[str, Any] = {}
        if KEEP in self._single:
            try:
                self._single[KEEP](base)
            except Exception as exc:  # noqa: BLE001 - reported, with the field, as a record error
                return RecordError(_message(exc), field="filter", location=self._filter_at)
        if KEY in self._single:
            try:
                self._single[KEY](base)
            except Exception as exc:  # noqa: BLE001 - reported, with the field, as a record error
                return RecordError(_message(exc), field="key", location=self._key_at)
        for i, f in enumerate(self.fields):
            if not f.is_template:
                rendered[f.name] = f.source
                continue
            try:
                rendered[f.name] = self._single[_slot(i)](base)
            except Exception as exc:  # noqa: BLE001 - reported, with the field, as a record error
                return RecordError(_message(exc), key=self._key_hint(base, rendered), field=f.name, location=f.location)
        if isinstance(cause, LimitError):
            return RecordError(_message(cause), key=self._key_hint(base, rendered))
        return RecordError("the record could not be mapped", key=self._key_hint(base, rendered))

    def _key_hint(self, base: dict[str, Any], rendered: dict[str, Any]) -> str | None:
        if self.key_fields and all(k in rendered for k in self.key_fields):
            return key_string(tuple(rendered[k] for k in self.key_fields))
        if KEY in self._single:
            try:
                return str(self._single[KEY](base))
            except Exception:  # noqa: BLE001 - there is no key to report
                return None
        return None


class CompiledMapping(CompiledTemplates):
    """Maps source records to output records; built once per run, called once per record."""

    def __init__(self, env: SyncEnvironment, fields: list[FieldTemplate], *,
                 key_fields: tuple[str, ...], key_template: tuple[str, str] | None,
                 filter_template: tuple[str, str] | None, context: Mapping[str, Any]) -> None:
        super().__init__(env, fields, context=context, key_fields=key_fields, key_template=key_template,
                         filter_template=filter_template)
        self.output_names = tuple(dict.fromkeys(str(f.path[0]) for f in fields))
        self._single_key = key_fields[0] if len(key_fields) == 1 else None

    def map(self, record: dict[str, Any]) -> MappedRecord | None:
        """The mapped record, or ``None`` when ``filter:`` drops it; raises :class:`RecordError`."""
        # evaluate(), inlined: this runs once per record, and a call less is a few percent of a small mapping.
        result: tuple[dict[str, Any], Any] | None | object = _JINJA
        if self._fast is not None:
            try:
                result = self._fast(record)
            except Exception:  # noqa: BLE001, S110 - not swallowed: the Jinja path below gives the value or the error
                pass
        if result is _JINJA:
            result = self._render(record)
        if result is None:
            return None
        values: dict[str, Any] = result[0]  # type: ignore[index]
        single = self._single_key
        if single is not None:
            # The common case, inlined: one key field holding non-empty text is the key itself.
            key = values.get(single)
            if key.__class__ is str and key:
                return MappedRecord(key, values)
        return MappedRecord(record_key(values, self.key_fields, result[1], self._key_at), values)  # type: ignore[index]


@overload
def compile_template(env: SyncEnvironment, source: str, *, context: Mapping[str, Any] | None = None,
                     text: Literal[False] = False) -> Callable[..., Any]: ...


@overload
def compile_template(env: SyncEnvironment, source: str, *, context: Mapping[str, Any] | None = None,
                     text: Literal[True]) -> Callable[..., str]: ...


def compile_template(env: SyncEnvironment, source: str, *, context: Mapping[str, Any] | None = None,
                     text: bool = False) -> Callable[..., Any]:
    """One template through :class:`CompiledTemplates`: a function of the names that change per call.

    ``context`` holds the names fixed when it is compiled; the function takes the others as keywords
    (``render(record=r)``) and returns the template's native value, or its text when ``text``. An
    error is the template's own (a missing field's ``no field 'x'``, a limit, a filter's).
    """
    return CompiledTemplates(env, [FieldTemplate(("value",), source, "", True)], context=context or {},
                             text=text).value


def _one(env: SyncEnvironment, source: str, text: bool = False) -> Callable[[Mapping[str, Any]], Any]:
    """One template on the Jinja path alone, as a function of all its names (to explain a failed set)."""
    compiled = CompiledSlots(env, [Slot("value", env.parse(source), text)])

    def render(names: Mapping[str, Any]) -> Any:
        return _checked(compiled.run_with(names)["value"])

    return render


def _checked(value: Any) -> Any:
    """A template's value as data: a missing field raises its own error, a method or an iterator is an error."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if type(value) in _NOT_DATA:
        if type(value) in _ITERATORS:
            raise FilterError("the template gives an iterator, not a value; add | list")
        raise FilterError("the template gives a method, not a value: the record has no field of that name "
                          "(a name such as values, items or get is also a method of every record)")
    return value


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return f"{text}" if isinstance(exc, (TemplateError, FilterError, LimitError)) else f"{type(exc).__name__}: {text}"


def _put(out: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = out
    for part, nxt in zip(path, path[1:], strict=False):
        container: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            while len(node) <= part:  # type: ignore[operator]
                node.append(None)
            if node[part] is None:  # type: ignore[index]
                node[part] = container  # type: ignore[index]
            node = node[part]  # type: ignore[index]
        else:
            node = node.setdefault(part, container)
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:  # type: ignore[operator]
            node.append(None)
        node[last] = value  # type: ignore[index]
    else:
        node[last] = value


class IdentityMapping:
    """The mapping of a sync without one: the source record as it is."""

    fields: list[FieldTemplate] = []
    output_names: tuple[str, ...] | None = None

    def __init__(self, key_fields: tuple[str, ...], key_template: Callable[..., Any] | None) -> None:
        self.key_fields = key_fields
        self._key_template = key_template
        """The key template from :func:`compile_template`, its run's names compiled in."""

    def map(self, record: dict[str, Any]) -> MappedRecord | None:
        """The record itself, keyed."""
        template_key = None
        if not self.key_fields:
            assert self._key_template is not None
            try:
                template_key = self._key_template(record=record)
            except Exception as exc:  # noqa: BLE001 - reported as a record error
                raise RecordError(_message(exc), field="key") from None
        return MappedRecord(record_key(record, self.key_fields, template_key, None), dict(record))


GROUP = "syncengine_group"
"""The key of a grouped record (``{GROUP: by value, "rows": [...]}``): the rows one record is made of."""
MAX_GROUP_ROWS = 10_000
"""Rows one group may hold: a group is kept in memory until its last row is read."""


def is_group(record: Mapping[str, Any]) -> bool:
    """Whether a record is a group of source rows (also after a dead letter stored it as JSON)."""
    return GROUP in record and isinstance(record.get("rows"), list)


def source_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The source rows a record was made of: a group's rows, or the record itself."""
    return list(record["rows"]) if is_group(record) else [record]


class GroupedMapping:
    """Maps a group of adjacent source rows (order lines) to one record with a list of items (one order).

    ``header`` renders the record's fields over the group's first row; ``items`` renders each row
    into the list at ``into``. :meth:`group` turns a stream of rows into a stream of groups, holding
    one group at a time: rows of one group must be adjacent, and a group that comes back after
    another started is a record error (the source must be sorted by ``by``), never a second record.
    """

    def __init__(self, header: CompiledMapping, items: CompiledTemplates, *, by: str, by_template: Callable[..., Any]
                 | None, into: tuple[str, ...], location: str) -> None:
        self.header = header
        self.items = items
        self.by = by
        self._by_template = by_template
        self.into = into
        self.location = location
        self.key_fields = header.key_fields
        self.fields = header.fields
        self.output_names = tuple(dict.fromkeys((*header.output_names, into[0])))

    def group_of(self, row: dict[str, Any]) -> Any:
        """The ``by`` value of one row; raises :class:`RecordError`."""
        if self._by_template is None:
            if self.by not in row:
                raise RecordError(f"no field '{self.by}' to group by", field=self.by, location=self.location)
            value = row[self.by]
        else:
            try:
                value = self._by_template(record=row)
            except Exception as exc:  # noqa: BLE001 - reported as the row's error
                raise RecordError(f"group.by: {_message(exc)}", location=self.location) from None
        if value is None or value == "":
            raise RecordError("the group value (group.by) is empty", field="group.by", location=self.location)
        return value

    def group(self, rows: Iterator[dict[str, Any] | RecordError]) -> Iterator[dict[str, Any] | RecordError]:
        """Adjacent rows with one ``by`` value as one grouped record; an already grouped record passes as it is."""
        current: Any = None
        members: list[dict[str, Any]] = []
        closed: set[str] = set()

        def done() -> dict[str, Any]:
            closed.add(repr(current))
            return {GROUP: current, "rows": members}

        for row in rows:
            if row.__class__ is not dict and isinstance(row, RecordError):
                yield row
                continue
            assert isinstance(row, dict)
            if is_group(row):
                yield row
                continue
            try:
                value = self.group_of(row)
            except RecordError as exc:
                exc.raw = row
                yield exc
                continue
            if members and value == current:
                if len(members) >= MAX_GROUP_ROWS:
                    yield RecordError(f"group '{value}' has more than {MAX_GROUP_ROWS} rows", location=self.location,
                                      raw=row)
                    continue
                members.append(row)
                continue
            if members:
                yield done()
            if repr(value) in closed:
                yield RecordError(f"rows of group '{value}' are not together (another group came between them); "
                                  f"sort the source by {self.by}", field="group.by", location=self.location, raw=row)
                members, current = [], None
                continue
            current, members = value, [row]
        if members:
            yield done()

    def map(self, record: dict[str, Any]) -> MappedRecord | None:
        """The record of one group: the header over the first row, one item per row; raises :class:`RecordError`."""
        rows = source_rows(record)
        mapped = self.header.map(rows[0])
        if mapped is None:
            return None
        items: list[dict[str, Any]] = []
        into = ".".join(self.into)
        for i, row in enumerate(rows):
            try:
                result = self.items.evaluate(row)
            except RecordError as exc:
                raise RecordError(exc.message, key=mapped.key,
                                  field=f"{into}[{i}]" + (f".{exc.field}" if exc.field else ""),
                                  location=exc.location) from None
            if result is not None:
                items.append(dict(result[0]))
        _put(mapped.values, self.into, items)
        return mapped


AnyMapping = CompiledMapping | IdentityMapping | GroupedMapping
"""What a sync maps its records with."""
