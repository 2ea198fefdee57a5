"""The one sandboxed Jinja environment, template checks, and secrets from the environment.

Templates run in a :class:`~jinja2.sandbox.SandboxedEnvironment` with a strict undefined: a
missing field is an error naming the field (with a did-you-mean), never an empty string, whatever
filter or test it goes through (only ``default``, ``coalesce``, ``record.get`` and ``is defined``
accept one). A template that is a single expression keeps its native type (a number stays a
number); any other template renders to text. Nothing ever guesses a type from text: types come
from filters.

Templates are bounded (:mod:`engine.limits`): operators, calls and filters that could make a huge
value are checked before they run, loops and macro calls are counted per evaluation, and constant
expressions are evaluated at validation, so ``{{ 10 ** 100000000 }}`` is a located error there.
"""

from __future__ import annotations

import base64
import difflib
import json
import logging
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, quote_plus

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, TemplateAssertionError
from jinja2.idtracking import VAR_LOAD_RESOLVE
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import SandboxedEnvironment, SandboxedFormatter
from jinja2.utils import missing
from markupsafe import EscapeFormatter, Markup

from engine.filters import ACCEPT_UNDEFINED, BOUNDED, FILTERS, REMOVED, strict
from engine.limits import (
    MAX_LOOP_ITERATIONS,
    MAX_VALUE,
    MAX_WORK,
    LimitError,
    add,
    as_text_size,
    check_format_spec,
    check_items,
    check_text,
    check_width,
    measure,
    multiply,
    power,
    printf,
    replaced_size,
)

CONTEXT_NAMES = ("record", "vars", "env", "run")
RUN_FIELDS = ("id", "started_at", "watermark")
_MARKERS = ("{{", "{%", "{#")
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def is_template(value: object) -> bool:
    """True for text that holds Jinja markup."""
    return isinstance(value, str) and any(m in value for m in _MARKERS)


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


_LISTING_METHODS = frozenset({"items", "keys", "values", "get", "copy", "__iter__", "__len__"})
ENV_LOOKUPS_ONLY = ("env answers lookups of one name only (env.NAME or env['NAME']): it cannot be listed, "
                    "iterated, counted or printed")


class EnvView:
    """``env`` in templates: one environment variable by name, where ``NAME_FILE`` names a file holding NAME.

    It answers lookups only: it cannot be iterated, listed, counted or turned into text, so no
    template can copy the environment (and its secrets) into a record, a file name or a message.
    """

    __slots__ = ()

    def __getitem__(self, name: str) -> str:
        value = os.environ.get(name)
        if value is not None:
            return value
        path = os.environ.get(f"{name}_FILE")
        if path:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        raise KeyError(name)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The variable's value, or ``default`` when neither NAME nor NAME_FILE is set."""
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> NoReturn:
        raise SecurityError(ENV_LOOKUPS_ONLY)

    def __len__(self) -> NoReturn:
        raise SecurityError(ENV_LOOKUPS_ONLY)

    def __str__(self) -> NoReturn:
        raise SecurityError(ENV_LOOKUPS_ONLY)

    def __repr__(self) -> str:
        return "<env: environment variables, read one by name>"


