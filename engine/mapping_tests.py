"""``syncengine test``: unit tests of a pipeline's mappings from YAML fixtures, with no source or destination.

A fixture file holds one suite (a mapping) or a list of suites. A suite names a sync and lists
cases; each case gives a source record and what mapping it must give::

    sync: customers
    vars: {timezone: UTC}                 # optional: over the pipeline's vars
    env: {COUNTRY: us}                    # optional: what env.NAME reads during these cases
    run: {started_at: "2024-05-01T12:00:00+00:00", watermark: null}   # optional: run.*
    partial: false                        # optional: true ignores output fields a case does not expect
    cases:
      - name: an active customer          # optional
        input: {id: C001, status: A}
        expect: {customer_id: C001, status: Active}
        expect_key: C001                  # optional: the record's key as the state keeps it
      - input: {id: C002, status: Q}
        expect_error: "not in the value map"   # a substring of the record error
      - input: {id: C003, status: X}
        expect_filtered: true             # the mapping's filter drops it

The sync's mapping is compiled exactly as ``apply`` compiles it (:meth:`engine.runner.Engine.mapping`).
Values compare with their types: ``1`` is not ``"1"``, ``1`` is not ``1.0``. A decimal or a date the
mapping makes compares with its text (``"12.50"``, ``"2024-05-01T12:00:00+00:00"``), the form it is
written in. Problems with a fixture are located like a pipeline's (``file:line:col: path: message``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.config import Pipeline
from engine.errors import PipelineInvalid, Problem, RecordError
from engine.interfaces import RunInfo
from engine.runner import Engine
from engine.schema_errors import did_you_mean, validate_block
from engine.templating import Redactor
from engine.yaml_source import Located, YamlPath, format_path, load_located

FIXTURE_PATTERNS = ("*.test.yml", "*.test.yaml")
OUTCOMES = ("expect", "expect_error", "expect_filtered")
_SHOWN = 200
"""Characters of a value shown in a difference."""

_CASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["input"],
    "properties": {
        "name": {"type": "string"},
        "input": {"type": "object"},
        "expect": {"type": "object"},
        "expect_key": {"type": "string"},
        "expect_error": {"type": "string", "minLength": 1},
        "expect_filtered": {"const": True},
        "partial": {"type": "boolean"},
    },
}
SUITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sync", "cases"],
    "properties": {
        "sync": {"type": "string"},
        "description": {"type": "string"},
        "vars": {"type": "object"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "run": {"type": "object", "additionalProperties": False, "properties": {
            "id": {"type": "string"}, "started_at": {"type": "string"},
            "watermark": {"type": ["string", "null"]}}},
        "partial": {"type": "boolean"},
        "cases": {"type": "array", "minItems": 1, "items": _CASE_SCHEMA},
    },
}
"""The JSON Schema of one suite (a fixture file holds one, or a list of them)."""


@dataclass(frozen=True)
class Case:
    """One case: where it stands, its input and what it expects."""

    file: str
    line: int
    name: str
    input: dict[str, Any]
    outcome: str
    """One of :data:`OUTCOMES`."""
    expected: Any
    expect_key: str | None
    partial: bool


@dataclass(frozen=True)
class Suite:
    """The cases of one sync, with the vars, environment and run they are mapped under."""

    sync: str
    vars: dict[str, Any]
    env: dict[str, str]
    run: RunInfo
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class Difference:
    """One way a case's result differs from what it expects."""

    path: str
    kind: str
    """``changed``, ``missing``, ``extra``, ``length``, ``key`` or ``outcome``."""
    expected: Any = None
    got: Any = None
    message: str = ""
    got_type: str | None = None
    """The type the mapping made when ``got`` is its text (``Decimal``, ``datetime``)."""


