"""Plain Python for the simple templates most mappings are made of.

Most fields are ``record.x``, a registered filter with constant arguments, ``~`` joins and literal
text. For a mapping made only of such templates, this module writes one Python function that builds
the whole output record as a dict literal: no Jinja context, no generator, no per-field bookkeeping
(2-3x faster per record than the compiled Jinja template). Anything outside that subset raises
:class:`Unsupported` at compile time and the mapping keeps the Jinja path alone.

The translation keeps Jinja's meaning exactly where it applies: a record field is read as a dict
key; a missing field, or any error, makes the caller fall back to the Jinja path for that record,
which then produces the value or the located record error; filters are the very functions Jinja
would call (those that need Jinja's context or environment are not translated); text is joined
with ``str`` as Jinja does; ``vars``, ``env`` and ``run`` are per run, so their values are constants
of the function. No attribute of any object is read, so there is nothing for the sandbox to check.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import nodes

from engine.templating import SyncEnvironment, single_expression

_LAZY = frozenset({"reverse"})
"""Filters that may return an iterator although they are no generator functions."""
_COMPARE = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in", "notin": "not in"}


class Unsupported(Exception):
    """A template uses something outside the translated subset."""


class _Translator:
    """Turns template ASTs into Python expression text over ``record`` and named constants."""

    def __init__(self, env: SyncEnvironment, context: Mapping[str, Any]) -> None:
        self.env = env
        self.context = context
        self.constants: dict[str, Any] = {}

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
        function = self.env.filters.get(node.name)
        if function is None or getattr(function, "jinja_pass_arg", None) is not None:
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
        text = translator.template(source) if templated else translator.constant(source)
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
    key = translator.template(key_template) if key_template is not None else "None"
    lines.append(f"    return {_literal(tree)}, {key}")
    namespace: dict[str, Any] = dict(translator.constants)
    exec(compile("\n".join(lines), "<mapping>", "exec"), namespace)  # noqa: S102 - our own generated code
    function: Callable[[dict[str, Any]], tuple[dict[str, Any], Any] | None] = namespace["fast"]
    return function
