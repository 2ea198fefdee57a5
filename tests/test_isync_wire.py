"""iSync's DataContract wire format, held to the examples of iSync's own API documentation.

The ``SEED_*`` texts are copied verbatim from the "Sync API Message Server" document, blank lines
included (its e-mail addresses read "[email protected]" with a no-break space, written ``\\xa0``); the
writer must produce the same elements, in the same order, with the same texts.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from isync_seed import (
    SEED_CATALOGUE_CRITERIA,
    SEED_PHP_CATALOGUE_CRITERIA,
    SEED_WEB_CREDIT_NOTE,
    SEED_WEB_CREDIT_NOTE_RESPONSE,
    SEED_WEB_SALES_ORDER,
    SEED_WEB_SALES_ORDER_CRITERIA,
    SEED_WEB_SALES_ORDER_RESPONSE,
)
from lxml import etree

from engine.adapters.isync_wire import (
    NS,
    OPERATIONS,
    SCALARS,
    TYPES,
    XSI,
    WireError,
    check_fields,
    operation,
    parse,
    parse_response,
    write,
    write_request,
)

# --------------------------------------------------------------------------- the seed's examples








# The values a mapping would produce for each request example.

ORDER_VALUES: dict[str, Any] = {
    "Comments": "",
    "DeliveryDetail": {
        "AddressLine1": "10 Downing Street",
        "AddressLine2": "Westminster",
        "AltNumber": "08358798897",
        "City": "London",
        "Company": "",
        "Country": "England",
        "Email": "[email\xa0protected]",
        "FullName": "John Doe",
        "Mobile": "08358798897",
        "Phone": "08358798897",
        "PostCode": "0007",
        "Province": "-",
    },
    "IsGift": False,
    "LineItems": [{
        "CNTypeID": 0,
        "Discount": Decimal("0.00"),
        "ExRate": 1,
        "SellingPrice": 200,
        "StatusID": 3,
        "ThirdPartyBarcode": "ABSCLS2110_00000000000621",
        "Units": 1,
    }],
    "PONumber": "1000124",
    "PaymentMethodID": 0,
    "PrintInvoice": True,
    "RequiredDate": dt.datetime(2014, 4, 9, 17, 38, 42),
    "SpecialInstructions": "",
    "StatusID": 3,
    "TrackNo": "A1567516",
}

CREDIT_NOTE_VALUES: dict[str, Any] = {
    "Comments": "other",
    "LineItems": [
        {"CNTypeID": 0, "Comment": "", "Discount": Decimal("0.00"), "ExRate": 1, "Reference": "",
         "SellingPrice": Decimal("29.95"), "ThirdPartyBarcode": "123123123123", "Units": 1},
        {"CNTypeID": 4, "Comment": "", "Discount": 0, "ExRate": 1, "Reference": "",
         "SellingPrice": Decimal("1.25"), "ThirdPartyBarcode": "", "Units": 1},
    ],
    "PONumber": "ON/21838",
    "Reference": "ST002087231-7899",
    "SalesOrderNumber": "SO-00026552",
    "TrackNo": "WEBCUSTOMER",
}


def canonical(xml: str) -> bytes:
    """C14N without the whitespace between elements: names, namespaces, order and texts remain."""
    root = etree.fromstring(xml.encode("utf-8"), etree.XMLParser(remove_blank_text=True))
    return bytes(etree.tostring(root, method="c14n"))


def shuffled(values: dict[str, Any]) -> dict[str, Any]:
    """The same mapping with its keys in reverse order, at every level."""
    def flip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: flip(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [flip(v) for v in value]
        return value
    result: dict[str, Any] = flip(values)
    return result


def wire_error(type_name: str, values: dict[str, Any]) -> WireError:
    with pytest.raises(WireError) as caught:
        write(type_name, values)
    return caught.value


def element_names(xml: str) -> list[str]:
    return [etree.QName(el).localname for el in etree.fromstring(xml.encode()).iter()]


# --------------------------------------------------------------------------- the catalogue


def test_every_type_keeps_its_members_in_ordinal_order() -> None:
    for dtype in TYPES.values():
        names = [m.name for m in dtype.members]
        assert names == sorted(names), dtype.name


def test_the_catalogue_is_closed_and_every_operation_names_known_types() -> None:
    for dtype in TYPES.values():
        for m in dtype.members:
            assert m.type in SCALARS or m.type in TYPES, f"{dtype.name}.{m.name}"
            assert m.item is None or m.type in TYPES
    assert {op.message_type: op.action for op in OPERATIONS.values()} == {
        "GetProductStockCatalogue": "SELECT", "GetProductStockUnits": "SELECT", "PersistWebSalesOrder": "INSERT",
        "GetWebSalesOrder": "SELECT", "CreateWebCreditNote": "INSERT",
    }
    for op in OPERATIONS.values():
        assert op.request in TYPES
        if op.response_list_item is not None:
            assert op.response == f"ArrayOf{op.response_list_item}"
    # .NET: a string can be null; value types only when declared nullable (bool?, int?, DateTime?).
    assert all(m.nillable for t in TYPES.values() for m in t.members if m.type == "string")
    assert TYPES["ProductStockCatalogueQueryCriteria"].by_name["AvailableUnits"].nillable
    assert not TYPES["WebSalesOrderDetail"].by_name["Units"].nillable


def test_an_unknown_operation_suggests_the_nearest() -> None:
    with pytest.raises(WireError, match="did you mean 'GetWebSalesOrder'"):
        operation("GetWebSaleOrder")


# --------------------------------------------------------------------------- the writer, against the seed


def test_the_php_samples_criteria_are_written_byte_for_byte() -> None:
    assert write("ProductStockCatalogueQueryCriteria", {"AddedDate": dt.date(2016, 6, 1)}) \
        == SEED_PHP_CATALOGUE_CRITERIA


@pytest.mark.parametrize(("type_name", "values", "seed"), [
    ("ProductStockCatalogueQueryCriteria", {"AddedDate": dt.datetime(2016, 1, 1)}, SEED_CATALOGUE_CRITERIA),
    ("WebSalesOrderQueryCriteria", {"PONumber": "081341987533"}, SEED_WEB_SALES_ORDER_CRITERIA),
    ("WebSalesOrder", ORDER_VALUES, SEED_WEB_SALES_ORDER),
    ("WebCreditNote", CREDIT_NOTE_VALUES, SEED_WEB_CREDIT_NOTE),
], ids=["catalogue-criteria", "order-criteria", "order", "credit-note"])
def test_the_writer_reproduces_the_seeds_request_examples(type_name: str, values: dict[str, Any], seed: str) -> None:
    written = write(type_name, values)
    assert canonical(written) == canonical(seed)
    assert canonical(write(type_name, shuffled(values))) == canonical(seed)
    assert "\n" not in written and "> <" not in written
    assert written.startswith(f'<{type_name} xmlns="{NS}" xmlns:i="{XSI}">')


def test_the_units_criteria_use_the_table_name_not_the_malformed_examples() -> None:
    # The seed opens <ProductStockCatalogueUnitsCriteria> and closes </ProductStockUnitsQueryCriteria>.
    fixed = ('<ProductStockUnitsQueryCriteria xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO" '
             'xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><AddedDate>2016-01-01T00:00:00</AddedDate>'
             '</ProductStockUnitsQueryCriteria>')
    assert write_request("GetProductStockUnits", {"AddedDate": "2016-01-01"}) == fixed
    assert OPERATIONS["GetProductStockUnits"].request_root == "ProductStockUnitsQueryCriteria"


# --------------------------------------------------------------------------- ordering


def test_members_come_out_sorted_at_every_level_whatever_order_they_came_in() -> None:
    written = write("WebSalesOrder", shuffled(ORDER_VALUES))
    root = etree.fromstring(written.encode())
    for el in root.iter():
        children = [etree.QName(c).localname for c in el]
        if etree.QName(el).localname != "LineItems":
            assert children == sorted(children)
    # Ordinal, case-sensitive: 'O' < 'a', so PONumber precedes PaymentMethodID.
    top = [etree.QName(c).localname for c in root]
    assert top.index("PONumber") < top.index("PaymentMethodID")


def test_ordering_is_case_sensitive() -> None:
    written = write("ProductStockCatalogue", {"Size": "M", "SKU": "A-1", "Brand": "b", "ThirdPartyBarcode": "9"})
    assert element_names(written)[1:] == ["Brand", "SKU", "Size", "ThirdPartyBarcode"]  # 'K' < 'i'


# --------------------------------------------------------------------------- the writer's refusals


def test_an_unknown_member_names_its_path_and_the_nearest_member() -> None:
    values = {**ORDER_VALUES, "DeliveryDetail": {**ORDER_VALUES["DeliveryDetail"], "AdressLine2": "x"}}
    error = wire_error("WebSalesOrder", values)
    assert error.path == "DeliveryDetail.AdressLine2"
    assert error.message == "unknown member of AddressDetail; did you mean 'AddressLine2'?"
    assert str(error) == "DeliveryDetail.AdressLine2: unknown member of AddressDetail; did you mean 'AddressLine2'?"
    assert isinstance(error, ValueError)
    assert "did you mean 'PONumber'" in str(wire_error("WebSalesOrderQueryCriteria", {"PoNumber": "1"}))


def test_a_required_member_missing_at_depth_names_its_path() -> None:
    second = {k: v for k, v in ORDER_VALUES["LineItems"][0].items() if k != "ThirdPartyBarcode"}
    error = wire_error("WebSalesOrder", {**ORDER_VALUES, "LineItems": [ORDER_VALUES["LineItems"][0], second]})
    assert (error.path, error.message) == ("LineItems[1].ThirdPartyBarcode", "required member is missing")
    no_street = {k: v for k, v in ORDER_VALUES["DeliveryDetail"].items() if k != "AddressLine1"}
    assert wire_error("WebSalesOrder", {**ORDER_VALUES, "DeliveryDetail": no_street}).path \
        == "DeliveryDetail.AddressLine1"
    assert wire_error("WebSalesOrder", {**ORDER_VALUES, "LineItems": []}).path == "LineItems"


def test_lists_and_single_values_are_not_confused() -> None:
    error = wire_error("WebSalesOrder", {**ORDER_VALUES, "LineItems": ORDER_VALUES["LineItems"][0]})
    assert (error.path, error.message) == ("LineItems", "LineItems expects a list, got dict")
    error = wire_error("WebSalesOrder", {**ORDER_VALUES, "PONumber": ["1", "2"]})
    assert (error.path, error.message) == ("PONumber", "a list where a single value is expected")
    assert "single value" in str(wire_error("WebSalesOrder", {**ORDER_VALUES, "StatusID": {"x": 1}}))
    assert wire_error("WebSalesOrder", {**ORDER_VALUES, "DeliveryDetail": "10 Downing St"}).path == "DeliveryDetail"
    assert wire_error("WebSalesOrder", {**ORDER_VALUES, "LineItems": [None]}).path == "LineItems[0]"


def test_read_only_members_cannot_be_sent() -> None:
    error = wire_error("WebSalesOrder", {**ORDER_VALUES, "SalesOrderID": 33534})
    assert str(error) == "SalesOrderID: SalesOrderID is set by iSync; it cannot be sent"
    line = {**ORDER_VALUES["LineItems"][0], "SODetailID": 1}
    assert wire_error("WebSalesOrder", {**ORDER_VALUES, "LineItems": [line]}).path == "LineItems[0].SODetailID"


@pytest.mark.parametrize(("value", "text"), [
    (1e-7, "0.0000001"),
    (0.1, "0.1"),
    (1e22, "10000000000000000000000"),
    (-0.0, "0.0"),
    (Decimal("1E+2"), "100"),
    (Decimal("16.360"), "16.360"),
    ("1.5e3", "1500"),
    (" 2.50 ", "2.50"),
    (7, "7"),
])
def test_decimals_are_plain_digits(value: object, text: str) -> None:
    assert write("ProductStockUnits", {"Units": value}).endswith(f"<Units>{text}</Units></ProductStockUnits>")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity"), "NaN",
                                   "1,5", "1_000", True, Decimal("1E+30"), dt.date(2020, 1, 1),
                                   "1e-999999999", 5e-324, "\u0663"])
def test_decimals_refuse_what_net_cannot_hold(value: object) -> None:
    assert wire_error("ProductStockUnits", {"Units": value}).path == "Units"


@pytest.mark.parametrize(("value", "text"), [(3, "3"), ("12", "12"), ("4.00", "4"), (Decimal("5"), "5"),
                                             (2.0, "2"), (-1, "-1")])
def test_ints(value: object, text: str) -> None:
    assert f"<ProductStockID>{text}</ProductStockID>" in write("ProductStockUnits", {"ProductStockID": value})


@pytest.mark.parametrize("value", [True, False, 1.5, "1.5", Decimal("1.5"), "x", 2**31, "1e3"])
def test_ints_refuse_bools_fractions_and_overflow(value: object) -> None:
    assert wire_error("ProductStockUnits", {"ProductStockID": value}).path == "ProductStockID"


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false"), ("true", "true"), ("false", "false"),
                                             ("1", "true"), ("0", "false"), ("True", "true"), (1, "true")])
def test_bools(value: object, text: str) -> None:
    assert f"<AvailableUnits>{text}</AvailableUnits>" in write(
        "ProductStockCatalogueQueryCriteria", {"AddedDate": "2016-01-01", "AvailableUnits": value})


@pytest.mark.parametrize("value", ["yes", "", 2, Decimal("1"), "t"])
def test_bools_refuse_anything_else(value: object) -> None:
    error = wire_error("ProductStockCatalogueQueryCriteria", {"AddedDate": "2016-01-01", "AvailableUnits": value})
    assert error.path == "AvailableUnits"


@pytest.mark.parametrize(("value", "text"), [
    (dt.datetime(2014, 4, 9, 17, 38, 42), "2014-04-09T17:38:42"),
    (dt.datetime(2014, 4, 9, 17, 38, 42, 120000), "2014-04-09T17:38:42.12"),
    (dt.date(2014, 4, 9), "2014-04-09T00:00:00"),
    (dt.datetime(2014, 4, 9, 8, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2014-04-09T08:00:00+02:00"),
    (dt.datetime(2014, 4, 9, 8, tzinfo=dt.UTC), "2014-04-09T08:00:00+00:00"),
    ("2014-04-09T17:38:42", "2014-04-09T17:38:42"),
    ("2014-04-09 17:38", "2014-04-09T17:38:00"),
    ("2014-04-09T17:38:42.1234567", "2014-04-09T17:38:42.1234567"),
    ("2014-04-09T17:38:42.500", "2014-04-09T17:38:42.5"),
    ("2014-04-09T17:38:42Z", "2014-04-09T17:38:42+00:00"),
    ("2014-04-09T17:38:42-0530", "2014-04-09T17:38:42-05:30"),
])
def test_datetimes(value: object, text: str) -> None:
    assert f"<AddedDate>{text}</AddedDate>" in write("ProductStockCatalogueQueryCriteria", {"AddedDate": value})


@pytest.mark.parametrize("value", ["2014-02-30", "\u0662\u0660\u0661\u0664-04-09",
                                   "09/04/2014", "2014-04-09T17:38:42.12345678", 1397065122,
                                   dt.time(10, 0), "2014-04-09T25:00:00"])
def test_datetimes_refuse_what_is_not_one(value: object) -> None:
    assert wire_error("ProductStockCatalogueQueryCriteria", {"AddedDate": value}).path == "AddedDate"


def test_none_is_nil_omitted_or_refused_by_the_members_type() -> None:
    base = {"AddedDate": "2016-01-01"}
    nillable = write("ProductStockUnitsQueryCriteria", {**base, "AvailableUnits": None, "ThirdPartyBarcode": None})
    assert '<AvailableUnits i:nil="true"/><ThirdPartyBarcode i:nil="true"/>' in nillable
    omitted = write("WebSalesOrder", {**ORDER_VALUES, "IsGift": None, "PaymentMethodID": None})
    assert "IsGift" not in omitted and "PaymentMethodID" not in omitted
    error = wire_error("WebSalesOrder", {**ORDER_VALUES, "RequiredDate": None})
    assert (error.path, error.message) == ("RequiredDate", "required member is None")
    assert parse(nillable) == {"AddedDate": "2016-01-01T00:00:00", "AvailableUnits": None, "ThirdPartyBarcode": None}


def test_text_is_escaped_and_unrepresentable_characters_are_refused() -> None:
    tricky = "A & B <C> ]]> \"q\" 'a'\r\n\tÅ€😀"
    written = write("WebSalesOrderQueryCriteria", {"PONumber": tricky})
    assert parse(written) == {"PONumber": tricky}
    assert wire_error("WebSalesOrderQueryCriteria", {"PONumber": "bell\x07"}).message.endswith("(U+0007)")
    assert "<PONumber>1000124</PONumber>" in write("WebSalesOrderQueryCriteria", {"PONumber": 1000124})
    assert wire_error("WebSalesOrderQueryCriteria", {"PONumber": 1.5}).path == "PONumber"


def test_unknown_types_and_bad_roots_are_refused() -> None:
    with pytest.raises(WireError, match="did you mean 'WebSalesOrder'"):
        write("WebSaleOrder", {})
    with pytest.raises(WireError, match="not an XML element name"):
        write("WebSalesOrderQueryCriteria", {"PONumber": "1"}, root="x y")
    assert write("WebSalesOrderQueryCriteria", {"PONumber": "1"}, root="Criteria").startswith("<Criteria ")


# --------------------------------------------------------------------------- the parser, against the seed


def test_the_get_web_sales_order_response_parses_typed() -> None:
    order = parse_response("GetWebSalesOrder", SEED_WEB_SALES_ORDER_RESPONSE)
    assert order == parse(SEED_WEB_SALES_ORDER_RESPONSE)  # typed by its root name as well
    assert order["DeliveryDetail"] == {
        "AddressDetailID": 28701, "AddressLine1": "10 Downing Street", "AddressLine2": "Westminster",
        "AltNumber": "", "City": "London", "Company": "", "Country": "", "Email": "[email\xa0protected]",
        "FullName": "John Doe", "Mobile": "", "Phone": "08358798897", "PostCode": "0007", "Province": "-",
        "WarehouseID": None,
    }
    assert list(order) == [etree.QName(c).localname for c in etree.fromstring(SEED_WEB_SALES_ORDER_RESPONSE)]
    assert order["Comments"] == "" and order["DeliveryMethodID"] == 1 and order["IsGift"] is True
    assert order["SalesOrderID"] == 33534 and order["RequiredDate"] == "2018-09-01T00:00:00"
    assert order["PONumber"] == "081341987533" and order["WebSale"] is True
    [line] = order["LineItems"]  # one item is still a list
    assert line == {
        "CNTypeID": 0, "Comment": "", "Commission": Decimal("10.00"), "Discount": Decimal("0.00"),
        "DueDate": "2018-09-01T00:00:00", "ExRate": Decimal("1.0000"), "InvoiceDate": None, "InvoiceNumber": "",
        "InvoiceReference": "", "InvoiceSubCustomer": False, "InvoiceUnits": Decimal("0.00"), "ProductStockID": 0,
        "Reference": "", "SODetailID": 136141, "SalesOrderID": 33534, "SellingPrice": Decimal("16.36"),
        "StatusID": 11, "ThirdPartyBarcode": "999999999999", "Units": 4,
    }
    assert str(line["SellingPrice"]) == "16.36" and str(line["Commission"]) == "10.00"
    assert type(line["Units"]) is int  # the table's int, sent as "4.00"


def test_the_credit_note_response_parses_typed() -> None:
    note = parse_response("CreateWebCreditNote", SEED_WEB_CREDIT_NOTE_RESPONSE)
    assert note == {**CREDIT_NOTE_VALUES, "LineItems": [
        {**item, "Discount": Decimal(str(item["Discount"])), "ExRate": Decimal(1), "Units": Decimal(1)}
        for item in CREDIT_NOTE_VALUES["LineItems"]]}
    assert all(type(item["Units"]) is Decimal and type(item["CNTypeID"]) is int for item in note["LineItems"])


def test_a_stock_list_parses_as_a_list_of_typed_items() -> None:
    body = (f"<ArrayOfProductStockUnits xmlns='{NS}' xmlns:i='{XSI}'><ProductStockUnits>"
            "<ProductStockID>7</ProductStockID><SKU>A</SKU><Units>2.50</Units></ProductStockUnits>"
            "</ArrayOfProductStockUnits>")
    assert parse_response("GetProductStockUnits", body) == [{"ProductStockID": 7, "SKU": "A", "Units": Decimal("2.50")}]
    empty = f"<ArrayOfProductStockCatalogue xmlns='{NS}'/>"
    assert parse_response("GetProductStockCatalogue", empty) == []


def test_unknown_members_parse_by_shape() -> None:
    body = (f"<ProductStockUnits xmlns='{NS}' xmlns:i='{XSI}'><SKU>A</SKU><Extra>x</Extra><Blank/>"
            "<Nil i:nil='true'/><Obj><A>1</A><B/></Obj><Many><V>1</V><V>2</V></Many>"
            "<Mixed><V>1</V><V>2</V><W>3</W></Mixed><ArrayOfThing><Thing>t</Thing></ArrayOfThing></ProductStockUnits>")
    assert parse(body) == {"SKU": "A", "Extra": "x", "Blank": "", "Nil": None, "Obj": {"A": "1", "B": ""},
                           "Many": ["1", "2"], "Mixed": {"V": ["1", "2"], "W": "3"}, "ArrayOfThing": ["t"]}
    assert parse(f"<Unknown xmlns='{NS}'><A>1</A></Unknown>") == {"A": "1"}


@pytest.mark.parametrize(("body", "message"), [
    (f"<ProductStockUnits xmlns='{NS}'><Units>many</Units></ProductStockUnits>", "Units: 'many' is not a decimal"),
    (f"<ProductStockUnits xmlns='{NS}'><ProductStockID/></ProductStockUnits>", "ProductStockID: is empty"),
    (f"<WebCreditNote xmlns='{NS}'><LineItems><WebCreditNoteDetail><CNTypeID>yes</CNTypeID>"
     "</WebCreditNoteDetail></LineItems></WebCreditNote>", "LineItems[0].CNTypeID: 'yes' is not a decimal"),
    (f"<WebSalesOrder xmlns='{NS}'><IsGift>maybe</IsGift></WebSalesOrder>", "IsGift: 'maybe' is not true or false"),
    (f"<ProductStockUnits xmlns='{NS}'><ProductStockID>1_000</ProductStockID></ProductStockUnits>", "not a decimal"),
    (f"<WebSalesOrder xmlns='{NS}'><PONumber>1</PONumber><PONumber>2</PONumber></WebSalesOrder>", "appears twice"),
    ("<WebSalesOrder><SKU>", "not well-formed"),
    ("", "empty"),
])
def test_the_parser_refuses_what_its_types_cannot_hold(body: str, message: str) -> None:
    with pytest.raises(WireError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(body)


def test_a_root_of_another_type_is_refused() -> None:
    with pytest.raises(WireError, match="expected a <WebSalesOrder> document, got <WebCreditNote>"):
        parse(SEED_WEB_CREDIT_NOTE_RESPONSE, "WebSalesOrder")


def test_declarations_and_bytes_are_accepted() -> None:
    body = '<?xml version="1.0" encoding="utf-16"?>\n' + SEED_WEB_CREDIT_NOTE_RESPONSE
    assert parse(body) == parse(SEED_WEB_CREDIT_NOTE_RESPONSE.encode("utf-8")) == parse(SEED_WEB_CREDIT_NOTE_RESPONSE)


# --------------------------------------------------------------------------- hardening

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<WebSalesOrderQueryCriteria><PONumber>&lol9;</PONumber></WebSalesOrderQueryCriteria>"""