class FieldAccessCodeGenerator(CodeGenerator):
    """Compiles ``name.field`` on a plain ``dict`` to an inline key lookup, and adds the bounds' hooks.


    Reading a field of a record is most of what a mapping does; going through the environment's
    ``getattr`` costs a Python call per field and record. The inline form reads only dictionary
    keys (data, never attributes), so the sandbox has nothing to check; anything that is not a
    plain dict holding the key still takes the sandboxed ``environment.getattr``.

    Code that runs repeatedly (loop bodies and tests, macros, call blocks) counts its iterations
    and the size of what it makes through :class:`SyncEnvironment`; code that runs once per
    evaluation is bounded by the template's own length, so it pays only for the checks it needs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._repeating = 0  # how many loops, macros or call blocks enclose the code being written
        self._output_names: list[str] = []
        # Expressions whose code is wrapped in a call to the environment: {id: (node, method)}.
        # The node is kept so that its id cannot be reused by another node meanwhile.
        self._wrapped: dict[int, tuple[nodes.Node, str]] = {}

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
        if node.ctx == "load" and node.name in CONTEXT_NAMES:
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
        # counted in SyncEnvironment.call).
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


class SyncEnvironment(SandboxedEnvironment):
    """The sandbox, with a fast path for reading a field of a plain record ``dict``.

    For a ``dict``, a key wins over a method of the same name (``record.items`` is the column
    ``items`` when there is one), as a mapping's data is what an integrator means.
    """

    code_generator_class = FieldAccessCodeGenerator
    # Intercepted operators are also never folded at compile time, so `validate` cannot hang on
    # `10 ** 100000000`; check_template evaluates constant expressions through these bounds instead.
    intercepted_binops = frozenset({"**", "*", "+", "%"})
    secret_root: Path | None = None
    """The folder ``secret_file()`` paths are relative to (the pipeline's), set by :func:`make_environment`."""

    # --- bounds: every method here is called from compiled templates ------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``**``, ``*``, ``+`` and ``%`` with their results bounded before they are computed."""
        if operator == "**":
            result = power(left, right)
        elif operator == "*":
            result = multiply(left, right)
        elif operator == "+":
            result = add(left, right)
        elif operator == "%":
            result = printf(left, right)
        else:
            result = self.binop_table[operator](left, right)
        return self.charge(context, result)

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

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, EnvView):
            try:
                return obj[argument]
            except (KeyError, TypeError):
                return self.undefined(hint=f"environment variable {argument!r} is not set")
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            value = obj.get(attribute, missing)
            if value is not missing:
                return value
            if not hasattr(dict, attribute):
                return self.undefined(obj=obj, name=attribute)
        elif isinstance(obj, EnvView):
            try:
                return obj[attribute]
            except KeyError:
                listing = f" ({ENV_LOOKUPS_ONLY})" if attribute in _LISTING_METHODS else ""
                return self.undefined(hint=f"environment variable '{attribute}' is not set{listing}")
        return super().getattr(obj, attribute)


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

    def __init__(self, env: SyncEnvironment, **kwargs: Any) -> None:
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


def bounded_range(*args: int) -> range:
    """``range()`` in templates, of at most :data:`~engine.limits.MAX_ITEMS` items."""
    numbers = range(*args)
    check_items(len(numbers), "range()")
    return numbers


SECRETS_DIR_VARIABLE = "SYNCENGINE_SECRETS_DIR"
"""An environment variable naming one more folder ``secret_file()`` may read below."""


def secret_path(base_dir: Path, path: Any) -> Path:
    """The file ``secret_file(path)`` reads: below the pipeline's folder or ``SYNCENGINE_SECRETS_DIR``.

    Links are resolved first, so a link pointing out of both folders is refused like ``../..``.
    The error names the path as written, never anything read from it.
    """
    if not isinstance(path, str) or not path:
        raise SecurityError(f"secret_file() takes the path of a file as text, not {path!r}")
    roots = [base_dir.resolve()]
    extra = os.environ.get(SECRETS_DIR_VARIABLE)
    if extra:
        roots.append(Path(extra).resolve())
    target = (base_dir / path).resolve()
    if not any(target.is_relative_to(root) for root in roots):
        where = " or SYNCENGINE_SECRETS_DIR" if extra else " (set SYNCENGINE_SECRETS_DIR to allow another folder)"
        raise SecurityError(f"secret_file('{path}'): the file is outside the pipeline's folder{where}")
    return target


def make_environment(base_dir: Path | None = None,
                     on_secret: Callable[[str], None] | None = None) -> SyncEnvironment:
    """The sandboxed environment with the engine's filters and globals, all strict about missing fields."""
    env = SyncEnvironment(undefined=MissingValue, autoescape=False, keep_trailing_newline=False)
    env.filters.update(FILTERS)
    env.filters.update(BOUNDED)
    for name in REMOVED:
        del env.filters[name]
    # The engine's own filters reject a missing field themselves; Jinja's get a wrapper that does.
    for name, function in list(env.filters.items()):
        if name not in ACCEPT_UNDEFINED and function is not FILTERS.get(name):
            env.filters[name] = strict(name, function)
    for name, function in list(env.tests.items()):
        if name not in ACCEPT_UNDEFINED:
            env.tests[name] = strict(name, function, test=True)  # type: ignore[arg-type]
    del env.globals["lipsum"]  # makes paragraphs of any size; of no use in a mapping
    env.globals["range"] = bounded_range
    root = base_dir or Path.cwd()
    env.secret_root = root

    def secret_file(path: str) -> str:
        """The content of a secret file (path relative to the pipeline), without its final newline."""
        value = secret_path(root, path).read_text(encoding="utf-8").rstrip("\r\n")
        if on_secret is not None:
            on_secret(value)  # masked from then on in messages, reports and dead letters
        return value

    env.globals["secret_file"] = secret_file
    return env


def single_expression(ast: nodes.Template) -> nodes.Expr | None:
    """The expression of a template that is exactly ``{{ expr }}``, else ``None``."""
    if len(ast.body) == 1 and isinstance(ast.body[0], nodes.Output):
        parts = ast.body[0].nodes
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            return parts[0]
    return None


