"""Jinja's private internals the engine relies on are still there, with the shape it relies on.

``engine/jinja_internals.py`` is the only module that uses Jinja beyond its documented API (the
compiler, id tracking, runtime internals, ``Template.from_code``, the sandbox's undocumented
methods, some of ``jinja2.filters``). Each check here names one thing that module relies on, so on
a Jinja release that moves it the failure says what changed, instead of a mapping test failing
somewhere far away. ``docs/mappings.md`` ("Upgrading Jinja") says what to do then.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest
from conftest import REPO
from jinja2 import StrictUndefined, nodes, pass_context, pass_environment, pass_eval_context
from jinja2.exceptions import TemplateRuntimeError, UndefinedError

from engine.jinja_internals import CompiledSlots, Slot, passes_jinja_argument, slots_source
from engine.limits import MAX_LOOP_ITERATIONS, LimitError
from engine.templating import make_environment

VERSION = f"Jinja {jinja2.__version__}"
WHERE = "engine/jinja_internals.py relies on it (docs/mappings.md, 'Upgrading Jinja')"


def changed(what: str, detail: str) -> str:
    """The failure message: which Jinja, what changed, and where the engine relies on it."""
    return f"{VERSION} changed {what}: {detail}; {WHERE}"


def lookup(dotted: str) -> Any:
    """``module:attr.attr`` resolved, or a failure naming the first part that is gone."""
    module_name, _, path = dotted.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError:
        pytest.fail(changed(dotted, f"module {module_name} is gone"))
    for part in path.split("."):
        if not hasattr(found, part):
            pytest.fail(changed(dotted, f"{part} is gone"))
        found = getattr(found, part)
    return found


def parameters(function: Callable[..., Any]) -> list[str]:
    """A signature as parameter names, ``*args`` and ``**kwargs`` marked (defaults and annotations left out)."""
    marks = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [marks.get(p.kind, "") + p.name for p in inspect.signature(function).parameters.values()]


# Every private callable the internals module overrides or calls, with the parameters it relies on
# (as in Jinja 3.1.6). An overridden method must keep its parameters, or Jinja calls ours wrongly.
NODE_FRAME = ["self", "node", "frame"]
SIGNATURES: list[tuple[str, list[str]]] = [
    ("jinja2.compiler:CodeGenerator.__init__",
     ["self", "environment", "name", "filename", "stream", "defer_init", "optimized"]),
    ("jinja2.compiler:CodeGenerator.visit", ["self", "node", "*args", "**kwargs"]),
    ("jinja2.compiler:CodeGenerator.visit_Getattr", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_Name", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_For", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_Macro", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_CallBlock", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_Filter", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_Concat", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.visit_Getitem", NODE_FRAME),
    ("jinja2.compiler:CodeGenerator.pop_assign_tracking", ["self", "frame"]),
    ("jinja2.compiler:CodeGenerator._output_child_pre", ["self", "node", "frame", "finalize"]),
    ("jinja2.compiler:CodeGenerator._output_child_post", ["self", "node", "frame", "finalize"]),
    ("jinja2.compiler:CodeGenerator._output_const_repr", ["self", "group"]),
    ("jinja2.compiler:CodeGenerator.temporary_identifier", ["self"]),
    ("jinja2.compiler:CodeGenerator.write", ["self", "x"]),
    ("jinja2.compiler:CodeGenerator.writeline", ["self", "x", "node", "extra"]),
    ("jinja2.compiler:optimizeconst", ["f"]),
    ("jinja2.idtracking:Symbols.ref", ["self", "name"]),
    ("jinja2.idtracking:Symbols.find_load", ["self", "target"]),
    ("jinja2.environment:Environment.compile", ["self", "source", "name", "filename", "raw", "defer_init"]),
    ("jinja2.environment:Environment.make_globals", ["self", "d"]),
    ("jinja2.environment:Template.from_code", ["environment", "code", "globals", "uptodate"]),
    ("jinja2.environment:Template.new_context", ["self", "vars", "shared", "locals"]),
    ("jinja2.environment:Template.get_corresponding_lineno", ["self", "lineno"]),
    ("jinja2.nodes:Node.set_environment", ["self", "environment"]),
    ("jinja2.sandbox:SandboxedEnvironment.call",
     ["_SandboxedEnvironment__self", "_SandboxedEnvironment__context", "_SandboxedEnvironment__obj",
      "*args", "**kwargs"]),
    ("jinja2.sandbox:SandboxedEnvironment.wrap_str_format", ["self", "value"]),
    ("jinja2.sandbox:SandboxedFormatter.__init__", ["self", "env", "**kwargs"]),
    ("jinja2.filters:do_indent", ["s", "width", "first", "blank"]),
    ("jinja2.filters:do_replace", ["eval_ctx", "s", "old", "new", "count"]),
    ("jinja2.filters:sync_do_join", ["eval_ctx", "value", "d", "attribute"]),
    ("jinja2.filters:do_batch", ["value", "linecount", "fill_with"]),
    ("jinja2.filters:sync_do_slice", ["value", "slices", "fill_with"]),
    ("jinja2.filters:do_tojson", ["eval_ctx", "value", "indent"]),
    ("jinja2.filters:make_attrgetter", ["environment", "attribute", "postprocess", "default"]),
]


@pytest.mark.parametrize(("dotted", "expected"), SIGNATURES, ids=[s[0].partition(":")[2] for s in SIGNATURES])
def test_each_private_callable_keeps_its_parameters(dotted: str, expected: list[str]) -> None:
    found = parameters(lookup(dotted))
    assert found == expected, changed(dotted, f"its parameters are ({', '.join(found)}), "
                                              f"were ({', '.join(expected)})")


def test_the_private_values_and_attributes_are_unchanged() -> None:
    assert lookup("jinja2.idtracking:VAR_LOAD_RESOLVE") == "resolve", \
        changed("jinja2.idtracking.VAR_LOAD_RESOLVE", f"it is {lookup('jinja2.idtracking:VAR_LOAD_RESOLVE')!r}")
    finalize = lookup("jinja2.compiler:CodeGenerator._FinalizeInfo")
    assert getattr(finalize, "_fields", None) == ("const", "src"), \
        changed("CodeGenerator._FinalizeInfo", f"its fields are {getattr(finalize, '_fields', None)}")
    env = jinja2.Environment()
    generator = lookup("jinja2.compiler:CodeGenerator")(env, None, None)
    assert isinstance(getattr(generator, "_assign_stack", None), list), \
        changed("CodeGenerator._assign_stack", "a new code generator has no list of assignment sets")
    frame = lookup("jinja2.compiler:Frame")(nodes.EvalContext(env))
    for attr in ("symbols", "toplevel", "block_frame", "loop_frame", "eval_ctx"):
        assert hasattr(frame, attr), changed(f"Frame.{attr}", "it is gone")
    for attr in ("volatile", "autoescape"):
        assert hasattr(frame.eval_ctx, attr), changed(f"EvalContext.{attr}", "it is gone")
    assert hasattr(env, "is_async"), changed("Environment.is_async", "it is gone")
    assert isinstance(inspect.getattr_static(jinja2.Undefined, "_undefined_message"), property), \
        changed("Undefined._undefined_message", "it is no longer a property MissingValue can override")
    assert issubclass(lookup("jinja2.sandbox:SandboxedFormatter"), string.Formatter), \
        changed("SandboxedFormatter", "it is no longer a string.Formatter")
    assert issubclass(lookup("jinja2.exceptions:FilterArgumentError"), TemplateRuntimeError), \
        changed("FilterArgumentError", "it is no longer a TemplateRuntimeError")
    for name in ("Macro", "LoopContext", "Context"):
        assert inspect.isclass(lookup(f"jinja2.runtime:{name}")), changed(f"jinja2.runtime.{name}", "not a class")


def test_the_nodes_the_internals_build_keep_their_fields() -> None:
    expected = {"Template": ("body",), "Output": ("nodes",), "Assign": ("target", "node"),
                "AssignBlock": ("target", "filter", "body"), "If": ("test", "body", "elif_", "else_"),
                "Name": ("name", "ctx"), "Const": ("value",)}
    for name, fields in expected.items():
        found = getattr(getattr(nodes, name, None), "fields", None)
        assert found == fields, changed(f"jinja2.nodes.{name}", f"its fields are {found}, were {fields}")


def test_a_context_takes_fresh_vars_and_the_budget_kept_on_it() -> None:
    template = jinja2.Environment().from_string("{% set x = 1 %}")
    context = template.new_context({"record": 1})
    assert isinstance(getattr(context, "vars", None), dict), changed("Context.vars", "it is no longer a dict")
    assert isinstance(getattr(context, "parent", None), dict), changed("Context.parent", "it is no longer a dict")
    slots: dict[str, Any] = {}
    context.vars = slots
    for _ in template.root_render_func(context):
        pass
    assert slots == {"x": 1}, changed("Context.vars", "a top-level {% set %} no longer writes to the context's vars")
    try:
        context.syncengine_work = None  # type: ignore[attr-defined]
    except AttributeError:
        pytest.fail(changed("Context", "it takes no new attribute (the evaluation's budget is kept on it)"))


def test_the_markers_of_filters_that_want_jinjas_arguments_are_read() -> None:
    def plain(value: Any) -> Any:
        return value

    for decorator in (pass_context, pass_environment, pass_eval_context):
        marked = decorator(lambda *args: None)
        assert passes_jinja_argument(marked), changed(decorator.__name__, "it no longer sets jinja_pass_arg")
    assert not passes_jinja_argument(plain)


def test_the_generated_code_has_the_shape_the_engine_expects() -> None:
    env = make_environment()
    code = slots_source(env, [Slot("x", env.parse("{{ record.x }}")),
                              Slot("t", env.parse("a{{ record.y }}{% for i in record.l %}{{ i ~ '-' }}{% endfor %}"),
                                   text=True)],
                        guard=("keep", env.parse("{{ record.ok }}")))
    expected = {
        "record is read once, from the context's parent, with no undefined test at each use":
            "l_0_record = resolve('record')",
        "a record field is an inline key lookup before the sandbox's getattr":
            "(l_0_record['x'] if l_0_record.__class__ is dict and 'x' in l_0_record "
            "else environment.getattr(l_0_record, 'x'))",
        "each slot is written to the context's vars": "context.vars['x'] = l_0_x",
        "the slots are set only when the guard is true":
            "if (undefined(name='keep') if l_0_keep is missing else l_0_keep):",
        "a loop's items are counted": "environment.loop_items(context, ",
        "text written once is checked only when it is not text":
            ").__class__ is str else environment.output_text(context, ",
        "'~' in a loop is bounded and charged": "environment.charge(context, environment.concat_text((",
        "a text template is its text": "(Markup if context.eval_ctx.autoescape else identity)(concat(",
    }
    for what, snippet in expected.items():
        assert snippet in code, changed("the code it generates", f"{what}: no {snippet!r} in\n{code}")
    assert "exported_vars" not in code, changed("the code it generates", f"exported names are tracked again:\n{code}")


def test_compiled_slots_reuse_one_context_with_a_budget_per_evaluation() -> None:
    env = make_environment()
    loop = "{% for i in range(record.n) %}{% endfor %}"
    compiled = CompiledSlots(env, [Slot("v", env.parse("{{ record.n }}")), Slot("l", env.parse(loop), text=True)],
                             context={"vars": {}, "env": {}, "run": None})
    half = MAX_LOOP_ITERATIONS // 2 + 1
    # Two evaluations under the limit each, over it together: the budget starts again per record.
    assert compiled.run({"n": half}) == {"v": half, "l": ""}
    assert compiled.run({"n": half}) == {"v": half, "l": ""}
    assert compiled.run_with({"record": {"n": 3}}) == {"v": 3, "l": ""}
    with pytest.raises(LimitError):
        compiled.run({"n": MAX_LOOP_ITERATIONS + 1})


def test_the_sandbox_routes_calls_formats_and_undefined_messages_through_the_engine() -> None:
    env = make_environment()

    def render(source: str) -> Any:
        return env.from_string(source).render(record={"adress": "x"})

    with pytest.raises(LimitError, match="loop iterations"):  # macro calls reach SandboxedEnvironment.call
        render(f"{{% macro m() %}}{{% endmacro %}}{{% for i in range({MAX_LOOP_ITERATIONS // 2 + 1}) %}}"
               "{{ m() }}{{ m() }}{% endfor %}")
    with pytest.raises(LimitError, match="loop iterations"):  # a recursive loop's call gets a LoopContext
        render("{% for i in [range(99999)] recursive %}{{ loop(i) if i is iterable }}{% endfor %}")
    with pytest.raises(LimitError):  # str.format is wrapped through wrap_str_format
        render("{{ '{:>2000000000}'.format('x') }}")
    with pytest.raises(UndefinedError, match=r"no field 'address' \(did you mean 'adress'\?\)"):
        render("{{ record.address }}")
    assert issubclass(env.undefined, StrictUndefined)


PRIVATE_MODULES = {"jinja2.compiler", "jinja2.idtracking", "jinja2.filters", "jinja2.utils", "jinja2.optimizer",
                   "jinja2.debug", "jinja2.lexer", "jinja2.parser", "jinja2.visitor", "jinja2.sandbox"}
PUBLIC_RUNTIME = {"Context"}
PRIVATE_ATTRIBUTES = {"from_code", "make_globals", "root_render_func", "new_context", "set_environment",
                      "code_generator_class", "wrap_str_format", "_undefined_message", "get_corresponding_lineno",
                      "jinja_pass_arg"}


def private_uses(path: Path) -> list[str]:
    """Where a module uses Jinja beyond its documented API: private modules, names, built or subclassed nodes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {alias.name for alias in node.names}
            if node.module in PRIVATE_MODULES or node.module == "jinja2.runtime" and names - PUBLIC_RUNTIME \
                    or node.module == "jinja2" and names & {"filters", "compiler", "utils", "idtracking"}:
                found.append(f"{node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_ATTRIBUTES:
            found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "nodes" \
                and node.func.attr[:1].isupper():
            found.append(f"{node.lineno}: builds nodes.{node.func.attr}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "nodes":
                    found.append(f"{node.lineno}: subclasses nodes.{base.attr}")
    return found


def test_no_other_module_uses_jinjas_internals() -> None:
    offenders = {}
    for path in sorted((REPO / "engine").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative != "engine/jinja_internals.py" and (uses := private_uses(path)):
            offenders[relative] = uses
    assert offenders == {}, f"Jinja's internals are used outside engine/jinja_internals.py: {offenders}"