@pytest.mark.parametrize("encode", [str, lambda s: s.encode("utf-8"), lambda s: s.encode("utf-16")],
                         ids=["str", "utf-8", "utf-16"])
def test_a_doctype_with_entities_is_refused_fast(encode: Any) -> None:
    started = time.perf_counter()
    with pytest.raises(WireError, match="DOCTYPE is not allowed"):
        parse(encode(BILLION_LAUGHS))
    assert time.perf_counter() - started < 1


def test_an_external_entity_is_never_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET", encoding="utf-8")
    for target in (secret.as_uri(), "file:///etc/passwd"):
        body = (f'<!DOCTYPE r [<!ENTITY xxe SYSTEM "{target}">]>'
                f"<WebSalesOrderQueryCriteria><PONumber>&xxe;</PONumber></WebSalesOrderQueryCriteria>")
        with pytest.raises(WireError, match="DOCTYPE is not allowed"):
            parse(body)
        # The parser underneath, used directly past the DOCTYPE check, does not resolve it either.
        from engine.adapters.isync_wire import _xml_parser

        root = etree.fromstring(body.encode(), _xml_parser())
        assert "TOP-SECRET" not in etree.tostring(root, encoding="unicode")
        assert "root:" not in etree.tostring(root, encoding="unicode")
        assert not (root.findtext("PONumber") or "")


