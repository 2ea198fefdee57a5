"""A mapping as Arrow compute kernels over a batch of raw text columns (the ``arrow`` extra).

:func:`compile_arrow` turns a :class:`~engine.mapping.CompiledMapping` whose every template is in
a small subset into an :class:`ArrowMapping`; :meth:`ArrowMapping.map_table` then maps a whole
``pyarrow.Table`` of text columns (as ``pyarrow.csv`` reads a file with every column typed as
text: an empty cell is ``''``) into the output columns, column by column instead of record by
record. Any template outside the subset makes :func:`compile_arrow` return ``None``;
:func:`arrow_refusal` says why.

The subset: a record column (``record.x``, ``record['x']``, ``record.get('x')``), literals and
``vars``/``env`` values, ``~`` and text around expressions, ``==``/``!=``/``<``... between two
values, and the filters ``upper``, ``lower``, ``trim``, ``string``, ``int``, ``float``, ``bool``,
``cents``, ``decimal``/``money`` (constant places), ``null_if_empty``, ``default`` and
``coalesce`` (of text), ``value_map`` (a constant table), ``clean``, ``digits``, ``zfill``,
``parse_date`` (a constant strptime format or ISO dates, optionally with a constant ``tz``),
``date``/``format_date`` (a constant format) and ``iso8601``. Not translated: ``run.*``, a
mapping with ``filter:``, lists in the output, and any other filter, test, statement or operator.

The values are the row path's own, to the byte once converted back (``to_pylist()``): Python
ints, :class:`~decimal.Decimal` with the row path's exponent, floats, naive datetimes, ``None``.
Where the kernels cannot be sure of that for a row, the row is not guessed: it is marked in the
:data:`ROW_PATH` column and must be mapped by the row path (:meth:`CompiledMapping.map
<engine.mapping.CompiledMapping.map>`), which gives its value or its located record error.
:meth:`ArrowMapping.records` does exactly that. A row goes to the row path when

* a filter would fail on it (``cents`` of ``'abc'``, an unknown ``value_map`` code, a date that
  does not match its format): the row path reports the record error;
* its text is outside what the kernels parse exactly: numbers with exponents, underscores or
  non-ASCII digits, or more than 18 digits; dates in non-ASCII text, ISO forms other than
  ``YYYY-MM-DD[(T| )HH:MM[:SS]]``, years before 1000 written with ``%Y``;
* the value would be a negative decimal zero (``Decimal('-0.00')``, which Arrow cannot hold), or a
  decimal with another exponent than the batch's most common one for that column (an Arrow column
  has one scale; ``Decimal('1.5')`` and ``Decimal('1.50')`` are different values here);
* a time zone's offset for the row's day is not one constant offset in Python's :mod:`zoneinfo`
  (a day with a transition) or Arrow's time zone database disagrees with it (Arrow does not
  apply the rules after 2037);
* the values a template made are together over :data:`~engine.limits.MAX_VALUE` characters, or a
  ``~`` made more than :data:`~engine.limits.MAX_TEXT` (the row path's limits decide), or the key
  is empty;
* the table lacks a column a template reads (the row path reports the missing field).

Non-ASCII text is exact too: ``upper``, ``lower`` and ``digits`` run in Python for the rows that
are not ASCII (Arrow's case mapping is not Python's: ``'ß'.upper()`` is ``'SS'``), and white
space is Python's own set, given to Arrow explicitly (:meth:`str.strip`'s; ``float()``'s, which
leaves out ``\x1c``-``\x1f``), not Arrow's definition.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as arrow_compute
from jinja2 import Environment, nodes

from engine import filters
from engine.errors import RecordError
from engine.limits import MAX_TEXT, MAX_VALUE, measure
from engine.mapping import KEEP, KEY, CompiledMapping, MappedRecord, key_string
from engine.templating import SyncEnvironment, make_environment, single_expression

ROW_PATH = "syncengine_row_path"
"""The output column that marks the rows the row path must map (their value or their record error)."""
KEY_COLUMN = "syncengine_key"
"""The output column holding each row's state key (as :func:`engine.mapping.record_key` makes it)."""

_PY_SPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
"""Python's whitespace (``str.strip()``, ``str.isspace()``, ``re``'s ``\\s``): Arrow's own differs."""


def _float_strips(char: str) -> bool:
    try:
        float(f"{char}1{char}")
    except ValueError:
        return False
    return True


_FLOAT_SPACE = "".join(filter(_float_strips, _PY_SPACE))
"""The white space ``float()`` ignores around a number: not quite ``str.strip()``'s (``\\x1c``-``\\x1f`` are not)."""
_SPACE_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE) + "]"
_ASCII_SPACE_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE if ord(c) < 128) + "]"



_SCALAR_TYPES = {bool: pa.bool_(), int: pa.int64(), str: pa.string(), float: pa.float64()}
_SCALARS: dict[tuple[type, Any], Any] = {}


def _typed(value: Any) -> Any:
    """A Python constant as an Arrow scalar of its type (an untyped one costs pyarrow an import attempt per call).

    The scalars are kept: the kernels' constants are few, and making one costs more than a small kernel.
    """
    kind = value.__class__
    if kind not in _SCALAR_TYPES:
        return value
    found = _SCALARS.get((kind, value))
    if found is None:
        found = pa.scalar(value, _SCALAR_TYPES[kind])
        if len(_SCALARS) < 4096:
            _SCALARS[(kind, value)] = found
    return found


class _Compute:
    """``pyarrow.compute`` with every Python constant operand given as a typed scalar (options stay as they are)."""

    def __getattr__(self, name: str) -> Any:
        function = getattr(arrow_compute, name)
        try:
            arity = arrow_compute.get_function(name).arity
        except (pa.ArrowException, KeyError):  # a Python helper (fill_null...): its value arguments are operands
            arity = Ellipsis
        operands = None if arity is Ellipsis or name in ("cast", "take") else int(arity)

        def call(*args: Any, **kwargs: Any) -> Any:
            if operands is None:
                return function(*map(_typed, args), **kwargs)
            return function(*map(_typed, args[:operands]), *args[operands:], **kwargs)

        setattr(self, name, call)
        return call


pc: Any = _Compute()

STR, INT, FLOAT, BOOL, DEC, TIME, NONE = "str", "int", "float", "bool", "decimal", "datetime", "none"
_TEXTUAL = frozenset({STR, INT, BOOL, NONE})
"""Kinds whose ``str()`` the kernels make exactly as Python does."""
_INT64 = 2**63


class Refused(Exception):
    """A template is outside the columnar subset; the message says what."""


def compile_arrow(mapping: object, env: SyncEnvironment | None = None) -> ArrowMapping | None:
    """The columnar form of a mapping, or ``None`` when a template is outside the subset (see :func:`arrow_refusal`).

    ``env`` parses the templates (by default a new engine environment: the filters are the same).
    """
    try:
        return ArrowMapping(mapping, env)
    except Refused:
        return None


def arrow_refusal(mapping: object, env: SyncEnvironment | None = None) -> str | None:
    """Why :func:`compile_arrow` refuses a mapping, or ``None`` when it accepts it."""
    try:
        ArrowMapping(mapping, env)
    except Refused as exc:
        return str(exc)
    return None


# --- values per batch ------------------------------------------------------------------------------


@dataclass
class _Time:
    """Datetimes as their parts (int64 arrays; null where the value is None) and, when aware, UTC offsets."""

    year: Any
    month: Any
    day: Any
    hour: Any
    minute: Any
    second: Any
    micro: Any
    offset: Any = None
    """Seconds east of UTC, for a value made with ``tz``; None for naive values."""


@dataclass
class _Col:
    """One expression's values for a batch, and the rows only the row path can map (a boolean array or None)."""

    kind: str
    values: Any
    bad: Any = None
    scale: Any = None
    """For a decimal without places: each row's number of fraction digits (``values`` holds its digits as int64)."""


