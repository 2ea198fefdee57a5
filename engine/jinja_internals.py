"""Every use of Jinja's private internals, behind the small API the rest of the engine uses.

Jinja documents templates, environments, ``parse`` and the read-only AST (:mod:`jinja2.nodes`),
undefined types and the sandbox's operator hooks. The engine needs more than that: a code
generator that reads record fields inline and writes the bounds' hooks into compiled code, sandbox
methods that are not documented hooks (``call``, ``wrap_str_format``), templates built from ASTs it
assembles (``Template.from_code``), a context whose ``vars`` it swaps per record, and a few of
Jinja's filter implementations. All of that is here and nowhere else, so a Jinja upgrade is checked
in one place: ``tests/test_jinja_internals.py`` names each private name this module relies on and
fails, saying what changed, when a release moves one of them (``jinja2`` is pinned below 3.2).

The API, for the rest of the engine:

- :class:`BoundedSandbox`: the sandbox with the field-reading code generator and the bounds'
  runtime hooks; :class:`~engine.templating.SyncEnvironment` adds the documented hooks.
- :class:`MissingValue`: the strict undefined whose message names the missing field.
- :class:`Slot` and :class:`CompiledSlots`: templates (and constants) compiled into one function
  that stores each value in a slot, behind an optional guard (a mapping's ``filter:``);
  :func:`slots_source` shows the Python it compiles; :func:`single_expression` says which
  templates keep their native type.
- :func:`check_compiles` and :func:`constant_limit`: what validation needs from the compiler.
- :func:`passes_jinja_argument` and Jinja's own filter implementations the bounded filters wrap.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import FilterArgumentError, SecurityError
from jinja2.filters import do_batch, do_indent, do_replace, do_tojson, make_attrgetter, sync_do_join, sync_do_slice
from jinja2.idtracking import VAR_LOAD_RESOLVE
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import SandboxedEnvironment, SandboxedFormatter
from markupsafe import EscapeFormatter, Markup

from engine.limits import (
    MAX_LOOP_ITERATIONS,
    MAX_VALUE,
    MAX_WORK,
    LimitError,
    as_text_size,
    check_format_spec,
    check_items,
    check_text,
    check_width,
    measure,
    replaced_size,
)

__all__ = [
    "BoundedSandbox",
    "CompiledSlots",
    "FieldAccessCodeGenerator",
    "FilterArgumentError",
    "MissingValue",
    "Slot",
    "check_compiles",
    "constant_limit",
    "do_batch",
    "do_indent",
    "do_replace",
    "do_tojson",
    "make_attrgetter",
    "passes_jinja_argument",
    "single_expression",
    "slots_source",
    "sync_do_join",
    "sync_do_slice",
]


# --- the strict undefined ---------------------------------------------------------------------------


class MissingValue(StrictUndefined):
    """A strict undefined whose message names the missing field and the closest existing one."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if self._undefined_hint is None and isinstance(obj, Mapping) and isinstance(name, str):
            close = difflib.get_close_matches(name, [str(k) for k in obj], 1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"no field '{name}'{hint}"
        return str(super()._undefined_message)


# --- the code generator ---------------------------------------------------------------------------


class FieldAccessCodeGenerator(CodeGenerator):
    """Compiles ``name.field`` on a plain ``dict`` to an inline key lookup, and adds the bounds' hooks.


    Reading a field of a record is most of what a mapping does; going through the environment's
    ``getattr`` costs a Python call per field and record. The inline form reads only dictionary
    keys (data, never attributes), so the sandbox has nothing to check; anything that is not a
    plain dict holding the key still takes the sandboxed ``environment.getattr``.

    Code that runs repeatedly (loop bodies and tests, macros, call blocks) counts its iterations
    and the size of what it makes through :class:`BoundedSandbox`; code that runs once per
    evaluation is bounded by the template's own length, so it pays only for the checks it needs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._repeating = 0  # how many loops, macros or call blocks enclose the code being written
        self._output_names: list[str] = []
        # Expressions whose code is wrapped in a call to the environment: {id: (node, method)}.
        # The node is kept so that its id cannot be reused by another node meanwhile.
        self._wrapped: dict[int, tuple[nodes.Node, str]] = {}
        self._always_passed: frozenset[str] = getattr(self.environment, "always_passed", frozenset())

    def visit_Getattr(self, node: nodes.Getattr, frame: Frame) -> None:
        if not isinstance(node.node, nodes.Name) or self.environment.is_async:
            super().visit_Getattr(node, frame)
            return
        attr = repr(node.attr)
        self.write("(")
        self.visit(node.node, frame)
        self.write(f"[{attr}] if ")
        self.visit(node.node, frame)
        self.write(f".__class__ is dict and {attr} in ")
        self.visit(node.node, frame)
        self.write(" else environment.getattr(")
        self.visit(node.node, frame)
        self.write(f", {attr}))")


    def visit_Name(self, node: nodes.Name, frame: Frame) -> None:
        # The engine always passes record, vars, env and run, so a load of one of them needs no
        # "is it undefined?" test at every use (the test costs more than the read).
        if node.ctx == "load" and node.name in self._always_passed:
            ref = frame.symbols.ref(node.name)
            load = frame.symbols.find_load(ref)
            if load is not None and load[0] == VAR_LOAD_RESOLVE:
                self.write(ref)
                return
        super().visit_Name(node, frame)

    def pop_assign_tracking(self, frame: Frame) -> None:
        # A mapping reads its fields from ``context.vars``; no template imports it, so the
        # per-field bookkeeping of exported names Jinja adds at the top level is skipped.
        if frame.toplevel and not frame.block_frame and not frame.loop_frame:
            names = self._assign_stack.pop()
            for name in sorted(names):
                self.writeline(f"context.vars[{name!r}] = {frame.symbols.ref(name)}")
            return
        super().pop_assign_tracking(frame)

    # --- bounds ------------------------------------------------------------------------------------

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        wrap = self._wrapped.pop(id(node), None) if self._wrapped else None
        if wrap is None:
            return super().visit(node, *args, **kwargs)
        self.write(f"environment.{wrap[1]}(context, ")
        result = super().visit(node, *args, **kwargs)
        self.write(")")
        return result

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # Every item a loop takes (those its `if` test skips too) counts towards the evaluation's
        # loop budget, so nested loops cannot run for hours (a recursive loop's inner calls are
        # counted in BoundedSandbox.call).
        self._wrapped[id(node.iter)] = (node.iter, "loop_items")
        self._repeating += 1
        try:
            super().visit_For(node, frame)
        finally:
            self._repeating -= 1

    def visit_Macro(self, node: nodes.Macro, frame: Frame) -> None:
        self._repeating += 1
        try:
            super().visit_Macro(node, frame)
        finally:
            self._repeating -= 1

    def visit_CallBlock(self, node: nodes.CallBlock, frame: Frame) -> None:
        self._repeating += 1
        try:
            super().visit_CallBlock(node, frame)
        finally:
            self._repeating -= 1

    def visit_Filter(self, node: nodes.Filter, frame: Frame) -> None:
        if not self._repeating or node.node is None:
            super().visit_Filter(node, frame)
            return
        # In repeated code a filter's input and result count towards the evaluation's work, so
        # a loop cannot run an O(n) filter over a large text a hundred thousand times.
        self._wrapped[id(node.node)] = (node.node, "charge")
        self.write("environment.charge(context, ")
        super().visit_Filter(node, frame)
        self.write(")")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            super().visit_Concat(node, frame)
            return
        # Once per evaluation a `~` is bounded by its own limit; in a loop it also counts as work.
        self.write("environment.charge(context, environment.concat_text((" if self._repeating
                   else "environment.concat_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))" if self._repeating else "))")

    @optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice) or self.environment.is_async:
            super().visit_Getitem(node, frame)
            return
        # Slices bypass the environment in Jinja; a slice copies, so it counts towards the work.
        self.write("environment.take_slice(context, ")
        self.visit(node.node, frame)
        self.write(", slice(")
        for i, part in enumerate((node.arg.start, node.arg.stop, node.arg.step)):
            self.write(", " if i else "")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write("))")

    def _plain_output(self, frame: Frame, finalize: CodeGenerator._FinalizeInfo) -> bool:
        return not (frame.eval_ctx.volatile or frame.eval_ctx.autoescape or finalize.src is not None)

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo) -> None:
        if not self._plain_output(frame, finalize):
            super()._output_child_pre(node, frame, finalize)
        elif self._repeating:
            self.write("environment.output_text(context, ")
        else:
            # Text goes out as it is; anything else (a list that could be huge as text) is checked.
            name = self.temporary_identifier()
            self._output_names.append(name)
            self.write(f"({name} if ({name} := ")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo) -> None:
        if not self._plain_output(frame, finalize):
            super()._output_child_post(node, frame, finalize)
        elif self._repeating:
            self.write(")")
        else:
            name = self._output_names.pop()
            self.write(f").__class__ is str else environment.output_text(context, {name}))")

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        text = super()._output_const_repr(group)
        return f"environment.charge(context, {text})" if self._repeating else text


# --- the sandbox's runtime hooks ----------------------------------------------------------------------


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox compiled by :class:`FieldAccessCodeGenerator`, with the hooks its code calls.

    Compiled templates call ``loop_items``, ``charge``, ``output_text``, ``concat_text`` and
    ``take_slice``; macros, recursive loops and methods of text are bounded in ``call``, and
    ``'...'.format()`` in ``wrap_str_format``. The budget of one evaluation is kept on its context.
    """

    code_generator_class = FieldAccessCodeGenerator
    always_passed: frozenset[str] = frozenset()
    """Names every evaluation passes: compiled code reads them without testing whether they are undefined."""

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Call from a template: macros and recursive loops count as iterations, methods of text are bounded."""
        if not self.is_safe_callable(obj):
            raise SecurityError(f"{obj!r} is not safely callable")
        if isinstance(obj, Macro):
            self.count_iteration(context)
        elif isinstance(obj, LoopContext) and args:
            self.count_iteration(context)
            args = (self.loop_items(context, args[0]), *args[1:])  # a recursive loop's next level
        owner = getattr(obj, "__self__", None) if isinstance(obj, types.BuiltinMethodType) else None
        if owner is not None:
            args = _check_method(owner, obj.__name__, args, kwargs)
            self.charge(context, owner)
        result = context.call(obj, *args, **kwargs)
        if isinstance(owner, (list, dict, set, bytearray)):
            # A method that grows a list in place (extend, append, update) is checked after the fact.
            check_items(len(owner), f"{obj.__name__}()")
        return self.charge(context, result)

    def count_iteration(self, context: Context) -> None:
        """One loop iteration or macro call; raises past :data:`~engine.limits.MAX_LOOP_ITERATIONS`."""
        work = _work(context)
        work.steps += 1
        if work.steps > MAX_LOOP_ITERATIONS:
            raise LimitError(f"the template ran more than {MAX_LOOP_ITERATIONS:,} loop iterations or macro "
                             f"calls in one evaluation; the limit is {MAX_LOOP_ITERATIONS:,}")

    def loop_items(self, context: Context, iterable: Any) -> Iterator[Any]:
        """The items of a loop, each one counted as an iteration."""
        for item in iterable:
            self.count_iteration(context)
            yield item

    def charge(self, context: Context, value: Any) -> Any:
        """Count a text's characters or a list's items towards the evaluation's work; returns the value."""
        if isinstance(value, _SIZED):
            work = _work(context)
            work.size += len(value)
            if work.size > MAX_WORK:
                raise LimitError(f"the template made or worked through more than {MAX_WORK:,} characters and "
                                 f"items in one evaluation; the limit is {MAX_WORK:,}")
        return value

    def output_text(self, context: Context, value: Any) -> str:
        """A value written out by ``{{ ... }}``: a list too large as text is refused before it is converted."""
        if value.__class__ is not str:
            as_text_size(value, "writing the value out")
            value = str(value)
        text: str = self.charge(context, value)
        return text

    def concat_text(self, parts: tuple[Any, ...]) -> str:
        """``a ~ b``: the parts as text, joined once their total is known to be within the limit."""
        texts = []
        size = 0
        for part in parts:
            if part.__class__ is not str:
                as_text_size(part, "'~'")
                part = str(part)
            size += len(part)
            texts.append(part)
        check_text(size, "'~'")
        return "".join(texts)

    def take_slice(self, context: Context, obj: Any, key: slice) -> Any:
        """``value[a:b:c]`` (a copy, so it counts towards the work)."""
        return self.charge(context, obj[key])

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``'...'.format(...)`` and ``format_map`` through a formatter that bounds widths and the result."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map"):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"
        formatter: _BoundedFormatter = (_BoundedEscapeFormatter(self, escape=f_self.escape)
                                        if isinstance(f_self, Markup) else _BoundedFormatter(self))

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            formatter.made = 0
            return str_type(formatter.vformat(f_self, args, kwargs))

        return wrapper


