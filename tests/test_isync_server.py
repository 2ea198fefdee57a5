"""The iSync test server itself, driven through zeep as a real SOAP client (and raw HTTP where zeep hides things).

The sync client is tested against this server, so the server must first be shown to keep the seed's
contract: sessions voided by a newer login, the catalogue's ``>``/``>=`` boundary, WCF's rule that an
out-of-order member is silently ignored, the business errors' texts, and failures injected before or after
an operation -- the case where an order is stored although the client saw an error.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import zeep
import zeep.exceptions
from isync_seed import SEED_WEB_CREDIT_NOTE, SEED_WEB_SALES_ORDER, SEED_WEB_SALES_ORDER_CRITERIA
from lxml import etree
from servers.isync_server import DC_NS, INVALID_LOGIN, XSI_NS, ISyncServer

REPO = Path(__file__).resolve().parents[1]
PUBLISH = datetime(2024, 5, 6, 7, 8, 9)
T0 = datetime(2024, 3, 1, 9, 0, 0)
T1 = datetime(2024, 3, 1, 10, 0, 0)
T2 = datetime(2024, 3, 1, 11, 0, 0)
SEED_BARCODE = "ABSCLS2110_00000000000621"

# The seed's PersistWebSalesOrder example, verbatim (including its e-mail address as the document carries it).

# The seed's GetWebSalesOrder criteria, with its line breaks inside the start tag, for the seed's order.

# The seed's CreateWebCreditNote example, verbatim.


# ---------------------------------------------------------------------------------------------- helpers

def dc(root: str, inner: str) -> str:
    """A DataContract document: ``inner`` under ``root`` in the iSync DTO namespace."""
    return f'<{root} xmlns="{DC_NS}" xmlns:i="{XSI_NS}">{inner}</{root}>'


def order_xml(po_number: str = "PO-1", *, barcode: str = "BC000001", lines: str | None = None,
              address: str = "<AddressLine1>1 Main Road</AddressLine1><FullName>Jane Roe</FullName>",
              before: str = "", between: str = "", after: str = "") -> str:
    """A valid WebSalesOrder, with hooks to put members where they do not belong."""
    line = (f"<WebSalesOrderDetail><CNTypeID>0</CNTypeID><ExRate>1</ExRate><SellingPrice>99.5</SellingPrice>"
            f"<StatusID>3</StatusID><ThirdPartyBarcode>{barcode}</ThirdPartyBarcode><Units>2</Units>"
            f"</WebSalesOrderDetail>")
    return dc("WebSalesOrder", (
        f"{before}<DeliveryDetail>{address}</DeliveryDetail>{between}"
        f"<LineItems>{line if lines is None else lines}</LineItems><PONumber>{po_number}</PONumber>"
        f"<RequiredDate>2024-04-09T17:38:42</RequiredDate><StatusID>3</StatusID><TrackNo>T-9</TrackNo>{after}"))


def children(xml: str) -> tuple[etree._Element, list[str]]:
    """The parsed MessageXml and its root's member names, to check the ordinal order."""
    root = etree.fromstring(xml)
    return root, [etree.QName(child).localname for child in root]


def text(element: etree._Element, path: str) -> str | None:
    """The text of a descendant found by a ``/``-separated member path."""
    found = element.find("/".join(f"{{{DC_NS}}}{part}" for part in path.split("/")))
    assert found is not None, path
    return found.text


@contextmanager
def soap_client(wsdl: str) -> Iterator[zeep.Client]:
    """A zeep client whose HTTP session is closed afterwards (no ResourceWarning)."""
    client = zeep.Client(wsdl)
    try:
        yield client
    finally:
        client.transport.session.close()