class _Batch:
    """The input table, its text columns as arrays, and the row count."""

    def __init__(self, table: Any) -> None:
        self.n: int = table.num_rows
        self._table = table
        self._columns: dict[str, Any] = {}

    def has(self, name: str) -> bool:
        return name in self._table.column_names

    def column(self, name: str) -> Any:
        found = self._columns.get(name)
        if found is None:
            if name in self._table.column_names:
                found = _as_text_column(self._table.column(name), name)
            else:
                found = pa.nulls(self.n, pa.string())
            self._columns[name] = found
        return found


def _as_text_column(column: Any, name: str) -> Any:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_null(array.type) or pa.types.is_large_string(array.type):
        return pc.cast(array, pa.string())
    if not pa.types.is_string(array.type):
        raise TypeError(f"column '{name}' is {array.type}, not text: read the source with every column as "
                        "string (pyarrow.csv.ConvertOptions(column_types=...) or .cast)")
    return array


def _or(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return pc.or_(a, b)


def _known(mask: Any) -> Any:
    """A boolean array without nulls (null counts as False)."""
    return mask if mask.null_count == 0 else pc.fill_null(mask, False)


def _any(mask: Any) -> bool:
    return mask is not None and bool(pc.any(mask).as_py())


def _repeat(value: Any, n: int, type_: Any = None) -> Any:
    scalar = _typed(value) if type_ is None else pa.scalar(value, type_)
    return pa.repeat(scalar, n)


def _trim(text: Any, characters: str = _PY_SPACE) -> Any:
    return pc.utf8_trim(text, characters=characters)


def _blank(text: Any) -> Any:
    """Rows that are None or blank text: ``filters._empty``."""
    return pc.fill_null(pc.equal(pc.binary_length(_trim(text)), 0), True)


def _int(text: Any, ok: Any) -> Any:
    """Digit text (at most 18 digits, maybe empty) as int64 where ``ok``; 0 elsewhere."""
    safe = pc.if_else(pc.and_(ok, pc.greater(pc.utf8_length(text), 0)), text, "0")
    return pc.cast(pc.fill_null(safe, "0"), pa.int64())


def _pad(numbers: Any, width: int) -> Any:
    return pc.utf8_lpad(pc.cast(numbers, pa.string()), width=width, padding="0")


def _in_python(values: Any, rows: Any, function: Callable[[str], str | None]) -> Any:
    """``values`` with the ``rows`` (a mask) replaced by ``function`` of the ``source`` text, run in Python."""
    source, target = values
    if not _any(rows):
        return target
    picked = pc.filter(source, rows).to_pylist()
    return pc.replace_with_mask(target, rows, pa.array([function(v) for v in picked], target.type))


def _text_of(col: _Col) -> Any:
    """``str(value)`` of every row, as Python makes it (``'None'`` for None)."""
    if col.kind == STR:
        return pc.fill_null(col.values, "None")
    if col.kind == INT:
        return pc.fill_null(pc.cast(col.values, pa.string()), "None")
    if col.kind == BOOL:
        return pc.fill_null(pc.if_else(col.values, "True", "False"), "None")
    if col.kind == NONE:
        return _repeat("None", len(col.values), pa.string())
    raise AssertionError(col.kind)  # refused at compile time


def _null_where(values: Any, mask: Any) -> Any:
    if mask is None:
        return values
    return pc.if_else(mask, pa.scalar(None, values.type), values)


# --- numbers -------------------------------------------------------------------------------------

_FLOAT = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?$"
_MAX_DIGITS = 18
"""Digits of a number the kernels read (into int64); a longer one goes to the row path."""
_POW10 = pa.array([10**i for i in range(_MAX_DIGITS + 1)], pa.int64())


@dataclass
class _Number:
    """Text read as ``filters.to_decimal`` reads it, as int64 parts.

    ``digits`` is the number without its sign and point (``'-12.50'``: 1250), ``frac_len`` how
    many of them follow the point (2): the value is exactly ``±digits / 10**frac_len``.
    """

    blank: Any
    """None or blank text (the filters give None)."""
    ok: Any
    """Plain decimal text of at most :data:`_MAX_DIGITS` digits (the other rows go to the row path)."""
    negative: Any
    digits: Any
    int_len: Any
    frac_len: Any


def _number(text: Any) -> _Number:
    """``to_decimal``'s clean-up (strip, commas, a leading ``$``, ``(x)`` for ``-x``), then plain decimal text."""
    trimmed = _trim(text)
    blank = pc.fill_null(pc.equal(pc.binary_length(trimmed), 0), True)
    cleanup = pc.or_(pc.or_(pc.starts_with(trimmed, "$"), pc.starts_with(trimmed, "(")),
                     pc.greater_equal(pc.find_substring(trimmed, ","), 0))
    if _any(cleanup):  # the common number needs none of it: the regular expressions run only when one does
        trimmed = pc.replace_substring(trimmed, ",", "")
        trimmed = pc.replace_substring_regex(trimmed, r"^\$", "", max_replacements=1)
        trimmed = pc.replace_substring_regex(trimmed, r"(?s)^\((.*)\)$", r"-\1")
    negative = _known(pc.starts_with(trimmed, "-"))
    unsigned = pc.utf8_ltrim(trimmed, characters="+-")
    length = pc.binary_length(unsigned)
    one_sign = pc.less_equal(pc.subtract(pc.binary_length(trimmed), length), 1)
    dot = pc.find_substring(unsigned, ".")
    has_dot = pc.greater_equal(dot, 0)
    int_len = pc.if_else(has_dot, dot, length)
    frac_len = pc.if_else(has_dot, pc.subtract(pc.subtract(length, dot), 1), 0)
    digits_text = pc.replace_substring(unsigned, ".", "", max_replacements=1) if _any(has_dot) else unsigned
    # [+-]digits[.digits] with a digit at least (the regular expression ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$, for less)
    ok = pc.and_(pc.and_(pc.ascii_is_decimal(digits_text), one_sign),
                 pc.less_equal(pc.add(int_len, frac_len), _MAX_DIGITS))
    ok = _known(ok)
    digits = _int(digits_text, ok)
    # The lengths of the rows not read are 0: every length is then an index into _POW10.
    return _Number(blank, ok, negative, digits, pc.if_else(ok, int_len, 0), pc.if_else(ok, frac_len, 0))


def _pow10(exponent: Any) -> Any:
    """10 to each exponent (clamped to 0..18: the caller picks the rows where it was in range)."""
    return pc.take(_POW10, pc.min_element_wise(pc.max_element_wise(exponent, 0), _MAX_DIGITS))


def _scaled(number: _Number, places: int) -> tuple[Any, Any]:
    """(magnitude rounded to ``places`` and times ``10**places``, ok): ``quantize(..., ROUND_HALF_UP)`` in int64."""
    ok = _known(pc.and_(number.ok, pc.less_equal(number.int_len, _MAX_DIGITS - places)))
    shift = pc.subtract(places, number.frac_len)
    most = pc.max(number.frac_len).as_py()
    if most is None or most <= places:  # no row to round (the usual money column): widening is exact
        return pc.if_else(ok, pc.multiply(number.digits, pc.take(_POW10, shift)), 0), ok
    widened = pc.multiply(number.digits, _pow10(shift))  # at most `places` fraction digits: exact
    cut = pc.negate(shift)
    kept = pc.divide(number.digits, _pow10(cut))
    first_dropped = pc.subtract(pc.divide(number.digits, _pow10(pc.subtract(cut, 1))),
                                pc.multiply(pc.divide(number.digits, _pow10(cut)), 10))
    rounded = pc.add(kept, pc.cast(pc.greater_equal(first_dropped, 5), pa.int64()))
    magnitude = pc.if_else(pc.greater_equal(shift, 0), widened, rounded)
    return pc.if_else(ok, magnitude, 0), ok


def _signed(number: _Number, magnitude: Any) -> Any:
    return pc.if_else(number.negative, pc.negate(magnitude), magnitude)


def _failed(col: _Col, number: _Number, ok: Any) -> Any:
    """Rows the row path must map: an operand's, and the rows neither blank nor read."""
    return _or(col.bad, pc.and_(pc.invert(ok), pc.invert(number.blank)))


def _cents(col: _Col) -> _Col:
    number = _number(col.values)
    magnitude, ok = _scaled(number, 2)
    return _Col(INT, _null_where(_signed(number, magnitude), pc.invert(ok)), _failed(col, number, ok))


def _as_decimal(signed: Any, places: int) -> Any:
    """int64 numbers of 10**-places as decimal128(38, places)."""
    value = pc.cast(signed, pa.decimal128(19, 0))
    if places:
        value = pc.multiply(value, pa.scalar(Decimal(1).scaleb(-places), pa.decimal128(places + 1, places)))
    return pc.cast(value, pa.decimal128(38, places))


def _decimal_places(col: _Col, places: int) -> _Col:
    number = _number(col.values)
    magnitude, ok = _scaled(number, places)
    ok = pc.and_(ok, pc.invert(pc.and_(number.negative, pc.equal(magnitude, 0))))  # Decimal('-0.00')
    values = _null_where(_as_decimal(_signed(number, pc.if_else(ok, magnitude, 0)), places), pc.invert(ok))
    return _Col(DEC, values, _failed(col, number, ok))


def _decimal_free(col: _Col) -> _Col:
    """``to_decimal`` without places: the value and its scale; the output column picks one scale per batch."""
    number = _number(col.values)
    ok = _known(pc.and_(number.ok, pc.invert(pc.and_(number.negative, pc.equal(number.digits, 0)))))
    values = _null_where(_signed(number, pc.if_else(ok, number.digits, 0)), pc.invert(ok))
    return _Col(DEC, values, _failed(col, number, ok), scale=_null_where(number.frac_len, pc.invert(ok)))


def _strict_int(col: _Col) -> _Col:
    if col.kind == INT:
        return col
    number = _number(col.values)
    unit = pc.take(_POW10, number.frac_len)
    whole = pc.divide(number.digits, unit)
    ok = _known(pc.and_(number.ok, pc.equal(pc.multiply(whole, unit), number.digits)))  # '12.0' but not '12.5'
    return _Col(INT, _null_where(_signed(number, whole), pc.invert(ok)), _failed(col, number, ok))


def _strict_float(col: _Col) -> _Col:
    blank = _blank(col.values)
    text = _trim(pc.replace_substring(col.values, ",", ""), _FLOAT_SPACE)
    ok = pc.and_(pc.match_substring_regex(text, _FLOAT), pc.less_equal(pc.utf8_length(text), 60))
    ok = _known(pc.and_(ok, pc.invert(blank)))
    values = _null_where(pc.cast(pc.if_else(ok, text, "0"), pa.float64()), pc.invert(ok))
    return _Col(FLOAT, values, _or(col.bad, pc.and_(pc.invert(ok), pc.invert(blank))))


_TRUE = pa.array(["1", "y", "yes", "true", "t", "on"])
_FALSE = pa.array(["0", "n", "no", "false", "f", "off"])


def _to_bool(col: _Col) -> _Col:
    blank = _blank(col.values)
    text = _trim(col.values)
    ascii_ = _known(pc.string_is_ascii(text))
    lowered = pc.ascii_lower(text)
    yes = _known(pc.is_in(lowered, value_set=_TRUE))
    no = _known(pc.is_in(lowered, value_set=_FALSE))
    ok = pc.and_(ascii_, pc.or_(yes, no))
    values = _null_where(yes, pc.invert(ok))
    return _Col(BOOL, values, _or(col.bad, pc.and_(pc.invert(ok), pc.invert(blank))))


# --- dates ---------------------------------------------------------------------------------------

_STRPTIME = {
    "d": r"3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9]",
    "f": r"[0-9]{1,6}",
    "H": r"2[0-3]|[0-1]\d|\d",
    "I": r"1[0-2]|0[1-9]|[1-9]",
    "m": r"1[0-2]|0[1-9]|[1-9]",
    "M": r"[0-5]\d|\d",
    "S": r"6[0-1]|[0-5]\d|\d",
    "y": r"\d\d",
    "Y": r"\d\d\d\d",
    "p": "am|pm",
}
"""``_strptime``'s pattern per directive (checked against this Python's at compile time)."""
_ISO = (r"^(?P<Y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})"
        r"(?:[T ](?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2}))?)?$")
_STRFTIME = frozenset("YmdHMSyIpf%")
_DAYS_IN_MONTH = pa.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], pa.int64())