def test_an_undeclared_entity_is_malformed() -> None:
    with pytest.raises(WireError, match="not well-formed"):
        parse("<WebSalesOrderQueryCriteria><PONumber>&xxe;</PONumber></WebSalesOrderQueryCriteria>")


# --------------------------------------------------------------------------- check_fields

ORDER_PATHS: list[tuple[str | int, ...]] = [
    ("Comments",), ("DeliveryDetail", "AddressLine1"), ("DeliveryDetail", "City"), ("LineItems", "*", "CNTypeID"),
    ("LineItems", "*", "ExRate"), ("LineItems", "*", "SellingPrice"), ("LineItems", "*", "StatusID"),
    ("LineItems", "*", "ThirdPartyBarcode"), ("LineItems", "*", "Units"), ("PONumber",), ("RequiredDate",),
    ("StatusID",), ("TrackNo",),
]


def test_check_fields_accepts_a_complete_mapping() -> None:
    assert check_fields("WebSalesOrder", ORDER_PATHS) == []
    # Whole objects and lists from one template each: their insides are the template's business.
    assert check_fields("WebSalesOrder", [("DeliveryDetail",), ("LineItems",), ("PONumber",), ("RequiredDate",),
                                          ("StatusID",), ("TrackNo",)]) == []
    assert check_fields("WebSalesOrderQueryCriteria", [("PONumber",)]) == []