class Session:
    """A logged-in zeep client: ``call`` runs Execute with fixed header fields."""

    def __init__(self, client: zeep.Client, username: str = "webstore", password: str = "s3cret", *,
                 key: str | None = None) -> None:
        self.client = client
        self.key = key or client.service.Login(username=username, password=password)

    def call(self, message_type: str, xml: str | None, **header: Any) -> Any:
        """Execute, returning zeep's ResponseMessage."""
        request = {"MessageType": message_type, "Identifier": "42", "Source": "tests", "PublishDate": PUBLISH,
                   "Instance": "7", "Action": "OTHER", "SessionKey": self.key, "MessageXml": xml, **header}
        return self.client.service.Execute(request=request)

    def ok(self, message_type: str, xml: str | None) -> str:
        """Execute that must succeed; its MessageXml."""
        response = self.call(message_type, xml)
        assert (response.SuccessFlag, response.ResponseText) == (True, "OK")
        assert isinstance(response.MessageXml, str)
        return response.MessageXml

    def error(self, message_type: str, xml: str | None) -> str:
        """Execute that must fail as a business error; its ResponseText."""
        response = self.call(message_type, xml)
        assert response.SuccessFlag is False, response.MessageXml
        assert isinstance(response.ResponseText, str)
        return response.ResponseText


@contextmanager
def running(**options: Any) -> Iterator[ISyncServer]:
    """A started server; on the way out it must have had no internal error."""
    with ISyncServer(**options) as server:
        yield server
        assert server.internal_errors == []


@pytest.fixture
def server() -> Iterator[ISyncServer]:
    """A server with the default settings and three products added at T0."""
    with running() as srv:
        srv.add_products(3, at=T0)
        yield srv


@pytest.fixture
def session(server: ISyncServer) -> Iterator[Session]:
    """A zeep client on :func:`server`, logged in."""
    with soap_client(server.wsdl_url) as client:
        yield Session(client)


# ---------------------------------------------------------------------------------------------- login

def test_a_second_login_voids_the_first_key(server: ISyncServer, session: Session) -> None:
    query = dc("WebSalesOrderQueryCriteria", "<PONumber>none</PONumber>")
    first = session.key
    assert "not found" in session.error("GetWebSalesOrder", query)  # the key works: the order is missing
    second = session.client.service.Login(username="webstore", password="s3cret")
    assert second != first and server.logins == 2
    for key in (first, "never-issued", None):
        response = session.call("GetWebSalesOrder", query, SessionKey=key)
        assert response.SuccessFlag is False
        assert "session key" in response.ResponseText and "superseded" in response.ResponseText
    session.key = second
    assert "not found" in session.error("GetWebSalesOrder", query)


@pytest.mark.parametrize("username", ["webstore", "intruder"])
def test_a_wrong_password_faults_without_echoing_it(server: ISyncServer, session: Session, username: str) -> None:
    with pytest.raises(zeep.exceptions.Fault) as caught:
        session.client.service.Login(username=username, password="hunter2-guess")
    assert caught.value.message == INVALID_LOGIN
    envelope = ('<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
                '<Login xmlns="http://tempuri.org/"><username>webstore</username><password>hunter2-guess</password>'
                "</Login></s:Body></s:Envelope>")
    raw = requests.post(server.url, data=envelope, timeout=10,
                        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"Login"'})
    assert raw.status_code == 500 and INVALID_LOGIN in raw.text and "hunter2" not in raw.text
    assert server.failed_logins == 2


def test_header_fields_are_echoed_and_unknown_message_types_refused(session: Session) -> None:
    response = session.call("GetEverything", dc("X", ""))
    assert response.SuccessFlag is False and "Unknown MessageType" in response.ResponseText
    assert (response.MessageType, response.Identifier, response.Source, response.Instance, response.Action) == (
        "GetEverything", "42", "tests", "7", "OTHER")
    assert response.PublishDate.replace(tzinfo=None) == PUBLISH and response.MessageXml is None


# ---------------------------------------------------------------------------------------------- products

@pytest.mark.parametrize(("comparison", "expected"), [(">", ["BC000004"]), (">=", ["BC000002", "BC000003",
                                                                                  "BC000004"])])
def test_catalogue_returns_products_after_the_date_ties_by_comparison(comparison: str, expected: list[str]) -> None:
    with running(comparison=comparison) as server, soap_client(server.wsdl_url) as client:
        server.add_products(1, at=T0)
        server.add_products(2, at=T1)  # two products share the boundary stamp
        server.add_products(1, at=T2)
        session = Session(client)
        criteria = dc("ProductStockCatalogueQueryCriteria", f"<AddedDate>{T1.isoformat()}</AddedDate>")
        root, _ = children(session.ok("GetProductStockCatalogue", criteria))
        assert etree.QName(root).localname == "ArrayOfProductStockCatalogue"
        assert [text(item, "ThirdPartyBarcode") for item in root] == expected
        before_all = dc("ProductStockCatalogueQueryCriteria", "<AddedDate>2016-06-01T00:00:00</AddedDate>")
        root, _ = children(session.ok("GetProductStockCatalogue", before_all))
        assert [text(item, "ProductStockID") for item in root] == ["1", "2", "3", "4"]
        members = [etree.QName(child).localname for child in root[0]]
        assert members == sorted(members) == ["AddedDate", "Brand", "Colour", "Description", "Price",
                                              "ProductStockID", "SKU", "Size", "ThirdPartyBarcode", "Units"]
        assert text(root[0], "AddedDate") == T0.isoformat() and text(root[0], "Units") == "1.00"
        nil = root[2].find(f"{{{DC_NS}}}Colour")  # product 3 has no colour
        assert nil is not None and nil.get(f"{{{XSI_NS}}}nil") == "true"

        server.touch(["BC000001"], at=T2, Units=Decimal("0.00"))  # a stock movement: back in the feed, sold out
        available = dc("ProductStockCatalogueQueryCriteria",
                       f"<AddedDate>{T1.isoformat()}</AddedDate><AvailableUnits>true</AvailableUnits>")
        root, _ = children(session.ok("GetProductStockCatalogue", available))
        assert "BC000001" not in [text(item, "ThirdPartyBarcode") for item in root]
        root, _ = children(session.ok("GetProductStockCatalogue", criteria))
        assert [text(item, "ThirdPartyBarcode") for item in root][-2:] == ["BC000001", "BC000004"]


def test_the_server_clock_is_naive_local_time_in_whole_seconds() -> None:
    server = ISyncServer(timezone="Africa/Johannesburg")
    stamp = server.now()
    assert stamp.tzinfo is None and stamp.microsecond == 0
    assert abs(stamp - (datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=2))) < timedelta(seconds=5)