def _python_strptime(directive: str) -> str | None:
    """This Python's own pattern for a strptime directive (None when it cannot be read)."""
    try:
        import _strptime

        pattern: str = _strptime._TimeRE_cache[directive]
    except Exception:  # noqa: BLE001 - a Python without it: the directive is not translated
        return None
    return pattern


def _strptime_regex(fmt: str) -> tuple[str, frozenset[str]]:
    """An RE2 pattern matching as ``datetime.strptime(text, fmt)`` matches ASCII text, and its directives."""
    am_pm = [datetime(2000, 1, 1, h).strftime("%p").lower() for h in (1, 13)]
    out, seen, i = "", set(), 0
    while i < len(fmt):
        char = fmt[i]
        if char == "%":
            directive = fmt[i + 1:i + 2]
            if directive == "%":
                out += "%"
            elif directive in _STRPTIME:
                if directive in seen:
                    raise Refused(f"strptime format '{fmt}' repeats %{directive}")
                if _python_strptime(directive) != f"(?P<{directive}>{_STRPTIME[directive]})":
                    raise Refused(f"this Python's strptime %{directive} differs from the translated one")
                if directive == "p" and am_pm != ["am", "pm"]:
                    raise Refused("the locale's AM/PM are not AM and PM")
                seen.add(directive)
                out += f"(?P<{directive}>{_STRPTIME[directive].replace(chr(92) + 'd', '[0-9]')})"
            else:
                raise Refused(f"strptime directive '%{directive}' is not translated")
            i += 2
        elif char.isspace():
            while i < len(fmt) and fmt[i].isspace():
                i += 1
            if not char.isascii():
                raise Refused(f"strptime format '{fmt}' has non-ASCII white space")
            out += _ASCII_SPACE_CLASS + "+"
        else:
            if not char.isascii() or ord(char) < 32:
                raise Refused(f"strptime format '{fmt}' has a character that is not translated")
            out += re.escape(char) if not char.isalnum() else char
            i += 1
    if not seen & {"Y", "y"}:
        raise Refused(f"strptime format '{fmt}' has no year")
    for pair in ({"Y", "y"}, {"H", "I"}):
        if pair <= seen:  # the later one wins in strptime: an order the kernels do not follow
            raise Refused(f"strptime format '{fmt}' has both %{' and %'.join(sorted(pair))}")
    if "p" in seen and "I" not in seen:
        raise Refused(f"strptime format '{fmt}' has %p without %I")
    return f"^(?i:{out})(?P<syncengine_rest>(?s:.*))$", frozenset(seen)


def _days_from_civil(year: Any, month: Any, day: Any) -> Any:
    """Days since 1970-01-01 of a proleptic Gregorian date (year >= 1), in int64 arithmetic."""
    y = pc.subtract(year, pc.cast(pc.less_equal(month, 2), pa.int64()))
    era = pc.divide(y, 400)
    yoe = pc.subtract(y, pc.multiply(era, 400))
    mp = pc.if_else(pc.greater(month, 2), pc.subtract(month, 3), pc.add(month, 9))
    doy = pc.add(pc.divide(pc.add(pc.multiply(mp, 153), 2), 5), pc.subtract(day, 1))
    doe = pc.add(pc.add(pc.multiply(yoe, 365), pc.divide(yoe, 4)), pc.subtract(doy, pc.divide(yoe, 100)))
    return pc.subtract(pc.add(pc.multiply(era, 146097), doe), 719468)


def _divisible(numbers: Any, by: int) -> Any:
    return pc.equal(pc.subtract(numbers, pc.multiply(pc.divide(numbers, by), by)), 0)


