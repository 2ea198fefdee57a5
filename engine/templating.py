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

Only Jinja's documented API is used here; what the engine needs beyond it is in
:mod:`engine.jinja_internals`.
"""

from __future__ import annotations

import base64
import difflib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, quote_plus

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateAssertionError
from jinja2.runtime import Context

from engine.filters import ACCEPT_UNDEFINED, BOUNDED, FILTERS, REMOVED, strict
from engine.jinja_internals import BoundedSandbox, MissingValue, check_compiles, constant_limit
from engine.jinja_internals import single_expression as single_expression
from engine.limits import add, check_items, multiply, power, printf

CONTEXT_NAMES = ("record", "vars", "env", "run")
RUN_FIELDS = ("id", "started_at", "watermark")
_MARKERS = ("{{", "{%", "{#")
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def is_template(value: object) -> bool:
    """True for text that holds Jinja markup."""
    return isinstance(value, str) and any(m in value for m in _MARKERS)


_LISTING_METHODS = frozenset({"items", "keys", "values", "get", "copy", "__iter__", "__len__"})
ENV_LOOKUPS_ONLY = ("env answers lookups of one name only (env.NAME or env['NAME']): it cannot be listed, "
                    "iterated, counted or printed")


class EnvView:
    """``env`` in templates: one environment variable by name, where ``NAME_FILE`` names a file holding NAME.

    It answers lookups only: it cannot be iterated, listed, counted or turned into text, so no
    template can copy the environment (and its secrets) into a record, a file name or a message.
    """

    __slots__ = ("aliases", "values")

    def __init__(self, aliases: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None) -> None:
        self.aliases = dict(aliases or {})
        """A profile's names: ``env.NAME`` reads the variable named here instead (secrets per tenant)."""
        self.values = dict(values or {})
        """A profile's own values, which win over the process environment (credentials given to the control API)."""

    def __getitem__(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        name = self.aliases.get(name, name)
        value = os.environ.get(name)
        if value is not None:
            return value
        path = os.environ.get(f"{name}_FILE")
        if path:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        raise KeyError(name)

    def shown(self, name: Any) -> Any:
        """The variable a name reads, as a message names it (a profile's own name for it, when it has one)."""
        return self.aliases.get(name, name) if isinstance(name, str) else name

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


class SyncEnvironment(BoundedSandbox):
    """The sandbox, with a fast path for reading a field of a plain record ``dict``.

    For a ``dict``, a key wins over a method of the same name (``record.items`` is the column
    ``items`` when there is one), as a mapping's data is what an integrator means. The code
    generator and the bounds' hooks compiled code calls are in :mod:`engine.jinja_internals`.
    """

    always_passed = frozenset(CONTEXT_NAMES)  # mappings always pass them; see FieldAccessCodeGenerator.visit_Name
    # Intercepted operators are also never folded at compile time, so `validate` cannot hang on
    # `10 ** 100000000`; check_template evaluates constant expressions through these bounds instead.
    intercepted_binops = frozenset({"**", "*", "+", "%"})
    secret_root: Path | None = None
    """The folder ``secret_file()`` paths are relative to (the pipeline's), set by :func:`make_environment`."""

    # --- Jinja's documented hooks (the others compiled code calls are in BoundedSandbox) -----------

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
            result = super().call_binop(context, operator, left, right)
        return self.charge(context, result)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, EnvView):
            try:
                return obj[argument]
            except (KeyError, TypeError):
                return self.undefined(hint=f"environment variable {obj.shown(argument)!r} is not set")
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            value = obj.get(attribute, _ABSENT)
            if value is not _ABSENT:
                return value
            if not hasattr(dict, attribute):
                return self.undefined(obj=obj, name=attribute)
        elif isinstance(obj, EnvView):
            try:
                return obj[attribute]
            except KeyError:
                listing = f" ({ENV_LOOKUPS_ONLY})" if attribute in _LISTING_METHODS else ""
                return self.undefined(hint=f"environment variable '{obj.shown(attribute)}' is not set{listing}")
        return super().getattr(obj, attribute)


_ABSENT = object()


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



def _limit_problems(env: SyncEnvironment, ast: nodes.Template, undeclared: set[str]) -> list[tuple[int, str]]:
    """The limits a constant part of a template exceeds, found by evaluating it through the same bounds."""
    if not undeclared - _CONSTANT_GLOBALS:
        found = constant_limit(env, ast)
        return [found] if found else []
    problems: list[tuple[int, str]] = []
    for expr in _constant_expressions(ast):
        found = constant_limit(env, expr)
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
        check_compiles(env, ast)
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