def test_check_fields_reports_unknown_read_only_and_misshapen_members() -> None:
    paths = [*ORDER_PATHS, ("PONumbr",), ("DeliveryDetail", "AdressLine2"), ("LineItems", "*", "SODetailID"),
             ("StatusID", "Code"), ("SalesOrderID",), ("LineItems", "Units")]
    assert check_fields("WebSalesOrder", paths) == [
        ("DeliveryDetail.AdressLine2", "unknown member of AddressDetail; did you mean 'AddressLine2'?"),
        ("LineItems.Units", "LineItems is a list: address its items as LineItems.*.Units or LineItems.<n>.Units"),
        ("LineItems[*].SODetailID", "SODetailID is set by iSync; it cannot be sent"),
        ("PONumbr", "unknown member of WebSalesOrder; did you mean 'PONumber'?"),
        ("SalesOrderID", "SalesOrderID is set by iSync; it cannot be sent"),
        ("StatusID", "StatusID is a single value (int): a mapping where a single value is expected "
                     "(it has no member 'Code')"),
    ]


def test_check_fields_reports_required_members_only_where_the_mapping_reaches() -> None:
    problems = check_fields("WebSalesOrder", [("PONumber",), ("DeliveryDetail", "City"), ("LineItems", "*", "Units")])
    assert problems == [
        ("DeliveryDetail.AddressLine1", "required member is missing"),
        ("LineItems[*].CNTypeID", "required member is missing"),
        ("LineItems[*].ExRate", "required member is missing"),
        ("LineItems[*].SellingPrice", "required member is missing"),
        ("LineItems[*].StatusID", "required member is missing"),
        ("LineItems[*].ThirdPartyBarcode", "required member is missing"),
        ("RequiredDate", "required member is missing"),
        ("StatusID", "required member is missing"),
        ("TrackNo", "required member is missing"),
    ]
    # Nothing below DeliveryDetail is demanded when the mapping does not produce it at all.
    assert check_fields("WebSalesOrder", [("PONumber",), ("RequiredDate",), ("StatusID",), ("TrackNo",)]) == [
        ("DeliveryDetail", "required member is missing"), ("LineItems", "required member is missing")]