def _valid_day(year: Any, month: Any, day: Any) -> Any:
    leap = pc.or_(pc.and_(_divisible(year, 4), pc.invert(_divisible(year, 100))), _divisible(year, 400))
    index = pc.subtract(pc.min_element_wise(pc.max_element_wise(month, 1), 12), 1)
    last = pc.add(pc.take(_DAYS_IN_MONTH, index), pc.cast(pc.and_(leap, pc.equal(month, 2)), pa.int64()))
    return pc.and_(pc.greater_equal(day, 1), pc.less_equal(day, last))


def _group(parts: Any, name: str, ok: Any, default: int) -> Any:
    text = pc.utf8_trim(pc.fill_null(pc.struct_field(parts, name), ""), characters=" ")
    return pc.if_else(pc.greater(pc.utf8_length(text), 0), _int(text, ok), default)


def _micros(time: _Time) -> Any:
    """Microseconds since the epoch of the local (wall) time."""
    days = _days_from_civil(pc.fill_null(time.year, 1970), pc.fill_null(time.month, 1), pc.fill_null(time.day, 1))
    seconds = pc.add(pc.multiply(pc.add(pc.multiply(pc.fill_null(time.hour, 0), 60), pc.fill_null(time.minute, 0)),
                                 60), pc.fill_null(time.second, 0))
    micros = pc.add(pc.multiply(days, 86_400_000_000), pc.multiply(seconds, 1_000_000))
    return _null_where(pc.add(micros, pc.fill_null(time.micro, 0)), pc.is_null(time.year))


def _parse_time(col: _Col, fmt: str | None) -> _Col:
    """``filters.parse_date`` without ``tz``: a strptime format or the ISO forms the kernels read exactly."""
    blank = _blank(col.values)
    text = _trim(col.values)
    if fmt is None:
        parts = pc.extract_regex(text, _ISO)
        matched = pc.invert(pc.is_null(parts))
        seen = frozenset("YmdHMS")
    else:
        pattern, seen = _strptime_regex(fmt)
        parts = pc.extract_regex(text, pattern)
        matched = pc.and_(pc.invert(pc.is_null(parts)),
                          pc.equal(pc.struct_field(parts, "syncengine_rest"), ""))
    ok = _known(pc.and_(pc.and_(matched, pc.invert(blank)), pc.string_is_ascii(text)))

    def part(name: str, default: int) -> Any:
        return _group(parts, name, ok, default) if name in seen else _repeat(default, len(text), pa.int64())

    year = part("Y", 1900)
    if "y" in seen:
        short = part("y", 0)
        year = pc.if_else(pc.less_equal(short, 68), pc.add(short, 2000), pc.add(short, 1900))
    month, day, minute, second = part("m", 1), part("d", 1), part("M", 0), part("S", 0)
    hour = part("H", 0)
    if "I" in seen:
        twelve = part("I", 0)
        pm = _known(pc.equal(pc.ascii_lower(pc.struct_field(parts, "p")), "pm")) if "p" in seen \
            else _repeat(False, len(text))
        hour = pc.if_else(pm, pc.if_else(pc.equal(twelve, 12), 12, pc.add(twelve, 12)),
                          pc.if_else(pc.equal(twelve, 12), 0, twelve))
    micro = _repeat(0, len(text), pa.int64())
    if "f" in seen:
        digits = pc.utf8_rpad(pc.fill_null(pc.struct_field(parts, "f"), ""), width=6, padding="0")
        micro = _int(digits, ok)
    valid = pc.and_(pc.and_(pc.greater_equal(year, 1), pc.less_equal(second, 59)), _valid_day(year, month, day))
    if fmt is None:
        valid = pc.and_(valid, pc.and_(pc.and_(pc.greater_equal(month, 1), pc.less_equal(month, 12)),
                                       pc.and_(pc.less_equal(hour, 23), pc.less_equal(minute, 59))))
    ok = _known(pc.and_(ok, valid))
    gone = pc.invert(ok)
    time = _Time(*(_null_where(a, gone) for a in (year, month, day, hour, minute, second, micro)))
    return _Col(TIME, time, _or(col.bad, pc.and_(gone, pc.invert(blank))))


def _with_zone(col: _Col, zone: str) -> _Col:
    """``parse_date(..., tz=zone)``: the offset Python's zoneinfo gives each row (fold 0), where it is certain.

    Per distinct day, Python's offsets at its first and last microsecond must be equal and Arrow's
    offset for the row's own time must be that one; other rows go to the row path.
    """
    time: _Time = col.values
    local = _micros(time)
    days = pc.fill_null(_days_from_civil(pc.fill_null(time.year, 1970), pc.fill_null(time.month, 1),
                                         pc.fill_null(time.day, 1)), 0)
    utc = pc.assume_timezone(pc.cast(pc.fill_null(local, 0), pa.timestamp("us")), timezone=zone,
                             ambiguous="earliest", nonexistent="earliest")
    arrow_offset = pc.subtract(pc.fill_null(local, 0), pc.cast(utc, pa.int64()))
    distinct = pc.unique(pc.filter(days, pc.invert(pc.is_null(local)))).to_pylist()
    info = ZoneInfo(zone)
    starts, same = [], []
    epoch = datetime(1970, 1, 1)
    for number in distinct:
        first = (epoch + timedelta(days=number)).replace(tzinfo=info)
        last = first.replace(hour=23, minute=59, second=59, microsecond=999999)
        start, end = first.utcoffset(), last.utcoffset()
        assert start is not None and end is not None
        starts.append(int(start.total_seconds()) * 1_000_000)
        same.append(start == end)
    where = pc.index_in(days, value_set=pa.array(distinct, pa.int64()))
    python_offset = pc.take(pa.array(starts, pa.int64()), where)
    certain = _known(pc.and_(pc.take(pa.array(same, pa.bool_()), where), pc.equal(python_offset, arrow_offset)))
    bad = pc.and_(pc.invert(pc.is_null(local)), pc.invert(certain))
    gone = pc.or_(bad, pc.is_null(local))
    offset = _null_where(pc.divide(python_offset, 1_000_000), gone)
    y, mo, d, h, mi, sec, us = (_null_where(a, bad) for a in (time.year, time.month, time.day, time.hour,
                                                                time.minute, time.second, time.micro))
    return _Col(TIME, _Time(y, mo, d, h, mi, sec, us, offset=offset), _or(col.bad, bad))


def _format_offset(offset: Any) -> Any:
    """``+HH:MM`` (``:SS`` when not whole minutes), as ``datetime.isoformat`` writes a UTC offset."""
    sign = pc.if_else(pc.less(offset, 0), "-", "+")
    size = pc.abs(offset)
    hours = pc.divide(size, 3600)
    minutes = pc.divide(pc.subtract(size, pc.multiply(hours, 3600)), 60)
    seconds = pc.subtract(size, pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)))
    tail = pc.if_else(pc.equal(seconds, 0), "", pc.binary_join_element_wise(":", _pad(seconds, 2), ""))
    return pc.binary_join_element_wise(sign, _pad(hours, 2), ":", _pad(minutes, 2), tail, "")


def _isoformat(col: _Col) -> _Col:
    time: _Time = col.values
    date = pc.binary_join_element_wise(_pad(time.year, 4), "-", _pad(time.month, 2), "-", _pad(time.day, 2), "")
    clock = pc.binary_join_element_wise(_pad(time.hour, 2), ":", _pad(time.minute, 2), ":", _pad(time.second, 2), "")
    fraction = pc.if_else(pc.equal(time.micro, 0), "", pc.binary_join_element_wise(".", _pad(time.micro, 6), ""))
    parts = [date, "T", clock, fraction]
    if time.offset is not None:
        parts.append(_format_offset(time.offset))
    return _Col(STR, pc.binary_join_element_wise(*parts, ""), col.bad)


def _strftime_parts(fmt: str) -> list[str]:
    """A constant strftime format as literal text and ``%x`` directives the kernels write as Python does."""
    out: list[str] = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            directive = fmt[i + 1:i + 2]
            if directive not in _STRFTIME:
                raise Refused(f"strftime directive '%{directive}' is not translated")
            out.append("%" + directive)
            i += 2
        else:
            if not fmt[i].isascii() or ord(fmt[i]) < 32:
                raise Refused(f"strftime format '{fmt}' has a character that is not translated")
            out.append(fmt[i])
            i += 1
    if "%p" in out and [datetime(2000, 1, 1, h).strftime("%p") for h in (1, 13)] != ["AM", "PM"]:
        raise Refused("the locale's AM/PM are not AM and PM")
    return out


