"""A Dsync connector's data layout (``GET /datalayout``): its entities and fields, and records checked against it.

The layout document has quirks that are handled, not rejected:

- an entity's ``endpoint_url`` may be absolute (the seed's ``order``); only its path is used, on the
  configured connector URL, so the ``Auth-Token`` never goes to another host;
- a field object may sit at the top level beside the entities (the seed's ``order.gift_message``):
  it is attached to the entity its ``treekey`` names;
- a field's ``name`` may be a label (``"Product id"``); the body key is the last part of its
  ``treekey`` (``product_id``).

An entity's key is the field marked ``primary_key``, else its first required text field (the seed
marks none on ``order``; ``order_id`` is required and comes first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from engine.errors import ConnectError, RecordError
from engine.interfaces import DiscoveredField, DiscoveredStream

TYPES = ("text", "number", "object")
"""The seed's types; a connector may declare others, which are checked when they are known kinds and else
passed as they are."""
_KINDS = {"string": "text", "integer": "integer", "int": "integer", "decimal": "number", "float": "number",
          "double": "number", "bool": "boolean", "boolean": "boolean"}


@dataclass(frozen=True)
class LayoutField:
    """One field: its body key, tree key, type, and what the layout demands of it."""

    key: str
    treekey: str
    type: str
    required: bool = False
    multiple: bool = False
    primary: bool = False
    foreign: str | None = None
    fields: tuple[LayoutField, ...] = ()


@dataclass(frozen=True)
class Entity:
    """One entity of the layout: where it is written, with which token, and its fields."""

    name: str
    path: str
    token: str
    fields: tuple[LayoutField, ...]
    key: str
    foreign: Mapping[str, str] = field(default_factory=dict)
    """Body key of each foreign-key field, and the entity it points at (``product_id`` -> ``product``)."""


def _field(data: Mapping[str, Any]) -> LayoutField:
    treekey = str(data.get("treekey") or data.get("name") or "")
    key = treekey.rsplit(".", 1)[-1] if treekey else str(data.get("name"))
    kind = str(data.get("type") or "text").lower()
    children = tuple(_field(f) for f in data.get("fields") or () if isinstance(f, Mapping))
    return LayoutField(key, treekey, _KINDS.get(kind, kind), bool(data.get("required")),
                       bool(data.get("multiple")), bool(data.get("primary_key")),
                       str(data["foreign_key"]) if data.get("foreign_key") else None, children)


def parse_layout(document: Any) -> dict[str, Entity]:
    """The entities of a ``/datalayout`` answer (its envelope, or the ``data_layout`` list itself)."""
    items = document
    if isinstance(items, Mapping):
        items = (items.get("data") or {}).get("data_layout") if "data" in items else items.get("data_layout")
    if not isinstance(items, list):
        raise ConnectError("the connector's /datalayout holds no data_layout list")
    entities: dict[str, dict[str, Any]] = {}
    strays: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if item.get("entity_name"):
            entities[str(item["entity_name"])] = {"item": item, "extra": []}
        else:
            strays.append(item)  # a field beside the entities: it belongs to the entity its treekey names
    for stray in strays:
        owner = str(stray.get("treekey") or "").split(".", 1)[0]
        if owner in entities:
            entities[owner]["extra"].append(stray)
    out: dict[str, Entity] = {}
    for name, found in entities.items():
        item = found["item"]
        fields = tuple(_field(f) for f in [*(item.get("fields") or ()), *found["extra"]] if isinstance(f, Mapping))
        key = next((f.key for f in fields if f.primary), None) or next(
            (f.key for f in fields if f.required and f.type == "text" and not f.multiple), None)
        if key is None:
            raise ConnectError(f"the connector's layout gives entity '{name}' no primary key or required text field")
        path = urlsplit(str(item.get("endpoint_url") or f"/entity/{name}")).path or f"/entity/{name}"
        out[name] = Entity(name, "/" + path.lstrip("/"), str(item.get("entity_token") or ""), fields, key,
                           {f.key: f.foreign for f in fields if f.foreign})
    return out


def discovered(entity: Entity) -> DiscoveredStream:
    """An entity as the engine's description of a stream: dotted field names, closed (the layout is the contract)."""
    out: list[DiscoveredField] = []

    def walk(fields: Sequence[LayoutField], prefix: str) -> None:
        for f in fields:
            name = f"{prefix}{f.key}"
            out.append(DiscoveredField(name, f.type + ("[]" if f.multiple else ""), f.required))
            walk(f.fields, f"{name}.")

    walk(entity.fields, "")
    return DiscoveredStream(entity.name, tuple(out), key=(entity.key,), closed=True)


def check(entity: Entity, values: Mapping[str, Any], *, create: bool) -> None:
    """Raise :class:`RecordError` naming the tree key of the first value the layout refuses.

    Types: ``text`` takes text, ``number`` a number (not a boolean, not text), ``object`` an object
    checked against its fields; ``multiple`` takes a list of those. ``required`` is checked on
    create (an update may send a part). Fields the layout does not list are sent as they are.
    """
    _check(entity.fields, values, entity.name, create)


def _check(fields: Sequence[LayoutField], values: Mapping[str, Any], prefix: str, create: bool) -> None:
    for f in fields:
        treekey = f"{prefix}.{f.key}"
        value = values.get(f.key)
        if value is None:
            if create and (f.required or f.primary):
                raise RecordError(f"'{treekey}' is required", field=treekey)
            continue
        items = value if f.multiple else [value]
        if f.multiple and not isinstance(value, list):
            raise RecordError(f"'{treekey}' takes a list (multiple), not {_kind(value)}", field=treekey)
        for i, item in enumerate(items):
            where = f"{treekey}[{i}]" if f.multiple else treekey
            if item is None:
                continue
            if f.type == "number" and (isinstance(item, bool) or not isinstance(item, (int, float, Decimal))):
                raise RecordError(f"'{where}' takes a number, not {_kind(item)}", field=where)
            if f.type == "integer" and (isinstance(item, bool) or not isinstance(item, int)):
                raise RecordError(f"'{where}' takes a whole number, not {_kind(item)}", field=where)
            if f.type == "boolean" and not isinstance(item, bool):
                raise RecordError(f"'{where}' takes true or false, not {_kind(item)}", field=where)
            if f.type == "text" and not isinstance(item, str):
                raise RecordError(f"'{where}' takes text, not {_kind(item)}", field=where)
            if f.type == "object":
                if not isinstance(item, Mapping):
                    raise RecordError(f"'{where}' takes an object, not {_kind(item)}", field=where)
                _check(f.fields, item, where, create)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return f"text ({value[:30]!r})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
