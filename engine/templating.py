"""The one sandboxed Jinja environment, template checks, and secrets from the environment.

Templates run in a :class:`~jinja2.sandbox.SandboxedEnvironment` with a strict undefined: a
missing field is an error naming the field (with a did-you-mean), never an empty string. A
template that is a single expression keeps its native type (a number stays a number); any other
template renders to text. Nothing ever guesses a type from text: types come from filters.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import TemplateAssertionError
from jinja2.idtracking import VAR_LOAD_RESOLVE
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from engine.filters import FILTERS

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


class EnvView(Mapping[str, str]):
    """``env`` in templates: the process environment, where ``NAME_FILE`` names a file holding NAME."""

    def __getitem__(self, name: str) -> str:
        value = os.environ.get(name)
        if value is not None:
            return value
        path = os.environ.get(f"{name}_FILE")
        if path:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


class FieldAccessCodeGenerator(CodeGenerator):
    """Compiles ``name.field`` on a plain ``dict`` to an inline key lookup.

    Reading a field of a record is most of what a mapping does; going through the environment's
    ``getattr`` costs a Python call per field and record. The inline form reads only dictionary
    keys (data, never attributes), so the sandbox has nothing to check; anything that is not a
    plain dict holding the key still takes the sandboxed ``environment.getattr``.
    """

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


class SyncEnvironment(SandboxedEnvironment):
    """The sandbox, with a fast path for reading a field of a plain record ``dict``.

    For a ``dict``, a key wins over a method of the same name (``record.items`` is the column
    ``items`` when there is one), as a mapping's data is what an integrator means.
    """

    code_generator_class = FieldAccessCodeGenerator

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
                return self.undefined(hint=f"environment variable '{attribute}' is not set")
        return super().getattr(obj, attribute)


def make_environment(base_dir: Path | None = None,
                     on_secret: Callable[[str], None] | None = None) -> SyncEnvironment:
    """The sandboxed environment with the engine's filters and globals."""
    env = SyncEnvironment(undefined=MissingValue, autoescape=False, keep_trailing_newline=False)
    env.filters.update(FILTERS)
    root = base_dir or Path.cwd()

    def secret_file(path: str) -> str:
        """The content of a secret file (path relative to the pipeline), without its final newline."""
        value = (root / path).read_text(encoding="utf-8").rstrip("\r\n")
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


def check_template(env: SyncEnvironment, source: str, *, names: tuple[str, ...],
                   variables: Mapping[str, Any]) -> tuple[nodes.Template | None, list[tuple[int, str]]]:
    """Parse and check one template: syntax, filters, and the names it uses.

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
    for name in sorted(meta.find_undeclared_variables(ast)):
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
    return ast, problems


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    return bool(_SECRET_NAME.search(name))


class Redactor:
    """Replaces known secret values with ``***`` in text and nested data."""

    MASK = "***"

    def __init__(self, secrets: set[str] | None = None) -> None:
        self.secrets: set[str] = set()
        for value in secrets or ():
            self.add(value)

    def add(self, value: str | None) -> None:
        """Remember a secret (values shorter than 4 characters would mask ordinary data)."""
        if value and len(value) >= 4:
            self.secrets.add(value)

    def text(self, value: str) -> str:
        """``value`` with every secret masked."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, self.MASK)
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