def _strftime(col: _Col, parts: list[str]) -> _Col:
    time: _Time = col.values
    pieces: list[Any] = []
    bad = col.bad
    for part in parts:
        if not part.startswith("%"):
            pieces.append(part)
        elif part == "%%":
            pieces.append("%")
        elif part == "%Y":
            pieces.append(pc.cast(time.year, pa.string()))
            # Below year 1000 the C library decides the padding: the row path writes those.
            bad = _or(bad, _known(pc.less(time.year, 1000)))
        elif part == "%y":
            pieces.append(_pad(pc.subtract(time.year, pc.multiply(pc.divide(time.year, 100), 100)), 2))
        elif part == "%I":
            twelve = pc.subtract(time.hour, pc.multiply(pc.divide(time.hour, 12), 12))
            pieces.append(_pad(pc.if_else(pc.equal(twelve, 0), 12, twelve), 2))
        elif part == "%p":
            pieces.append(pc.if_else(pc.less(time.hour, 12), "AM", "PM"))
        elif part == "%f":
            pieces.append(_pad(time.micro, 6))
        else:
            name = {"%m": "month", "%d": "day", "%H": "hour", "%M": "minute", "%S": "second"}[part]
            pieces.append(_pad(getattr(time, name), 2))
    if all(isinstance(piece, str) for piece in pieces):  # no directive: the format itself, for every value
        values = _null_where(_repeat("".join(pieces), len(time.year), pa.string()), pc.is_null(time.year))
    else:
        values = pc.binary_join_element_wise(*pieces, "")
    return _Col(STR, values, bad)


# --- the translation ------------------------------------------------------------------------------

_Run = Callable[[_Batch], _Col]
_NO_CONSTANT = object()


@dataclass(frozen=True)
class _Expr:
    """A translated expression: the kind of its values, how to compute them, and what is known at compile time."""

    kind: str
    run: _Run
    column: str | None = None
    """The record column the expression is, unchanged (its values are not made by the template)."""
    constant: Any = _NO_CONSTANT
    aware: bool = False
    """A datetime made with ``tz``."""


def _kind_of(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise Refused(f"the integer {value} is too large for a column")
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    raise Refused(f"a {type(value).__name__} value is not translated")


_ARROW_TYPE = {NONE: pa.null(), BOOL: pa.bool_(), INT: pa.int64(), FLOAT: pa.float64(), STR: pa.string()}


def _constant(value: Any) -> _Expr:
    kind = _kind_of(value)

    def run(batch: _Batch) -> _Col:
        values = pa.nulls(batch.n) if kind == NONE else _repeat(value, batch.n, _ARROW_TYPE[kind])
        return _Col(kind, values)

    return _Expr(kind, run, constant=value)


def _unify(values: list[Any]) -> str:
    kinds = {_kind_of(v) for v in values} - {NONE}
    if len(kinds) > 1:
        raise Refused(f"values of several types ({', '.join(sorted(kinds))}) in one column")
    return kinds.pop() if kinds else NONE


_JINJA = Environment().filters
"""Jinja's own filters, to know the functions the engine's environment wraps (``trim``, ``default``, ``string``)."""
_JINJA_TRIM = _JINJA["trim"]
_JINJA_DEFAULT = _JINJA["default"]
_JINJA_STRING = _JINJA["string"]
_COMPARE = {"eq": pc.equal, "ne": pc.not_equal, "lt": pc.less, "lteq": pc.less_equal, "gt": pc.greater,
            "gteq": pc.greater_equal}


class _Translator:
    """Template ASTs into :class:`_Expr` trees."""

    def __init__(self, env: SyncEnvironment, context: Mapping[str, Any]) -> None:
        self.env = env
        self.context = context
        self.columns: set[str] = set()
        """Record columns the templates need (a missing one sends every row to the row path)."""
        self.absent: set[str] = set()
        """Columns that must not exist (``record.get`` is the dict's method only when no field has its name)."""

    # -- templates and constants

    def template(self, source: str) -> _Expr:
        ast = self.env.parse(source)
        expr = single_expression(ast)
        if expr is not None:
            return self.expr(expr)
        pieces: list[_Expr] = []
        for stmt in ast.body:
            if not isinstance(stmt, nodes.Output):
                raise Refused(f"a {type(stmt).__name__} statement is not translated")
            for node in stmt.nodes:
                pieces.append(_constant(node.data) if isinstance(node, nodes.TemplateData) else self.expr(node))
        return self.join(pieces)

    def const(self, node: nodes.Node) -> Any:
        """The value of a constant argument (literals, ``vars.x``, ``env.X``)."""
        if isinstance(node, nodes.Const):
            return node.value
        if isinstance(node, nodes.List):
            return [self.const(n) for n in node.items]
        if isinstance(node, nodes.Tuple):
            return tuple(self.const(n) for n in node.items)
        if isinstance(node, nodes.Dict):
            return {self.const(p.key): self.const(p.value) for p in node.items}
        if isinstance(node, nodes.Neg) and isinstance(value := self.const(node.node), (int, float)) \
                and not isinstance(value, bool):
            return -value
        context = self.context_name(node)
        if context is not None:
            return self.context_value(*context)
        raise Refused(f"a {type(node).__name__} argument is not a constant")

    @staticmethod
    def context_name(node: nodes.Node) -> tuple[str, str] | None:
        if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name):
            if isinstance(node, nodes.Getattr):
                return node.node.name, node.attr
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                return node.node.name, node.arg.value
        return None

    def context_value(self, name: str, attr: str) -> Any:
        if name == "run":
            raise Refused(f"run.{attr} is not translated (the columnar mapping reads no run value)")
        if name not in ("vars", "env") or attr.startswith("_"):
            raise Refused(f"{name}.{attr} is not translated")
        holder = self.context.get(name)
        try:
            return holder[attr]  # type: ignore[index]
        except (KeyError, TypeError, OSError):
            raise Refused(f"{name}.{attr} has no value to translate") from None

    # -- expressions

    def expr(self, node: nodes.Node) -> _Expr:
        if isinstance(node, nodes.Const):
            return _constant(node.value)
        named = self.context_name(node)
        if named is not None:
            if named[0] == "record":
                return self.record_column(named[1])
            return _constant(self.context_value(*named))
        if isinstance(node, nodes.Call):
            return self.call(node)
        if isinstance(node, nodes.Filter):
            return self.filter(node)
        if isinstance(node, nodes.Concat):
            return self.join([self.expr(n) for n in node.nodes])
        if isinstance(node, nodes.Compare):
            return self.compare(node)
        if isinstance(node, nodes.Neg):
            return _constant(self.const(node))
        raise Refused(f"a {type(node).__name__} expression is not translated")

    def record_column(self, name: str) -> _Expr:
        self.columns.add(name)

        def run(batch: _Batch) -> _Col:
            return _Col(STR, batch.column(name))

        return _Expr(STR, run, column=name)

    def call(self, node: nodes.Call) -> _Expr:
        """``record.get('x')`` or ``record.get('x', default)``."""
        target = node.node
        if not (isinstance(target, nodes.Getattr) and isinstance(target.node, nodes.Name)
                and target.node.name == "record" and target.attr == "get") or node.kwargs \
                or node.dyn_args is not None or node.dyn_kwargs is not None or not 1 <= len(node.args) <= 2:
            raise Refused("a call other than record.get('name') is not translated")
        name = self.const(node.args[0])
        default = self.const(node.args[1]) if len(node.args) == 2 else None
        if not isinstance(name, str) or _kind_of(default) not in (STR, NONE):
            raise Refused("record.get() with a name that is not text or a default that is not text")
        self.absent.add("get")

        def run(batch: _Batch) -> _Col:
            if batch.has(name):
                return _Col(STR, batch.column(name))
            return _Col(STR, _repeat(default, batch.n, pa.string()))

        return _Expr(STR, run)

    def join(self, pieces: list[_Expr]) -> _Expr:
        """Text of the pieces one after the other (``~``, or text around expressions), each as ``str()``."""
        for piece in pieces:
            if piece.kind not in _TEXTUAL or piece.aware:
                raise Refused(f"a {piece.kind} value in text is not translated")

        def run(batch: _Batch) -> _Col:
            cols = [p.run(batch) for p in pieces]
            bad = None
            for col in cols:
                bad = _or(bad, col.bad)
            if not cols:
                return _Col(STR, _repeat("", batch.n, pa.string()))
            texts = [_text_of(col) for col in cols]
            if len(texts) == 1:
                return _Col(STR, texts[0], bad)
            joined = pc.binary_join_element_wise(*texts, "")
            # The Jinja path refuses a `~` of more than MAX_TEXT characters even when a filter then shortens it.
            if (pc.max(pc.binary_length(joined)).as_py() or 0) > MAX_TEXT:
                bad = _or(bad, pc.greater(pc.utf8_length(joined), MAX_TEXT))
            return _Col(STR, joined, bad)

        return _Expr(STR, run)

    def compare(self, node: nodes.Compare) -> _Expr:
        if len(node.ops) != 1 or node.ops[0].op not in _COMPARE:
            raise Refused("only one ==, !=, <, <=, > or >= comparison is translated")
        op = node.ops[0].op
        left, right = self.expr(node.expr), self.expr(node.ops[0].expr)
        kinds = {left.kind, right.kind}
        if not kinds <= {STR, INT, FLOAT, BOOL, NONE} or len(kinds - {NONE}) != 1 or left.aware or right.aware:
            raise Refused(f"comparing {left.kind} with {right.kind} is not translated")
        function = _COMPARE[op]
        ordering = op not in ("eq", "ne")

        def run(batch: _Batch) -> _Col:
            a, b = left.run(batch), right.run(batch)
            bad = _or(a.bad, b.bad)
            va = a.values if a.kind != NONE else pa.nulls(batch.n, _ARROW_TYPE[right.kind])
            vb = b.values if b.kind != NONE else pa.nulls(batch.n, _ARROW_TYPE[left.kind])
            either = pc.or_(pc.is_null(va), pc.is_null(vb))
            if ordering:  # Python raises TypeError for None < x: the row path reports it
                return _Col(BOOL, pc.fill_null(function(va, vb), False), _or(bad, _known(either)))
            both = pc.and_(pc.is_null(va), pc.is_null(vb))
            same = pc.if_else(either, both, pc.fill_null(pc.equal(va, vb), False))
            return _Col(BOOL, same if op == "eq" else pc.invert(same), bad)

        return _Expr(BOOL, run)

    # -- filters

    def filter(self, node: nodes.Filter) -> _Expr:
        if node.dyn_args is not None or node.dyn_kwargs is not None or node.node is None:
            raise Refused("dynamic filter arguments are not translated")
        found = self.env.filters.get(node.name)
        function = getattr(found, "syncengine_inner", found)
        handler = _FILTERS.get(function) if function is not None else None
        if handler is None:
            raise Refused(f"the filter '{node.name}' is not translated")
        value = self.expr(node.node)
        return handler(self, node, value)

    def arguments(self, node: nodes.Filter, function: Callable[..., Any]) -> dict[str, Any]:
        """The filter's constant arguments by parameter name (defaults filled in)."""
        args = [self.const(a) for a in node.args]
        kwargs = {str(k.key): self.const(k.value) for k in node.kwargs}
        try:
            bound = inspect.signature(function).bind(None, *args, **kwargs)
        except TypeError as exc:
            raise Refused(f"the filter '{node.name}': {exc}") from None
        bound.apply_defaults()
        return dict(list(bound.arguments.items())[1:])