@pytest.mark.parametrize("root", ["ProductStockUnitsQueryCriteria", "ProductStockCatalogueUnitsCriteria"])
def test_units_filter_by_pipe_delimited_barcodes(session: Session, root: str) -> None:
    criteria = dc(root, "<AddedDate>2016-01-01T00:00:00</AddedDate><ThirdPartyBarcode>BC000003| BC000001|"
                        "</ThirdPartyBarcode>")
    array, _ = children(session.ok("GetProductStockUnits", criteria))
    assert etree.QName(array).localname == "ArrayOfProductStockUnits"
    assert [[etree.QName(m).localname for m in item] for item in array] == [["ProductStockID", "SKU", "Units"]] * 2
    assert [text(item, "SKU") for item in array] == ["SKU-000001", "SKU-000003"]
    everything = dc(root, "<AddedDate>2016-01-01T00:00:00</AddedDate>")
    array, _ = children(session.ok("GetProductStockUnits", everything))
    assert len(array) == 3


# ---------------------------------------------------------------------------------------------- orders

def test_the_seed_order_persists_and_reads_back(server: ISyncServer, session: Session) -> None:
    server.add_product(SEED_BARCODE)
    stored, names = children(session.ok("PersistWebSalesOrder", SEED_WEB_SALES_ORDER))
    assert names == sorted(names) and "SalesOrderID" in names and "WebCustomerName" in names
    sales_order_id = text(stored, "SalesOrderID")
    assert sales_order_id is not None and int(sales_order_id) > 0
    assert text(stored, "WebCustomerName") == "John Doe"
    assert text(stored, "LineItems/WebSalesOrderDetail/SalesOrderID") == sales_order_id
    assert text(stored, "LineItems/WebSalesOrderDetail/Units") == "1.00"
    assert text(stored, "LineItems/WebSalesOrderDetail/ExRate") == "1.0000"
    assert text(stored, "DeliveryDetail/AddressLine1") == "10 Downing Street"

    # The seed's query asks for another order's PO number; the same document for the order just stored.
    query = SEED_WEB_SALES_ORDER_CRITERIA.replace("081341987533", "1000124")
    fetched, _ = children(session.ok("GetWebSalesOrder", query))
    assert etree.tostring(fetched) == etree.tostring(stored)
    detail = [etree.QName(m).localname for m in fetched.find(f"{{{DC_NS}}}LineItems")[0]]  # type: ignore[index]
    assert detail == sorted(detail) and detail.index("SODetailID") < detail.index("SalesOrderID")
    assert server.orders["1000124"]["SalesOrderID"] == int(sales_order_id)
    assert server.calls["PersistWebSalesOrder"] == 1 and server.calls["GetWebSalesOrder"] == 1