_SIZED = (str, bytes, bytearray, list, tuple, dict, set, frozenset, range)


class _Work:
    """What one evaluation of a template has used: loop steps, and characters and items made or read."""

    __slots__ = ("owner", "size", "steps")

    def __init__(self, owner: dict[str, Any]) -> None:
        self.owner = owner
        self.steps = 0
        self.size = 0


def _work(context: Context) -> _Work:
    """The evaluation's budget, kept on its context.

    A mapping reuses one context for every record and gives it fresh ``vars`` per record; a new
    ``vars`` dict therefore means a new evaluation, so the budget is per record without any
    per-record work where no loop, macro or bounded operation runs.
    """
    work: _Work | None = getattr(context, "syncengine_work", None)
    if work is None or work.owner is not context.vars:
        work = _Work(context.vars)
        context.syncengine_work = work  # type: ignore[attr-defined]
    return work


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _check_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Bound the methods of text that can make a much larger text; returns the arguments to call with."""
    if isinstance(owner, (str, bytes, bytearray)):
        if name in ("center", "ljust", "rjust", "zfill"):
            check_width(_argument(args, kwargs, 0, "width"), f"{name}()")
        elif name == "expandtabs":
            size = _argument(args, kwargs, 0, "tabsize", 8)
            check_width(size, "expandtabs()")
            tabs: int = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            check_text(len(owner) + tabs * (size if isinstance(size, int) and size > 0 else 0), "expandtabs()")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], type(owner)) \
                and isinstance(args[1], type(owner)):
            count = _argument(args, kwargs, 2, "count", -1)
            check_text(replaced_size(owner, args[0], args[1], count if isinstance(count, int) else -1),
                       "replace()")
        elif name == "join" and args:
            items = list(args[0])  # an iterator can be walked once: measure the list, then join it
            size = len(owner) * max(len(items) - 1, 0)
            for item in items:
                size += len(item) if isinstance(item, (str, bytes, bytearray)) else 0
            check_text(size, "join()")
            return (items, *args[1:])
        elif name == "translate" and args:
            table = args[0]
            longest = max((len(v) for v in table.values() if isinstance(v, (str, bytes))), default=1) \
                if isinstance(table, Mapping) else 1
            check_text(len(owner) * max(longest, 1), "translate()")
    elif isinstance(owner, int) and name == "to_bytes":
        check_width(_argument(args, kwargs, 0, "length", 1), "to_bytes()")
    return args


class _BoundedFormatter(SandboxedFormatter):
    """The sandbox's ``str.format`` formatter, refusing huge widths and a result over the text limit."""

    def __init__(self, env: BoundedSandbox, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.made = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        as_text_size(value, "format()")  # '{!r}' and '{!s}' make text before format_field sees it
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        padding = check_format_spec(format_spec)
        as_text_size(value, "format()")
        self.made += max(padding, measure(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 32)
        check_text(self.made, "format()")
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    """The bounded formatter for ``Markup`` text."""


# --- compiling and running templates ------------------------------------------------------------------


class Slot(NamedTuple):
    """One value of a compiled set: a template's (its text when ``text``, else its native value) or a constant."""

    name: str
    ast: nodes.Template | None
    """The parsed template; ``None`` for a constant."""
    text: bool = False
    constant: Any = None


def _assignment(name: str, ast: nodes.Template, text: bool = False) -> nodes.Stmt:
    """``{% set name = expr %}`` for a single expression (its native value), else a block set (its text)."""
    expr = single_expression(ast) if not text else None
    target = nodes.Name(name, "store")
    if expr is not None:
        return nodes.Assign(target, expr)
    return nodes.AssignBlock(target, None, ast.body)


def single_expression(ast: nodes.Template) -> nodes.Expr | None:
    """The expression of a template that is exactly ``{{ expr }}``, else ``None``."""
    if len(ast.body) == 1 and isinstance(ast.body[0], nodes.Output):
        parts = ast.body[0].nodes
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            return parts[0]
    return None


class CompiledSlots:
    """Templates and constants compiled into one Jinja function that stores each value in its own slot.

    Every slot is a top-level ``{% set %}`` of one template; with a ``guard``, the slots are set
    only when the guard's value is true. The function's context is made once: per call only
    ``record`` changes and the slots (the context's ``vars``) start empty, which also starts a new
    evaluation's budget.
    """

    def __init__(self, env: SandboxedEnvironment, slots: Sequence[Slot], *,
                 guard: tuple[str, nodes.Template] | None = None, context: Mapping[str, Any] | None = None) -> None:
        tree = _slots_tree(env, slots, guard)
        self._template = env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)
        self._ctx = self._template.new_context(dict(context or {}))
        self._root = self._template.root_render_func

    def run(self, record: Any) -> dict[str, Any]:
        """The slots for one record, every other name as compiled (the hot path: one context reused)."""
        ctx = self._ctx
        ctx.parent["record"] = record
        slots: dict[str, Any] = {}
        ctx.vars = slots
        for _ in self._root(ctx):
            pass
        return slots

    def run_with(self, names: Mapping[str, Any]) -> dict[str, Any]:
        """The slots for these names alone, in a new context (as ``Template.render`` makes one)."""
        ctx = self._template.new_context(dict(names))
        for _ in self._root(ctx):
            pass
        return ctx.vars


def _slots_tree(env: SandboxedEnvironment, slots: Sequence[Slot],
                guard: tuple[str, nodes.Template] | None) -> nodes.Template:
    """The combined template of a set: one top-level ``{% set %}`` per slot, inside ``{% if guard %}``."""
    assigned: list[nodes.Node] = [
        _assignment(s.name, s.ast, s.text) if s.ast is not None
        else nodes.Assign(nodes.Name(s.name, "store"), nodes.Const(s.constant)) for s in slots]
    body: list[nodes.Node] = assigned
    if guard is not None:
        body = [_assignment(guard[0], guard[1]), nodes.If(nodes.Name(guard[0], "load"), assigned, [], [])]
    tree = nodes.Template(body, lineno=1)
    tree.set_environment(env)
    return tree


def slots_source(env: SandboxedEnvironment, slots: Sequence[Slot],
                 guard: tuple[str, nodes.Template] | None = None) -> str:
    """The Python source :class:`CompiledSlots` compiles for a set (to check its shape, or to read when debugging)."""
    source: str = env.compile(_slots_tree(env, slots, guard), raw=True)
    return source


def check_compiles(env: SandboxedEnvironment, ast: nodes.Template) -> None:
    """Compile a parsed template and drop the code: raises what Jinja finds then (an unknown filter or test)."""
    env.compile(ast)


_VALUE = "syncengine_value"


def constant_limit(env: SandboxedEnvironment, part: nodes.Template | nodes.Expr) -> tuple[int, str] | None:
    """Evaluate a constant template, or one constant expression of it, through the bounds.

    Returns the limit it exceeds as (template line, message); ``None`` when it stays within them
    or fails otherwise (what else is wrong depends on data, or is reported at run time).
    """
    if isinstance(part, nodes.Template):
        tree = nodes.Template(part.body, lineno=1)
    else:
        tree = nodes.Template([nodes.Assign(nodes.Name(_VALUE, "store"), part)], lineno=part.lineno)
    return _evaluate(env, tree)


def _evaluate(env: SandboxedEnvironment, tree: nodes.Template) -> tuple[int, str] | None:
    """Run a constant template; a limit it exceeds is (template line, message), anything else is left to run time."""
    tree.set_environment(env)
    try:
        template = env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)
    except Exception:  # noqa: BLE001 - the template's own compilation has reported what is wrong
        return None
    try:
        context = template.new_context({})
        size = 0
        for text in template.root_render_func(context):
            size += len(text)
        if size > MAX_VALUE:
            return 1, f"the template makes a text of {size:,} characters; a value may have at most {MAX_VALUE:,}"
    except LimitError as exc:
        line = tree.lineno
        trace = exc.__traceback__
        while trace is not None:  # the template line the limit was hit on, for a template with statements
            if trace.tb_frame.f_code.co_filename == "<template>":
                line = template.get_corresponding_lineno(trace.tb_lineno)
            trace = trace.tb_next
        return line, str(exc)
    except Exception:  # noqa: BLE001 - other errors depend on data or are reported at run time
        return None
    return None


# --- filters ------------------------------------------------------------------------------------------


def passes_jinja_argument(function: Callable[..., Any]) -> bool:
    """Whether Jinja passes a filter or test its context, eval context or environment first."""
    return getattr(function, "jinja_pass_arg", None) is not None
