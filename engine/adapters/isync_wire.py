"""iSync's DataContract wire format: the one place that knows the shape of ``MessageXml``.

iSync's "Sync API Message Server" (a WCF service) takes and returns its payloads as WCF
DataContract XML serialised into the string ``MessageXml`` of ``Execute``. A DataContract
deserialiser reads members strictly in ordinal order (base members first, then the ordinal,
case-sensitive sort of member names); a member that arrives out of order is *silently ignored*,
so an order written with ``PONumber`` after ``PaymentMethodID`` reaches iSync without a PO
number and nobody is told. The writer therefore emits every level in ``sorted()`` order, and
never from the order of the mapping.

Everything iSync-specific is data, in :data:`TYPES` and :data:`OPERATIONS`; a new operation is a
table entry, not code. The writer validates against the catalogue (unknown members with a
did-you-mean, required members, read-only members, value types) so a bad record fails here with
a field path, not later as an opaque server fault or, worse, as a silently dropped member.

Conventions where the iSync documentation is silent (each is repeated where it is applied):

* List indexes in error paths are 0-based, like the Python lists a mapping produces
  (``LineItems[0].Units``).
* A required list member must hold at least one item (an order without lines is never meant).
* Naive datetimes are sent as they are; iSync reads them as its own local time. Aware datetimes
  are sent with their offset (``2016-01-01T10:00:00+02:00``), which WCF's ``XmlConvert`` accepts
  and converts to the server's local time.
* The parser keeps datetimes as the text sent: they are naive server-local times and the
  server's time zone is not ours to guess.

lxml is imported lazily (the engine imports heavy clients only when used), and only the parser
needs it: the writer builds text directly from precomputed tags, which is both faster than
building a tree and exact about the bytes it emits.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

NS = "http://schemas.datacontract.org/2004/07/iSync.EAI.DTO"
"""The DataContract namespace of every iSync DTO."""
XSI = "http://www.w3.org/2001/XMLSchema-instance"
"""Bound to the prefix ``i``, as WCF does; it carries ``i:nil``."""

SCALARS = frozenset({"string", "int", "decimal", "bool", "datetime"})
"""Member types that are a single value; any other member type names a :data:`TYPES` entry."""

ARRAY_PREFIX = "ArrayOf"
"""DataContract's name for a collection root: ``ArrayOfX`` holds elements ``X``."""

_XSI_NIL = f"{{{XSI}}}nil"
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_DECIMAL_MAX = Decimal(2**96 - 1)  # System.Decimal's largest magnitude
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


class WireError(ValueError):
    """A value cannot be written as, or a document cannot be read as, iSync DataContract XML.

    ``path`` is the dotted member path (``DeliveryDetail.AddressLine1``, ``LineItems[1].Units``,
    0-based indexes) so an adapter can turn it into a per-field record error; it is empty for a
    problem with the whole document or call.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Member:
    """One DataContract member.

    ``type`` is a scalar from :data:`SCALARS` or the name of another :data:`TYPES` entry. With
    ``item`` set the member is a list: its element wraps one element named ``item`` per entry,
    each of type ``type``. ``nillable`` says the .NET type can hold null (``string``, classes,
    arrays, ``int?``...), so ``None`` is written as ``i:nil="true"``; an optional member that is not
    nillable is left out instead, and a required one refuses ``None``. ``read_only`` members appear only in iSync's
    answers: the parser knows them, the writer refuses them.
    """

    name: str
    type: str
    required: bool = False
    nillable: bool = False
    item: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class DataType:
    """A DataContract type; ``members`` are kept in ordinal (``sorted``) order, the wire order."""

    name: str
    members: tuple[Member, ...]
    by_name: Mapping[str, Member] = field(init=False, repr=False, compare=False)
    writable: tuple[Member, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.members, key=lambda m: m.name))
        if len({m.name for m in ordered}) != len(ordered):
            raise ValueError(f"{self.name} declares a member twice")
        object.__setattr__(self, "members", ordered)
        object.__setattr__(self, "by_name", {m.name: m for m in ordered})
        object.__setattr__(self, "writable", tuple(m for m in ordered if not m.read_only))


@dataclass(frozen=True)
class Operation:
    """One ``Execute`` operation: what ``MessageType``/``Action`` to send and what the XML holds.

    ``response`` is the type of the answer's root, or ``ArrayOfX`` for a list whose items are
    ``response_list_item``; ``None`` where iSync's documentation shows no answer.
    """

    message_type: str
    action: str
    request: str
    request_root: str
    response: str | None
    response_list_item: str | None = None
    summary: str = ""


def _t(name: str, *members: Member) -> DataType:
    return DataType(name, members)


def _str(name: str, required: bool = False, *, read_only: bool = False) -> Member:
    """A .NET ``string`` member: always nillable."""
    return Member(name, "string", required=required, nillable=True, read_only=read_only)


def _ro(name: str, type_: str, *, nillable: bool = False) -> Member:
    """A member only iSync's answers carry (seen in the GetWebSalesOrder response example)."""
    return Member(name, type_, nillable=nillable or type_ == "string", read_only=True)