def attribute_uses(ast: nodes.Template, name: str) -> Iterator[tuple[str, int]]:
    """(attribute, line) of every ``name.attribute`` and ``name['attribute']`` in a template."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if isinstance(target, nodes.Name) and target.name == name:
            if isinstance(node, nodes.Getattr):
                yield node.attr, node.lineno
            elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                    and isinstance(node.arg.value, str):
                yield node.arg.value, node.lineno


def env_names(ast: nodes.Template) -> set[str]:
    """Environment variables a template reads through ``env.NAME``."""
    return {attr for attr, _ in attribute_uses(ast, "env")}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, 1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_CONSTANT_GLOBALS = frozenset({"range", "dict", "namespace", "cycler", "joiner"})
"""Globals a constant expression may use: evaluating them at validation reads and changes nothing."""
_NOT_VALUES = (nodes.Const, nodes.TemplateData, nodes.Name, nodes.Slice, nodes.NSRef)
_WORK = (nodes.BinExpr, nodes.Call, nodes.Filter, nodes.Concat, nodes.Getitem)
_VALUE = "syncengine_value"


def _env_misuse(ast: nodes.Template) -> list[tuple[int, str]]:
    """``env`` used other than as ``env.NAME`` or ``env['NAME']`` (listed, iterated, printed, ``env.items()``)."""
    problems: dict[int, str] = {}

    def walk(node: nodes.Node, parent: nodes.Node | None) -> None:
        if isinstance(node, nodes.Name) and node.name == "env" and node.ctx == "load":
            lookup = isinstance(parent, (nodes.Getattr, nodes.Getitem)) and parent.node is node
            member = isinstance(parent, nodes.Operand) and parent.op in ("in", "notin")  # 'NAME' in env
            if not (lookup or member):
                problems.setdefault(node.lineno, ENV_LOOKUPS_ONLY)
        elif isinstance(node, nodes.Call) and isinstance(node.node, (nodes.Getattr, nodes.Getitem)) \
                and isinstance(node.node.node, nodes.Name) and node.node.node.name == "env":
            called = node.node.attr if isinstance(node.node, nodes.Getattr) else "[...]"
            problems.setdefault(node.lineno, f"env.{called}() is not a lookup: {ENV_LOOKUPS_ONLY}")
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(ast, None)
    return sorted(problems.items())


def _secret_file_problems(env: SyncEnvironment, ast: nodes.Template) -> list[tuple[int, str]]:
    """``secret_file('...')`` with a constant path outside the folders it may read."""
    problems: list[tuple[int, str]] = []
    if env.secret_root is None:
        return problems
    for call in ast.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == "secret_file" and call.args \
                and isinstance(call.args[0], nodes.Const):
            try:
                secret_path(env.secret_root, call.args[0].value)
            except SecurityError as exc:
                problems.append((call.lineno, exc.message or str(exc)))
    return problems


def _is_constant(expr: nodes.Expr) -> bool:
    """Whether an expression reads nothing of the record, vars, env, run or files."""
    for node in expr.find_all((nodes.Name, nodes.ContextReference, nodes.DerivedContextReference,
                               nodes.EnvironmentAttribute, nodes.ExtensionAttribute, nodes.ImportedName,
                               nodes.InternalName)):
        if not (isinstance(node, nodes.Name) and node.name in _CONSTANT_GLOBALS and node.ctx == "load"):
            return False
    return True


def _constant_expressions(node: nodes.Node) -> Iterator[nodes.Expr]:
    """The largest constant expressions of a template that compute something (an operator, call or filter)."""
    for child in node.iter_child_nodes():
        if isinstance(child, nodes.Expr) and not isinstance(child, _NOT_VALUES) and _is_constant(child):
            if isinstance(child, _WORK) or any(True for _ in child.find_all(_WORK)):
                yield child
            continue
        yield from _constant_expressions(child)


def _evaluate(env: SyncEnvironment, tree: nodes.Template) -> tuple[int, str] | None:
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


def _limit_problems(env: SyncEnvironment, ast: nodes.Template, undeclared: set[str]) -> list[tuple[int, str]]:
    """The limits a constant part of a template exceeds, found by evaluating it through the same bounds."""
    if not undeclared - _CONSTANT_GLOBALS:
        found = _evaluate(env, nodes.Template(ast.body, lineno=1))
        return [found] if found else []
    problems: list[tuple[int, str]] = []
    for expr in _constant_expressions(ast):
        found = _evaluate(env, nodes.Template([nodes.Assign(nodes.Name(_VALUE, "store"), expr)], lineno=expr.lineno))
        if found:
            problems.append(found)
    return problems


def check_template(env: SyncEnvironment, source: str, *, names: tuple[str, ...],
                   variables: Mapping[str, Any]) -> tuple[nodes.Template | None, list[tuple[int, str]]]:
    """Parse and check one template: syntax, filters, the names it uses, and the limits its constant parts exceed.

    Returns the AST (``None`` when it does not compile) and problems as (template line, message).
    """
    try:
        ast = env.parse(source)
        env.compile(ast)
    except TemplateAssertionError as exc:
        message = exc.message or str(exc)
        found = re.search(r"No (filter|test) named '([^']+)'", message)
        if found:
            table = env.filters if found.group(1) == "filter" else env.tests
            message = f"unknown {found.group(1)} '{found.group(2)}'" + _did_you_mean(found.group(2), list(table))
        return None, [(exc.lineno or 1, message)]
    except TemplateSyntaxError as exc:
        return None, [(exc.lineno or 1, f"template syntax: {exc.message}")]
    problems: list[tuple[int, str]] = []
    allowed = set(names) | set(env.globals)
    undeclared = meta.find_undeclared_variables(ast)
    for name in sorted(undeclared):
        if name not in allowed:
            line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == name), 1)
            problems.append((line, f"unknown name '{name}'" + _did_you_mean(name, sorted(names))
                             + f"; a template can use {', '.join(names)}"))
    if "vars" in names:
        for attr, line in attribute_uses(ast, "vars"):
            if attr not in variables:
                known = f"; vars defines {', '.join(variables)}" if variables else "; the pipeline defines no vars"
                problems.append((line, f"unknown variable 'vars.{attr}'" + _did_you_mean(attr, list(variables))
                                 + known))
    if "run" in names:
        for attr, line in attribute_uses(ast, "run"):
            if attr not in RUN_FIELDS:
                problems.append((line, f"unknown run field 'run.{attr}'" + _did_you_mean(attr, list(RUN_FIELDS))))
    if "env" in names:
        problems.extend(_env_misuse(ast))
    problems.extend(_secret_file_problems(env, ast))
    problems.extend(_limit_problems(env, ast, undeclared))
    return ast, problems


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    return bool(_SECRET_NAME.search(name))


_SECRET_PARAM = re.compile(
    r"(?i)([?&;][^=&\s#]*(?:token|secret|passw|api[-_]?key|auth|signature|sig)[^=&\s#]*=)[^&\s#'\"]+")
_AUTH_HEADER = re.compile(r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?"
                          r"(?:basic|bearer|token|digest|negotiate|apikey)\s+)[^\s,;'\"}]+")


class Redactor:
    """Replaces known secret values with ``***`` in text and nested data.

    Each secret is masked in the forms it travels in too: URL-encoded (a query string or form),
    JSON-escaped, Base64 (alone, and ``user:password`` as basic auth sends it). Whatever the
    values, the value of an ``Authorization`` header and of a query parameter named like a secret
    (``?api_token=...``) are masked as well, so a server that echoes a request cannot leak them.
    """

    MASK = "***"

    def __init__(self, secrets: set[str] | None = None) -> None:
        self.secrets: set[str] = set()
        self._ordered: list[str] = []
        for value in secrets or ():
            self.add(value)

    def add(self, value: str | None) -> None:
        """Remember a secret and its encoded forms (values under 4 characters would mask ordinary data)."""
        if not value or len(value) < 4:
            return
        forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
                 _b64(value), _b64(value).rstrip("=")}
        self._remember(forms)

    def add_credentials(self, username: str | None, password: str | None) -> None:
        """Remember the basic-auth token of a user name and password (``base64(user:password)``)."""
        if username and password:
            token = _b64(f"{username}:{password}")
            self._remember({token, token.rstrip("="), quote(token, safe="")})

    def _remember(self, forms: set[str]) -> None:
        new = {f for f in forms if len(f) >= 4} - self.secrets
        if new:
            self.secrets |= new
            self._ordered = sorted(self.secrets, key=len, reverse=True)

    def text(self, value: str) -> str:
        """``value`` with every secret masked."""
        for secret in self._ordered:
            if secret in value:
                value = value.replace(secret, self.MASK)
        if "=" in value:
            value = _SECRET_PARAM.sub(lambda m: m.group(1) + self.MASK, value)
        if "uthorization" in value or "UTHORIZATION" in value:
            value = _AUTH_HEADER.sub(lambda m: m.group(1) + self.MASK, value)
        return value

    def data(self, value: Any) -> Any:
        """A copy of nested data with secrets masked in every string."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record a handler emits (the debug log included)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message, mask it, and drop the arguments it was built from."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed log call must not break the run
            message = str(record.msg)
        record.msg = self.redactor.text(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor.text(logging.Formatter().formatException(record.exc_info))
        return True