def test_an_out_of_order_member_is_ignored_as_wcf_ignores_it(server: ISyncServer, session: Session) -> None:
    # PONumber after TrackNo: skipped, so the order has no PONumber at all.
    last = order_xml("PO-7").replace("<PONumber>PO-7</PONumber>", "").replace("</WebSalesOrder>",
                                                                             "<PONumber>PO-7</PONumber></WebSalesOrder>")
    assert session.error("PersistWebSalesOrder", last) == "WebSalesOrder: member 'PONumber' is required"
    assert server.ignored_out_of_order == ["WebSalesOrder.PONumber"]
    # PONumber before DeliveryDetail: PONumber is the first member read, so it is DeliveryDetail and
    # LineItems (ordered before PONumber) that are skipped.
    first = order_xml("PO-7").replace("<PONumber>PO-7</PONumber>", "").replace(
        "<DeliveryDetail>", "<PONumber>PO-7</PONumber><DeliveryDetail>", 1)
    assert session.error("PersistWebSalesOrder", first) == "WebSalesOrder: member 'DeliveryDetail' is required"
    assert server.ignored_out_of_order[1:] == ["WebSalesOrder.DeliveryDetail", "WebSalesOrder.LineItems"]
    # An optional member out of order is dropped without a word: IsGift after LineItems keeps its default.
    stored, _ = children(session.ok("PersistWebSalesOrder", order_xml("PO-8", after="<IsGift>true</IsGift>")))
    assert text(stored, "IsGift") == "false" and server.orders["PO-8"]["IsGift"] is False
    # A response-only member is still a known member and takes its ordinal place: after WebSale (the last
    # one) every member is out of order. Unknown members take no place at all.
    late = order_xml("PO-9", between="<WebSale>true</WebSale>")
    assert session.error("PersistWebSalesOrder", late) == "WebSalesOrder: member 'LineItems' is required"
    unknown = order_xml("PO-10", before="<Zebra>1</Zebra>", between="<Apple>2</Apple>")
    session.ok("PersistWebSalesOrder", unknown)
    assert sorted(server.orders) == ["PO-10", "PO-8"]


@pytest.mark.parametrize(("xml", "message"), [
    (order_xml(barcode="NOPE"), "Unknown ThirdPartyBarcode 'NOPE' on line 1"),
    (order_xml(address="<AddressLine2>x</AddressLine2>"), "DeliveryDetail.AddressLine1 is required"),
    (order_xml(address="<AddressLine1>  </AddressLine1>"), "DeliveryDetail.AddressLine1 is required"),
    (order_xml(lines=""), "WebSalesOrder.LineItems must contain at least one WebSalesOrderDetail"),
    (order_xml().replace("<SellingPrice>99.5<", "<SellingPrice>-1<"), "SellingPrice must be >= 0 on line 1"),
    (order_xml().replace("<Units>2</Units>", ""), "WebSalesOrder.LineItems[1]: member 'Units' is required"),
    (order_xml().replace("<Units>2<", "<Units>2.5<"), "WebSalesOrder.LineItems[1].Units: '2.5' is not a valid int"),
    (order_xml().replace("<TrackNo>T-9</TrackNo>", '<TrackNo i:nil="true"/>'),
     "WebSalesOrder: member 'TrackNo' is required"),
    (order_xml().replace("2024-04-09T17:38:42", "09/04/2024"),
     "WebSalesOrder.RequiredDate: '09/04/2024' is not a valid DateTime"),
    (dc("SalesOrder", ""), "Expecting element 'WebSalesOrder'"),
    ("<WebSalesOrder>", "MessageXml is not well-formed XML"),
    ("", "MessageXml is empty"),
])
def test_order_validation_errors(server: ISyncServer, session: Session, xml: str, message: str) -> None:
    assert session.error("PersistWebSalesOrder", xml).startswith(message)
    assert server.orders == {}


