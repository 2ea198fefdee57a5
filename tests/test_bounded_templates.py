"""Bounded templates: no template builds a huge value or loops for hours, at validate or at run time.

The CLI runs as a subprocess with a time limit. Constant blow-ups are located errors at
``validate``; blow-ups that depend on a record are that record's error, the run goes on, and
nothing large reaches the destination.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, rows, syncengine, write_syncs

from engine.errors import RecordError
from engine.interfaces import RunInfo
from engine.limits import MAX_RECORD, MAX_VALUE
from engine.mapping import CompiledMapping, FieldTemplate
from engine.templating import make_environment


def cli(command: str, path: Path, *args: str, timeout: float = 120) -> Result:
    """The CLI run from the pipeline's folder (locations read ``p.yml:LINE``), within a time limit."""
    return syncengine(command, path.name, *args, cwd=path.parent, timeout=timeout)


CONSTANT = {
    "power": ("{{ 10 ** 100000000 }}", "'**' would make a number of about 332,192,809 bits; the limit is 8,192"),
    "format_width": ("{{ '{:>2000000000}'.format('x') }}",
                     "format() with a width or precision of 2000000000; the limit is 1,000,000"),
    "printf_width": ("{{ '%2000000000s' | format('x') }}",
                     "'%' with a width or precision of 2000000000; the limit is 1,000,000"),
    "center": ("{{ 'x' | center(2000000000) }}", "center with a width of 2,000,000,000; the limit is 1,000,000"),
    "ljust": ("{{ 'x'.ljust(2000000000) }}", "ljust() with a width of 2,000,000,000; the limit is 1,000,000"),
    "zfill": ("{{ '7' | zfill(2000000000) }}", "zfill with a width of 2,000,000,000; the limit is 1,000,000"),
    "indent": ("{{ 'ab' | indent(2000000000) }}", "indent with a width of 2,000,000,000; the limit is 1,000,000"),
    "wordwrap": ("{{ 'a b c' | wordwrap(1, wrapstring='x' * 600000) }}",
                 "wordwrap would make a text of 1,200,003 characters; the limit is 1,000,000"),
    "repeat": ("{{ 'ab' * 10**9 }}", "'*' would make a text of 2,000,000,000 characters; the limit is 1,000,000"),
    "replace": ("{{ ('x' * 1000) | replace('x', 'x' * 1000000) }}",
                "replace would make a text of 1,000,000,000 characters; the limit is 1,000,000"),
    "range": ("{% for i in range(10**9) %}{{ record.id }}{% endfor %}",
              "range() would make 1,000,000,000 items; the limit is 100,000"),
    "loops": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
              "the template ran more than 100,000 loop iterations or macro calls in one evaluation; "
              "the limit is 100,000"),
    "output": ("{% for i in range(100) %}{{ 'x' * 100000 }}{% endfor %}",
               "the template makes a text of 10,000,000 characters; a value may have at most 1,000,000"),
}


def test_constant_blowups_are_located_errors_at_validate(tmp_path: Path) -> None:
    fields = {"id": "{{ record.id }}", **{name: text for name, (text, _) in CONSTANT.items()}}
    path, line = write_syncs(tmp_path, {"t": fields})
    started = time.monotonic()
    result = cli("validate", path, timeout=60)
    assert result.code == 2, result.text
    assert time.monotonic() - started < 30
    for name, (_, message) in CONSTANT.items():
        column = len(f"        {name}: ") + 1
        assert f"p.yml:{line[f't.{name}']}:{column}: syncs.t.mapping.fields.{name}: {message}" in result.err, name
    assert f"{len(CONSTANT)} problems found; nothing was run." in result.err
    assert not (tmp_path / "out.db").exists()


GOOD = {"width": 3, "times": 2, "base": 2, "exp": 10, "n": 2, "copies": 1, "chunk": "c", "text": "axb", "by": "y",
        "pad_to": 4, "half": "h", "note": "short"}
BAD: dict[str, tuple[str, dict[str, Any], str]] = {
    # key: (field, what differs from a good record, message)
    "b1": ("pad", {"width": 5_000_000}, "center with a width of 5,000,000; the limit is 1,000,000"),
    "b2": ("zeros", {"pad_to": 3_000_000}, "zfill with a width of 3,000,000; the limit is 1,000,000"),
    "b3": ("twice", {"half": "h" * 600_000}, "'~' would make a text of 1,200,000 characters; the limit is 1,000,000"),
    "b4": ("repeat", {"times": 3_000_000}, "'*' would make a text of 6,000,000 characters; the limit is 1,000,000"),
    "b5": ("power", {"base": 10, "exp": 1_000_000},
           "'**' would make a number of about 3,321,928 bits; the limit is 8,192"),
    "b6": ("loops", {"n": 5000}, "the template ran more than 100,000 loop iterations or macro calls in one "
                                 "evaluation; the limit is 100,000"),
    "b7": ("grown", {"copies": 5000, "chunk": "x" * 1000},
           "the value has 5,000,000 characters; a mapped value may have at most 1,000,000"),
    "b8": ("replaced", {"text": "x" * 1000, "by": "y" * 10_000},
           "replace would make a text of 10,000,000 characters; the limit is 1,000,000"),
}
FAST = {"id": "{{ record.id }}", "pad": "{{ 'x' | center(record.width) }}", "zeros": "{{ '7' | zfill(record.pad_to) }}",
        "twice": "{{ record.half ~ record.half }}", "note": "{{ record.note }}"}
