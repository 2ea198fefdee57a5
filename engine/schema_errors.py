"""Turn JSON Schema errors into located problems a person can act on."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from engine.errors import Problem
from engine.yaml_source import Located, YamlPath

_TYPE_NAMES = {
    "string": "text", "integer": "a whole number", "number": "a number", "boolean": "true or false",
    "object": "a mapping of keys to values", "array": "a list", "null": "null",
}


_KIND_NAMES = {
    "boolean": "true or false", "integer": "a whole number", "number": "a number", "string": "text",
    "object": "a mapping", "array": "a list", "null": "null",
}


def _kind(value: Any) -> str:
    """What a value is, in words."""
    return _KIND_NAMES[_json_type(value)]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close, else an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], 1, 0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: Any, schema: dict[str, Any]) -> str:
    if schema.get("writeOnly"):
        return "the value"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems(error: ValidationError, located: Located, base: YamlPath) -> Iterator[Problem]:
    path: YamlPath = (*base, *error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        for extra in sorted(set(instance) - set(known)):
            yield located.problem((*path, extra), f"unknown key '{extra}'" + did_you_mean(extra, known), key=True)
        return
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in instance]
        for name in missing:
            yield located.problem(path, f"missing required key '{name}'")
        return
    if error.validator == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        if instance is None:  # `mode:` with nothing after it
            yield located.problem(path, f"no value given; expected one of {options}")
            return
        hint = did_you_mean(instance, list(error.validator_value)) if isinstance(instance, str) else ""
        yield located.problem(path, f"{_show(instance, schema)} is not one of {options}{hint}")
        return
    if error.validator == "const":
        yield located.problem(path, f"must be {error.validator_value!r}, not {_show(instance, schema)}")
        return
    if error.validator == "type":
        wanted = error.validator_value
        names = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in (wanted if isinstance(wanted, list) else [wanted]))
        yield located.problem(path, f"expected {names}, got {_kind(instance)}")
        return
    if error.validator in ("anyOf", "oneOf"):
        # Report the problems of the branch whose type fits the value; a list of every branch's
        # complaint helps no one, and "expected text" is wrong when a mapping was meant.
        kind = _json_type(instance)
        declared: list[str] = []
        for index, branch in enumerate(error.validator_value):
            wanted = branch.get("type") if isinstance(branch, dict) else None
            wanted_list = wanted if isinstance(wanted, list) else [wanted] if wanted else []
            declared.extend(wanted_list)
            if not wanted_list or kind in wanted_list or (kind == "integer" and "number" in wanted_list):
                subs = [e for e in error.context or [] if e.relative_schema_path and e.relative_schema_path[0] == index]
                if subs:
                    for sub in subs:
                        yield from _problems(sub, located, base)
                    return
        names = " or ".join(dict.fromkeys(_TYPE_NAMES.get(str(k), str(k)) for k in declared)) or "another value"
        yield located.problem(path, f"expected {names}, got {_kind(instance)}")
        return
    if error.validator == "minProperties" and error.validator_value == 1:
        yield located.problem(path, "must not be empty")
        return
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                 "exclusiveMaximum": "less than"}
        yield located.problem(path, f"must be {words[str(error.validator)]} {error.validator_value}, "
                                    f"not {_show(instance, schema)}")
        return
    if error.validator == "pattern":
        yield located.problem(path, f"{_show(instance, schema)} does not match {error.validator_value!r}")
        return
    message = error.message if not schema.get("writeOnly") else f"invalid value ({error.validator})"
    yield located.problem(path, message)


def validate_block(schema: dict[str, Any], data: Any, located: Located, base: YamlPath = ()) -> list[Problem]:
    """Every problem of ``data`` (found at ``base`` in ``located``) against ``schema``."""
    validator = Draft202012Validator(schema)
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        problems.extend(_problems(error, located, base))
    # "missing 'path'" says nothing new next to "unknown key 'pth' (did you mean 'path'?)" in the same block.
    suggested = {(p.path.rsplit(".", 1)[0], m.group(1)) for p in problems
                 if (m := re.search(r"^unknown key '[^']*' \(did you mean '([^']*)'\?\)$", p.message))}
    missing = re.compile(r"^missing required key '([^']*)'$")
    return [p for p in problems
            if not ((m := missing.search(p.message)) and (p.path, m.group(1)) in suggested)]