_Handler = Callable[[_Translator, nodes.Filter, _Expr], _Expr]


def _unary(kind: str, accepts: frozenset[str], kernel: Callable[[_Col], _Col], name: str,
           value: _Expr) -> _Expr:
    if value.kind not in accepts or value.aware:
        raise Refused(f"the filter '{name}' of a {value.kind} value is not translated")

    def run(batch: _Batch) -> _Col:
        return kernel(value.run(batch))

    return _Expr(kind, run)


def _case(function: Callable[[str], str], ascii_kernel: Callable[[Any], Any]) -> Callable[[_Col], _Col]:
    def kernel(col: _Col) -> _Col:
        text = _text_of(col)
        other = pc.invert(pc.string_is_ascii(text))
        return _Col(STR, _in_python((text, ascii_kernel(text)), other, function), col.bad)

    return kernel


def _upper(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    t.arguments(node, filters.upper)
    return _unary(STR, _TEXTUAL, _case(str.upper, pc.ascii_upper), "upper", value)


def _lower(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    t.arguments(node, filters.lower)
    return _unary(STR, _TEXTUAL, _case(str.lower, pc.ascii_lower), "lower", value)


def _string(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    t.arguments(node, _JINJA_STRING)
    return _unary(STR, _TEXTUAL, lambda col: _Col(STR, _text_of(col), col.bad), "string", value)


def _trim_filter(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    chars = t.arguments(node, _JINJA_TRIM)["chars"]
    if chars is not None and not isinstance(chars, str):
        raise Refused("trim() with characters that are not text")
    characters = _PY_SPACE if chars is None else chars
    return _unary(STR, _TEXTUAL, lambda col: _Col(STR, _trim(_text_of(col), characters), col.bad), "trim", value)


def _null_if_empty(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    t.arguments(node, filters.null_if_empty)
    if value.kind != STR:
        if value.aware:
            raise Refused("null_if_empty of a datetime with a time zone is not translated")
        return value  # None stays None, and a number, date or boolean is never blank

    def run(batch: _Batch) -> _Col:
        col = value.run(batch)
        return _Col(STR, _null_where(col.values, _blank(col.values)), col.bad)

    return _Expr(STR, run, column=value.column)


def _text_only(function: Callable[..., Any], kernel: Callable[[Any], Any]) -> _Handler:
    """A filter of text that keeps None (``clean``, ``digits``)."""

    def handler(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
        t.arguments(node, function)
        return _unary(STR, frozenset({STR}), lambda col: _Col(STR, kernel(col.values), col.bad), node.name, value)

    return handler


def _clean(text: Any) -> Any:
    return _trim(pc.replace_substring_regex(text, _SPACE_CLASS + "+", " "))


def _digits(text: Any) -> Any:
    other = _known(pc.invert(pc.string_is_ascii(text)))
    kept = pc.replace_substring_regex(text, "[^0-9]", "")
    return _in_python((text, kept), other, lambda v: "".join(ch for ch in v if ch.isdigit()))


def _zfill(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    width = t.arguments(node, filters.zfill)["width"]
    if not isinstance(width, int) or isinstance(width, bool) or width > MAX_TEXT:
        raise Refused("zfill() with a width that is not a whole number up to the text limit")

    def kernel(col: _Col) -> _Col:
        text = col.values
        signed = _known(pc.match_substring_regex(text, r"^[+-]"))
        plain = pc.utf8_lpad(text, width=max(width, 0), padding="0")
        rest = pc.utf8_lpad(pc.utf8_slice_codeunits(text, 1), width=max(width - 1, 0), padding="0")
        signed_text = pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, 1), rest, "")
        return _Col(STR, pc.if_else(signed, signed_text, plain), col.bad)

    return _unary(STR, frozenset({STR}), kernel, "zfill", value)


def _number_filter(function: Callable[..., Any], kind: str, kernel: Callable[[_Col], _Col],
                   accepts: frozenset[str] = frozenset({STR})) -> _Handler:
    """``cents``, ``int``, ``float``, ``bool``: text to a number or boolean (blank to None)."""

    def handler(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
        t.arguments(node, function)
        return _unary(kind, accepts, kernel, node.name, value)

    return handler


def _decimal(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    found = t.env.filters[node.name]
    function = filters.money if getattr(found, "syncengine_inner", found) is filters.money else filters.to_decimal
    places = t.arguments(node, function)["places"]
    if places is not None and (not isinstance(places, int) or isinstance(places, bool) or not 0 <= places <= 9):
        raise Refused(f"{node.name}() with places other than a whole number from 0 to 9")
    if places is None:
        return _unary(DEC, frozenset({STR}), _decimal_free, node.name, value)
    return _unary(DEC, frozenset({STR}), lambda col: _decimal_places(col, places), node.name, value)


def _default(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    arguments = t.arguments(node, _JINJA_DEFAULT)
    if not arguments["boolean"]:
        return value  # a translated value is never undefined
    fallback = arguments["default_value"]
    kind = _kind_of(fallback)
    if value.kind not in (STR, INT, BOOL) or kind not in (value.kind, NONE):
        raise Refused(f"default(..., true) of a {value.kind} value with a {kind} default is not translated")

    def run(batch: _Batch) -> _Col:
        col = value.run(batch)
        values = col.values
        if col.kind == STR:
            falsy = pc.fill_null(pc.equal(pc.utf8_length(values), 0), True)
        elif col.kind == INT:
            falsy = pc.fill_null(pc.equal(values, 0), True)
        else:
            falsy = pc.fill_null(pc.invert(values), True)
        return _Col(col.kind, pc.if_else(falsy, pa.scalar(fallback, values.type), values), col.bad)

    return _Expr(value.kind, run)


def _coalesce(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    if node.kwargs:
        raise Refused("coalesce() with keyword arguments")
    candidates = [value, *(t.expr(a) for a in node.args)]
    if any(c.kind not in (STR, NONE) for c in candidates):
        raise Refused("coalesce() of values other than text is not translated")

    def run(batch: _Batch) -> _Col:
        result = pa.nulls(batch.n, pa.string())
        bad = None
        for candidate in reversed(candidates):
            col = candidate.run(batch)
            bad = _or(bad, col.bad)
            if col.kind == STR:
                result = pc.if_else(_blank(col.values), result, col.values)
        return _Col(STR, result, bad)

    return _Expr(STR, run)


def _value_map(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    arguments = t.arguments(node, filters.value_map)
    table, fallback = arguments["mapping"], arguments["default"]
    if not isinstance(table, dict):
        raise Refused("value_map() of something other than a constant table")
    has_default = fallback is not inspect.signature(filters.value_map).parameters["default"].default
    outputs = list(table.values()) + ([fallback] if has_default else [])
    kind = _unify(outputs)
    if value.kind != STR:
        raise Refused(f"value_map() of a {value.kind} value is not translated")
    codes = [k for k in table if isinstance(k, str)]
    results = pa.array([table[k] for k in codes], _ARROW_TYPE[kind])
    codes_array = pa.array(codes, pa.string())
    null_code = table[None] if None in table else fallback

    def run(batch: _Batch) -> _Col:
        col = value.run(batch)
        key = _trim(col.values)
        where = pc.index_in(key, value_set=codes_array)
        out = pc.take(results, where)
        missing = _known(pc.and_(pc.is_null(where), pc.invert(pc.is_null(key))))
        unknown_null = pc.is_null(key)
        bad = col.bad
        if has_default:
            out = pc.if_else(missing, pa.scalar(fallback, results.type), out)
        else:
            bad = _or(bad, missing)
        if None in table or has_default:
            out = pc.if_else(unknown_null, pa.scalar(null_code, results.type), out)
        else:
            bad = _or(bad, unknown_null)
        return _Col(kind, out, bad)

    return _Expr(kind, run)


def _zone_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Refused("a time zone that is not text")
    try:
        ZoneInfo(value)
        pc.assume_timezone(pa.array([0], pa.timestamp("us")), timezone=value)
    except Exception:  # noqa: BLE001 - every row's error: the row path reports it
        raise Refused(f"the time zone '{value}' is not known to both Python and Arrow") from None
    return value


def _parse_date(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    arguments = t.arguments(node, filters.parse_date)
    fmt, zone = arguments["format"], _zone_name(arguments["tz"])
    if fmt is not None and (not isinstance(fmt, str) or not fmt):
        raise Refused("parse_date() with a format that is not text")
    if fmt is not None:
        _strptime_regex(fmt)  # refuses now what it cannot translate
    if value.kind == TIME:
        if zone is not None:
            raise Refused("parse_date(tz=...) of a datetime is not translated")
        return value
    if value.kind != STR:
        raise Refused(f"parse_date() of a {value.kind} value is not translated")

    def run(batch: _Batch) -> _Col:
        col = _parse_time(value.run(batch), fmt)
        return col if zone is None else _with_zone(col, zone)

    return _Expr(TIME, run, aware=zone is not None)


def _as_time(value: _Expr, name: str) -> _Run:
    """A datetime operand: a parsed datetime as it is, or ISO text parsed as ``filters.parse_date`` does."""
    if value.kind == TIME:
        return value.run
    if value.kind != STR:
        raise Refused(f"{name}() of a {value.kind} value is not translated")

    def run(batch: _Batch) -> _Col:
        return _parse_time(value.run(batch), None)

    return run


def _format_date(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    arguments = t.arguments(node, filters.format_date)
    if arguments["tz"]:
        raise Refused(f"{node.name}(tz=...) is not translated")
    fmt = arguments["format"]
    if not isinstance(fmt, str):
        raise Refused(f"{node.name}() with a format that is not text")
    parts = _strftime_parts(fmt)
    source = _as_time(value, node.name)

    def run(batch: _Batch) -> _Col:
        return _strftime(source(batch), parts)

    return _Expr(STR, run)


def _iso8601(t: _Translator, node: nodes.Filter, value: _Expr) -> _Expr:
    if t.arguments(node, filters.iso8601)["tz"]:
        raise Refused("iso8601(tz=...) is not translated")
    source = _as_time(value, "iso8601")

    def run(batch: _Batch) -> _Col:
        return _isoformat(source(batch))

    return _Expr(STR, run)


_FILTERS: dict[Any, _Handler] = {
    filters.upper: _upper,
    filters.lower: _lower,
    _JINJA_TRIM: _trim_filter,
    _JINJA_STRING: _string,
    _JINJA_DEFAULT: _default,
    filters.null_if_empty: _null_if_empty,
    filters.clean: _text_only(filters.clean, _clean),
    filters.digits: _text_only(filters.digits, _digits),
    filters.zfill: _zfill,
    filters.cents: _number_filter(filters.cents, INT, _cents),
    filters.strict_int: _number_filter(filters.strict_int, INT, _strict_int, frozenset({STR, INT})),
    filters.strict_float: _number_filter(filters.strict_float, FLOAT, _strict_float),
    filters.to_bool: _number_filter(filters.to_bool, BOOL, _to_bool),
    filters.to_decimal: _decimal,
    filters.money: _decimal,
    filters.coalesce: _coalesce,
    filters.value_map: _value_map,
    filters.parse_date: _parse_date,
    filters.format_date: _format_date,
    filters.iso8601: _iso8601,
}


# --- the mapping ---------------------------------------------------------------------------------


@dataclass
class _Leaf:
    """One output value: its path and either a translated expression or a constant."""

    path: tuple[str, ...]
    expr: _Expr | None
    constant: Any = None
    """A constant's Arrow scalar."""
    made: bool = field(default=False)
    """Whether the value is text a template made (it counts toward the size limit)."""


def _check_constant(value: Any) -> Any:
    """A constant output as an Arrow scalar; refused when it does not come back exactly."""
    try:
        scalar = pa.array([value])[0]
    except (pa.ArrowException, TypeError, ValueError):
        raise Refused(f"the constant {value!r} is not translated") from None
    back = scalar.as_py()
    if repr(back) != repr(value) or type(back) is not type(value):
        raise Refused(f"the constant {value!r} does not come back from Arrow as it is")
    return scalar


class ArrowMapping:
    """A :class:`~engine.mapping.CompiledMapping` as Arrow kernels; see the module's documentation."""

    def __init__(self, mapping: object, env: SyncEnvironment | None = None) -> None:
        if not isinstance(mapping, CompiledMapping):
            raise Refused(f"a {type(mapping).__name__} is not translated (only a mapping of fields)")
        if KEEP in mapping._single:
            raise Refused("a mapping with filter: is not translated")
        self.mapping = mapping
        translator = _Translator(env or make_environment(), mapping._context)
        self._leaves: list[_Leaf] = []
        self._base_size = 0
        for f in mapping.fields:
            if not all(isinstance(p, str) for p in f.path):
                raise Refused(f"the output {f.name} is inside a list")
            path = tuple(str(p) for p in f.path)
            if path[0] in (ROW_PATH, KEY_COLUMN):
                raise Refused(f"the output name {path[0]} is the columnar mapping's own")
            if f.is_template:
                try:
                    expr = translator.template(f.source)
                except Refused as exc:
                    raise Refused(f"{f.name}: {exc}") from None
                if expr.aware:
                    raise Refused(f"{f.name}: a datetime with a time zone as a value is not translated")
                if expr.constant is not _NO_CONSTANT:
                    self._base_size += measure(expr.constant)
                made = expr.column is None and expr.kind == STR and expr.constant is _NO_CONSTANT
                self._leaves.append(_Leaf(path, expr, made=made))
            else:
                self._base_size += measure(f.source)
                self._leaves.append(_Leaf(path, None, _check_constant(f.source)))
        if self._base_size > MAX_VALUE:
            raise Refused("the constant values are over the size limit")
        paths = sorted(leaf.path for leaf in self._leaves)
        for before, after in zip(paths, paths[1:], strict=False):
            if after[:len(before)] == before:
                raise Refused(f"the output {'.'.join(before)} is both a value and a container")
        self._key_expr: _Expr | None = None
        self._key_fields = tuple(mapping.key_fields)
        if self._key_fields:
            tops = {leaf.path[0]: leaf for leaf in self._leaves if len(leaf.path) == 1}
            missing = [k for k in self._key_fields if k not in tops]
            if missing:
                raise Refused(f"the key field {missing[0]} is not a top-level output")
        else:
            key_field = mapping._slot_field.get(KEY)
            if key_field is None:
                raise Refused("the mapping has neither key fields nor a key template")
            try:
                self._key_expr = translator.template(key_field.source)
            except Refused as exc:
                raise Refused(f"key: {exc}") from None
            if self._key_expr.aware or self._key_expr.kind == DEC:
                raise Refused("key: a decimal or a datetime with a time zone is not translated")
        self.columns = frozenset(translator.columns)
        """The record columns the templates read."""
        self._absent = frozenset(translator.absent)

    # -- mapping a batch

    def map_table(self, table: Any) -> Any:
        """The output columns for every row of ``table``, then :data:`KEY_COLUMN` and :data:`ROW_PATH`.

        ``table`` holds text columns (others are ignored); a row marked in :data:`ROW_PATH` has
        null values here and must be mapped by the row path.
        """
        batch = _Batch(table)
        n = batch.n
        present = set(table.column_names)
        everything = bool(self.columns - present) or bool(self._absent & present)
        bad: Any = _repeat(everything, n, pa.bool_())
        made: list[Any] = []
        values: list[tuple[tuple[str, ...], Any]] = []
        for leaf in self._leaves:
            if leaf.expr is None:
                values.append((leaf.path, pa.repeat(leaf.constant, n)))
                continue
            col = leaf.expr.run(batch)
            array, extra = _output(col, n)
            bad = _or(_or(bad, None if col.bad is None else _known(col.bad)), extra)
            if leaf.made:
                made.append(array)
            values.append((leaf.path, array))
        if self._key_expr is not None:
            col = self._key_expr.run(batch)
            array, extra = _output(col, n)
            bad = _or(_or(bad, None if col.bad is None else _known(col.bad)), extra)
            if col.kind == STR and self._key_expr.column is None and self._key_expr.constant is _NO_CONSTANT:
                made.append(array)
            parts = [array]
        else:
            tops = {path[0]: array for path, array in values if len(path) == 1}
            parts = [tops[k] for k in self._key_fields]
        key, empty = _keys(parts, n)
        bad = _or(_or(bad, empty), _too_large(made, self._base_size, n))
        if _any(bad):
            values = [(path, _null_where(array, bad)) for path, array in values]
            key = _null_where(key, bad)
        columns = _nest(values)
        names = [name for name, _ in columns] + [KEY_COLUMN, ROW_PATH]
        return pa.table([array for _, array in columns] + [key, _known(bad)], names=names)

    # -- whole records

    def records(self, table: Any, mapped: Any = None) -> Iterator[MappedRecord | RecordError]:
        """Every row of ``table`` mapped, in order: by the kernels, or by the row path where it must decide.

        A row the row path refuses comes as its :class:`~engine.errors.RecordError`. ``mapped`` is
        :meth:`map_table`'s result for ``table`` when it was already made.
        """
        if mapped is None:
            mapped = self.map_table(table)
        row_path = mapped.column(ROW_PATH).to_pylist()
        keys = mapped.column(KEY_COLUMN).to_pylist()
        outputs = mapped.drop_columns([KEY_COLUMN, ROW_PATH]).to_pylist()
        for i, fallback in enumerate(row_path):
            if not fallback:
                yield MappedRecord(keys[i], outputs[i])
                continue
            try:
                record = self.mapping.map(table.slice(i, 1).to_pylist()[0])
            except RecordError as exc:
                yield exc
                continue
            assert record is not None  # a mapping with filter: is not translated
            yield record


def _too_large(made: list[Any], base: int, n: int) -> Any:
    """Rows whose made text (with the constants) passes MAX_VALUE characters: the row path's size check decides.

    The bytes of each column's longest value bound its characters: when they are within the limit
    together, no row needs counting.
    """
    longest = [pc.max(pc.binary_length(array)).as_py() or 0 for array in made]
    if base + sum(longest) <= MAX_VALUE:
        return None
    size = _repeat(base, n, pa.int64())
    for array in made:
        size = pc.add(size, pc.fill_null(pc.utf8_length(array), 0))
    return pc.greater(size, MAX_VALUE)


def _keys(parts: list[Any], n: int) -> tuple[Any, Any]:
    """The state key of every row (as ``record_key`` makes it) and the rows whose key is empty."""
    empty: Any = None
    for array in parts:
        if pa.types.is_null(array.type):
            empty = _repeat(True, n)
            continue
        empty = _or(empty, pc.is_null(array))
        if pa.types.is_string(array.type):
            empty = _or(empty, _known(pc.equal(array, "")))
    if len(parts) == 1 and pa.types.is_string(parts[0].type):
        return parts[0], empty
    if len(parts) == 1 and pa.types.is_int64(parts[0].type):
        return pc.cast(parts[0], pa.string()), empty
    rows = zip(*(p.to_pylist() for p in parts), strict=True)
    keys = [None if None in row or "" in row else key_string(tuple(row)) for row in rows]
    return pa.array(keys, pa.string()), empty


def _output(col: _Col, n: int) -> tuple[Any, Any]:
    """An output column as the row path's values convert back, and rows it cannot hold."""
    if col.kind == TIME:
        time: _Time = col.values
        return pc.cast(_micros(time), pa.timestamp("us")), None
    if col.kind == DEC and col.scale is not None:
        present = pc.drop_null(col.scale)
        scale = int(pc.mode(present)[0]["mode"].as_py()) if len(present) else 0
        other = _known(pc.not_equal(col.scale, scale))
        values = _null_where(_as_decimal(pc.if_else(other, 0, pc.fill_null(col.values, 0)), scale),
                             pc.or_(other, pc.is_null(col.values)))
        return values, other
    if col.kind == NONE:
        return pa.nulls(n), None
    return col.values, None


def _nest(values: list[tuple[tuple[str, ...], Any]]) -> list[tuple[str, Any]]:
    """Top-level columns in output order, nested paths as struct columns (as the row path nests dicts)."""
    tree: dict[str, Any] = {}
    for path, array in values:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = array

    def build(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        names = list(node)
        return pa.StructArray.from_arrays([build(node[k]) for k in names], names=names)

    return [(name, build(node)) for name, node in tree.items()]
