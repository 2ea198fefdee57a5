"""The columnar mapping gives exactly what the row path gives, or sends the row to the row path.

Three paths are compared on every row: the Jinja path (``CompiledMapping._render``), the generated
Python of :mod:`engine.fast_mapping` where the mapping has one (``map`` tries it first), and the
Arrow kernels of :mod:`engine.arrow_mapping`. Where the Arrow mapping produces a row, the row path
must produce the same record, value for value and type for type (compared as ``repr``: a
``Decimal('1.5')`` is not a ``Decimal('1.50')``), and the same key; where the row path would
fail, the Arrow mapping must have sent the row to it. The rows are the shipped samples' data and
a generated corpus of 10,000 rows of blank cells, nulls, unicode (accents, ß, Turkish i, emoji,
NBSP and other white space), awkward numbers and dates.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aljex_data
import pyarrow as pa
import pytest
from conftest import REPO

from engine.adapters.csv_file import CsvConfig, read_csv
from engine.api import load
from engine.arrow_mapping import KEY_COLUMN, ROW_PATH, ArrowMapping, arrow_refusal, compile_arrow
from engine.errors import RecordError
from engine.interfaces import RunInfo
from engine.limits import MAX_VALUE
from engine.mapping import CompiledMapping, FieldTemplate, MappedRecord
from engine.runner import Engine
from engine.templating import is_template, make_environment

RUN = RunInfo("run1", datetime(2026, 11, 24, 6, 0, tzinfo=UTC), "2026-11-23")
ENV_NAMES = ("BENCH_INPUT", "BENCH_DB", "ALJEX_SFTP_HOST", "ALJEX_SFTP_PORT", "ALJEX_SFTP_USER",
             "ALJEX_SFTP_PASSWORD", "ALJEX_SFTP_DIRECTORY", "ALJEX_LIVE_PASSWORD", "SOURCE_USERNAME")


# --- helpers ---------------------------------------------------------------------------------------


def rows_of(text: str) -> list[dict[str, Any]]:
    """CSV text as records, the way the CSV and SFTP sources read it."""
    return [r for r in read_csv(io.StringIO(text.lstrip("\ufeff"), newline=""), CsvConfig(path="x"), "x")
            if isinstance(r, dict)]


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows of one shape as a table of text columns (None as null)."""
    columns = list(rows[0]) if rows else []
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})


