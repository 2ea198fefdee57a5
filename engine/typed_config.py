"""Adapter configuration as frozen dataclasses: one definition gives the JSON Schema and the type.

Each field's ``metadata`` holds its user-facing ``description`` and ``examples`` (and any other
JSON Schema keyword, such as ``writeOnly`` for secrets or ``minimum``); :func:`schema_of` turns the
dataclass into the schema that validates a pipeline block, and :func:`build` turns the validated
block into the dataclass the adapter uses at run time.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Any: {},
}


def secret(description: str, **extra: Any) -> Any:
    """A field that holds a secret: it must come from ``{{ env.NAME }}`` or ``{{ secret_file(...) }}``."""
    return dataclasses.field(default=None, metadata={"description": description, "writeOnly": True, **extra})


def option(description: str, default: Any = dataclasses.MISSING, **extra: Any) -> Any:
    """A documented field; ``extra`` holds further JSON Schema keywords such as ``examples``."""
    meta = {"description": description, **extra}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _schema_for_type(tp: Any) -> dict[str, Any]:
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    origin = get_origin(tp)
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = [_schema_for_type(a) for a in args]
        schema: dict[str, Any] = inner[0] if len(inner) == 1 else {"anyOf": inner}
        if type(None) in get_args(tp):
            if "type" in schema and isinstance(schema["type"], str):
                schema = {**schema, "type": [schema["type"], "null"]}
            elif "enum" in schema:
                schema = {**schema, "enum": [*schema["enum"], None]}
            else:
                schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if origin in (list, tuple, typing.Sequence):
        (item, *_rest) = get_args(tp) or (Any,)
        return {"type": "array", "items": _schema_for_type(item)}
    if origin is dict:
        _, value = get_args(tp)
        return {"type": "object", "additionalProperties": _schema_for_type(value)}
    if dataclasses.is_dataclass(tp):
        return schema_of(tp)  # type: ignore[arg-type]
    raise TypeError(f"no JSON Schema for {tp!r}")


def schema_of(cls: type, *, title: str | None = None, description: str | None = None) -> dict[str, Any]:
    """The JSON Schema of a config dataclass: closed, with descriptions from field metadata."""
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = _schema_for_type(hints[f.name])
        prop.update(f.metadata)
        if f.default is not dataclasses.MISSING and f.default is not None:
            prop["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = f.default_factory()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    if title:
        schema["title"] = title
    doc = description or (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else description
    if doc:
        schema["description"] = doc
    return schema


def secret_fields(cls: type) -> tuple[str, ...]:
    """Names of the fields marked ``writeOnly``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("writeOnly"))


def build(cls: type[T], data: dict[str, Any]) -> T:
    """Make the dataclass from a block that already passed :func:`schema_of`'s schema."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = build(tp, value)  # type: ignore[arg-type]
        elif get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
