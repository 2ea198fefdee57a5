"""Mappings: native types, the filters, strictness, the sandbox, and errors that name the field."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from engine.errors import RecordError
from engine.interfaces import RunInfo
from engine.mapping import CompiledMapping, FieldTemplate
from engine.templating import make_environment

RUN = RunInfo("r1", datetime(2026, 11, 24, 6, 30, tzinfo=UTC), "2026-11-23")


def mapping(fields: dict[str, Any], *, key: tuple[str, ...] = ("id",), filter_: str | None = None,
            variables: dict[str, Any] | None = None) -> CompiledMapping:
    """A compiled mapping of flat fields."""
    leaves = [FieldTemplate((name, ), src, f"m.yml:{i}", isinstance(src, str) and "{" in src)
              for i, (name, src) in enumerate(fields.items(), 1)]
    return CompiledMapping(make_environment(), leaves, key_fields=key, key_template=None,
                           filter_template=(filter_, "m.yml:99") if filter_ else None,
                           context={"vars": variables or {}, "env": {}, "run": RUN})


def one(template: str, record: dict[str, Any] | None = None, **kw: Any) -> Any:
    """The value of one field template for one record."""
    result = mapping({"id": "{{ 'k' }}", "v": template}, **kw).map(record or {})
    assert result is not None
    return result.values["v"]


@pytest.mark.parametrize(("template", "record", "expected"), [
    ("{{ record.n | int }}", {"n": "0042"}, 42),
    ("{{ record.n }}", {"n": "0042"}, "0042"),  # identifiers with leading zeros stay text
    ("{{ record.a | cents }}", {"a": "12.345"}, 1235),
    ("{{ record.a | cents }}", {"a": "$1,234.50"}, 123450),
    ("{{ record.a | money }}", {"a": "(3.5)"}, Decimal("-3.50")),
    ("{{ record.a | decimal(1) }}", {"a": "2.25"}, Decimal("2.3")),
    ("{{ record.d | null_if_empty }}", {"d": "  "}, None),
    ("{{ record.a | coalesce(record.b, 'x') }}", {"a": "", "b": None}, "x"),
    ("{{ record.s | value_map({'A': 'Active'}) }}", {"s": "A "}, "Active"),
    ("{{ record.s | value_map({'A': 'Active'}, default='Other') }}", {"s": "Z"}, "Other"),
    ("{{ record.t | clean }}", {"t": "  two\n lines  "}, "two lines"),
    ("{{ record.t | digits }}", {"t": "(732) 357-8700"}, "7323578700"),
    ("{{ record.t | ascii }}", {"t": "Bélanger"}, "Belanger"),
    ("{{ record.t | upper }}-{{ record.u }}", {"t": "tx", "u": 5}, "TX-5"),
    ("{{ record.items }}", {"items": [1, 2]}, [1, 2]),  # a key wins over the dict method
    ("{{ record.f | bool }}", {"f": "Y"}, True),
    ("{{ record.d | parse_date('%m/%d/%Y %I:%M:%S %p') | iso8601 }}", {"d": "3/19/2015 4:42:50 PM"},
     "2015-03-19T16:42:50"),
    ("{{ record.d | parse_date(tz='America/New_York') | iso8601(tz='UTC') }}", {"d": "2026-01-05T08:00:00"},
     "2026-01-05T13:00:00+00:00"),
    ("{{ record.d | date('%d.%m.%Y') }}", {"d": "2026-01-05"}, "05.01.2026"),
    ("{{ run.started_at | date('%Y%m%d') }}", {}, "20261124"),
    ("{{ run.watermark }}", {}, "2026-11-23"),
    ("{{ record.x | default('none') }}", {}, "none"),
])
def test_filters_and_native_types(template: str, record: dict[str, Any], expected: Any) -> None:
    value = one(template, record)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("template", "record", "message"), [
    ("{{ record.n | int }}", {"n": "12.5"}, "'12.5' is not a whole number"),
    ("{{ record.n | int }}", {"n": "abc"}, "'abc' is not a decimal number"),
    ("{{ record.a | cents }}", {"a": "ten"}, "'ten' is not a decimal number"),
    ("{{ record.s | value_map({'A': 'Active'}) }}", {"s": "Q"}, "'Q' is not in the value map ('A')"),
    ("{{ record.d | parse_date('%m/%d/%Y') }}", {"d": "2015-03-19"}, "'2015-03-19' is not a date in format '%m/%d/%Y'"),
    ("{{ record.shipdate }}", {"ship_date": "x"}, "no field 'shipdate' (did you mean 'ship_date'?)"),
    ("{{ record.shipdate | upper }}", {"ship_date": "x"}, "no field 'shipdate' (did you mean 'ship_date'?)"),
    ("{{ record.d | timezone('Mars/Olympus') }}", {"d": "2026-01-01"}, "unknown time zone 'Mars/Olympus'"),
])
def test_bad_values_are_record_errors_naming_the_field(template: str, record: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError) as caught:
        one(template, record)
    assert caught.value.field == "v" and caught.value.key == "k" and caught.value.location == "m.yml:2"
    assert caught.value.message == message


def test_the_sandbox_blocks_internals() -> None:
    with pytest.raises(RecordError) as caught:
        one("{{ record.__class__.__mro__ }}", {})
    assert "unsafe" in caught.value.message or "no field" in caught.value.message
    with pytest.raises(RecordError):
        one("{{ ''.__class__.__subclasses__() }}", {})


def test_filter_skips_records_before_fields_are_computed() -> None:
    m = mapping({"id": "{{ record.id }}", "n": "{{ record.n | int }}"}, filter_="{{ record.status != 'void' }}")
    assert m.map({"id": "1", "n": "not a number", "status": "void"}) is None
    mapped = m.map({"id": "2", "n": "7", "status": "ok"})
    assert mapped is not None and mapped.key == "2" and mapped.values == {"id": "2", "n": 7}


def test_composite_keys_and_constants() -> None:
    m = mapping({"a": "{{ record.a }}", "b": "{{ record.b | int }}", "origin": "csv", "version": 2}, key=("a", "b"))
    mapped = m.map({"a": "x", "b": "3"})
    assert mapped is not None and mapped.key == '["x", 3]'
    assert mapped.values == {"a": "x", "b": 3, "origin": "csv", "version": 2}


def test_fields_that_cannot_be_variables_still_map() -> None:
    m = mapping({"id": "{{ record.id }}", "Ship Date": "{{ record.d }}", "record": "{{ record.id }}"})
    mapped = m.map({"id": "1", "d": "2026-01-01"})
    assert mapped is not None and mapped.values == {"id": "1", "Ship Date": "2026-01-01", "record": "1"}


def test_an_empty_key_is_an_error() -> None:
    with pytest.raises(RecordError) as caught:
        mapping({"id": "{{ record.id }}"}).map({"id": ""})
    assert caught.value.message == "the record key is empty"


def test_keys_that_look_like_null_are_still_keys() -> None:
    m = mapping({"id": "{{ record.id }}"})
    assert [m.map({"id": v}).key for v in ("null", "None", "0")] == ["null", "None", "0"]  # type: ignore[union-attr]
    assert m.map({"id": 0}).key == "0"  # type: ignore[union-attr]


def test_a_method_or_a_generator_is_not_a_value() -> None:
    with pytest.raises(RecordError) as caught:
        one("{{ record.values }}", {"id": "1"})
    assert caught.value.field == "v" and caught.value.message.startswith("the template gives a method, not a value")
    with pytest.raises(RecordError) as caught:
        one("{{ record.xs | batch(2) }}", {"xs": [1, 2, 3]})
    assert caught.value.message == "the template gives an iterator, not a value; add | list"
    with pytest.raises(RecordError):
        one("{{ record.xs | reverse }}", {"xs": [1, 2, 3]})
    assert one("{{ record.xs | reverse | list }}", {"xs": [1, 2, 3]}) == [3, 2, 1]
    assert one("{{ record.xs | batch(2) | list }}", {"xs": [1, 2, 3]}) == [[1, 2], [3]]
    assert one("{{ record.get('x', 'none') }}", {}) == "none"  # calling a method still works


def test_a_failing_key_template_names_the_key() -> None:
    leaves = [FieldTemplate(("v",), "{{ record.v }}", "m.yml:1", True)]
    m = CompiledMapping(make_environment(), leaves, key_fields=(), key_template=("{{ record.nope }}", "p.yml:9"),
                        filter_template=None, context={"vars": {}, "env": {}, "run": RUN})
    with pytest.raises(RecordError) as caught:
        m.map({"v": 1})
    assert (caught.value.field, caught.value.location, caught.value.message) == ("key", "p.yml:9", "no field 'nope'")