def shapes(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by their set of fields (a table has one)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return list(groups.values())


def damaged(records: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Copies with one field emptied, garbled or removed."""
    out = []
    for record in records:
        for field in list(record)[:6]:
            out.append({**record, field: ""})
            out.append({**record, field: rng.choice(["abc", "12.5x", "  ", "0007", "3/19/2015 4:42:50 PM", "-0.00"])})
            out.append({k: v for k, v in record.items() if k != field})
    return out


def row_path(mapping: CompiledMapping, row: dict[str, Any]) -> tuple[str, str] | RecordError:
    """(key, repr of the values) by the row path, checked against the Jinja path; or its error."""
    try:
        mapped = mapping.map(dict(row))
    except RecordError as exc:
        return exc
    assert mapped is not None
    if mapping._fast is not None:  # else map() was the Jinja path itself
        rendered = mapping._render(dict(row))
        assert rendered is not None and repr(rendered[0]) == repr(mapped.values), f"Jinja and generated differ: {row}"
    return mapped.key, repr(mapped.values)


def compare(mapping: CompiledMapping, rows: list[dict[str, Any]]) -> int:
    """Arrow against the row path on every row (of any shapes); returns how many rows Arrow mapped."""
    arrow = compile_arrow(mapping)
    assert arrow is not None, arrow_refusal(mapping)
    produced = 0
    for group in shapes(rows):
        table = table_of(group)
        out = arrow.map_table(table)
        assert out.num_rows == len(group)
        assert out.column_names[-2:] == [KEY_COLUMN, ROW_PATH]
        fallback = out.column(ROW_PATH).to_pylist()
        keys = out.column(KEY_COLUMN).to_pylist()
        values = out.drop_columns([KEY_COLUMN, ROW_PATH]).to_pylist()
        expected = [row_path(mapping, row) for row in group]
        for i, row in enumerate(group):
            if not fallback[i]:
                produced += 1
                assert not isinstance(expected[i], RecordError), \
                    f"the row path fails ({expected[i]}) where Arrow mapped {row}"
                assert (keys[i], repr(values[i])) == expected[i], f"Arrow and the row path differ for {row}"
        # records(): Arrow's rows as mapped, the others by the row path (its value or its error); on a sample
        for i, got in enumerate(arrow.records(table.slice(0, 200), out.slice(0, 200))):
            if isinstance(expected[i], RecordError):
                assert isinstance(got, RecordError) and got.message == expected[i].message
            else:
                assert isinstance(got, MappedRecord) and (got.key, repr(got.values)) == expected[i]
    return produced


def compile_pipeline(pipeline: Path) -> dict[str, Any]:
    """Every sync's mapping, as a run compiles it."""
    loaded = load(pipeline)
    engine = Engine(loaded, state_path=":memory:", dry_run=True)
    try:
        return {name: engine.mapping(sync, RUN) for name, sync in loaded.syncs.items()}
    finally:
        engine.close()


def mapping_of(fields: dict[str, Any], *, key: tuple[str, ...] = ("id",), key_template: str | None = None,
               variables: dict[str, Any] | None = None) -> CompiledMapping:
    """A mapping of ``fields`` (dotted names nest; a non-text value is a constant)."""
    templates = [FieldTemplate(tuple(name.split(".")), source, f"m:{i}", is_template(source))
                 for i, (name, source) in enumerate(fields.items())]
    return CompiledMapping(make_environment(), templates, key_fields=key,
                           key_template=(key_template, "m:key") if key_template else None, filter_template=None,
                           context={"vars": variables or {"timezone": "America/New_York"}, "env": {}, "run": RUN})


# --- the shipped mappings ---------------------------------------------------------------------------

PIPELINES = sorted([*(p for p in (REPO / "samples").rglob("pipeline.yml")), REPO / "benchmarks/loads_pipeline.yml",
                    REPO / "benchmarks/http_pipeline.yml"])


@pytest.fixture(scope="module")
def shipped() -> Iterator[dict[str, dict[str, Any]]]:
    """Every shipped pipeline's mappings by its path (relative to the repository), compiled once.

    The environment variables stay set while the module runs: ``env.X`` is read when a mapping is translated.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_NAMES:
            patch.setenv(name, "x")
        yield {p.relative_to(REPO).as_posix(): compile_pipeline(p) for p in PIPELINES}


REFUSED = {
    "samples/autofy/provision/pipeline.yml:tenants": "the output Credentials[0].UserName is inside a list",
    "samples/dsync/connector/pipeline.yml:product": "inventory.qty: a CondExpr expression is not translated",
    "samples/dsync/push-products/pipeline.yml:orders": "gift_message: a CondExpr expression is not translated",
    "samples/isync/orders/pipeline.yml:orders": "a GroupedMapping is not translated",
    "samples/isync/orders/pipeline.yml:credit_notes": "a GroupedMapping is not translated",
    "samples/isync/orders/pipeline.yml:order_status": "lines: the filter 'length' is not translated",
    "samples/weavy/erp-to-crm/pipeline.yml:customers": "contacts: the filter 'from_json' is not translated",
}
"""The shipped syncs the columnar mapping refuses, and why; every other one it must accept."""


def test_which_shipped_mappings_compile(shipped: dict[str, dict[str, Any]]) -> None:
    seen: dict[str, str | None] = {}
    for pipeline, mappings in shipped.items():
        for name, mapping in mappings.items():
            seen[f"{pipeline}:{name}"] = arrow_refusal(mapping)
    refused = {where: reason for where, reason in seen.items() if reason is not None}
    assert {k: v.split(" (")[0] for k, v in refused.items()} == REFUSED
    assert len(seen) - len(refused) >= 30  # the Aljex files, the quick start, the benchmarks, Weavy, iSync...


def test_quickstart(shipped: dict[str, dict[str, Any]]) -> None:
    mapping = shipped["samples/quickstart/pipeline.yml"]["customers"]
    records = rows_of((REPO / "samples/quickstart/customers.csv").read_text(encoding="utf-8"))
    assert compare(mapping, records) == len(records)
    broken = damaged(records, random.Random(1))
    assert 0 < compare(mapping, broken) < len(broken)


@pytest.mark.parametrize("sample", ["morning", "live"])
def test_aljex(sample: str, shipped: dict[str, dict[str, Any]]) -> None:
    mappings = shipped[f"samples/aljex/{sample}/pipeline.yml"]
    checked = 0
    for spec in aljex_data.files():
        if spec.table not in mappings:
            continue
        records = [r for day in range(aljex_data.DAYS) for r in rows_of(aljex_data.export_text(spec, day).decode())]
        # A record dated on a day the clocks change is the row path's; the others are Arrow's.
        assert compare(mappings[spec.table], records) >= 0.8 * len(records), spec.name
        compare(mappings[spec.table], damaged(records[:20], random.Random(2)))
        checked += 1
    assert checked >= 4


def test_benchmark_loads(shipped: dict[str, dict[str, Any]]) -> None:
    from benchmarks.generate import COLUMNS, make_row

    mapping = shipped["benchmarks/loads_pipeline.yml"]["loads"]
    rng = random.Random(7)
    records = [dict(zip(COLUMNS, make_row(rng, n), strict=True)) for n in range(1, 2001)]
    assert compare(mapping, records) == len(records)
    assert compare(mapping, damaged(records[:50], rng)) > 0


def test_other_shipped_mappings_over_the_corpus(shipped: dict[str, dict[str, Any]]) -> None:
    """Every other accepted shipped mapping, its columns filled from the corpus's pools."""
    rng = random.Random(11)
    done = 0
    for pipeline, mappings in shipped.items():
        if pipeline.startswith(("samples/aljex/", "samples/quickstart/", "benchmarks/")):
            continue
        for mapping in mappings.values():
            arrow = compile_arrow(mapping)
            if arrow is None:
                continue
            columns = sorted(arrow.columns)
            rows = [{c: (f"K{n}" if i == 0 else any_value(rng)) for i, c in enumerate(columns)} for n in range(300)]
            compare(mapping, rows)
            done += 1
    assert done >= 8


# --- a generated corpus ----------------------------------------------------------------------------

TEXTS = ["", " ", "   ", "\t", "\xa0", "Québec", "  Québec  ", "straße", "STRASSE", "ß", "ǅemal", "İstanbul", "ısı",
         "ﬁle", "ŉ", "ΣΑΣ", "σας", "😀 emoji", "👍🏽", "\xa0nbsp\xa0", "\u2003em\u2003space\u2003", "\x1cfs\x1f",
         "tab\tin", "line\nbreak", "\r\n", "\u200bzero width", "\u3000ideographic\u3000", "\x85next", "MiXeD CaSe",
         "x-trim-x", "-x-", "12 34 5", "١٢٣", "²³", "Ⅻ", "None", "none", "A", "a", "i", "I", "\u212a", "K", "0", "-5",
         "+7", "  lead", "trail  ", "a  b\t\tc", "Ǆ", "ﬀ", "ᾳ", "ǰ"]
NUMBERS = ["0", "-0", "+0", "-0.00", "0.00", "-0.001", "-0.004", "-0.005", "0.005", "0.015", "1e3", "1E-2", " 12 ",
           "\xa012\xa0", "\u200912.5", "12.345", "12.355", "-12.345", "12.5", "12.0", "12.", ".5", "-.5", "+.5", "5.",
           "007", "0.1", "1,234.50", "1,2,3", ",5", "$5", "$-5", "-$5", "(5.25)", "$(5)", "($5)", "()", "(", "$",
           "$$5", "abc", "", "  ", "12.5x", "1_000", "١٢", "NaN", "nan", "inf", "-Infinity", "99999999999999999999999",
           "123456789012345678", "1234567890123456", "12345678901234567", "9999999999999999.995",
           "0.99999999999999999", "1.23456789012345678901", "--5", "+-5", "5-", ".", "-", "+", "1e400", "1e-400",
           "9" * 40, "0." + "0" * 30 + "1", "12.00000", "1.5e1", "1.2.3", "\x1c12", "12\x1f", "\x1c", "\u200b1",
           "1\u3000", "\x85-1.5"]
CODES = ["A", "I", "H", " A ", "a", "i", "", " ", "X", "\xa0I\xa0", "Ä", "M", "-12", "+5", "12", "ß", "Z", "m",
         "pending", " Approved ", "APPROVED", "None", "😀"]
COUNTS = ["0", "-0", "-0.00", "007", " 12 ", "\xa012\u3000", "1,000", "$5", "(5)", "12.0", "12.000", "12.5", "1e3", "x",
          "", "  ", "１２", "1_000", "9223372036854775807", "99999999999999999999", "999999999999999999", "-18", "+18",
          "12.", ".0", "0.50"]
FLAGS = ["Y", "n", "yes", "TRUE", " on ", "0", "1", "", "  ", "maybe", "\u212a", "Off", "F", "t\xa0", "ｙｅｓ", "true!"]
DATE_GARBAGE = ["13/45/2020 1:00:00 PM", "2/30/2020 1:00:00 PM", "2/29/2023 1:00:00 PM", "2/29/2024 1:00:00 PM",
                "0/1/2020 1:00:00 PM", "1/1/0000 1:00:00 AM", "1/1/0999 1:00:00 AM", "12/31/9999 11:59:59 PM",
                "1/2/2020 13:00:00 PM", "1/2/2020 0:00:00 AM", "1/2/2020 12:00:00 AM", "1/2/2020 12:00:00 pm",
                "1/2/2020 1:02:03 PMx", "1/2/2020  1:02:03 PM", " 1/2/2020 1:02:03 PM ", "1/2/2020\t1:02:03\nPM",
                "1/2/2020 1:02:60 PM", "1/2/2020 1:02:61 PM", "1/ 2/2020 1:02:03 PM", "٢/3/2020 1:02:03 PM",
                "3/10/2024 2:30:00 AM", "3/10/2024 1:59:59 AM", "3/10/2024 3:00:00 AM", "11/3/2024 1:30:00 AM",
                "11/3/2024 12:59:59 AM", "11/3/2024 2:00:00 AM", "3/19/2015 4:42:50 PM", "1/2/20 1:02:03 PM",
                "01/02/2020 01:02:03 PM", "1/2/2020 1:2:3 PM", "", "  ", "abc", "1/2/2020", "1/2/2020 1:02:03",
                "6/15/2045 10:00:00 AM", "6/15/1850 10:00:00 AM", "111/2/2020 1:02:03 PM"]
ISO_GARBAGE = ["2024-01-02", "2024-01-02T10:30", "2024-01-02 10:30:15", "2024-02-30", "2024-02-29", "2023-02-29",
               "2024-13-01", "2024-00-10", "20240102", "2024-01-02T10:30:15Z", "2024-01-02T10:30:15.123",
               "2024-01-02T10:30:15+02:00", "0999-01-01", "0001-01-01", "0000-01-01", "9999-12-31T23:59:59", "",
               " 2024-01-02 ", "2024-01-02T24:00", "2024-01-02T23:60", "2024-01-02T10", "2024-1-2", "2024-W01-1",
               "2024-01-02t10:30", "2024-01-02X10:30", "abc", "2024-01-02T10:30:15.123456"]


def number(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(NUMBERS)
    digits, places = rng.randrange(1, 21), rng.choice([0, 0, 1, 2, 2, 2, 3, 5, 9, 17])
    text = f"{rng.choice(['', '', '', '-', '+'])}{rng.randrange(10 ** digits)}"
    if places:
        text += f".{rng.randrange(10 ** places):0{places}d}"
    pick = rng.random()
    if pick < 0.08:
        text += f"e{rng.randrange(-40, 40)}"
    elif pick < 0.12:
        text = f"({text.lstrip('+-')})"
    elif pick < 0.16:
        text = f"${text}"
    elif pick < 0.2:
        text = f"{rng.randrange(1, 999)},{text.lstrip('+-')}"
    elif pick < 0.24:
        text = rng.choice(["", " ", "\t"]) + text + rng.choice(["", " ", "\xa0"])
    return text


def stamp(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return rng.choice(DATE_GARBAGE)
    moment = datetime(1890, 1, 1) + timedelta(seconds=rng.randrange(0, 160 * 365 * 86400))
    hour = moment.hour % 12 or 12
    month, day = (f"{moment.month:02d}", f"{moment.day:02d}") if rng.random() < 0.2 else (moment.month, moment.day)
    ampm = rng.choice(["AM", "PM", "am", "Pm"]) if rng.random() < 0.1 else ("AM" if moment.hour < 12 else "PM")
    return f"{month}/{day}/{moment.year} {hour}:{moment.minute:02d}:{moment.second:02d} {ampm}"


def iso_day(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(ISO_GARBAGE)
    moment = datetime(1, 1, 1) + timedelta(seconds=rng.randrange(0, 9998 * 365 * 86400))
    if rng.random() < 0.3:
        moment = datetime(1990, 1, 1) + timedelta(seconds=rng.randrange(0, 60 * 365 * 86400))
    form = rng.choice(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"])
    return f"{moment.year:04d}" + moment.strftime(form)[len(str(moment.year)):]


def text(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.6:
        return rng.choice(TEXTS)
    if pick < 0.8:
        return "".join(rng.choice(TEXTS) for _ in range(rng.randrange(2, 4)))
    return "".join(rng.choice("abcXYZ 019-.,$éßİı\xa0\t") for _ in range(rng.randrange(0, 12)))


def count(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(COUNTS)
    return rng.choice(["", " ", "+", "-"]) + str(rng.randrange(10 ** rng.randrange(1, 20)))


MAKERS = {"text": text, "number": number, "code": lambda rng: rng.choice(CODES), "flag": lambda rng: rng.choice(FLAGS),
          "stamp": stamp, "day": iso_day, "count": count}


def any_value(rng: random.Random) -> str | None:
    if rng.random() < 0.03:
        return None
    return MAKERS[rng.choice(list(MAKERS))](rng)


def corpus(size: int = 10_000, seed: int = 5) -> list[dict[str, Any]]:
    """``size`` rows: a unique id and one value of each kind, some of them null."""
    rng = random.Random(seed)
    return [{"id": f"R{n:05d}", **{name: (None if rng.random() < 0.03 else make(rng)) for name, make in MAKERS.items()}}
            for n in range(size)]


CORPUS = corpus()

GENERATED: dict[str, tuple[dict[str, Any], dict[str, Any], float]] = {
    # name: (fields, options, least share of rows Arrow must map)
    "text": ({
        "id": "{{ record.id }}",
        "up": "{{ record.text | upper }}",
        "low": "{{ record.text | lower }}",
        "trimmed": "{{ record.text | trim }}",
        "trim_x": "{{ record.text | trim('x-') }}",
        "clean": "{{ record.text | clean }}",
        "empty": "{{ record.text | null_if_empty }}",
        "digits": "{{ record.text | digits }}",
        "zero": "{{ record.code | zfill(6) }}",
        "as_text": "{{ record.number | string }}",
        "or_na": "{{ record.text | default('n/a', true) }}",
        "plain_default": "{{ record.text | default('n/a') }}",
        "first": "{{ record.text | coalesce(record.code, 'none') }}",
        "label": "{{ record.code ~ '-' ~ record.text | upper }}",
        "line": "{{ record.code }}/{{ record.flag }} ({{ 5 }})",
        "same": "{{ record.code == 'A' }}",
        "differs": "{{ record.code != record.flag }}",
        "status": "{{ record.code | value_map({'A': 'Active', 'I': 'Inactive'}, default='Other') }}",
        "nested.code": "{{ record.code | lower }}",
        "nested.deeper.flag": "{{ record.flag | trim }}",
        "constant": 7,
        "constant_text": "fixed",
        "literal": "{{ 'lit' | upper }}",
    }, {}, 0.95),
    "get": ({"id": "{{ record.id }}", "v": "{{ record.get('text') | null_if_empty }}",
             "w": "{{ record.get('nothing', 'none') | upper }}"}, {}, 0.95),
    "ordering": ({"id": "{{ record.id }}", "less": "{{ record.code < 'M' }}", "ge": "{{ record.text >= record.code }}"},
                 {}, 0.9),
    # The number filters fail on the same text, so one mapping holds them (a row fails as a whole).
    "numbers": ({"id": "{{ record.id }}", "cents": "{{ record.number | cents }}",
                 "money": "{{ record.number | money }}", "money4": "{{ record.number | money(4) }}",
                 "whole": "{{ record.number | decimal(0) }}", "exact": "{{ record.number | decimal }}"}, {}, 0.1),
    "float": ({"id": "{{ record.id }}", "v": "{{ record.number | float }}"}, {}, 0.5),
    "bool": ({"id": "{{ record.id }}", "v": "{{ record.flag | bool }}"}, {}, 0.4),
    "strict_map": ({"id": "{{ record.id }}",
                    "v": "{{ record.code | lower | value_map({'a': 1, 'i': 2, 'h': 3, 'x': 4, 'm': 5, 'z': 6, '': 0, "
                         "'pending': 7, 'approved': 8, 'ä': 9, 'none': 10}) }}"}, {}, 0.6),
    "stamps": ({"id": "{{ record.id }}",
                "day": "{{ record.stamp | parse_date('%m/%d/%Y %I:%M:%S %p') | date }}",
                "formatted": "{{ record.stamp | parse_date('%m/%d/%Y %I:%M:%S %p') "
                             "| format_date('%y%m%d %H%M%S %I%p %f %%') }}",
                "new_york": "{{ record.stamp | parse_date('%m/%d/%Y %I:%M:%S %p', tz=vars.timezone) | iso8601 }}",
                "berlin": "{{ record.stamp | parse_date('%m/%d/%Y %I:%M:%S %p', tz='Europe/Berlin') | iso8601 }}"},
               {}, 0.5),
    "iso": ({"id": "{{ record.id }}", "parsed": "{{ record.day | parse_date }}",
             "formatted": "{{ record.day | format_date('%d.%m.%Y %H:%M') }}", "iso": "{{ record.day | iso8601 }}",
             "plain": "{{ record.day | date }}"}, {}, 0.45),
    "composite_key": ({"id": "{{ record.id }}", "code": "{{ record.code | trim }}"}, {"key": ("id", "code")}, 0.8),
    "int_key": ({"n": "{{ record.count | int }}", "m": "{{ record.count | int | string }}"}, {"key": ("n",)}, 0.6),
    "template_key": ({"id": "{{ record.id }}"}, {"key": (), "key_template": "{{ record.id ~ '/' ~ record.code }}"},
                     0.95),
}


@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_corpus(name: str) -> None:
    fields, options, share = GENERATED[name]
    mapping = mapping_of(fields, **options)
    produced = compare(mapping, CORPUS)
    assert produced >= share * len(CORPUS), f"Arrow mapped only {produced} of {len(CORPUS)} rows"


# --- single behaviours ----------------------------------------------------------------------------


def test_unicode_case_is_python_s() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "up": "{{ record.t | upper }}", "low": "{{ record.t | lower }}"})
    rows = [{"id": str(i), "t": t} for i, t in enumerate(["straße", "İ", "ǅ", "ﬁ", "abc", None])]
    out = ArrowMapping(mapping).map_table(table_of(rows))
    assert out.column(ROW_PATH).to_pylist() == [False] * 6
    assert out.column("up").to_pylist() == ["STRASSE", "İ", "Ǆ", "FI", "ABC", "NONE"]
    assert out.column("low").to_pylist() == ["straße", "i̇", "ǆ", "ﬁ", "abc", "none"]


def test_whitespace_is_python_s() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "t": "{{ record.t | trim }}", "e": "{{ record.t | null_if_empty }}"})
    rows = [{"id": "1", "t": "\x1c\xa0a\u3000\u2029"}, {"id": "2", "t": "\u200b"}, {"id": "3", "t": "\x85\x1f"}]
    out = ArrowMapping(mapping).map_table(table_of(rows))
    assert out.column("t").to_pylist() == ["a", "\u200b", ""]
    assert out.column("e").to_pylist() == ["\x1c\xa0a\u3000\u2029", "\u200b", None]


def test_failing_rows_go_to_the_row_path() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "c": "{{ record.n | cents }}", "d": "{{ record.n | decimal }}"})
    rows = [{"id": "1", "n": "12.345"}, {"id": "2", "n": "abc"}, {"id": "3", "n": "-0.00"}, {"id": "4", "n": "1.5"},
            {"id": "", "n": "1.000"}]
    arrow = ArrowMapping(mapping)
    out = arrow.map_table(table_of(rows))
    # abc fails; -0.00 is Decimal('-0.00'); 1.5 has another scale than the batch's (3 places); the key is empty
    assert out.column(ROW_PATH).to_pylist() == [False, True, True, True, True]
    assert out.column("c").to_pylist() == [1235, None, None, None, None]
    records = list(arrow.records(table_of(rows)))
    assert isinstance(records[1], RecordError) and "is not a decimal number" in records[1].message
    assert isinstance(records[2], MappedRecord) and repr(records[2].values["d"]) == "Decimal('-0.00')"
    assert isinstance(records[3], MappedRecord) and repr(records[3].values["d"]) == "Decimal('1.5')"
    assert isinstance(records[4], RecordError) and records[4].message == "the record key is empty"


def test_a_missing_column_sends_every_row_to_the_row_path() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "x": "{{ record.x | upper }}"})
    arrow = ArrowMapping(mapping)
    table = table_of([{"id": "1"}, {"id": "2"}])
    assert arrow.map_table(table).column(ROW_PATH).to_pylist() == [True, True]
    assert all(isinstance(r, RecordError) and "x" in r.message for r in arrow.records(table))


