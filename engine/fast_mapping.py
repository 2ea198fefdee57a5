"""Plain Python for the simple templates most mappings are made of.

Most fields are ``record.x``, a registered filter with constant arguments, ``~`` joins and literal
text. For a mapping made only of such templates, this module writes one Python function that builds
the whole output record as a dict literal: no Jinja context, no generator, no per-field bookkeeping
(2-3x faster per record than the compiled Jinja template). Anything outside that subset raises
:class:`Unsupported` at compile time and the mapping keeps the Jinja path alone. The choice is made
inside :class:`engine.mapping.CompiledTemplates`, the one way templates are evaluated.

The translation keeps Jinja's meaning exactly where it applies: a record field is read as a dict
key; a missing field, or any error, makes the caller fall back to the Jinja path for that record,
which then produces the value or the located record error; filters are the very functions Jinja
would call (those that need Jinja's context or environment are not translated); text is joined
with ``str`` as Jinja does; ``vars``, ``env`` and ``run`` are per run, so their values are constants
of the function. No attribute of any object is read, so there is nothing for the sandbox to check.

Values here are never undefined (a missing field is a ``KeyError``), so filters are called without
the environment's strict wrappers. Output sizes are checked as the Jinja path checks them (see
:mod:`engine.mapping`), with the work decided at compile time: a field copied from the record, or
a number, date or boolean, costs nothing per record; a text made here costs one ``len``. The check
counts at least what the Jinja path counts, so a record it passes the Jinja path passes too, and
a record it refuses goes to the Jinja path for the exact verdict.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import nodes

from engine import filters
from engine.jinja_internals import passes_jinja_argument
from engine.limits import MAX_VALUE, measure
from engine.templating import SyncEnvironment, single_expression

_LAZY = frozenset({"reverse", "batch", "slice"})
"""Filters that may return an iterator although they are no generator functions."""
_COMPARE = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in", "notin": "not in"}


class Unsupported(Exception):
    """A template uses something outside the translated subset."""


class _TooLarge(Exception):
    """The values made for a record may pass the size limits: the Jinja path decides."""


# What a translated expression can give, for the size check: a value of the record itself ("pass"),
# a number, date or boolean ("scalar"), text ("str"), text or None ("opt_str"), anything else ("any").
_SCALAR = frozenset({filters.strict_int, filters.strict_float, filters.cents, filters.to_decimal, filters.money,
                     filters.to_bool, filters.parse_date, filters.to_timezone})
_STR = frozenset({filters.upper, filters.lower})
_OPT_STR = frozenset({filters.iso8601, filters.format_date, filters.clean, filters.digits, filters.ascii_fold,
                      filters.limit, filters.zfill})
_EXEMPT = frozenset({"pass", "scalar"})


class _Translator:
    """Turns template ASTs into Python expression text over ``record`` and named constants."""

    def __init__(self, env: SyncEnvironment, context: Mapping[str, Any]) -> None:
        self.env = env
        self.context = context
        self.constants: dict[str, Any] = {}
        self.base_size = 0
        """Characters of the constant output values (known at compile time)."""
        self.checks: list[str] = []
        """Per-record size terms of the output values made here, over locals ``_v0``, ``_v1``..."""

    def function(self, node: nodes.Filter) -> Any:
        """The filter's own function (without the environment's strict wrapper)."""
        found = self.env.filters.get(node.name)
        return getattr(found, "syncengine_inner", found)

    def kind(self, node: nodes.Node) -> str:
        """What an expression can give, for the size check (see ``_SCALAR``)."""
        if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name) \
                and node.node.name == "record":
            return "pass"
        if isinstance(node, (nodes.Compare, nodes.Not)):
            return "scalar"
        if isinstance(node, nodes.Concat):
            return "str"
        if isinstance(node, nodes.Filter) and node.node is not None:
            function = self.function(node)
            if function in _SCALAR:
                return "scalar"
            if function in _STR:
                return "str"
            if function in _OPT_STR:
                return "opt_str"
            if function is filters.null_if_empty and self.kind(node.node) in _EXEMPT:
                return "pass"  # the field's own value, or None
            if function is filters.coalesce and all(self.kind(n) in _EXEMPT for n in (node.node, *node.args)):
                return "pass"
            return "any"
        if isinstance(node, (nodes.And, nodes.Or)):
            return "pass" if {self.kind(node.left), self.kind(node.right)} <= _EXEMPT else "any"
        if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
            return "pass" if {self.kind(node.expr1), self.kind(node.expr2)} <= _EXEMPT else "any"
        return "any"

    def size_term(self, source: str, value: str) -> str | None:
        """The per-record size term of an output template whose value is the Python expression ``value``.

        ``None`` when the template's size is known now (added to ``base_size``) or does not count.
        """
        expr = single_expression(self.env.parse(source))
        if isinstance(expr, nodes.Const):
            self.base_size += measure(expr.value)
            return None
        kind = "str" if expr is None else self.kind(expr)
        if kind in _EXEMPT:
            return None
        if kind == "str":
            return f"len({value})"
        if kind == "opt_str":
            return f"(0 if {value} is None else len({value}))"
        return f"{self.constant(measure)}({value})"

    def output(self, source: str) -> str:
        """The expression of an output value, with its size term added to the per-record check."""
        text = self.template(source)
        name = f"_v{len(self.checks)}"
        term = self.size_term(source, name)
        if term is None:
            return text
        self.checks.append(term)
        return f"({name} := {text})"

    def constant(self, value: Any) -> str:
        """A name bound to ``value`` in the generated function's globals."""
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def template(self, source: str) -> str:
        """The expression of a whole template: its native value, or its text."""
        ast = self.env.parse(source)
        expr = single_expression(ast)
        if expr is not None:
            return self.expr(expr)
        parts: list[str] = []
        for stmt in ast.body:
            if not isinstance(stmt, nodes.Output):
                raise Unsupported(type(stmt).__name__)
            for node in stmt.nodes:
                parts.append(repr(node.data) if isinstance(node, nodes.TemplateData) else f"str({self.expr(node)})")
        return "''.join((" + "".join(f"{p}, " for p in parts) + "))"

    def context_value(self, name: str, attr: str) -> str:
        """``vars.x``, ``env.X`` or ``run.x``: fixed for the run, so a constant."""
        holder = self.context.get(name)
        if attr.startswith("_"):
            raise Unsupported(f"{name}.{attr}")  # the sandbox's rule: no private attributes
        if name == "run":
            if holder is None or not hasattr(type(holder), attr):
                raise Unsupported(f"run.{attr}")
            return self.constant(getattr(holder, attr))
        try:
            return self.constant(holder[attr])  # type: ignore[index]
        except (KeyError, TypeError, OSError) as exc:
            raise Unsupported(f"{name}.{attr}") from exc

    def expr(self, node: nodes.Node) -> str:
        """Python text of one expression node."""
        if isinstance(node, nodes.Const):
            return self.constant(node.value)
        if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name):
            if isinstance(node, nodes.Getattr):
                attr = node.attr
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                attr = node.arg.value
            else:
                raise Unsupported("a computed subscript")
            if node.node.name == "record":
                return f"record[{attr!r}]"
            if node.node.name in ("vars", "env", "run"):
                return self.context_value(node.node.name, attr)
            raise Unsupported(node.node.name)
        if isinstance(node, nodes.Filter):
            return self.filter(node)
        if isinstance(node, nodes.Concat):
            return "''.join((" + "".join(f"str({self.expr(n)}), " for n in node.nodes) + "))"
        if isinstance(node, nodes.Compare):
            text = self.expr(node.expr)
            for operand in node.ops:
                if operand.op not in _COMPARE:
                    raise Unsupported(operand.op)
                text += f" {_COMPARE[operand.op]} {self.expr(operand.expr)}"
            return f"({text})"
        if isinstance(node, (nodes.And, nodes.Or)):
            word = "and" if isinstance(node, nodes.And) else "or"
            return f"({self.expr(node.left)} {word} {self.expr(node.right)})"
        if isinstance(node, nodes.Not):
            return f"(not {self.expr(node.node)})"
        if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
            return f"({self.expr(node.expr1)} if {self.expr(node.test)} else {self.expr(node.expr2)})"
        if isinstance(node, (nodes.List, nodes.Tuple)):
            items = "".join(f"{self.expr(n)}, " for n in node.items)
            return f"[{items}]" if isinstance(node, nodes.List) else f"({items})"
        if isinstance(node, nodes.Dict):
            return "{" + ", ".join(f"{self.expr(p.key)}: {self.expr(p.value)}" for p in node.items) + "}"
        raise Unsupported(type(node).__name__)

    def filter(self, node: nodes.Filter) -> str:
        """A filter call; filters that want Jinja's context, environment or eval context are not translated."""
        if node.dyn_args is not None or node.dyn_kwargs is not None or node.node is None:
            raise Unsupported("dynamic filter arguments")
        function = self.function(node)
        if function is None or passes_jinja_argument(function):
            raise Unsupported(f"filter {node.name}")
        if inspect.isgeneratorfunction(function) or node.name in _LAZY:
            # A lazy result is no value; the Jinja path reports it as a record error.
            raise Unsupported(f"filter {node.name} gives an iterator")
        args = [self.expr(node.node), *(self.expr(a) for a in node.args),
                *(f"{k.key}={self.expr(k.value)}" for k in node.kwargs)]
        return f"{self.constant(function)}({', '.join(args)})"


