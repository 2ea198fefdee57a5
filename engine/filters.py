"""The Jinja filters integrators need for mappings: dates, money, defaults, value maps, clean-up.

Every filter is strict: bad input raises, so the record is dead-lettered with the field named,
instead of turning silently into 0 or an empty string (Jinja's own ``int`` and ``float`` return 0).
A missing field is bad input too: only ``default`` and ``coalesce`` accept one (:func:`strict`
gives Jinja's own filters and tests the same rule). Jinja's filters that can make a result far
larger than their input (``center``, ``format``, ``indent``, ``wordwrap``, ``replace``, ``join``,
``batch``, ``slice``, ``sum``, ``tojson``) are replaced by versions bounded by :mod:`engine.limits`.
"""

from __future__ import annotations

import json
import re
import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, getcontext
from functools import update_wrapper
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined, pass_environment, pass_eval_context
from jinja2.nodes import EvalContext

from engine.jinja_internals import (
    FilterArgumentError,
    do_batch,
    do_indent,
    do_replace,
    do_tojson,
    make_attrgetter,
    passes_jinja_argument,
    sync_do_join,
    sync_do_slice,
)
from engine.limits import (
    MAX_VALUE,
    as_text_size,
    check_items,
    check_text,
    check_width,
    measure,
    printf,
    replaced_size,
)


class FilterError(ValueError):
    """A filter got a value it cannot convert."""


def _fail_if_undefined(value: Any) -> None:
    """Raise the missing field's own error (``no field 'x' (did you mean 'y'?)``) for an undefined value."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _empty(value: Any) -> bool:
    """Null or blank text; a missing field is an error, not an empty value."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    """A value as text (text itself unchanged); a missing field is an error, and a list too large for text too."""
    if isinstance(value, str):
        return value
    _fail_if_undefined(value)
    as_text_size(value, "turning a value into text")
    return str(value)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FilterError(f"unknown time zone '{name}'") from exc


def parse_date(value: Any, format: str | None = None, tz: str | None = None) -> datetime | None:
    """Text to datetime: ISO 8601 by default, or a ``strptime`` format; ``tz`` names a naive value's zone."""
    if _empty(value):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        text = (value if isinstance(value, str) else _text(value)).strip()
        try:
            if format:
                parsed = datetime.strptime(text, format)
            else:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError as exc:
            expected = f"format '{format}'" if format else "ISO 8601"
            raise FilterError(f"'{text}' is not a date in {expected}") from exc
    if tz and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_zone(tz))
    return parsed


def format_date(value: Any, format: str = "%Y-%m-%d", tz: str | None = None) -> str | None:
    """Format a date or datetime (ISO text is parsed first); ``tz`` converts an aware value first."""
    if _empty(value):
        return None
    parsed = parse_date(value)
    if parsed is not None and tz:
        parsed = to_timezone(parsed, tz)
    return None if parsed is None else parsed.strftime(format)


def iso8601(value: Any, tz: str | None = None) -> str | None:
    """A date or datetime as ISO 8601 text, converted to ``tz`` when given."""
    if _empty(value):
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    parsed = parse_date(value)
    if parsed is not None and tz:
        parsed = to_timezone(parsed, tz)
    return None if parsed is None else parsed.isoformat()


def to_timezone(value: Any, tz: str, assume: str = "UTC") -> datetime | None:
    """Convert to zone ``tz``; a naive value is taken to be in ``assume`` (UTC by default)."""
    parsed = parse_date(value)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC if assume == "UTC" else _zone(assume))
    return parsed.astimezone(_zone(tz))


def to_decimal(value: Any, places: int | None = None) -> Decimal | None:
    """Text or number to :class:`~decimal.Decimal`; ``places`` rounds half up. Thousands commas allowed."""
    if _empty(value):
        return None
    if isinstance(value, float):
        value = repr(value)
    text = (value if isinstance(value, str) else _text(value)).strip().replace(",", "")
    if text.startswith("$"):
        text = text[1:]
    if text.startswith("(") and text.endswith(")"):
        text = "-" + text[1:-1]
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise FilterError(f"'{value}' is not a decimal number") from exc
    if not number.is_finite():
        raise FilterError(f"'{value}' is not a finite number")
    if number.adjusted() >= MAX_INT_DIGITS:
        # '1e1000000' is short text for a million digits: refused before anything computes them.
        raise FilterError(f"'{_short(value)}' has more than {MAX_INT_DIGITS:,} digits before the decimal point")
    if places is not None:
        try:
            number = number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        except InvalidOperation:
            raise FilterError(f"'{_short(value)}' has too many digits to keep {places} decimal places "
                              f"(at most {getcontext().prec} digits in all)") from None
    return number