def test_values_over_the_size_limit_go_to_the_row_path() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "x": "{{ record.a ~ record.a }}"})
    rows = [{"id": "1", "a": "a" * (MAX_VALUE // 2 + 1)}, {"id": "2", "a": "short"}]
    arrow = ArrowMapping(mapping)
    assert arrow.map_table(table_of(rows)).column(ROW_PATH).to_pylist() == [True, False]
    first = next(iter(arrow.records(table_of(rows))))
    assert isinstance(first, RecordError)


def test_a_long_join_goes_to_the_row_path_even_when_a_filter_shortens_it() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "d": "{{ (record.a ~ record.a) | digits }}"})
    rows = [{"id": "1", "a": "x" * (MAX_VALUE // 2) + "1"}, {"id": "2", "a": "x1"}]
    out = ArrowMapping(mapping).map_table(table_of(rows))
    assert out.column(ROW_PATH).to_pylist() == [True, False]
    assert out.column("d").to_pylist() == [None, "11"]


def test_columns_must_be_text() -> None:
    mapping = mapping_of({"id": "{{ record.id }}"})
    with pytest.raises(TypeError, match="not text"):
        ArrowMapping(mapping).map_table(pa.table({"id": pa.array([1, 2])}))


def test_an_empty_table() -> None:
    mapping = mapping_of({"id": "{{ record.id }}", "c": "{{ record.n | cents }}", "k": 1})
    out = ArrowMapping(mapping).map_table(pa.table({"id": pa.array([], pa.string()), "n": pa.array([], pa.string())}))
    assert out.num_rows == 0 and out.column_names == ["id", "c", "k", KEY_COLUMN, ROW_PATH]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"id": "{{ record.id }}", "r": "{{ run.id }}"}, "r: run.id is not translated"),
    ({"id": "{{ record.id }}", "r": "{{ record.id ~ run.watermark }}"}, "r: run.watermark is not translated"),
    ({"id": "{{ record.id }}", "a": "{{ record.name | ascii }}"}, "a: the filter 'ascii' is not translated"),
    ({"id": "{{ record.id }}", "a": "{{ record.name | title }}"}, "a: the filter 'title' is not translated"),
    ({"id": "{{ record.id }}", "a": "{% if record.x %}y{% endif %}"}, "a: a If statement is not translated"),
    ({"id": "{{ record.id }}", "a": "{{ record.x if record.y else 'z' }}"}, "a: a CondExpr expression"),
    ({"id": "{{ record.id }}", "a": "{{ record.n | decimal | string }}"}, "a: the filter 'string' of a decimal"),
    ({"id": "{{ record.id }}", "a": "{{ record.n | money(places) }}"}, "a: a Name argument is not a constant"),
    ({"id": "{{ record.id }}", "a": "{{ record.n | decimal(12) }}"}, "a: decimal() with places other than"),
    ({"id": "{{ record.id }}", "a": "{{ record.d | parse_date('%b %d %Y') }}"}, "a: strptime directive '%b'"),
    ({"id": "{{ record.id }}", "a": "{{ record.d | parse_date('%m/%d') }}"}, "a: strptime format '%m/%d' has no year"),
    ({"id": "{{ record.id }}", "a": "{{ record.d | parse_date(tz='Mars/Olympus') }}"}, "a: the time zone"),
    ({"id": "{{ record.id }}", "a": "{{ record.d | parse_date(tz='UTC') }}"}, "a: a datetime with a time zone"),
    ({"id": "{{ record.id }}", "a": "{{ record.d | iso8601(tz='UTC') }}"}, "a: iso8601(tz=...) is not translated"),
    ({"id": "{{ record.id }}", "a": "{{ record.n | float ~ 'x' }}"}, "a: a float value in text"),
    ({"id": "{{ record.id }}", "a": "{{ record.x | value_map({'a': 1, 'b': 'c'}) }}"}, "a: values of several types"),
    ({"id": "{{ record.id }}", "a": "{{ record.x + 1 }}"}, "a: a Add expression is not translated"),
    ({"id": "{{ record.id }}", "a": "{{ vars.missing }}"}, "a: vars.missing has no value"),
    ({"id": "{{ record.id }}", "a": "{{ record.x | upper('y') }}"}, "a: the filter 'upper': too many"),
    ({"id": "{{ record.id }}", "a": "{{ record.d | parse_date('%Y %y') }}"}, "a: strptime format '%Y %y' has both"),
])
def test_refusals_say_why(fields: dict[str, Any], reason: str) -> None:
    mapping = mapping_of(fields)
    assert compile_arrow(mapping) is None
    refusal = arrow_refusal(mapping)
    assert refusal is not None and refusal.startswith(reason), refusal


def test_a_filter_and_a_group_are_refused(shipped: dict[str, dict[str, Any]]) -> None:
    mapping = CompiledMapping(make_environment(), [FieldTemplate(("id",), "{{ record.id }}", "m:1", True)],
                              key_fields=("id",), key_template=None, filter_template=("{{ record.id }}", "m:f"),
                              context={"vars": {}, "env": {}, "run": RUN})
    assert arrow_refusal(mapping) == "a mapping with filter: is not translated"
    grouped = shipped["samples/isync/orders/pipeline.yml"]["orders"]
    assert arrow_refusal(grouped) == "a GroupedMapping is not translated (only a mapping of fields)"