def _literal(tree: Any) -> str:
    """Python text of a nested output built from leaf expressions."""
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{key!r}: {_literal(value)}" for key, value in tree.items()) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(_literal(value) for value in tree) + "]"
    return str(tree)


def size_of_made(env: SyncEnvironment, leaves: list[tuple[str, Any, bool]],
                 context: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], int] | None:
    """For the Jinja path: a function of the rendered slots giving the characters the same check counts.

    ``leaves`` are (slot name, template source or constant, is template). ``None`` when no value
    can be large: the check then costs nothing per record.
    """
    translator = _Translator(env, context)
    terms: list[str] = []
    for slot, source, templated in leaves:
        if not templated:
            translator.base_size += measure(source)
            continue
        try:
            term = translator.size_term(source, f"v[{slot!r}]")
        except Unsupported:  # a vars/env/run value that cannot be read now: measure it per record
            term = f"{translator.constant(measure)}(v[{slot!r}])"
        if term is not None:
            terms.append(term)
    if not terms and translator.base_size <= MAX_VALUE:
        return None
    namespace: dict[str, Any] = dict(translator.constants)
    code = f"def size(v):\n    return {translator.base_size} + {' + '.join(terms) or '0'}\n"
    exec(compile(code, "<mapping sizes>", "exec"), namespace)  # noqa: S102 - our own generated code
    function: Callable[[Mapping[str, Any]], int] = namespace["size"]
    return function