MAX_INT_DIGITS = 4300
"""Digits before the decimal point a number may have (Python's own limit for turning text into an int)."""


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def money(value: Any, places: int = 2) -> Decimal | None:
    """A money amount as a Decimal rounded half up to ``places``."""
    return to_decimal(value, places)


_CENT = Decimal("0.01")


def cents(value: Any) -> int | None:
    """A money amount as integer cents (``'12.345'`` -> 1235, half up)."""
    if value.__class__ is str:
        try:  # the common case, plain decimal text, without the clean-up below
            return int(Decimal(value).quantize(_CENT, ROUND_HALF_UP).scaleb(2))
        except InvalidOperation:
            pass
    number = to_decimal(value, 2)
    return None if number is None else int(number.scaleb(2))


def strict_int(value: Any) -> int | None:
    """Text or number to int; ``'12.0'`` is 12, ``'12.5'`` and ``'abc'`` are errors, empty is null."""
    if value.__class__ is str:
        try:  # the common case, plain integer text
            return int(value)
        except ValueError:
            pass
    if _empty(value):
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = to_decimal(value)
    assert number is not None
    if number != number.to_integral_value():
        raise FilterError(f"'{value}' is not a whole number")
    return int(number)


def strict_float(value: Any) -> float | None:
    """Text or number to float; bad text is an error, empty is null."""
    if _empty(value):
        return None
    try:
        return float(value.replace(",", "")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as exc:
        raise FilterError(f"'{value}' is not a number") from exc


def to_bool(value: Any) -> bool | None:
    """Y/N, yes/no, true/false, 1/0, on/off to a boolean; empty is null."""
    if _empty(value):
        return None
    if isinstance(value, bool):
        return value
    text = (value if isinstance(value, str) else _text(value)).strip().lower()
    if text in ("1", "y", "yes", "true", "t", "on"):
        return True
    if text in ("0", "n", "no", "false", "f", "off"):
        return False
    raise FilterError(f"'{value}' is not a yes/no value")


def coalesce(value: Any, *others: Any) -> Any:
    """The first of the values that is neither undefined, null nor blank text (a missing field is allowed here)."""
    for candidate in (value, *others):
        if not (candidate is None or isinstance(candidate, Undefined)
                or (isinstance(candidate, str) and not candidate.strip())):
            return candidate
    return None


def null_if_empty(value: Any) -> Any:
    """Blank text becomes null; anything else passes through (a missing field is an error)."""
    return None if _empty(value) else value


_NO_DEFAULT = object()


def value_map(value: Any, mapping: Mapping[Any, Any], default: Any = _NO_DEFAULT) -> Any:
    """Look a code up in a table (``{'A': 'Active'}``); an unknown code is an error unless ``default``."""
    key = value.strip() if isinstance(value, str) else value  # a missing field fails here: it has no hash
    if key in mapping:
        return mapping[key]
    if default is not _NO_DEFAULT:
        return default
    known = ", ".join(repr(k) for k in list(mapping)[:8])
    raise FilterError(f"{value!r} is not in the value map ({known})")


_SPACES = re.compile(r"\s+")


def clean(value: Any) -> str | None:
    """Trim, and fold runs of white space (line breaks included) into one space; null stays null."""
    if value is None:
        return None
    return _SPACES.sub(" ", value if isinstance(value, str) else _text(value)).strip()


def digits(value: Any) -> str | None:
    """Keep only the digits (phone numbers, postal codes); null stays null."""
    if value is None:
        return None
    return "".join(ch for ch in (value if isinstance(value, str) else _text(value)) if ch.isdigit())


def ascii_fold(value: Any) -> str | None:
    """Strip accents: ``'Québec'`` -> ``'Quebec'``."""
    if value is None:
        return None
    text = value if isinstance(value, str) else _text(value)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def limit(value: Any, length: int) -> str | None:
    """Cut text to at most ``length`` characters (for fixed-width destination fields)."""
    if isinstance(length, Undefined):
        length._fail_with_undefined_error()
    if value is None:
        return None
    return (value if isinstance(value, str) else _text(value))[:length]


def zfill(value: Any, width: int) -> str | None:
    """Pad with leading zeros to ``width`` (at most :data:`~engine.limits.MAX_TEXT`)."""
    if isinstance(width, Undefined):
        width._fail_with_undefined_error()
    check_width(width, "zfill")
    if value is None:
        return None
    return (value if isinstance(value, str) else _text(value)).zfill(width)


def from_json(value: Any) -> Any:
    """JSON text as data (a SQL ``json_group_array`` of child rows becomes a list); null stays null.

    The text is bounded like any value a template makes (``MAX_VALUE`` characters); a value that is
    already data is returned as it is.
    """
    _fail_if_undefined(value)
    if value is None or isinstance(value, (dict, list)):
        return value
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    if len(text) > MAX_VALUE:
        raise FilterError(f"from_json: the text has {len(text):,} characters, more than {MAX_VALUE:,}")
    try:
        return json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise FilterError("from_json: the JSON is nested too deeply") from None
    except ValueError as exc:
        raise FilterError(f"from_json: not JSON ({exc})") from None


def split(value: Any, sep: str | None = None) -> list[str]:
    """Split text into a list (on white space by default)."""
    if isinstance(sep, Undefined):
        sep._fail_with_undefined_error()
    if _empty(value):
        return []
    return [part.strip() for part in (value if isinstance(value, str) else _text(value)).split(sep)]


def upper(value: Any) -> str:
    """Upper-case text (Jinja's own, without its detour for plain strings)."""
    return value.upper() if value.__class__ is str else _text(value).upper()


def lower(value: Any) -> str:
    """Lower-case text."""
    return value.lower() if value.__class__ is str else _text(value).lower()


# --- Jinja's filters that can make a result far larger than their input, bounded -----------------


def center(value: Any, width: int = 80) -> str:
    """Center the text in a field of ``width`` characters (at most :data:`~engine.limits.MAX_TEXT`)."""
    check_width(width, "center")
    return _text(value).center(width)


def format_text(value: Any, *args: Any, **kwargs: Any) -> str:
    """``printf``-style formatting (``'%05d'|format(n)``), with widths and the result bounded."""
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    result: str = printf(_text(value), kwargs or args)
    return result


def indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    """Indent every line but the first (Jinja's ``indent``), with the result bounded."""
    text = _text(value)
    check_width(width, "indent")
    prefix = len(width) if isinstance(width, str) else int(width)
    check_text(len(text) + (len(text.splitlines()) + 1) * (max(prefix, 0) + 1), "indent")
    return do_indent(text, width, first, blank)


@pass_environment
def wordwrap(environment: Any, value: Any, width: int = 79, break_long_words: bool = True,
             wrapstring: str | None = None, break_on_hyphens: bool = True) -> str:
    """Wrap text at ``width`` (Jinja's ``wordwrap``), with the result bounded."""
    text = _text(value)
    separator = environment.newline_sequence if wrapstring is None else _text(wrapstring)
    paragraphs = [textwrap.wrap(line, width=width, expand_tabs=False, replace_whitespace=False,
                                break_long_words=break_long_words, break_on_hyphens=break_on_hyphens)
                  for line in text.splitlines()]
    joints = sum(max(len(lines) - 1, 0) for lines in paragraphs) + max(len(paragraphs) - 1, 0)
    check_text(sum(len(line) for lines in paragraphs for line in lines) + joints * len(separator), "wordwrap")
    result: str = separator.join(separator.join(lines) for lines in paragraphs)
    return result


@pass_eval_context
def replace(eval_ctx: EvalContext, value: Any, old: Any, new: Any, count: int | None = None) -> str:
    """Replace occurrences of ``old`` by ``new`` (Jinja's ``replace``); the result is measured before it is built."""
    _fail_if_undefined(old)
    _fail_if_undefined(new)
    text, old_text, new_text = _text(value), _text(old), _text(new)
    check_text(replaced_size(text, old_text, new_text, -1 if count is None else count), "replace")
    result: str = do_replace(eval_ctx, text, old_text, new_text, count)
    return result


@pass_eval_context
def join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    """Join the items as text with ``d`` between them (Jinja's ``join``); the result is measured before it is built."""
    _fail_if_undefined(value)
    items = list(value)
    if attribute is not None:
        items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    separator = _text(d)
    size = len(separator) * max(len(items) - 1, 0)
    check_text(size, "join")
    texts: list[Any] = []
    for item in items:
        text = item if isinstance(item, str) else _text(item)
        size += len(text)
        check_text(size, "join")
        texts.append(item if hasattr(item, "__html__") else text)
    result: str = sync_do_join(eval_ctx, texts, d)
    return result


def batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    """Lists of ``linecount`` items (Jinja's ``batch``); ``linecount`` is bounded like a list's length."""
    _fail_if_undefined(value)
    if isinstance(linecount, int):
        check_items(linecount, "batch")
    batches: Iterator[list[Any]] = do_batch(value, linecount, fill_with)
    return batches


def slice_into(value: Iterable[Any], slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    """``slices`` lists of about equal length (Jinja's ``slice``); ``slices`` is bounded like a list's length."""
    _fail_if_undefined(value)
    if isinstance(slices, int):
        check_items(slices, "slice")
    parts: Iterator[list[Any]] = sync_do_slice(list(value), slices, fill_with)
    return parts


@pass_environment
def total(environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0) -> Any:
    """The sum of the items plus ``start`` (Jinja's ``sum``); adding up lists is bounded like a list's length."""
    _fail_if_undefined(iterable)
    items = list(iterable)
    if attribute is not None:
        items = list(map(make_attrgetter(environment, attribute), items))
    if isinstance(start, (list, tuple)):
        # Adding lists one by one copies the growing list each time; extend one copy instead.
        result = list(start)
        for item in items:
            if not isinstance(item, type(start)):
                return sum(items, start)  # the same TypeError Jinja's sum gives
            result.extend(item)
            check_items(len(result), "sum")
        return result if isinstance(start, list) else tuple(result)
    return sum(items, start)


def _json_shape(value: Any) -> tuple[int, int]:
    """(lines, depth) of a value written as indented JSON, at most."""
    lines, depth, stack = 1, 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            lines, depth = lines + len(item) + 1, max(depth, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            lines, depth = lines + len(item) + 1, max(depth, level)
            stack.extend((v, level + 1) for v in item)
    return lines, depth


@pass_eval_context
def tojson(eval_ctx: EvalContext, value: Any, indent: int | str | None = None) -> Any:
    """Jinja's ``tojson``; the value's size and the indented result are bounded."""
    _fail_if_undefined(value)
    as_text_size(value, "tojson")
    if indent is not None:
        check_width(indent, "tojson")
        step = len(indent) if isinstance(indent, str) else int(indent)
        lines, depth = _json_shape(value)
        check_text(measure(value) + lines * (1 + depth * max(step, 0)), "tojson")
    return do_tojson(eval_ctx, value, indent)  # type: ignore[arg-type]  # a text indent works too


BOUNDED: dict[str, Callable[..., Any]] = {
    "center": center,
    "format": format_text,
    "indent": indent,
    "wordwrap": wordwrap,
    "replace": replace,
    "join": join,
    "batch": batch,
    "slice": slice_into,
    "sum": total,
    "tojson": tojson,
}
"""Replacements of Jinja's own filters that could otherwise make a result of any size."""

REMOVED = ("urlize",)
"""Jinja filters the environment drops: HTML helpers that insert a template-given text per match."""

ACCEPT_UNDEFINED = frozenset({"default", "d", "coalesce", "defined", "undefined"})
"""The filters and tests for which a missing field is an acceptable input."""

_SEQUENCE_FILTERS = frozenset({
    "attr", "batch", "count", "dictsort", "first", "groupby", "items", "join", "last", "length", "list", "map",
    "max", "min", "random", "reject", "rejectattr", "reverse", "select", "selectattr", "slice", "sort", "sum",
    "unique", "abs", "round", "tojson"})
"""Jinja filters that take a list or object as it is; every other one makes text of its input."""


def strict(name: str, function: Callable[..., Any], *, test: bool = False) -> Callable[..., Any]:
    """A Jinja filter or test that raises a missing field's own error for an undefined input or argument.

    The wrapper keeps the function's ``pass_context``/``pass_environment`` marking; its
    ``syncengine_inner`` is the function itself (the fast mapping path calls that directly, as its
    values are never undefined). A filter that makes text of a list checks the list's size first.
    """
    skip = 1 if passes_jinja_argument(function) else 0  # context/environment comes first
    as_text = not test and name not in _SEQUENCE_FILTERS

    def checked(*args: Any, **kwargs: Any) -> Any:
        for argument in args[skip:]:
            if isinstance(argument, Undefined):
                argument._fail_with_undefined_error()
        for argument in kwargs.values():
            if isinstance(argument, Undefined):
                argument._fail_with_undefined_error()
        if as_text and len(args) > skip:
            as_text_size(args[skip], f"the filter or test '{name}'")
        return function(*args, **kwargs)

    update_wrapper(checked, function)
    checked.syncengine_inner = function  # type: ignore[attr-defined]
    return checked


FILTERS: dict[str, Callable[..., Any]] = {
    "upper": upper,
    "lower": lower,
    "parse_date": parse_date,
    "date": format_date,
    "format_date": format_date,
    "iso8601": iso8601,
    "timezone": to_timezone,
    "decimal": to_decimal,
    "money": money,
    "cents": cents,
    "int": strict_int,
    "float": strict_float,
    "bool": to_bool,
    "coalesce": coalesce,
    "null_if_empty": null_if_empty,
    "value_map": value_map,
    "clean": clean,
    "digits": digits,
    "ascii": ascii_fold,
    "limit": limit,
    "zfill": zfill,
    "split": split,
    "from_json": from_json,
}