@dataclass
class CaseResult:
    """What one case gave."""

    case: Case
    sync: str
    differences: list[Difference] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the case gave what it expects."""
        return not self.differences


def find_fixtures(pipeline: Path) -> list[Path]:
    """The default fixtures of a pipeline: ``*.test.yml`` beside it and anywhere under its ``tests/`` folder."""
    folder = pipeline.parent
    found = {p for pattern in FIXTURE_PATTERNS for p in folder.glob(pattern)}
    found |= {p for pattern in FIXTURE_PATTERNS for p in (folder / "tests").rglob(pattern)}
    return sorted(p for p in found if p.is_file())


def _shown(path: Path) -> str:
    """A file as messages name it: relative to the working directory when it is below it."""
    resolved = path.resolve()
    cwd = Path.cwd()
    return str(resolved.relative_to(cwd)) if resolved.is_relative_to(cwd) else str(path)


def load_suites(files: Sequence[Path], pipeline: Pipeline) -> list[Suite]:
    """Read and check fixture files; raise :class:`PipelineInvalid` with every located problem."""
    problems: list[Problem] = []
    suites: list[Suite] = []
    for file in files:
        shown = _shown(file)
        if not file.is_file():
            problems.append(Problem(shown, 1, 1, "", "no such fixture file"))
            continue
        try:
            located = load_located(file, shown)
        except PipelineInvalid as exc:
            problems.extend(exc.problems)
            continue
        data = located.data
        if isinstance(data, dict):
            blocks: list[tuple[YamlPath, Any]] = [((), data)]
        elif isinstance(data, list) and data:
            blocks = [((i,), item) for i, item in enumerate(data)]
        else:
            problems.append(located.problem((), "a fixture file holds a suite (a mapping with sync and cases) or a "
                                                "list of suites"))
            continue
        for base, block in blocks:
            suite = _suite(located, base, block, pipeline, problems)
            if suite is not None:
                suites.append(suite)
    if problems:
        raise PipelineInvalid(problems)
    return suites


def _suite(located: Located, base: YamlPath, block: Any, pipeline: Pipeline, problems: list[Problem]) -> Suite | None:
    """One suite, checked; its problems are added to ``problems``."""
    found = validate_block(SUITE_SCHEMA, block, located, base)
    problems.extend(found)
    sync = block.get("sync") if isinstance(block, dict) else None
    if isinstance(sync, str) and sync not in pipeline.syncs:
        problems.append(located.problem((*base, "sync"), f"unknown sync '{sync}'" + did_you_mean(
            sync, list(pipeline.syncs)) + f"; the pipeline has: {', '.join(pipeline.syncs)}"))
        return None
    if found or not isinstance(sync, str):
        return None
    ok = True
    run_block = block.get("run", {})
    started = datetime.now(UTC)
    if "started_at" in run_block:
        try:
            started = datetime.fromisoformat(run_block["started_at"])
        except ValueError:
            problems.append(located.problem((*base, "run", "started_at"), f"{run_block['started_at']!r} is not an "
                                                                           "ISO 8601 date and time"))
            ok = False
    cases: list[Case] = []
    for i, item in enumerate(block["cases"]):
        path = (*base, "cases", i)
        given = [name for name in OUTCOMES if name in item]
        if len(given) != 1:
            problems.append(located.problem(path, "a case needs exactly one of expect, expect_error and "
                                                  f"expect_filtered (this one has {', '.join(given) or 'none'})"))
            ok = False
            continue
        if "expect_key" in item and given[0] != "expect":
            problems.append(located.problem((*path, "expect_key"), "expect_key goes with expect"))
            ok = False
            continue
        line, _ = located.where(path)
        cases.append(Case(located.file, line, item.get("name") or f"case {i + 1}", item["input"], given[0],
                          item[given[0]], item.get("expect_key"), item.get("partial", block.get("partial", False))))
    if not ok:
        return None
    run = RunInfo(run_block.get("id", "test"), started, run_block.get("watermark"))
    return Suite(sync, block.get("vars", {}), block.get("env", {}), run, tuple(cases))


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """The process environment with ``values`` set, as it was afterwards (``env.NAME`` reads the environment)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_suites(pipeline: Pipeline, suites: Sequence[Suite]) -> tuple[list[CaseResult], Redactor]:
    """Map every case's input through its sync's mapping and compare; returns the results and the redactor
    that masks the secrets of what they show (the environment's secrets, as under ``apply``)."""
    results: list[CaseResult] = []
    redactor = Redactor()
    for suite in suites:
        with _environment(suite.env):
            engine = Engine(replace(pipeline, vars={**pipeline.vars, **suite.vars}), dry_run=True)
            try:
                mapping = engine.mapping(pipeline.syncs[suite.sync], suite.run)
                for case in suite.cases:
                    result = CaseResult(case, suite.sync)
                    try:
                        mapped = mapping.map(dict(case.input))
                    except RecordError as exc:
                        result.differences = _judge_error(case, exc.describe())
                    except Exception as exc:  # noqa: BLE001 - a mapping that breaks is this case's failure
                        result.differences = _judge_error(case, f"{type(exc).__name__}: {exc}")
                    else:
                        result.differences = _judge(case, None if mapped is None else (mapped.key, mapped.values))
                    results.append(result)
            finally:
                # After the cases: a secret_file() a template read is known to the engine's redactor only then.
                for secret in engine.redactor.secrets:
                    redactor.add(secret)
                engine.close()
    return results, redactor


def _judge_error(case: Case, message: str) -> list[Difference]:
    if case.outcome == "expect_error":
        if case.expected in message:
            return []
        return [Difference("", "outcome", case.expected, message,
                           f"the error does not contain {json.dumps(case.expected, ensure_ascii=False)}: {message}")]
    wanted = "a record" if case.outcome == "expect" else "the record filtered out"
    return [Difference("", "outcome", None, message, f"expected {wanted}; the mapping failed: {message}")]