def compile_fast(env: SyncEnvironment, fields: list[tuple[tuple[str | int, ...], Any, bool]], *,
                 key_template: str | None, filter_template: str | None,
                 context: Mapping[str, Any]) -> Callable[[dict[str, Any]], tuple[dict[str, Any], Any] | None]:
    """One function ``record -> (values, template key)``, or ``None`` when the filter drops the record.

    ``fields`` are (output path, template source or constant, is template). Raises
    :class:`Unsupported` when any template is outside the subset.
    """
    translator = _Translator(env, context)
    tree: dict[str, Any] = {}
    for path, source, templated in fields:
        if templated:
            text = translator.output(source)
        else:
            text = translator.constant(source)
            translator.base_size += measure(source)
        node: Any = tree
        for part, nxt in zip(path, path[1:], strict=False):
            if isinstance(node, list):
                while len(node) <= int(part):
                    node.append(None)
                if node[int(part)] is None:
                    node[int(part)] = [] if isinstance(nxt, int) else {}
                node = node[int(part)]
            else:
                node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        last = path[-1]
        if isinstance(node, list):
            while len(node) <= int(last):
                node.append(None)
            node[int(last)] = text
        else:
            node[last] = text
    lines = ["def fast(record):"]
    if filter_template is not None:
        lines.append(f"    if not {translator.template(filter_template)}:")
        lines.append("        return None")
    key = translator.output(key_template) if key_template is not None else "None"
    if translator.base_size > MAX_VALUE:
        raise Unsupported("constant values over the size limit")  # the Jinja path reports it
    if translator.checks:
        lines.append(f"    result = {_literal(tree)}, {key}")
        base = f"{translator.base_size} + " if translator.base_size else ""
        lines.append(f"    if {base}{' + '.join(translator.checks)} > {MAX_VALUE}:")
        lines.append(f"        raise {translator.constant(_TooLarge)}")
        lines.append("    return result")
    else:
        lines.append(f"    return {_literal(tree)}, {key}")
    namespace: dict[str, Any] = dict(translator.constants)
    exec(compile("\n".join(lines), "<mapping>", "exec"), namespace)  # noqa: S102 - our own generated code
    function: Callable[[dict[str, Any]], tuple[dict[str, Any], Any] | None] = namespace["fast"]
    return function
