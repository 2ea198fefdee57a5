"""The Jinja filters integrators need for mappings: dates, money, defaults, value maps, clean-up.

Every filter is strict: bad input raises, so the record is dead-lettered with the field named,
instead of turning silently into 0 or an empty string (Jinja's own ``int`` and ``float`` return 0).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined


class FilterError(ValueError):
    """A filter got a value it cannot convert."""


def _empty(value: Any) -> bool:
    return value is None or isinstance(value, Undefined) or (isinstance(value, str) and not value.strip())


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
        text = str(value).strip()
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
    text = str(value).strip().replace(",", "")
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
    if places is not None:
        number = number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return number


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
        return float(str(value).replace(",", "")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as exc:
        raise FilterError(f"'{value}' is not a number") from exc


def to_bool(value: Any) -> bool | None:
    """Y/N, yes/no, true/false, 1/0, on/off to a boolean; empty is null."""
    if _empty(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "y", "yes", "true", "t", "on"):
        return True
    if text in ("0", "n", "no", "false", "f", "off"):
        return False
    raise FilterError(f"'{value}' is not a yes/no value")


def coalesce(value: Any, *others: Any) -> Any:
    """The first of the values that is neither undefined, null nor blank text."""
    for candidate in (value, *others):
        if not _empty(candidate):
            return candidate
    return None


def null_if_empty(value: Any) -> Any:
    """Blank text (or undefined) becomes null; anything else passes through."""
    return None if _empty(value) else value


_NO_DEFAULT = object()


def value_map(value: Any, mapping: Mapping[Any, Any], default: Any = _NO_DEFAULT) -> Any:
    """Look a code up in a table (``{'A': 'Active'}``); an unknown code is an error unless ``default``."""
    key = value.strip() if isinstance(value, str) else value
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
    return _SPACES.sub(" ", str(value)).strip()


def digits(value: Any) -> str | None:
    """Keep only the digits (phone numbers, postal codes); null stays null."""
    if value is None:
        return None
    return "".join(ch for ch in str(value) if ch.isdigit())


def ascii_fold(value: Any) -> str | None:
    """Strip accents: ``'Québec'`` -> ``'Quebec'``."""
    if value is None:
        return None
    return unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")


def limit(value: Any, length: int) -> str | None:
    """Cut text to at most ``length`` characters (for fixed-width destination fields)."""
    if value is None:
        return None
    return str(value)[:length]


def zfill(value: Any, width: int) -> str | None:
    """Pad with leading zeros to ``width``."""
    if value is None:
        return None
    return str(value).zfill(width)


def split(value: Any, sep: str | None = None) -> list[str]:
    """Split text into a list (on white space by default)."""
    if _empty(value):
        return []
    return [part.strip() for part in str(value).split(sep)]


def upper(value: Any) -> str:
    """Upper-case text (Jinja's own, without its detour for plain strings)."""
    return value.upper() if value.__class__ is str else str(value).upper()


def lower(value: Any) -> str:
    """Lower-case text."""
    return value.lower() if value.__class__ is str else str(value).lower()


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
}