"""Templates the fast path translates: it tries each record first and hands a failing one to Jinja."""
JINJA = {"id": "{{ record.id }}", "repeat": "{{ 'ab' * record.times }}", "power": "{{ record.base ** record.exp }}",
         "loops": "{% for i in range(record.n) %}{% for j in range(record.n) %}.{% endfor %}{% endfor %}",
         "grown": "{% for i in range(record.copies) %}{{ record.chunk }}{% endfor %}",
         "replaced": "{{ record.text | replace('x', record.by) }}"}


def test_blowups_from_a_record_are_record_errors_and_the_run_goes_on(tmp_path: Path) -> None:
    records = [{"id": f"g{i}", **GOOD} for i in range(10)]
    records += [{"id": key, **GOOD, **diff} for key, (_, diff, _) in BAD.items()]
    records[0]["note"] = "n" * 1_500_000  # copied unchanged from the source: not a value a template made
    path, line = write_syncs(tmp_path, {"fast": FAST, "jinja": JINJA}, records)
    result = cli("apply", path)
    assert result.code == 1, result.text
    letters = {(d["sync"], d["key"]): d for d in json.loads(cli("dead-letters", path, "--json").out)}
    for key, (field, _, message) in BAD.items():
        sync = "fast" if field in FAST else "jinja"
        where = f"p.yml:{line[f'{sync}.{field}']}"
        assert f"{sync}: record error: key '{key}', field '{field}' ({where}): {message}" in result.out, key
        letter = letters.pop((sync, key))
        assert (letter["field"], letter["location"]) == (field, where)
    assert letters == {}
    assert "fast: 15 creates, 0 updates, 0 deletes, 3 errors" in result.out
    assert "jinja: 13 creates, 0 updates, 0 deletes, 5 errors" in result.out
    db = tmp_path / "out.db"
    assert rows(db, "SELECT max(length(pad)), max(length(zeros)), max(length(twice)), max(length(note)) "
                    "FROM fast") == [(3, 4, 2, 1_500_000)]
    assert rows(db, "SELECT max(length(repeat)), max(length(loops)), max(length(grown)), max(length(replaced)) "
                    "FROM jinja") == [(4, 4, 1, 3)]
    assert rows(db, "SELECT DISTINCT power FROM jinja") == [(1024,)]


RUN = RunInfo("run1", datetime(2026, 11, 24, 6, 0, tzinfo=UTC), "2026-11-23")


@pytest.mark.parametrize("size", [10, MAX_VALUE - 1, MAX_VALUE, MAX_VALUE + 1, MAX_RECORD // 4])
def test_the_fast_path_and_jinja_agree_on_output_sizes(size: int) -> None:
    fields = [FieldTemplate(("id",), "{{ record.id }}", "m:1", True),
              FieldTemplate(("copy",), "{{ record.x }}", "m:2", True),
              FieldTemplate(("kept",), "{{ record.x | null_if_empty }}", "m:3", True),
              FieldTemplate(("made",), "{{ record.x | upper }}", "m:4", True),
              FieldTemplate(("maybe",), "{{ record.y | lower }}", "m:5", True),
              FieldTemplate(("joined",), "{{ record.y ~ '' }}", "m:6", True)]
    mapping = CompiledMapping(make_environment(), fields, key_fields=("id",), key_template=None,
                              filter_template=None, context={"vars": {}, "env": {}, "run": RUN})
    assert mapping._fast is not None
    for record in ({"id": "a", "x": "x" * size, "y": "y"}, {"id": "a", "x": "x", "y": "y" * (size // 2)},
                   {"id": "a", "x": "x" * size, "y": "y" * (size // 2)}):
        try:
            fast: Any = mapping._fast(dict(record))
        except Exception:  # noqa: BLE001 - the Jinja path decides such a record
            fast = None
        try:
            slow: Any = mapping._render(dict(record))
        except Exception as exc:  # noqa: BLE001 - compared below
            slow = exc
        if fast is not None:
            assert repr(fast) == repr(slow)
        # Counted: what templates made (upper, lower, ~); the copies of record.x are not.
        made = [len(record["x"]), len(record["y"]), len(record["y"])]
        assert isinstance(slow, Exception) == (max(made) > MAX_VALUE or sum(made) > MAX_RECORD), record


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("template", "value", "expected"), [
    ("{{ record.v | int }}", "1e1000000", "more than 4,300 digits before the decimal point"),
    ("{{ record.v | cents }}", "1e100000", "more than 4,300 digits before the decimal point"),
    ("{{ record.v | decimal }}", "9e999999999", "more than 4,300 digits before the decimal point"),
    ("{{ record.v | money }}", "1" * 40, "too many digits to keep 2 decimal places"),
])
def test_short_text_for_a_huge_number_is_a_located_error_not_a_hang(template: str, value: str,
                                                                       expected: str) -> None:
    """'1e1000000' is nine characters for a million digits: refused at once, on both paths, as a field error."""
    env = make_environment(Path.cwd())
    mapping = CompiledMapping(env, [FieldTemplate(("id",), "{{ record.id }}", "m.yml:1:1", True),
                                    FieldTemplate(("n",), template, "m.yml:2:4", True)],
                              key_fields=("id",), key_template=None, filter_template=None, context={})
    assert mapping._fast is not None
    for path in (mapping.map, mapping._render):  # the engine's way (generated code first), and Jinja's alone
        started = time.monotonic()
        with pytest.raises(RecordError) as caught:
            path({"id": "1", "v": value})
        assert time.monotonic() - started < 2
        assert expected in caught.value.message and caught.value.location == "m.yml:2:4", caught.value