def test_a_non_stock_line_needs_no_known_barcode(server: ISyncServer, session: Session) -> None:
    lines = ("<WebSalesOrderDetail><CNTypeID>4</CNTypeID><ExRate>1</ExRate><SellingPrice>1.25</SellingPrice>"
             "<StatusID>1</StatusID><ThirdPartyBarcode/><Units>1</Units></WebSalesOrderDetail>")
    stored, _ = children(session.ok("PersistWebSalesOrder", order_xml("PO-NS", lines=lines)))
    assert text(stored, "LineItems/WebSalesOrderDetail/ProductStockID") == "0"


def test_a_duplicate_po_number_is_refused_with_the_first_order_id(server: ISyncServer, session: Session) -> None:
    first, _ = children(session.ok("PersistWebSalesOrder", order_xml("PO-D")))
    message = session.error("PersistWebSalesOrder", order_xml("PO-D"))
    assert message == f"Sales order with PONumber 'PO-D' already exists (SalesOrderID {text(first, 'SalesOrderID')})"
    assert list(server.orders) == ["PO-D"]
    missing = dc("WebSalesOrderQueryCriteria", "<PONumber>PO-X</PONumber>")
    assert session.error("GetWebSalesOrder", missing) == "Sales order with PONumber 'PO-X' not found"


def test_a_credit_note_sent_twice_makes_two_notes(server: ISyncServer, session: Session) -> None:
    answers = [session.ok("CreateWebCreditNote", SEED_WEB_CREDIT_NOTE) for _ in range(2)]
    assert len(server.credit_notes) == 2 and answers[0] == answers[1]
    note, names = children(answers[0])
    assert names == ["Comments", "LineItems", "PONumber", "Reference", "SalesOrderNumber", "TrackNo"]
    # The seed's response example is the request again: same members, same texts (decimals keep their scale).
    seed = etree.fromstring(SEED_WEB_CREDIT_NOTE.encode(), etree.XMLParser(remove_blank_text=True))
    assert [(etree.QName(e).localname, (e.text or "")) for e in note.iter()] == [
        (etree.QName(e).localname, (e.text or "")) for e in seed.iter()]
    bad = SEED_WEB_CREDIT_NOTE.replace("<ExRate>1</ExRate>", "<ExRate>0</ExRate>", 1)
    assert session.error("CreateWebCreditNote", bad) == "ExRate must be > 0 on line 1"


def test_a_doctype_in_message_xml_is_refused_unexpanded(server: ISyncServer, session: Session) -> None:
    secret = REPO / "pyproject.toml"
    external = (f'<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
                + dc("WebSalesOrderQueryCriteria", "<PONumber>&x;</PONumber>"))
    laughs = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
              + dc("WebSalesOrderQueryCriteria", "<PONumber>&b;</PONumber>"))
    for xml in (external, laughs):
        message = session.error("GetWebSalesOrder", xml)
        assert "DTD is prohibited" in message and "syncengine" not in message and "aaaa" not in message
    undeclared = dc("WebSalesOrderQueryCriteria", "<PONumber>&x;</PONumber>")
    assert "not well-formed" in session.error("GetWebSalesOrder", undeclared)


# ---------------------------------------------------------------------------------------------- failures