def test_check_fields_with_indexed_items() -> None:
    shared = [("LineItems", "*", name) for name in ("CNTypeID", "ExRate", "SellingPrice", "StatusID", "Units")]
    paths = [p for p in ORDER_PATHS if p[0] != "LineItems"] + shared + [
        ("LineItems", 0, "ThirdPartyBarcode"), ("LineItems", 1, "Discount"), ("LineItems", 1, "Discont")]
    assert check_fields("WebSalesOrder", paths) == [
        ("LineItems[1].Discont", "unknown member of WebSalesOrderDetail; did you mean 'Discount'?"),
        ("LineItems[1].ThirdPartyBarcode", "required member is missing"),
    ]
    assert check_fields("WebCreditNote", [("Comments",), ("PONumber",), ("SalesOrderNumber",), ("TrackNo",),
                                          ("LineItems", 0)]) == []  # one whole item from a template
    assert check_fields("WebSalesOrderQueryCriteria", [(0,), ("PONumber",)]) == [
        ("[0]", "WebSalesOrderQueryCriteria is an object, not a list: expected a member name")]


# --------------------------------------------------------------------------- round trips


def test_parse_of_write_gives_the_values_back_typed() -> None:
    order = {**ORDER_VALUES, "RequiredDate": "2014-04-09T17:38:42",
             "LineItems": [{**ORDER_VALUES["LineItems"][0], "ExRate": Decimal("1"), "SellingPrice": Decimal("200"),
                            "DueDate": "2014-04-10T00:00:00.5"}],
             "DeliveryDetail": {**ORDER_VALUES["DeliveryDetail"], "Email": None, "Company": "  spaced  "}}
    assert parse(write("WebSalesOrder", order)) == order
    note = {**CREDIT_NOTE_VALUES, "LineItems": [
        {**item, "Discount": Decimal(str(item["Discount"])), "ExRate": Decimal(1), "Units": Decimal("1.25"),
         "Rate": Decimal("0.1")} for item in CREDIT_NOTE_VALUES["LineItems"]]}
    assert parse(write("WebCreditNote", note)) == note
    catalogue = {"AddedDate": "2020-02-02T10:00:00", "Brand": "B&Co", "Colour": None, "Price": Decimal("-0.50"),
                 "ProductStockID": 2147483647, "SKU": "S", "Size": "", "Units": Decimal("1E-7")}
    assert parse(write("ProductStockCatalogue", catalogue)) == catalogue


def test_the_writer_is_fast_enough_for_a_request_per_order() -> None:
    lines = ORDER_VALUES["LineItems"] * 50
    started = time.perf_counter()
    for _ in range(200):
        write("WebSalesOrder", {**ORDER_VALUES, "LineItems": lines})
    assert time.perf_counter() - started < 5  # ~10,000 lines; generous for slow CI machines