_TYPE_LIST: tuple[DataType, ...] = (
    # ---- read criteria
    _t("ProductStockCatalogueQueryCriteria",
       Member("AddedDate", "datetime", required=True),
       Member("AvailableUnits", "bool", nillable=True)),  # bool?
    # The documentation's example opens <ProductStockCatalogueUnitsCriteria> and closes
    # </ProductStockUnitsQueryCriteria>, which is not XML; the criteria table and the closing tag
    # agree on ProductStockUnitsQueryCriteria, so that is the name used.
    _t("ProductStockUnitsQueryCriteria",
       Member("AddedDate", "datetime", required=True),
       Member("AvailableUnits", "bool", nillable=True),  # bool?
       _str("ThirdPartyBarcode")),  # pipe-delimited barcodes
    _t("WebSalesOrderQueryCriteria",
       _str("PONumber", required=True)),
    # ---- read answers. iSync's documentation shows no answer for the two stock reads; these
    # shapes are our assumption from the operations' descriptions (catalogue fields; "only
    # ProductStockID, SKU and Units"). Unknown members still parse, as text.
    _t("ProductStockCatalogue",
       Member("AddedDate", "datetime"),
       _str("Brand"),
       _str("Colour"),
       _str("Description"),
       Member("Price", "decimal"),
       Member("ProductStockID", "int"),
       _str("SKU"),
       _str("Size"),
       _str("ThirdPartyBarcode"),
       Member("Units", "decimal")),
    _t("ProductStockUnits",
       Member("ProductStockID", "int"),
       _str("SKU"),
       Member("Units", "decimal")),
    # ---- sales orders (PERSISTWEBSALESORDER; read_only members from the GETWEBSALESORDER answer)
    _t("WebSalesOrder",
       _str("Comments"),
       Member("DeliveryDetail", "AddressDetail", required=True, nillable=True),
       Member("DeliveryMethodID", "int"),
       _ro("EntitlementID", "int"),
       Member("IsGift", "bool"),
       _ro("IsXStock", "bool"),
       Member("LineItems", "WebSalesOrderDetail", required=True, nillable=True, item="WebSalesOrderDetail"),
       _str("PONumber", required=True),
       Member("PaymentMethodID", "int"),
       Member("PrintInvoice", "bool"),
       Member("RequiredDate", "datetime", required=True),
       _ro("SalesOrderID", "int"),
       _str("SpecialInstructions"),
       Member("StatusID", "int", required=True),  # 1 pending, 3 approved
       _str("TrackNo", required=True),
       _ro("WebCustomerName", "string"),
       _ro("WebSale", "bool")),
    _t("AddressDetail",
       _ro("AddressDetailID", "int"),
       _str("AddressLine1", required=True),
       _str("AddressLine2"),
       _str("AltNumber"),
       _str("City"),
       _str("Company"),
       _str("Country"),
       _str("Email"),
       _str("FullName"),
       _str("Mobile"),
       _str("Phone"),
       _str("PostCode"),
       _str("Province"),
       _ro("WarehouseID", "int", nillable=True)),  # int?
    _t("WebSalesOrderDetail",
       Member("CNTypeID", "int", required=True),  # 0 stock item, > 0 non-stock
       _ro("Comment", "string"),
       _ro("Commission", "decimal"),
       Member("Discount", "decimal"),  # a percentage
       Member("DueDate", "datetime"),
       Member("ExRate", "decimal", required=True),
       _ro("InvoiceDate", "datetime", nillable=True),  # DateTime?
       _ro("InvoiceNumber", "string"),
       _ro("InvoiceReference", "string"),
       _ro("InvoiceSubCustomer", "bool"),
       _ro("InvoiceUnits", "decimal"),
       _ro("ProductStockID", "int"),
       _ro("Reference", "string"),
       _ro("SODetailID", "int"),
       _ro("SalesOrderID", "int"),
       Member("SellingPrice", "decimal", required=True),
       Member("StatusID", "int", required=True),
       _str("ThirdPartyBarcode", required=True),
       # The table says int and the writer holds to it; the answer example carries "4.00", which
       # the parser reads as 4 (see _read_int).
       Member("Units", "int", required=True)),
    # ---- credit notes (CREATEWEBCREDITNOTE)
    _t("WebCreditNote",
       _str("Comments", required=True),
       Member("LineItems", "WebCreditNoteDetail", nillable=True, item="WebCreditNoteDetail"),
       _str("PONumber", required=True),
       _str("Reference"),
       _str("SalesOrderNumber", required=True),
       _str("TrackNo", required=True)),
    _t("WebCreditNoteDetail",
       Member("CNTypeID", "int", required=True),
       _str("Comment"),
       Member("Discount", "decimal"),
       Member("ExRate", "decimal", required=True),
       # The table marks Rate required, but the documentation's own request example omits it
       # (and the server answered it); optional here so the documented example is accepted.
       Member("Rate", "decimal"),
       _str("Reference"),
       Member("SellingPrice", "decimal", required=True),
       _str("ThirdPartyBarcode", required=True),
       Member("Units", "decimal", required=True)),
)