@pytest.mark.parametrize("kind", ["http500", "html503", "reset"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_injected_failure_loses_the_reply_and_after_means_stored(server: ISyncServer, session: Session,
                                                                     when: str, kind: str) -> None:
    server.fail_next(1, when=when, kind=kind, message_type="PersistWebSalesOrder")
    expected: tuple[type[Exception], ...] = (
        (requests.exceptions.ConnectionError,) if kind == "reset" else (zeep.exceptions.TransportError,))
    with pytest.raises(expected) as caught:
        session.call("PersistWebSalesOrder", order_xml("PO-F"))
    if kind != "reset":
        assert isinstance(caught.value, zeep.exceptions.TransportError)
        assert caught.value.status_code == (500 if kind == "http500" else 503)
        assert ("Service Unavailable" in caught.value.content.decode()) == (kind == "html503")
    assert ("PO-F" in server.orders) == (when == "after")
    assert server.injected_failures[when] == 1
    resent = session.call("PersistWebSalesOrder", order_xml("PO-F"))  # the connection pool recovers
    if when == "after":
        assert resent.SuccessFlag is False and "already exists" in resent.ResponseText
    else:
        assert resent.SuccessFlag is True
    assert server.calls["PersistWebSalesOrder"] == (2 if when == "after" else 1)


def test_only_the_aimed_message_type_fails(server: ISyncServer, session: Session) -> None:
    server.fail_next(1, kind="http500", message_type="CreateWebCreditNote")
    session.ok("PersistWebSalesOrder", order_xml("PO-A"))
    with pytest.raises(zeep.exceptions.TransportError):
        session.call("CreateWebCreditNote", SEED_WEB_CREDIT_NOTE)
    session.ok("CreateWebCreditNote", SEED_WEB_CREDIT_NOTE)
    assert len(server.credit_notes) == 1


def test_random_injection_is_repeatable_for_a_seed(server: ISyncServer, session: Session) -> None:
    query = dc("WebSalesOrderQueryCriteria", "<PONumber>x</PONumber>")

    def pattern() -> list[str]:
        outcomes = []
        for _ in range(24):
            try:
                session.call("GetWebSalesOrder", query)
                outcomes.append("ok")
            except (zeep.exceptions.TransportError, requests.exceptions.ConnectionError) as exc:
                outcomes.append(type(exc).__name__)
        return outcomes

    server.inject("GetWebSalesOrder", rate=0.4, seed=3)
    first = pattern()
    server.inject("GetWebSalesOrder", rate=0.4, seed=3)
    assert pattern() == first and first.count("ok") not in (0, 24)
    assert sum(server.injected_failures.values()) == 2 * (24 - first.count("ok"))
    server.clear_faults()
    assert pattern() == ["ok"] * 24


# ---------------------------------------------------------------------------------------------- transport

def test_hide_wsdl_serves_404_and_a_saved_wsdl_file_works(tmp_path: Path) -> None:
    with running(hide_wsdl=True) as server:
        assert requests.get(server.wsdl_url, timeout=10).status_code == 404
        assert requests.get(server.url.replace("MessageService", "Other"), timeout=10).status_code == 404
        local = tmp_path / "MessageService.wsdl"
        local.write_text(server.wsdl_text(), encoding="utf-8")
        with soap_client(str(local)) as client:
            session = Session(client)
            assert "not found" in session.error("GetWebSalesOrder", SEED_WEB_SALES_ORDER_CRITERIA)


def test_executes_from_several_threads_run_concurrently() -> None:
    with running(latency=0.3) as server, ExitStack() as clients:
        server.add_products(2)
        sessions = [Session(clients.enter_context(soap_client(server.wsdl_url)), key="-") for _ in range(8)]
        key = sessions[0].client.service.Login(username="webstore", password="s3cret")  # one key for all
        errors: list[BaseException] = []

        def worker(number: int) -> None:
            try:
                sessions[number].key = key
                sessions[number].ok("PersistWebSalesOrder", order_xml(f"PO-T{number}", barcode="BC000002"))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        assert errors == []
        assert sorted(server.orders) == sorted(f"PO-T{n}" for n in range(8))
        assert len({order["SalesOrderID"] for order in server.orders.values()}) == 8
        assert elapsed < 8 * 0.3 * 0.75, elapsed  # serial handling would take 2.4 s


def test_runs_as_a_process_until_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.isync_server", "--port", "0", "--products", "5",
                             "--users", "shop:pw"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "error"})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/SyncAPI/MessageService.svc")
        with soap_client(url + "?wsdl") as client:
            session = Session(client, "shop", "pw")
            array, _ = children(session.ok("GetProductStockCatalogue", dc(
                "ProductStockCatalogueQueryCriteria", "<AddedDate>2016-06-01T00:00:00</AddedDate>")))
            assert len(array) == 5
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_importing_spyne_leaves_later_failed_imports_plain_import_errors() -> None:
    # spyne's bundled six importer would turn every later failed import into an ImportWarning -- an error here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("no_such_module_for_the_isync_tests")