def _judge(case: Case, mapped: tuple[str, dict[str, Any]] | None) -> list[Difference]:
    if mapped is None:
        if case.outcome == "expect_filtered":
            return []
        wanted = "a record" if case.outcome == "expect" else f"an error containing {json.dumps(case.expected)}"
        return [Difference("", "outcome", None, None, f"expected {wanted}; the filter dropped the record")]
    key, values = mapped
    if case.outcome != "expect":
        wanted = "the record filtered out" if case.outcome == "expect_filtered" else \
            f"an error containing {json.dumps(case.expected, ensure_ascii=False)}"
        shown = json.dumps(_plain(values), ensure_ascii=False, default=str)
        shown = shown if len(shown) <= _SHOWN else shown[:_SHOWN - 3] + "..."
        return [Difference("", "outcome", None, _plain(values), f"expected {wanted}; got the record {shown}")]
    differences = compare(case.expected, values, partial=case.partial)
    if case.expect_key is not None and case.expect_key != key:
        differences.insert(0, Difference("(key)", "key", case.expect_key, key))
    return differences


def _plain(value: Any) -> Any:
    """A mapped value as a fixture can write it: decimals and dates as their text, tuples as lists."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _child(path: str, part: str | int) -> str:
    return format_path((path, part)) if path else format_path((part,))


def compare(expected: Any, got: Any, *, partial: bool = False, path: str = "") -> list[Difference]:
    """Every difference between an expected and a mapped value, field by field, types included."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out: list[Difference] = []
        for name, value in expected.items():
            if name not in got:
                out.append(Difference(_child(path, name), "missing", value))
            else:
                out.extend(compare(value, got[name], partial=partial, path=_child(path, name)))
        if not partial:
            out.extend(Difference(_child(path, str(name)), "extra", None, _plain(value))
                       for name, value in got.items() if name not in expected)
        return out
    if isinstance(expected, list) and isinstance(got, (list, tuple)):
        out = []
        if len(expected) != len(got):
            out.append(Difference(path or "(record)", "length", len(expected), len(got)))
        for i, (want, have) in enumerate(zip(expected, got, strict=False)):
            out.extend(compare(want, have, partial=partial, path=_child(path, i)))
        return out
    plain = _plain(got)
    if type(expected) is not type(plain) or expected != plain:
        # A decimal or a date is compared as the text it is written as; say what the mapping made.
        made = type(got).__name__ if isinstance(got, (Decimal, datetime, date, time)) else None
        return [Difference(path or "(record)", "changed", expected, plain, got_type=made)]
    return []


_KINDS = {bool: "boolean", int: "integer", float: "number", str: "text", type(None): "null", dict: "mapping",
          list: "list"}


def _show_value(value: Any, made: str | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > _SHOWN:
        text = text[:_SHOWN - 3] + "..."
    kind = f"{made}, compared as text" if made else _KINDS.get(type(value), type(value).__name__)
    return f"{text} ({kind})"


def describe(difference: Difference) -> str:
    """One difference as a line: ``status: expected "Active" (text), got "A" (text)``."""
    d = difference
    if d.kind == "outcome":
        return d.message
    if d.kind == "missing":
        return f"{d.path}: missing (expected {_show_value(d.expected)})"
    if d.kind == "extra":
        return f"{d.path}: extra field, got {_show_value(d.got)} (set partial: true to ignore fields not expected)"
    if d.kind == "length":
        return f"{d.path}: expected {d.expected} items, got {d.got}"
    if d.kind == "key":
        return f"key: expected {_show_value(d.expected)}, got {_show_value(d.got)}"
    return f"{d.path}: expected {_show_value(d.expected)}, got {_show_value(d.got, d.got_type)}"


def report_lines(results: Sequence[CaseResult], redactor: Redactor) -> list[str]:
    """The failures, each with its fixture location and its differences, then one summary line."""
    lines: list[str] = []
    for result in results:
        if result.passed:
            continue
        case = result.case
        lines.append(f"FAIL {case.file}:{case.line}: {result.sync}: {case.name}")
        lines.extend(f"  {redactor.text(describe(d))}" for d in result.differences)
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return lines


def report_data(results: Sequence[CaseResult], redactor: Redactor) -> dict[str, Any]:
    """The results as plain data for ``--json``."""
    cases = []
    for result in results:
        case = result.case
        cases.append({"file": case.file, "line": case.line, "sync": result.sync, "name": case.name,
                      "passed": result.passed,
                      "differences": [{"path": d.path, "kind": d.kind, "expected": redactor.data(d.expected),
                                       "got": redactor.data(d.got), "message": redactor.text(describe(d))}
                                      for d in result.differences]})
    failed = sum(not r.passed for r in results)
    return {"passed": len(results) - failed, "failed": failed, "cases": cases}