TYPES: dict[str, DataType] = {t.name: t for t in _TYPE_LIST}
"""Every known DataContract type by name."""

OPERATIONS: dict[str, Operation] = {op.message_type: op for op in (
    # The documentation's PHP sample sends Action 'OTHER' for a read; the method table names the
    # actions INSERT, UPDATE, DELETE and SELECT, so reads send SELECT.
    Operation("GetProductStockCatalogue", "SELECT", "ProductStockCatalogueQueryCriteria",
              "ProductStockCatalogueQueryCriteria", "ArrayOfProductStockCatalogue", "ProductStockCatalogue",
              "SKUs whose units changed since AddedDate, with their catalogue fields."),
    Operation("GetProductStockUnits", "SELECT", "ProductStockUnitsQueryCriteria",
              "ProductStockUnitsQueryCriteria", "ArrayOfProductStockUnits", "ProductStockUnits",
              "SKUs whose units changed since AddedDate: ProductStockID, SKU and Units only."),
    # iSync documents no answer for PersistWebSalesOrder; parse() types it by its root name.
    Operation("PersistWebSalesOrder", "INSERT", "WebSalesOrder", "WebSalesOrder", None, None,
              "Create a sales order."),
    Operation("GetWebSalesOrder", "SELECT", "WebSalesOrderQueryCriteria", "WebSalesOrderQueryCriteria",
              "WebSalesOrder", None, "One sales order created through the API, by PO number."),
    Operation("CreateWebCreditNote", "INSERT", "WebCreditNote", "WebCreditNote", "WebCreditNote", None,
              "Create a pending credit note."),
)}
"""Every known ``Execute`` operation by ``MessageType``."""


def _check_catalogue() -> None:
    """Fail at import if the tables name a type they do not define: a typo here is a bug, not data."""
    for dtype in TYPES.values():
        for m in dtype.members:
            if m.type not in SCALARS and m.type not in TYPES:
                raise ValueError(f"{dtype.name}.{m.name}: unknown type {m.type!r}")
    for op in OPERATIONS.values():
        for name in (op.request, op.response_list_item):
            if name is not None and name not in TYPES:
                raise ValueError(f"{op.message_type}: unknown type {name!r}")


_check_catalogue()


def _suggest(name: str, choices: Iterable[str]) -> str:
    """``; did you mean 'X'?`` (a case-insensitive match first), or the list of choices."""
    names = list(choices)
    folded = [c for c in names if c.lower() == name.lower()]
    close = folded or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; expected one of: {', '.join(names)}" if names else ""


