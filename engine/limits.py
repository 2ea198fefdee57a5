"""How large a value a template may make and how much work one evaluation may do, in one place.

Jinja's sandbox keeps a template away from what it must not reach; it does not stop one from
building a value of gigabytes or looping for hours (``'ab' * 10**9``, ``10 ** 100000000``, a
padding width of 2000000000, two nested ``range(99999)`` loops). Every operation that can make a
result much larger than its inputs is checked here *before* it runs, so a template fails at once
with a :class:`LimitError` instead of exhausting memory or time. ``docs/mappings.md`` documents the
limits; they are the same at ``syncengine validate`` (constant expressions) and at run time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

MAX_TEXT = 1_000_000
"""Characters of a text one operation may make (``*``, ``+``, ``~``, ``%``, ``format``, padding, ``replace``)."""
MAX_ITEMS = 100_000
"""Items of a list one operation may make (``*``, ``+``, ``range``, ``batch``, ``slice``, ``sum``)."""
MAX_INT_BITS = 8_192
"""Bits of a number ``**`` or ``*`` may make (about 2,466 decimal digits)."""
MAX_LOOP_ITERATIONS = 100_000
"""Loop iterations, loop tests and macro calls of one template evaluation (one record of a mapping)."""
MAX_WORK = 64_000_000
"""Characters and items one evaluation may make or work through (operators, calls; filters and output in loops)."""
MAX_VALUE = 1_000_000
"""Characters of one mapped value a template made (a list or object counts its items and the text in them)."""
MAX_RECORD = 8_000_000
"""Characters of all the values a mapping made for one record together."""

_TEXT = (str, bytes, bytearray)
_CONTAINERS = (list, tuple, dict, set, frozenset)


class LimitError(ValueError):
    """A template would exceed one of the limits above."""


def _n(number: float) -> str:
    return f"{number:,.0f}"


def check_text(size: int, what: str) -> None:
    """Raise unless a text of ``size`` characters is within :data:`MAX_TEXT`."""
    if size > MAX_TEXT:
        raise LimitError(f"{what} would make a text of {_n(size)} characters; the limit is {_n(MAX_TEXT)}")


def check_items(count: int, what: str) -> None:
    """Raise unless a list of ``count`` items is within :data:`MAX_ITEMS`."""
    if count > MAX_ITEMS:
        raise LimitError(f"{what} would make {_n(count)} items; the limit is {_n(MAX_ITEMS)}")


def check_width(value: Any, what: str) -> None:
    """Raise when a padding width, count or length argument is an integer above :data:`MAX_TEXT`."""
    if isinstance(value, int) and value > MAX_TEXT:
        raise LimitError(f"{what} with a width of {_n(value)}; the limit is {_n(MAX_TEXT)}")


def measure(value: Any, limit: int = MAX_RECORD) -> int:
    """Characters ``value`` is as text: a string its length, a list or object its items plus the text in them.

    A number, date or other scalar counts 0 on its own (its text is short: integers made by
    templates are bounded by :data:`MAX_INT_BITS`); inside a list or object an integer or decimal
    counts its digits, as a list may repeat one long number many times. The walk stops as soon as
    the count passes ``limit``, so a list that holds itself, or a thousand references to one large
    text, costs little to reject.
    """
    if isinstance(value, _TEXT):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return 0
    total = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _TEXT):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3  # about its decimal digits
        elif isinstance(item, Decimal):
            total += len(item.as_tuple().digits)
        if total > limit:
            return total
    return total


def as_text_size(value: Any, what: str) -> None:
    """Raise when turning a list or object into text would exceed :data:`MAX_TEXT`."""
    if isinstance(value, _CONTAINERS):
        size = measure(value, MAX_TEXT)
        if size > MAX_TEXT:
            raise LimitError(f"{what} would make a text of more than {_n(MAX_TEXT)} characters "
                             f"(the limit) from a {type(value).__name__}")


def power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``, unless the result would have more than :data:`MAX_INT_BITS` bits."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 1 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_INT_BITS:
            raise LimitError(f"'**' would make a number of about {_n(bits)} bits; the limit is {_n(MAX_INT_BITS)}")
    return base ** exponent


def _repeat(sequence: Any, times: int) -> None:
    if isinstance(sequence, _TEXT):
        check_text(len(sequence) * times, "'*'")
    else:
        check_items(len(sequence) * times, "'*'")


def multiply(left: Any, right: Any) -> Any:
    """``left * right``, bounding repeated text and lists and the bits of a product of integers."""
    if isinstance(left, int) and isinstance(right, int):
        bits = left.bit_length() + right.bit_length()
        if bits > MAX_INT_BITS + 1:
            raise LimitError(f"'*' would make a number of about {_n(bits)} bits; the limit is {_n(MAX_INT_BITS)}")
    elif isinstance(right, int) and isinstance(left, (*_TEXT, list, tuple)):
        _repeat(left, right)
    elif isinstance(left, int) and isinstance(right, (*_TEXT, list, tuple)):
        _repeat(right, left)
    return left * right


def add(left: Any, right: Any) -> Any:
    """``left + right``, bounding joined text and lists."""
    if isinstance(left, _TEXT) and isinstance(right, _TEXT):
        check_text(len(left) + len(right), "'+'")
    elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        check_items(len(left) + len(right), "'+'")
    return left + right


# %[(name)][flags][width][.precision][length]type
_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)


def _number(digits: str, what: str) -> int:
    """A width or precision written in a format, refused above :data:`MAX_TEXT`."""
    # More than 7 digits is over the limit anyway; int() of thousands of digits is itself refused.
    number = MAX_TEXT + 1 if len(digits) > 7 else int(digits or 0)
    if number > MAX_TEXT:
        shown = digits if len(digits) <= 12 else digits[:12] + "..."
        raise LimitError(f"{what} with a width or precision of {shown}; the limit is {_n(MAX_TEXT)}")
    return number


def printf(template: Any, values: Any) -> Any:
    """``template % values`` for text: widths, precisions and the values' text are bounded first."""
    if not isinstance(template, _TEXT):
        return template % values
    positional = values if isinstance(values, tuple) else (values,)
    estimate, index = len(template), 0

    def next_value() -> Any:
        nonlocal index
        value = positional[index] if index < len(positional) else None
        index += 1
        return value

    for match in _PRINTF.finditer(template.decode("latin-1") if isinstance(template, (bytes, bytearray))
                                  else template):
        name, pad, precision, kind = match.groups()
        if kind == "%":
            continue
        for part in (pad, precision):
            if part == "*":
                star = next_value()
                check_width(star, "'%'")
                estimate += star if isinstance(star, int) and star > 0 else 0
            elif part:
                estimate += _number(part, "'%'")
        if name is not None and isinstance(values, Mapping):
            value = values.get(name)
        else:
            value = next_value()
        as_text_size(value, "'%'")
        estimate += measure(value, MAX_TEXT) if isinstance(value, (*_TEXT, *_CONTAINERS)) else 24
        check_text(estimate, "'%'")
    result = template % values
    check_text(len(result), "'%'")
    return result


_SPEC_NUMBER = re.compile(r"\d+")


def check_format_spec(spec: str) -> int:
    """The largest width or precision in a ``str.format`` field's spec, after bounding it."""
    largest = 0
    for digits in _SPEC_NUMBER.findall(spec):
        largest = max(largest, _number(digits, "format()"))
    return largest


def replaced_size(text: Any, old: Any, new: Any, count: int = -1) -> int:
    """Characters of ``text.replace(old, new, count)``, computed without building it."""
    found: int = text.count(old)
    if count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))
