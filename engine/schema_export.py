"""The schema an editor uses: the pipeline schema with each adapter's block and options spliced in.

The engine itself validates in two phases (envelope, then each block); this combined document is
only for completion and checks in editors (yaml-language-server), and is what ``syncengine schema``
prints. ``schemas/adapters/`` holds a generated export of each adapter's schemas, kept current by a test.
"""

from __future__ import annotations

import copy
from typing import Any

from engine.config import load_schema
from engine.registry import Registry


def _with(schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(schema)
    merged["properties"] = {**extra, **merged.get("properties", {})}
    return merged


def editor_schema(registry: Registry) -> dict[str, Any]:
    """The combined pipeline schema."""
    document = load_schema("pipeline.schema.json")
    defs = document["$defs"]
    for role, section in (("source", "sources"), ("destination", "destinations")):
        roles = ("source", "receiver") if role == "source" else ("destination",)
        branches = []
        for r in roles:
            for name in registry.names(r):  # type: ignore[arg-type]
                spec = registry.adapters[r][name]  # type: ignore[index]
                block = _with(spec.config_schema, {"type": {"const": name}})
                branches.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                                 "then": block})
        names = sorted({n for r in roles for n in registry.names(r)})  # type: ignore[arg-type]
        defs[f"{role}_endpoint"] = {"type": "object", "required": ["type"],
                                    "properties": {"type": {"enum": names}}, "allOf": branches}
        document["properties"][section]["additionalProperties"] = {"$ref": f"#/$defs/{role}_endpoint"}
    return document


def adapter_exports(registry: Registry, modules: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """File name -> schema document for the adapters of ``modules``, as kept under ``schemas/adapters/``."""
    exports: dict[str, dict[str, Any]] = {}
    for role, names in registry.adapters.items():
        for name, spec in names.items():
            if spec.module not in modules:
                continue
            exports[f"{role}.{name}.json"] = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": f"{name} {role}",
                "description": spec.summary,
                "config": spec.config_schema,
                "options": spec.options_schema,
            }
    return dict(sorted(exports.items()))