def _get_type(type_name: str) -> DataType:
    dtype = TYPES.get(type_name)
    if dtype is None:
        raise WireError(f"unknown DataContract type '{type_name}'{_suggest(type_name, TYPES)}")
    return dtype


def operation(message_type: str) -> Operation:
    """The catalogue entry of one ``MessageType``, or a :class:`WireError` with a did-you-mean."""
    op = OPERATIONS.get(message_type)
    if op is None:
        raise WireError(f"unknown iSync operation '{message_type}'{_suggest(message_type, OPERATIONS)}")
    return op


# --------------------------------------------------------------------------- the writer


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPE = re.compile("[&<>\r]")


def _text(value: str, path: str) -> str:
    """Escape text for element content; refuse characters XML 1.0 cannot carry at all."""
    bad = _BAD_CHARS.search(value)
    if bad:
        raise WireError(f"contains a character XML cannot carry (U+{ord(bad.group()):04X})", path)
    if _ESCAPE.search(value) is None:
        return value
    # A raw CR would be read back as LF by any XML parser, hence the character reference.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _w_string(value: object, path: str) -> str:
    if isinstance(value, str):
        return _text(value, path)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a PO number read as a number from a CSV or JSON source
    raise WireError(f"expects text, got {type(value).__name__} {_describe(value)}", path)


_INTEGER = re.compile(r"[+-]?\d+\Z", re.ASCII)
_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?\Z", re.ASCII)
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)  # no Unicode digits


def _w_int(value: object, path: str) -> str:
    number: int
    if isinstance(value, bool):
        raise WireError(f"expects an integer, got the bool {value}", path)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT_TEXT.match(value.strip()):
        number = int(Decimal(value.strip()))
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise WireError(f"expects an integer, got {_describe(value)}", path)
    if not _INT32_MIN <= number <= _INT32_MAX:
        raise WireError(f"{number} is outside the range of a 32-bit integer", path)
    return str(number)


def _w_decimal(value: object, path: str) -> str:
    if isinstance(value, bool):
        raise WireError(f"expects a decimal number, got the bool {value}", path)
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))  # the shortest text that reads back as this float: 0.1, not 0.1000000000000000055
    elif isinstance(value, str) and _DECIMAL_TEXT.match(value.strip()):
        number = Decimal(value.strip())
    else:
        raise WireError(f"expects a decimal number, got {_describe(value)}", path)
    if not number.is_finite():
        raise WireError(f"expects a finite decimal number, got {number}", path)
    if number.is_zero():
        number = number.copy_abs()  # -0.0 from a float is zero to everyone; don't send "-0.0"
    if abs(number) > _DECIMAL_MAX:
        raise WireError(f"{number} is outside the range of a .NET decimal", path)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -28:  # also keeps "1e-999999999" from becoming a huge text
        raise WireError(f"{number} has more than 28 decimal places (a .NET decimal's limit)", path)
    return format(number, "f")  # plain digits, '.', never an exponent or a thousands separator


_BOOL_TEXT = {"true": "true", "1": "true", "false": "false", "0": "false"}


