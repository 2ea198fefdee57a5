"""Values as Weavy takes them, driven by the field types its discovery reports.

The seed's formats: booleans ``true``/``false``; integers; date and time ``YYYY-MM-DDTHH:MM:SS``;
decimals with a point; text as JSON strings; binary data as Base64. A value that cannot take its
field's form (a word in a decimal field, text longer than the field, a decimal with more digits than
a JSON number carries exactly) is that record's error, naming the field, before anything is sent:
never a 400 for the whole batch.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.errors import RecordError

INT32 = (-(2**31), 2**31 - 1)
FOREIGN_KEY_LENGTH = 50


@dataclass(frozen=True)
class FieldType:
    """One field of an entity as discovery describes it."""

    name: str
    type: str
    length: int | None = None
    required: bool = False
    read_only: bool = False

    @property
    def kind(self) -> str:
        """The base type: ``text``, ``integer``, ``decimal``, ``datetime``, ``boolean``, ``binary``."""
        base = self.type.split("(", 1)[0].strip().lower()
        return {"int": "integer", "bool": "boolean", "date": "datetime", "string": "text"}.get(base, base)

    @property
    def foreign(self) -> bool:
        """Whether the field holds another entity's code."""
        return "foreignkey" in self.type.lower()


def entity_fields(entity: Mapping[str, Any]) -> dict[str, FieldType]:
    """The fields of a discovered entity, by name."""
    out = {}
    for f in entity.get("fields") or []:
        if not isinstance(f, dict) or not f.get("fieldName"):
            continue
        length = f.get("fieldLength")
        out[str(f["fieldName"])] = FieldType(str(f["fieldName"]), str(f.get("fieldType") or "text"),
                                             length if isinstance(length, int) else None,
                                             bool(f.get("required")), bool(f.get("readOnly")))
    return out


def convert(field: FieldType, value: Any) -> Any:
    """``value`` in the form ``field`` takes; raises :class:`RecordError` naming the field."""
    if value is None:
        return None
    try:
        return _CONVERTERS.get(field.kind, _text)(field, value)
    except InvalidOperation:
        raise RecordError(f"{_show(value)} is not a number", field=field.name) from None
    except binascii.Error:
        raise RecordError(f"{_show(value)} is not valid Base64", field=field.name) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise RecordError(f"{_show(value)} {exc}", field=field.name) from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(field: FieldType, value: Any) -> str:
    if isinstance(value, (dict, list, bytes)):
        raise TypeError("is not text")
    text = "true" if value is True else "false" if value is False else (
        format(value, "f") if isinstance(value, Decimal) else str(value))
    limit = FOREIGN_KEY_LENGTH if field.foreign and field.length is None else field.length
    if limit is not None and len(text) > limit:
        raise ValueError(f"is {len(text)} characters long; the field takes at most {limit}")
    return text


def _integer(field: FieldType, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("is a boolean, not an integer")
    number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value) if not isinstance(value, float) \
        else Decimal(repr(value))
    if number != number.to_integral_value():
        raise ValueError("is not a whole number")
    result = int(number)
    if not INT32[0] <= result <= INT32[1]:
        raise ValueError("is out of the integer range (32 bits)")
    return result


def _decimal(field: FieldType, value: Any) -> int | float:
    if isinstance(value, bool):
        raise TypeError("is a boolean, not a decimal number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        return value
    number = Decimal(value.strip().replace(" ", "")) if isinstance(value, str) else Decimal(value)
    if not number.is_finite():
        raise ValueError("is not a finite number")
    if number == number.to_integral_value() and abs(number) < 2**53:
        return int(number)
    as_float = float(number)
    if Decimal(repr(as_float)) != number:
        raise ValueError("has more digits than a JSON number carries exactly")
    return as_float


def _datetime(field: FieldType, value: Any) -> str:
    if isinstance(value, datetime):
        moment = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("is not a date and time (YYYY-MM-DDTHH:MM:SS)") from None
        moment = parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    else:
        raise TypeError("is not a date and time")
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n"}


def _boolean(field: FieldType, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("is not true or false")


def _binary(field: FieldType, value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        text = base64.b64encode(raw).decode("ascii")
    elif isinstance(value, str):
        raw = base64.b64decode(value, validate=True)  # text in a binary field must already be Base64
        text = value
    else:
        raise TypeError("is not binary data (bytes, or Base64 text)")
    if field.length is not None and len(raw) > field.length:
        raise ValueError(f"is {len(raw)} bytes; the field takes at most {field.length}")
    return text


_CONVERTERS = {"text": _text, "integer": _integer, "decimal": _decimal, "datetime": _datetime,
               "boolean": _boolean, "binary": _binary}