def _w_bool(value: object, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value in (0, 1):
        return "true" if value else "false"  # SQLite and many CSV exports carry booleans as 0/1
    if isinstance(value, str):
        text = _BOOL_TEXT.get(value.strip().lower())
        if text is not None:
            return text
    raise WireError(f"expects true or false, got {_describe(value)}", path)


_ISO_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?\Z", re.ASCII)


def _offset(offset: dt.timedelta, path: str) -> str:
    seconds = int(offset.total_seconds())
    if seconds % 60 or offset.microseconds:
        raise WireError("a UTC offset with seconds cannot be sent", path)
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _w_datetime(value: object, path: str) -> str:
    if isinstance(value, dt.datetime):
        text = (f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
                f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        offset = value.utcoffset()
        return text if offset is None else text + _offset(offset, path)
    if isinstance(value, dt.date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}T00:00:00"
    if isinstance(value, str):
        match = _ISO_DATETIME.match(value.strip())
        if match:
            year, month, day, hour, minute, second, fraction, zone = match.groups()
            try:
                dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
            except ValueError as exc:
                raise WireError(f"{value!r} is not a valid date and time ({exc})", path) from None
            if fraction is not None and len(fraction) > 7:
                raise WireError(f"{value!r} has more than 7 fractional second digits (.NET's precision)", path)
            text = f"{year}-{month}-{day}T{hour or '00'}:{minute or '00'}:{second or '00'}"
            fraction = (fraction or "").rstrip("0")
            if fraction:
                text += "." + fraction
            if zone == "Z":
                text += "+00:00"
            elif zone:
                sign, digits = zone[0], zone[1:].replace(":", "")
                if int(digits[:2]) > 14 or int(digits[2:]) > 59:
                    raise WireError(f"{value!r} has an invalid UTC offset", path)
                text += f"{sign}{digits[:2]}:{digits[2:]}"
            return text
    raise WireError(f"expects a date and time (a datetime, a date or ISO 8601 text), got {_describe(value)}", path)


_WRITERS: dict[str, Callable[[object, str], str]] = {
    "string": _w_string, "int": _w_int, "decimal": _w_decimal, "bool": _w_bool, "datetime": _w_datetime,
}


def _check_keys(dtype: DataType, values: Mapping[Any, Any], prefix: str) -> None:
    for key in values:
        if not isinstance(key, str):
            raise WireError(f"member names must be text, got {_describe(key)}", prefix)
        member = dtype.by_name.get(key)
        if member is None:
            raise WireError(f"unknown member of {dtype.name}{_suggest(key, (m.name for m in dtype.writable))}",
                            _join(prefix, key))
        if member.read_only:
            raise WireError(f"{key} is set by iSync; it cannot be sent", _join(prefix, key))


def _write_members(dtype: DataType, values: object, prefix: str, out: list[str]) -> None:
    """Append ``dtype``'s members from ``values`` in wire (ordinal) order."""
    if not isinstance(values, Mapping):
        raise WireError(f"expects an object ({dtype.name}: a mapping of member names to values), "
                        f"got {type(values).__name__}", prefix)
    _check_keys(dtype, values, prefix)
    for member in dtype.writable:
        name = member.name
        path = _join(prefix, name)
        if name not in values:
            if member.required:
                raise WireError("required member is missing", path)
            continue
        value = values[name]
        if value is None:
            if member.required:
                raise WireError("required member is None", path)
            if member.nillable:
                out.append(f'<{name} i:nil="true"/>')
            continue  # a non-nillable optional member: leave it out, the server keeps its default
        if member.item is not None:
            _write_list(member, value, path, out)
        elif member.type in TYPES:
            inner: list[str] = []
            _write_members(TYPES[member.type], value, path, inner)
            out.append(f"<{name}>{''.join(inner)}</{name}>" if inner else f"<{name}/>")
        else:
            if isinstance(value, Mapping):
                raise WireError("an object (a mapping) where a single value is expected", path)
            if isinstance(value, list | tuple | set | frozenset):
                raise WireError("a list where a single value is expected", path)
            text = _WRITERS[member.type](value, path)
            out.append(f"<{name}>{text}</{name}>" if text else f"<{name}/>")


def _write_list(member: Member, value: object, path: str, out: list[str]) -> None:
    if not isinstance(value, list | tuple):
        raise WireError(f"{member.name} expects a list, got {type(value).__name__}", path)
    if member.required and not value:
        # Seed silent: "Required" on an array is read as "at least one item".
        raise WireError(f"{member.name} is required and needs at least one item", path)
    if not value:
        out.append(f"<{member.name}/>")
        return
    item_type, tag = TYPES[member.type], member.item
    out.append(f"<{member.name}>")
    for index, entry in enumerate(value):
        item_path = f"{path}[{index}]"
        if entry is None:
            raise WireError("a list item cannot be None", item_path)
        out.append(f"<{tag}>")
        _write_members(item_type, entry, item_path, out)
        out.append(f"</{tag}>")
    out.append(f"</{member.name}>")


def write(type_name: str, values: Mapping[str, Any], *, root: str | None = None) -> str:
    """``values`` as the MessageXml of a ``type_name`` DataContract, members in wire order at every level.

    The root element is ``root`` (default ``type_name``) and declares the DTO namespace and the
    ``i`` prefix, as iSync's own examples do; there is no XML declaration (the text travels inside
    a SOAP string) and no whitespace between elements. Raises :class:`WireError` naming the
    member path on the first problem.
    """
    dtype = _get_type(type_name)
    tag = type_name if root is None else root
    if not _NAME.match(tag):
        raise WireError(f"'{tag}' is not an XML element name")
    out = [f'<{tag} xmlns="{NS}" xmlns:i="{XSI}">']
    _write_members(dtype, values, "", out)
    out.append(f"</{tag}>")
    return "".join(out)


def write_request(message_type: str, values: Mapping[str, Any]) -> str:
    """The MessageXml of one operation's request, with the root that operation expects."""
    op = operation(message_type)
    return write(op.request, values, root=op.request_root)


# --------------------------------------------------------------------------- mapping checks

PathPart = str | int
"""One step of a field path: a member name, a list index, or ``"*"`` for every list item."""


def _is_index(part: PathPart) -> bool:
    return part == "*" or (isinstance(part, int) and not isinstance(part, bool)) or \
        (isinstance(part, str) and part.isascii() and part.isdigit())


def _show(prefix: str, part: PathPart) -> str:
    return f"{prefix}[{part}]" if _is_index(part) else _join(prefix, str(part))


def _group(paths: Iterable[tuple[PathPart, ...]]) -> dict[PathPart, list[tuple[PathPart, ...]]]:
    groups: dict[PathPart, list[tuple[PathPart, ...]]] = {}
    for p in paths:
        if p:
            groups.setdefault(p[0], []).append(p[1:])
    return groups


def _check_object(dtype: DataType, own: list[tuple[PathPart, ...]], inherited: list[tuple[PathPart, ...]],
                  prefix: str, required: bool, out: list[tuple[str, str]]) -> None:
    """Report problems of ``own`` paths; ``inherited`` ones (from ``*`` items) only count as provided."""
    mine, theirs = _group(own), _group(inherited)
    for head, rests in mine.items():
        path = _show(prefix, head)
        if not isinstance(head, str) or _is_index(head):
            out.append((path, f"{dtype.name} is an object, not a list: expected a member name"))
            continue
        member = dtype.by_name.get(head)
        if member is None:
            out.append((path, f"unknown member of {dtype.name}{_suggest(head, (m.name for m in dtype.writable))}"))
        elif member.read_only:
            out.append((path, f"{head} is set by iSync; it cannot be sent"))
        elif member.item is not None:
            _check_list(member, rests, theirs.get(head, []), path, required, out)
        elif member.type in TYPES:
            # A leaf is a template producing the whole object: its members are not known here.
            whole = any(not r for r in rests + theirs.get(head, []))
            _check_object(TYPES[member.type], [r for r in rests if r], [r for r in theirs.get(head, []) if r],
                          path, required and not whole, out)
        elif any(rests):
            sub = next(r[0] for r in rests if r)
            out.append((path, f"{head} is a single value ({member.type}): a mapping where a single value is "
                              f"expected (it has no member '{sub}')"))
    if required:
        for member in dtype.writable:
            if member.required and member.name not in mine and member.name not in theirs:
                out.append((_join(prefix, member.name), "required member is missing"))


def _check_list(member: Member, own: list[tuple[PathPart, ...]], inherited: list[tuple[PathPart, ...]],
                path: str, required: bool, out: list[tuple[str, str]]) -> None:
    item_type = TYPES[member.type]
    whole = any(not r for r in own + inherited)  # a template producing the whole list
    star_own: list[tuple[PathPart, ...]] = []
    star_inh = [r[1:] for r in inherited if r and r[0] == "*"]
    by_index: dict[int, list[tuple[PathPart, ...]]] = {}
    for rest in own:
        if not rest:
            continue
        head = rest[0]
        if not _is_index(head):
            out.append((_join(path, str(head)), f"{member.name} is a list: address its items as "
                                                f"{member.name}.*.{head} or {member.name}.<n>.{head}"))
        elif head == "*":
            star_own.append(rest[1:])
        else:
            by_index.setdefault(int(head), []).append(rest[1:])
    # Required members are checked per concrete item (with what '*' gives every item) or, with no
    # concrete item, under [*]; a template for the whole list or one item provides them itself.
    _check_items(item_type, star_own, star_inh, f"{path}[*]", required and not whole and not by_index, out)
    for index, rests in by_index.items():
        _check_items(item_type, rests, star_own + star_inh, f"{path}[{index}]", required and not whole, out)


def _check_items(item_type: DataType, own: list[tuple[PathPart, ...]], inherited: list[tuple[PathPart, ...]],
                 path: str, required: bool, out: list[tuple[str, str]]) -> None:
    if not own and not inherited:
        return
    whole = any(not r for r in own + inherited)
    _check_object(item_type, [r for r in own if r], [r for r in inherited if r], path, required and not whole, out)


def check_fields(type_name: str, paths: Iterable[Sequence[PathPart]]) -> list[tuple[str, str]]:
    """Problems of the output field paths a mapping produces, before any record exists.

    Each path is a member name chain; a list item is addressed by a 0-based index or ``"*"``
    (every item): ``("LineItems", "*", "Units")``. Returns ``(path, message)`` pairs for unknown
    and read-only members, sub-fields of a single value, and required members no path provides,
    checked at the top level and inside every object or list item the mapping provides at all.
    A leaf at an object or list member is accepted as a template producing the whole value.
    Problems come sorted by path, so a report reads in a stable order whatever the mapping's.
    """
    out: list[tuple[str, str]] = []
    _check_object(_get_type(type_name), [tuple(p) for p in paths], [], "", True, out)
    return sorted(set(out))


# --------------------------------------------------------------------------- the parser

_local = threading.local()
_DECLARATION = re.compile(r"\A\ufeff?\s*<\?xml\b[^>]*\?>")
_DOCTYPE_MARKS = tuple("<!DOCTYPE".encode(enc) for enc in ("utf-8", "utf-16-le", "utf-16-be"))


def _xml_parser() -> Any:
    """One hardened parser per thread (lxml parsers must not be shared between threads)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        from lxml import etree

        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                                 remove_blank_text=True, remove_comments=True, remove_pis=True)
        _local.parser = parser
    return parser


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _is_nil(el: Any) -> bool:
    return el.get(_XSI_NIL) in ("true", "1")


def _elements(el: Any) -> list[Any]:
    return [c for c in el if isinstance(c.tag, str)]


def _r_int(text: str, path: str) -> int | Decimal:
    """An int member; an integral decimal ("4.00", as iSync sends Units) is read as that integer.

    A fractional value is kept as an exact Decimal rather than refused or rounded: it means our
    catalogue's type is wrong, and the value is still the server's.
    """
    text = text.strip()
    if _INTEGER.match(text):  # not int() alone: it also takes "1_000" and non-ASCII digits
        return int(text)
    number = _r_decimal(text, path)
    return int(number) if number == number.to_integral_value() else number


def _r_decimal(text: str, path: str) -> Decimal:
    text = text.strip()
    if not _DECIMAL_TEXT.match(text):
        raise WireError(f"{text!r} is not a decimal number", path)
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid numbers
        raise WireError(f"{text!r} is not a decimal number", path) from None


def _r_bool(text: str, path: str) -> bool:
    text = text.strip()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise WireError(f"{text!r} is not true or false", path)


_READERS: dict[str, Callable[[str, str], Any]] = {
    "string": lambda text, path: text,
    "datetime": lambda text, path: text.strip(),
    "int": _r_int, "decimal": _r_decimal, "bool": _r_bool,
}


def _p_scalar(el: Any, type_: str, path: str) -> Any:
    if _elements(el):
        raise WireError(f"expects a single {type_} value, got child elements", path)
    text = el.text or ""
    if not text and type_ not in ("string", "datetime"):
        raise WireError(f"is empty; expected a {type_} value", path)
    return _READERS[type_](text, path)


def _p_object(el: Any, dtype: DataType, path: str) -> dict[str, Any] | None:
    if _is_nil(el):
        return None
    if (el.text or "").strip():
        raise WireError(f"expects the members of {dtype.name}, got text", path)
    result: dict[str, Any] = {}
    for child in _elements(el):
        name = _local_name(child.tag)
        child_path = _join(path, name)
        member = dtype.by_name.get(name)
        if member is None:
            value = _p_untyped(child, child_path)
        elif _is_nil(child):
            value = None
        elif member.item is not None:
            value = _p_list(child, TYPES[member.type], child_path)
        elif member.type in TYPES:
            value = _p_object(child, TYPES[member.type], child_path)
        else:
            value = _p_scalar(child, member.type, child_path)
        if name in result:
            raise WireError(f"{name} appears twice in {dtype.name}", child_path)
        result[name] = value
    return result


def _p_list(el: Any, item_type: DataType, path: str) -> list[Any] | None:
    if _is_nil(el):
        return None
    return [_p_object(child, item_type, f"{path}[{i}]") for i, child in enumerate(_elements(el))]


def _collect(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A dict of an unknown element's children; a name that repeats collects its values in a list."""
    result: dict[str, Any] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if name not in result:
            result[name] = value
        elif name in repeated:
            result[name].append(value)
        else:
            result[name] = [result[name], value]
            repeated.add(name)
    return result


def _p_untyped(el: Any, path: str) -> Any:
    """An element the catalogue does not know: text, a dict, or a list when its children repeat."""
    if _is_nil(el):
        return None
    children = _elements(el)
    name = _local_name(el.tag)
    if not children:
        return [] if name.startswith(ARRAY_PREFIX) and not (el.text or "").strip() else (el.text or "")
    names = {_local_name(c.tag) for c in children}
    if name.startswith(ARRAY_PREFIX) or (len(children) > 1 and len(names) == 1):
        return [_p_untyped(c, f"{path}[{i}]") for i, c in enumerate(children)]
    return _collect((_local_name(c.tag), _p_untyped(c, _join(path, _local_name(c.tag)))) for c in children)


def _load(text: str | bytes) -> Any:
    """The root element of a hardened parse: no DOCTYPE, no entities, no network."""
    from lxml import etree

    if isinstance(text, str):
        # The MessageXml is already decoded text: a declaration (perhaps naming another encoding)
        # is meaningless here and lxml refuses str input that carries one.
        text = _DECLARATION.sub("", text, count=1)
        if "<!DOCTYPE" in text:
            raise WireError("a DOCTYPE is not allowed in MessageXml")
    elif any(mark in text for mark in _DOCTYPE_MARKS):
        raise WireError("a DOCTYPE is not allowed in MessageXml")
    if not text.strip():
        raise WireError("MessageXml is empty")
    try:
        root = etree.fromstring(text, _xml_parser())
    except etree.XMLSyntaxError as exc:
        message = str(exc.msg or exc).splitlines()[0][:200]
        raise WireError(f"MessageXml is not well-formed XML: {message}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:  # e.g. bytes in an encoding the pre-check missed
        raise WireError("a DOCTYPE is not allowed in MessageXml")
    return root


def parse(text: str | bytes, type_name: str | None = None) -> Any:
    """A response MessageXml as plain Python, typed by the catalogue.

    The root's type is ``type_name`` or, without it, the root element's name (``ArrayOfX`` is a
    list of ``X``). An object becomes a dict in document order, a list member a list (one item
    still makes a list), ``i:nil="true"`` None, decimals exact ``Decimal``, ints ``int``, bools
    ``bool``; datetimes stay the text sent (naive times in the server's zone). Unknown elements
    become text, or a dict or list by their shape. Raises :class:`WireError` for malformed XML,
    any DOCTYPE, a root of another type than ``type_name``, or a value its member's type rejects.
    """
    root = _load(text)
    name = _local_name(root.tag)
    expected = name if type_name is None else type_name
    if type_name is not None and name != type_name:
        raise WireError(f"expected a <{type_name}> document, got <{name}>")
    item = expected[len(ARRAY_PREFIX):] if expected.startswith(ARRAY_PREFIX) else None
    if item is not None and item in TYPES:
        return _p_list(root, TYPES[item], "")
    if expected in TYPES:
        return _p_object(root, TYPES[expected], "")
    if type_name is not None:
        raise WireError(f"unknown DataContract type '{type_name}'{_suggest(type_name, TYPES)}")
    return _p_untyped(root, "")


def parse_response(message_type: str, text: str | bytes) -> Any:
    """The MessageXml of one operation's answer, typed as that operation's response."""
    return parse(text, operation(message_type).response)
