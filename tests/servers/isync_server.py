"""A real SOAP 1.1 server that behaves like iSync's "Sync API Message Server", for tests and benchmarks.

The client under test talks to it exactly as it would to the real WCF service: ``Login`` returns a
session key (each login voids the user's earlier keys) and ``Execute`` carries a ``RequestMessage``
whose ``MessageXml`` is WCF DataContract XML. The SOAP layer is spyne's (so the WSDL is a real,
independently generated one); the DataContract layer is written here from the WCF rules rather than
borrowed from ``engine/``, so a misunderstanding in the client cannot be mirrored by the server:

* members are read in ordinal (plain string sort) order; a member that comes after a later member
  is silently ignored, as WCF's DataContractSerializer does, and a required member that ends up
  missing is an error for that record;
* ``i:nil="true"`` is null, lists are a wrapper element with one element per item;
* ``MessageXml`` is parsed by a hardened parser and a DOCTYPE is refused (WCF prohibits DTDs).

Failures are injectable, deterministically, *before* an operation (nothing happens) or *after* it (the
order is stored, the reply is lost) as an HTTP 500, an IIS-style HTML 503 or a dropped connection,
because those are the cases a sync client must survive without duplicating or losing orders.

It serves on 127.0.0.1 from a background thread (one thread per connection, keep-alive) and can run
as a process for benchmarks: ``python -m tests.servers.isync_server --port 0`` prints its URL first.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import io
import logging
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree

# spyne 2.14 imports ``cgi`` and bundles six 1.14, whose meta-path importer predates ``find_spec``: importing
# spyne warns, and so would every later import that reaches that importer (an optional import that fails,
# anywhere in the test run) -- and the suite turns every warning into an error.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from spyne import Application, Boolean, ComplexModel, DateTime, Fault, ServiceBase, Unicode, rpc
    from spyne.protocol.soap import Soap11
    from spyne.server.wsgi import WsgiApplication


def _modernise_six_importers() -> None:
    """Give old six importers the PEP 451 methods six 1.16 has, so the import system stops warning."""
    for finder in sys.meta_path:
        cls = type(finder)
        if cls.__name__ != "_SixMetaPathImporter" or "find_spec" in vars(cls):
            continue

        def find_spec(self: Any, fullname: str, path: Any = None, target: Any = None) -> Any:
            return importlib.util.spec_from_loader(fullname, self) if fullname in self.known_modules else None

        def create_module(self: Any, spec: Any) -> Any:
            return self.load_module(spec.name)

        def exec_module(self: Any, module: Any) -> None:
            """load_module did it all."""

        for name, method in (("find_spec", find_spec), ("create_module", create_module),
                             ("exec_module", exec_module)):
            setattr(cls, name, method)


_modernise_six_importers()

TNS = "http://tempuri.org/"
DC_NS = "http://schemas.datacontract.org/2004/07/iSync.EAI.DTO"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SERVICE_PATH = "/SyncAPI/MessageService.svc"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"

INVALID_LOGIN = "Invalid username or password"
INVALID_SESSION = "Invalid session key: the key was superseded by a newer login or never issued"
FAULT_KINDS = ("http500", "html503", "reset")
MAX_BODY = 32 * 1024 * 1024

_NIL = f"{{{XSI_NS}}}nil"
_INT32 = (-(2**31), 2**31 - 1)
_DECIMAL_MAX = Decimal(2**96 - 1)  # System.Decimal's range
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_DECIMAL_RE = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*")
_DATETIME_RE = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})?\s*")
_XML_DECL_RE = re.compile(r"^\s*<\?xml[^>]*\?>")
_TWO = Decimal("0.01")
_FOUR = Decimal("0.0001")


# ----------------------------------------------------------------------------------------------------------
# DataContract: the member tables, a reader with WCF's ordering rules and a writer in the same style
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One DataContract member: its XML type, whether WCF would insist on it, and for lists the item name."""

    kind: str  # "string" | "int" | "decimal" | "bool" | "datetime" | "record" | "list"
    required: bool = False
    contract: str | None = None  # the record type of a "record" member or of a "list" member's items


S, N, D, B, T = "string", "int", "decimal", "bool", "datetime"  # N: a (32-bit) number

# The real DTOs are shared between requests and responses, so a response-only member (SalesOrderID...)
# is still a known member when a client sends it: it takes its ordinal place and can push later members
# out of order. The tables therefore list every member the seed shows for a type.
CONTRACTS: dict[str, dict[str, Member]] = {
    "ProductStockCatalogueQueryCriteria": {"AddedDate": Member(T, True), "AvailableUnits": Member(B)},
    "ProductStockUnitsQueryCriteria": {
        "AddedDate": Member(T, True), "AvailableUnits": Member(B), "ThirdPartyBarcode": Member(S)},
    "WebSalesOrderQueryCriteria": {"PONumber": Member(S, True)},
    "ProductStockCatalogue": {
        "AddedDate": Member(T), "Brand": Member(S), "Colour": Member(S), "Description": Member(S),
        "Price": Member(D), "ProductStockID": Member(N), "SKU": Member(S), "Size": Member(S),
        "ThirdPartyBarcode": Member(S), "Units": Member(D)},
    "ProductStockUnits": {"ProductStockID": Member(N), "SKU": Member(S), "Units": Member(D)},
    "WebSalesOrder": {
        "Comments": Member(S), "DeliveryDetail": Member("record", True, "AddressDetail"),
        "DeliveryMethodID": Member(N), "EntitlementID": Member(N), "IsGift": Member(B), "IsXStock": Member(B),
        "LineItems": Member("list", True, "WebSalesOrderDetail"), "PONumber": Member(S, True),
        "PaymentMethodID": Member(N), "PrintInvoice": Member(B), "RequiredDate": Member(T, True),
        "SalesOrderID": Member(N), "SpecialInstructions": Member(S), "StatusID": Member(N, True),
        "TrackNo": Member(S, True), "WebCustomerName": Member(S), "WebSale": Member(B)},
    "AddressDetail": {
        # AddressLine1 is required, but checked by the business rules so that the message names the path.
        "AddressDetailID": Member(N), "AddressLine1": Member(S), "AddressLine2": Member(S),
        "AltNumber": Member(S), "City": Member(S), "Company": Member(S), "Country": Member(S),
        "Email": Member(S), "FullName": Member(S), "Mobile": Member(S), "Phone": Member(S),
        "PostCode": Member(S), "Province": Member(S), "WarehouseID": Member(N)},
    "WebSalesOrderDetail": {
        "CNTypeID": Member(N, True), "Comment": Member(S), "Commission": Member(D), "Discount": Member(D),
        "DueDate": Member(T), "ExRate": Member(D, True), "InvoiceDate": Member(T), "InvoiceNumber": Member(S),
        "InvoiceReference": Member(S), "InvoiceSubCustomer": Member(B), "InvoiceUnits": Member(D),
        "ProductStockID": Member(N), "Reference": Member(S), "SODetailID": Member(N), "SalesOrderID": Member(N),
        "SellingPrice": Member(D, True), "StatusID": Member(N, True), "ThirdPartyBarcode": Member(S, True),
        "Units": Member(N, True)},  # int in the seed's request table; the stored order answers it as decimal
    "WebCreditNote": {
        "Comments": Member(S, True), "LineItems": Member("list", False, "WebCreditNoteDetail"),
        "PONumber": Member(S, True), "Reference": Member(S), "SalesOrderNumber": Member(S, True),
        "TrackNo": Member(S, True)},
    "WebCreditNoteDetail": {
        # Rate is "Required" in the seed's table, yet the seed's own example omits it: not required here.
        "CNTypeID": Member(N, True), "Comment": Member(S), "Discount": Member(D), "ExRate": Member(D, True),
        "Rate": Member(D), "Reference": Member(S), "SellingPrice": Member(D, True),
        "ThirdPartyBarcode": Member(S, True), "Units": Member(D, True)},
}
# The seed's GetProductStockUnits example opens with this name: accepted as the same contract.
ROOT_ALIASES = {"ProductStockCatalogueUnitsCriteria": "ProductStockUnitsQueryCriteria"}


class BusinessError(Exception):
    """A request the service refuses: answered with SuccessFlag=false and this text, never a SOAP Fault."""


class _Reader:
    """Reads DataContract XML as WCF does, noting members it ignored for being out of order."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.ignored: list[str] = []

    def root(self, xml: str | None, *expected: str) -> dict[str, Any]:
        """The record under a root element that must be one of ``expected`` (or an alias of one)."""
        if xml is None or not xml.strip():
            raise BusinessError("MessageXml is empty")
        element = parse_message_xml(xml)
        name = etree.QName(element)
        contract = ROOT_ALIASES.get(name.localname, name.localname)
        if name.namespace != DC_NS or contract not in expected:
            raise BusinessError(
                f"Expecting element '{expected[0]}' from namespace '{DC_NS}'. "
                f"Encountered element '{name.localname}' from namespace '{name.namespace or ''}'")
        return self.record(element, contract, name.localname)

    def record(self, element: etree._Element, contract: str, path: str) -> dict[str, Any]:
        """Members in ordinal order; an earlier-ordered or repeated member is skipped, as WCF skips it."""
        members = CONTRACTS[contract]
        order = sorted(members)
        position = -1
        out: dict[str, Any] = {}
        for child in element:
            if not isinstance(child.tag, str):
                continue  # comments and processing instructions
            qname = etree.QName(child)
            if qname.namespace != DC_NS or qname.localname not in members:
                continue  # unknown members are ignored
            index = order.index(qname.localname)
            if index <= position:
                self.ignored.append(f"{path}.{qname.localname}")
                continue
            position = index
            out[qname.localname] = self.value(child, members[qname.localname], f"{path}.{qname.localname}")
        for name, member in members.items():
            if member.required and out.get(name) is None:
                raise BusinessError(f"{path}: member '{name}' is required")
        return out

    def value(self, element: etree._Element, member: Member, path: str) -> Any:
        """One member's value: None for ``i:nil``, else parsed by its kind."""
        if element.get(_NIL) in ("true", "1"):
            return None
        if member.kind == "record":
            assert member.contract is not None
            return self.record(element, member.contract, path)
        if member.kind == "list":
            assert member.contract is not None
            items: list[dict[str, Any]] = []
            for child in element:
                if not isinstance(child.tag, str):
                    continue
                qname = etree.QName(child)
                if qname.namespace != DC_NS or qname.localname != member.contract:
                    raise BusinessError(f"{path}: expecting element '{member.contract}', "
                                        f"encountered '{qname.localname}'")
                items.append(self.record(child, member.contract, f"{path}[{len(items) + 1}]"))
            return items
        if len(element):
            raise BusinessError(f"{path}: expected text, found child elements")
        return self.scalar(element.text or "", member.kind, path)

    def scalar(self, text: str, kind: str, path: str) -> Any:
        """XmlConvert-style parsing of one scalar."""
        if kind == S:
            return text
        if kind == N and _INT_RE.fullmatch(text) and _INT32[0] <= int(text) <= _INT32[1]:
            return int(text)
        if kind == D and _DECIMAL_RE.fullmatch(text):
            number = Decimal(text.strip())
            if abs(number) <= _DECIMAL_MAX:
                return number
        if kind == B and text.strip() in ("true", "false", "1", "0"):
            return text.strip() in ("true", "1")
        if kind == T:
            parsed = self.datetime(text)
            if parsed is not None:
                return parsed
        names = {N: "int", D: "decimal", B: "boolean", T: "DateTime"}
        raise BusinessError(f"{path}: '{text}' is not a valid {names[kind]}")

    def datetime(self, text: str) -> datetime | None:
        """A naive local DateTime; an offset (or Z) is converted to the server's zone, as WCF does."""
        match = _DATETIME_RE.fullmatch(text)
        if not match:
            return None
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        try:
            value = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                             int((fraction or "0").ljust(7, "0")[:6]))
        except ValueError:
            return None
        if offset:
            delta = timedelta() if offset == "Z" else (
                (1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
            utc = (value - delta).replace(tzinfo=ZoneInfo("UTC"))
            value = utc.astimezone(self.zone).replace(tzinfo=None)
        return value


def parse_message_xml(xml: str) -> etree._Element:
    """Parse MessageXml without entities, network or DTD; a DOCTYPE is refused (WCF: "DTD is prohibited")."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True, remove_pis=True)
    text = _XML_DECL_RE.sub("", xml, count=1)  # a str may not carry an encoding declaration for lxml
    try:
        element = etree.fromstring(text, parser)
    except etree.XMLSyntaxError as exc:
        raise BusinessError(f"MessageXml is not well-formed XML: {exc}") from None
    if element.getroottree().docinfo.doctype:
        raise BusinessError("MessageXml must not contain a DOCTYPE: DTD is prohibited")
    return element


def format_scalar(value: Any) -> str:
    """The DataContract text of a Python value: decimals keep their scale and never use exponents."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        return text + f".{value.microsecond:06d}".rstrip("0") if value.microsecond else text
    return str(value)


def write_message_xml(root: str, record: dict[str, Any]) -> str:
    """A record as DataContract XML, members in ordinal order, null as ``i:nil``."""
    element = etree.Element(f"{{{DC_NS}}}{root}", nsmap={None: DC_NS, "i": XSI_NS})
    _write_members(element, record, root)
    text: str = etree.tostring(element, encoding="unicode")
    return text


def write_array(item: str, records: Iterable[dict[str, Any]]) -> str:
    """An ``ArrayOfX`` root with one ``X`` per record."""
    element = etree.Element(f"{{{DC_NS}}}ArrayOf{item}", nsmap={None: DC_NS, "i": XSI_NS})
    for record in records:
        _write_members(etree.SubElement(element, f"{{{DC_NS}}}{item}"), record, item)
    text: str = etree.tostring(element, encoding="unicode")
    return text


def _write_members(element: etree._Element, record: dict[str, Any], contract: str) -> None:
    members = CONTRACTS[contract]
    for name in sorted(record):
        member = members[name]  # a KeyError here is a bug in this server, not in the client
        child = etree.SubElement(element, f"{{{DC_NS}}}{name}")
        value = record[name]
        if value is None:
            child.set(_NIL, "true")
        elif member.kind == "record":
            assert member.contract is not None
            _write_members(child, value, member.contract)
        elif member.kind == "list":
            assert member.contract is not None
            for item in value:
                _write_members(etree.SubElement(child, f"{{{DC_NS}}}{member.contract}"), item, member.contract)
        else:
            child.text = format_scalar(value)


# ----------------------------------------------------------------------------------------------------------
# SOAP: spyne types and service (document/literal wrapped, like WCF's basicHttpBinding)
# ----------------------------------------------------------------------------------------------------------

class RequestMessage(ComplexModel):  # type: ignore[misc]
    """Execute's request: header fields plus MessageXml."""

    __namespace__ = TNS
    _type_info = [
        ("MessageType", Unicode), ("Identifier", Unicode), ("Source", Unicode), ("PublishDate", DateTime),
        ("Instance", Unicode), ("Action", Unicode), ("SessionKey", Unicode), ("MessageXml", Unicode),
    ]


class ResponseMessage(ComplexModel):  # type: ignore[misc]
    """Execute's response: the request's header fields echoed, the outcome and MessageXml."""

    __namespace__ = TNS
    _type_info = [
        ("MessageType", Unicode), ("Identifier", Unicode), ("SuccessFlag", Boolean), ("ResponseText", Unicode),
        ("Source", Unicode), ("PublishDate", DateTime), ("Instance", Unicode), ("Action", Unicode),
        ("MessageXml", Unicode),
    ]


def _server(ctx: Any) -> ISyncServer:
    server: ISyncServer = ctx.transport.req_env["isync.server"]
    return server


class MessageService(ServiceBase):  # type: ignore[misc]
    """Login and Execute; the state lives on the :class:`ISyncServer` the WSGI environ names."""

    @rpc(Unicode, Unicode, _returns=Unicode)  # type: ignore[untyped-decorator]
    def Login(ctx: Any, username: str | None, password: str | None) -> str:
        return _server(ctx).login(username, password)

    @rpc(RequestMessage, _returns=ResponseMessage)  # type: ignore[untyped-decorator]
    def Execute(ctx: Any, request: RequestMessage | None) -> ResponseMessage:
        return _server(ctx).execute(request if request is not None else RequestMessage())


# ----------------------------------------------------------------------------------------------------------
# HTTP: a threading server with a small WSGI bridge, so that a fault can drop the connection itself
# ----------------------------------------------------------------------------------------------------------

class _DropConnection(Exception):
    """Raised by the WSGI app to close the connection with no answer at all (a reset)."""


class _HttpServer(ThreadingHTTPServer):
    """Tracks its connections and handler threads so that :meth:`ISyncServer.stop` can end them all."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: Callable[..., Iterable[bytes]]) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.stopping = False
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, remembered for joining."""
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="isync-conn", daemon=True)
        with self._lock:
            self._connections.add(request)
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)
        thread.start()

    def mark_reset(self, request: socket.socket) -> None:
        """Close this connection without the usual half-close, so that SO_LINGER 0 turns it into a RST."""
        with self._lock:
            self._resets.add(request)

    def shutdown_request(self, request: Any) -> None:
        """Forget a connection as it closes."""
        with self._lock:
            self._connections.discard(request)
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hangs up, or a stop() that cuts a connection, is not an error here."""

    def close_connections(self, timeout: float) -> None:
        """Cut every open connection (idle keep-alives included) and join the handler threads."""
        with self._lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the server counts what matters."""

    def do_GET(self) -> None:
        self._run()

    def do_POST(self) -> None:
        self._run()

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > MAX_BODY:
                    return None
        length = int(self.headers.get("Content-Length") or 0)
        return None if length > MAX_BODY else self.rfile.read(length)

    def _run(self) -> None:
        body = self._read_body()
        if body is None:
            self._answer("413 Request Entity Too Large", [("Content-Type", "text/plain")], b"too large")
            self.close_connection = True
            return
        path, _, query = self.path.partition("?")
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": str(host), "SERVER_PORT": str(port), "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0], "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for key, value in self.headers.items():
            name = "HTTP_" + key.upper().replace("-", "_")
            if name not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[name] = value
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        try:
            result = self.server.app(environ, start_response)
            try:
                payload = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except _DropConnection:
            self._reset()
            return
        self._answer(started[0], started[1], payload)

    def _answer(self, status: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for key, value in headers:
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.server.stopping:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with SO_LINGER 0 and no FIN first: the peer gets a RST and not one byte of answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.mark_reset(self.connection)


# ----------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InjectedFailure:
    """One failure that was injected: which call, before or after the operation, and how it failed."""

    message_type: str
    when: str
    kind: str


_HTML_503 = (b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
             b"<HTML><HEAD><TITLE>Service Unavailable</TITLE>\r\n"
             b'<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
             b"<BODY><h2>Service Unavailable</h2>\r\n<hr><p>HTTP Error 503. The service is unavailable.</p>\r\n"
             b"</BODY></HTML>\r\n")

_BRANDS = ("Acme", "Basalt", "Cobalt", "Dune", "Ember")
_COLOURS = ("Black", "White", "Red", None)
_SIZES = ("S", "M", "L", "XL", None)


class ISyncServer:
    """An iSync Message Server on 127.0.0.1: start with ``with ISyncServer() as server:`` or :meth:`start`.

    ``calls`` counts the Execute calls the service handled, by MessageType (a call failed "before" never
    reaches it); ``injected_failures`` counts injected failures by "before"/"after".
    """

    def __init__(self, *, users: dict[str, str] | None = None, timezone: str = "Africa/Johannesburg",
                 comparison: str = ">", latency: float = 0.0, hide_wsdl: bool = False,
                 host: str = "127.0.0.1", port: int = 0, clock: Callable[[], datetime] | None = None) -> None:
        if comparison not in (">", ">="):
            raise ValueError("comparison must be '>' or '>='")
        self.users = dict(users if users is not None else {"webstore": "s3cret"})
        self.zone = ZoneInfo(timezone)
        self.timezone = timezone
        self.comparison = comparison
        self.latency = latency
        self.hide_wsdl = hide_wsdl
        self._clock = clock
        self._address = (host, port)
        self._lock = threading.RLock()
        self._keys: dict[str, str] = {}  # session key -> user
        self._current_key: dict[str, str] = {}  # user -> its one valid key
        self.products: dict[str, dict[str, Any]] = {}  # ThirdPartyBarcode -> ProductStockCatalogue record
        self.orders: dict[str, dict[str, Any]] = {}  # PONumber -> stored WebSalesOrder record
        self.credit_notes: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.logins = 0
        self.failed_logins = 0
        self.ignored_out_of_order: list[str] = []  # "WebSalesOrder.PONumber"... members WCF would skip
        self.internal_errors: list[str] = []  # bugs in this server, answered as SuccessFlag=false
        self.injected_failures: Counter[str] = Counter()
        self.injected_log: list[InjectedFailure] = []
        self._next_product_id = 1
        self._next_order_id = 33534
        self._next_detail_id = 136141
        self._next_address_id = 28701
        self._inject_type: str | None = None
        self._inject_rate = 0.0
        self._inject_after_share = 0.5
        self._inject_kinds: tuple[str, ...] = FAULT_KINDS
        self._inject_rng: random.Random | None = None
        self._forced: deque[tuple[str | None, str, str]] = deque()
        self._soap = WsgiApplication(
            Application([MessageService], tns=TNS, name="MessageService",
                        in_protocol=Soap11(validator="lxml"), out_protocol=Soap11()),
            max_content_length=MAX_BODY)
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> ISyncServer:
        """Listen and serve from a background thread."""
        self._http = _HttpServer(self._address, self.wsgi_app)
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="isync-server", daemon=True)
        self._thread.start()
        self.wsdl_text()  # build (and let spyne cache) the WSDL with this server's own address
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, cut every connection and join every thread."""
        http, self._http = self._http, None
        if http is None:
            return
        http.stopping = True
        http.shutdown()
        http.server_close()
        http.close_connections(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ISyncServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._http is not None, "not started"
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        """The service endpoint, where SOAP calls are POSTed."""
        return f"http://{self._address[0]}:{self.port}{SERVICE_PATH}"

    @property
    def wsdl_url(self) -> str:
        """Where the WSDL is served (404 with ``hide_wsdl``)."""
        return self.url + "?wsdl"

    def wsdl_text(self) -> str:
        """The WSDL spyne generates, with this server's address, even when ``hide_wsdl`` is set."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": SERVICE_PATH, "QUERY_STRING": "wsdl", "SCRIPT_NAME": "",
                   "SERVER_NAME": self._address[0], "SERVER_PORT": str(self.port), "wsgi.url_scheme": "http",
                   "HTTP_HOST": f"{self._address[0]}:{self.port}", "wsgi.input": io.BytesIO(b""),
                   "SERVER_PROTOCOL": "HTTP/1.1"}
        return b"".join(self._soap(environ, lambda status, headers, exc_info=None: None)).decode()

    # -- clock and products ---------------------------------------------------------------------------

    def now(self) -> datetime:
        """The server's clock: naive local time in its zone, whole seconds (what AddedDate holds)."""
        if self._clock is not None:
            return self._clock().replace(microsecond=0)
        return datetime.now(self.zone).replace(tzinfo=None, microsecond=0)

    def add_product(self, barcode: str, *, at: datetime | None = None, **fields: Any) -> dict[str, Any]:
        """One product with a chosen barcode; ``fields`` override the generated members."""
        with self._lock:
            product_id = self._next_product_id
            self._next_product_id += 1
            product: dict[str, Any] = {
                "AddedDate": at or self.now(), "Brand": _BRANDS[product_id % len(_BRANDS)],
                "Colour": _COLOURS[product_id % len(_COLOURS)], "Description": f"Product {product_id}",
                "Price": Decimal(100 + product_id % 900) + Decimal("0.95"), "ProductStockID": product_id,
                "SKU": f"SKU-{product_id:06d}", "Size": _SIZES[product_id % len(_SIZES)],
                "ThirdPartyBarcode": barcode, "Units": Decimal(0 if product_id % 5 == 0 else product_id % 40)
                .quantize(_TWO)}
            unknown = set(fields) - set(product)
            if unknown:
                raise ValueError(f"unknown ProductStockCatalogue members: {sorted(unknown)}")
            product.update(fields)
            self.products[barcode] = product
            return product

    def add_products(self, n: int, at: datetime | None = None) -> list[str]:
        """``n`` products with barcodes ``BC000001``... sharing one AddedDate (``at``, default now())."""
        stamp = at or self.now()
        with self._lock:
            return [self.add_product(f"BC{self._next_product_id:06d}", at=stamp)["ThirdPartyBarcode"]
                    for _ in range(n)]

    def touch(self, barcodes: str | Iterable[str], at: datetime | None = None, **changes: Any) -> None:
        """Change products and stamp their AddedDate (``at``, default now()), as a stock movement does."""
        stamp = at or self.now()
        with self._lock:
            for barcode in [barcodes] if isinstance(barcodes, str) else list(barcodes):
                product = self.products[barcode]
                unknown = set(changes) - set(product)
                if unknown:
                    raise ValueError(f"unknown ProductStockCatalogue members: {sorted(unknown)}")
                product.update(changes)
                product["AddedDate"] = stamp

    # -- fault injection ------------------------------------------------------------------------------

    def inject(self, message_type: str | None = None, *, rate: float = 0.1, after_share: float = 0.5,
               seed: int = 1, kinds: Iterable[str] = FAULT_KINDS) -> None:
        """Fail a share of the matching calls (Execute of that MessageType, any Execute for None, or
        ``"Login"``), drawn from a seeded generator so that a run is repeatable."""
        chosen = tuple(kinds)
        if not chosen or set(chosen) - set(FAULT_KINDS):
            raise ValueError(f"kinds must be among {FAULT_KINDS}")
        with self._lock:
            self._inject_type = message_type
            self._inject_rate = rate
            self._inject_after_share = after_share
            self._inject_kinds = chosen
            self._inject_rng = random.Random(seed)

    def fail_next(self, n: int = 1, when: str = "before", kind: str = "http500", *,
                  message_type: str | None = None) -> None:
        """Fail exactly the next ``n`` matching calls, ahead of any random injection."""
        if when not in ("before", "after") or kind not in FAULT_KINDS:
            raise ValueError("when must be 'before' or 'after', kind one of " + ", ".join(FAULT_KINDS))
        with self._lock:
            self._forced.extend([(message_type, when, kind)] * n)

    def clear_faults(self) -> None:
        """No more injected failures (the counts are kept)."""
        with self._lock:
            self._inject_rng = None
            self._forced.clear()

    def _faults_armed(self) -> bool:
        with self._lock:
            return bool(self._forced) or (self._inject_rng is not None and self._inject_rate > 0)

    def _draw_fault(self, operation: str, message_type: str) -> InjectedFailure | None:
        def matches(wanted: str | None) -> bool:
            return (operation == "Execute" and wanted in (None, message_type)) or (
                operation == "Login" and wanted == "Login")

        with self._lock:
            for index, (wanted, when, kind) in enumerate(self._forced):
                if matches(wanted):
                    del self._forced[index]
                    return self._record_fault(message_type, when, kind)
            rng = self._inject_rng
            if rng is None or not matches(self._inject_type):
                return None
            if rng.random() >= self._inject_rate:
                return None
            when = "after" if rng.random() < self._inject_after_share else "before"
            return self._record_fault(message_type, when, rng.choice(self._inject_kinds))

    def _record_fault(self, message_type: str, when: str, kind: str) -> InjectedFailure:
        failure = InjectedFailure(message_type, when, kind)
        self.injected_failures[when] += 1
        self.injected_log.append(failure)
        return failure

    @staticmethod
    def _fail(failure: InjectedFailure, start_response: Callable[..., Any]) -> list[bytes]:
        if failure.kind == "reset":
            raise _DropConnection
        if failure.kind == "html503":
            start_response("503 Service Unavailable", [("Content-Type", "text/html; charset=us-ascii")])
            return [_HTML_503]
        start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Internal Server Error: the request could not be processed."]

    # -- WSGI -----------------------------------------------------------------------------------------

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Routing, ``hide_wsdl`` and fault injection around spyne's SOAP application."""
        if environ["PATH_INFO"] != SERVICE_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found"]
        if environ["REQUEST_METHOD"] == "GET" and environ["QUERY_STRING"].split("=")[0].lower() == "wsdl" \
                and self.hide_wsdl:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found"]
        environ["isync.server"] = self
        failure = None
        if environ["REQUEST_METHOD"] == "POST" and self._faults_armed():
            body = environ["wsgi.input"].getvalue()
            failure = self._draw_fault(*_operation_of(body))
        if failure is not None and failure.when == "before":
            return self._fail(failure, start_response)
        result: Iterable[bytes] = self._soap(environ, start_response)
        if failure is None:
            return result
        try:
            b"".join(result)  # the operation is carried out; its answer is then lost
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return self._fail(failure, start_response)

    # -- operations -----------------------------------------------------------------------------------

    def login(self, username: str | None, password: str | None) -> str:
        """A fresh session key; every earlier key of the user stops working."""
        expected = self.users.get(username or "")
        if expected is None or not hmac.compare_digest(expected.encode(), (password or "").encode()):
            with self._lock:
                self.failed_logins += 1
            raise Fault(faultcode="Client", faultstring=INVALID_LOGIN)
        key = str(uuid.uuid4())
        with self._lock:
            old = self._current_key.get(username or "")
            if old is not None:
                self._keys.pop(old, None)
            self._current_key[username or ""] = key
            self._keys[key] = username or ""
            self.logins += 1
        return key

    def execute(self, request: RequestMessage) -> ResponseMessage:
        """One Execute: session check, dispatch by MessageType, business errors as SuccessFlag=false."""
        message_type = request.MessageType or ""
        with self._lock:
            self.calls[message_type] += 1
        if self.latency:
            time.sleep(self.latency)
        response = ResponseMessage(
            MessageType=request.MessageType, Identifier=request.Identifier, Source=request.Source,
            PublishDate=request.PublishDate, Instance=request.Instance, Action=request.Action,
            SuccessFlag=False, MessageXml=None)
        with self._lock:
            valid = request.SessionKey is not None and request.SessionKey in self._keys
        if not valid:
            response.ResponseText = INVALID_SESSION
            return response
        handler = self._operations().get(message_type)
        if handler is None:
            response.ResponseText = f"Unknown MessageType '{message_type}'"
            return response
        reader = _Reader(self.zone)
        try:
            response.MessageXml = handler(reader, request.MessageXml)
        except BusinessError as exc:
            response.ResponseText = str(exc)
        except Exception as exc:  # a bug here: answered like the real service would, and kept for the tests
            with self._lock:
                self.internal_errors.append(f"{message_type}: {type(exc).__name__}: {exc}")
            response.ResponseText = f"An unexpected error occurred: {type(exc).__name__}: {exc}"
        else:
            response.SuccessFlag = True
            response.ResponseText = "OK"
        finally:
            if reader.ignored:
                with self._lock:
                    self.ignored_out_of_order.extend(reader.ignored)
        return response

    def _operations(self) -> dict[str, Callable[[_Reader, str | None], str]]:
        return {"GetProductStockCatalogue": self._catalogue, "GetProductStockUnits": self._units,
                "PersistWebSalesOrder": self._persist_order, "GetWebSalesOrder": self._get_order,
                "CreateWebCreditNote": self._credit_note}

    def _changed_products(self, criteria: dict[str, Any]) -> list[dict[str, Any]]:
        since: datetime = criteria["AddedDate"]
        inclusive = self.comparison == ">="
        with self._lock:
            products = [dict(p) for p in self.products.values()
                        if p["AddedDate"] > since or (inclusive and p["AddedDate"] == since)]
        if criteria.get("AvailableUnits"):
            products = [p for p in products if p["Units"] > 0]
        return sorted(products, key=lambda p: (p["AddedDate"], p["ProductStockID"]))

    def _catalogue(self, reader: _Reader, xml: str | None) -> str:
        criteria = reader.root(xml, "ProductStockCatalogueQueryCriteria")
        return write_array("ProductStockCatalogue", self._changed_products(criteria))

    def _units(self, reader: _Reader, xml: str | None) -> str:
        criteria = reader.root(xml, "ProductStockUnitsQueryCriteria")
        products = self._changed_products(criteria)
        wanted = {b.strip() for b in (criteria.get("ThirdPartyBarcode") or "").split("|") if b.strip()}
        if wanted:
            products = [p for p in products if p["ThirdPartyBarcode"] in wanted]
        return write_array("ProductStockUnits", (
            {"ProductStockID": p["ProductStockID"], "SKU": p["SKU"], "Units": p["Units"]} for p in products))

    def _persist_order(self, reader: _Reader, xml: str | None) -> str:
        order = reader.root(xml, "WebSalesOrder")
        po_number: str = order["PONumber"]
        if not po_number.strip():
            raise BusinessError("WebSalesOrder: member 'PONumber' must not be empty")
        address: dict[str, Any] = order["DeliveryDetail"]
        if not (address.get("AddressLine1") or "").strip():
            raise BusinessError("DeliveryDetail.AddressLine1 is required")
        if order["StatusID"] not in (1, 3):
            raise BusinessError(f"StatusID {order['StatusID']} is not valid: use 1 (Pending) or 3 (Approved)")
        lines: list[dict[str, Any]] = order["LineItems"]
        if not lines:
            raise BusinessError("WebSalesOrder.LineItems must contain at least one WebSalesOrderDetail")
        with self._lock:
            existing = self.orders.get(po_number)
            if existing is not None:
                raise BusinessError(f"Sales order with PONumber '{po_number}' already exists "
                                    f"(SalesOrderID {existing['SalesOrderID']})")
            for number, line in enumerate(lines, 1):
                if line["CNTypeID"] == 0 and line["ThirdPartyBarcode"] not in self.products:
                    raise BusinessError(f"Unknown ThirdPartyBarcode '{line['ThirdPartyBarcode']}' on line {number}")
                for member in ("ExRate", "SellingPrice"):
                    if line[member] < 0:
                        raise BusinessError(f"{member} must be >= 0 on line {number}")
                if line["StatusID"] not in (1, 3):
                    raise BusinessError(f"StatusID {line['StatusID']} is not valid on line {number}: "
                                        "use 1 (Pending) or 3 (Approved)")
            stored = self._store_order(order)
        return write_message_xml("WebSalesOrder", stored)

    def _store_order(self, order: dict[str, Any]) -> dict[str, Any]:
        """The order as Sync keeps it, shaped like the seed's GetWebSalesOrder answer (lock held)."""
        sales_order_id = self._next_order_id
        self._next_order_id += 1
        given = order["DeliveryDetail"]
        address = {name: given.get(name) for name in CONTRACTS["AddressDetail"]}
        address["AddressDetailID"] = self._next_address_id
        address["WarehouseID"] = None
        self._next_address_id += 1
        today = self.now().replace(hour=0, minute=0, second=0)
        lines = []
        for line in order["LineItems"]:
            product = self.products.get(line["ThirdPartyBarcode"]) if line["CNTypeID"] == 0 else None
            lines.append({
                "CNTypeID": line["CNTypeID"], "Comment": line.get("Comment") or "",
                "Commission": Decimal("0.00"), "Discount": (line.get("Discount") or Decimal(0)).quantize(_TWO),
                "DueDate": line.get("DueDate") or today, "ExRate": line["ExRate"].quantize(_FOUR, ROUND_HALF_UP),
                "InvoiceDate": None, "InvoiceNumber": "", "InvoiceReference": "", "InvoiceSubCustomer": False,
                "InvoiceUnits": Decimal("0.00"), "ProductStockID": product["ProductStockID"] if product else 0,
                "Reference": line.get("Reference") or "", "SODetailID": self._next_detail_id,
                "SalesOrderID": sales_order_id, "SellingPrice": line["SellingPrice"].quantize(_TWO, ROUND_HALF_UP),
                "StatusID": line["StatusID"], "ThirdPartyBarcode": line["ThirdPartyBarcode"],
                "Units": Decimal(line["Units"]).quantize(_TWO)})
            self._next_detail_id += 1

        def default(name: str, value: Any) -> Any:
            return value if order.get(name) is None else order[name]

        stored = {
            "Comments": order.get("Comments"), "DeliveryDetail": address,
            "DeliveryMethodID": default("DeliveryMethodID", 0), "EntitlementID": 0,
            "IsGift": default("IsGift", False), "IsXStock": False, "LineItems": lines,
            "PONumber": order["PONumber"], "PaymentMethodID": default("PaymentMethodID", 0),
            "PrintInvoice": default("PrintInvoice", True), "RequiredDate": order["RequiredDate"],
            "SalesOrderID": sales_order_id, "SpecialInstructions": order.get("SpecialInstructions"),
            "StatusID": order["StatusID"], "TrackNo": order["TrackNo"],
            "WebCustomerName": address.get("FullName") or "", "WebSale": True}
        self.orders[order["PONumber"]] = stored
        return stored

    def _get_order(self, reader: _Reader, xml: str | None) -> str:
        po_number = reader.root(xml, "WebSalesOrderQueryCriteria")["PONumber"]
        with self._lock:
            stored = self.orders.get(po_number)
            if stored is None:
                raise BusinessError(f"Sales order with PONumber '{po_number}' not found")
            return write_message_xml("WebSalesOrder", stored)

    def _credit_note(self, reader: _Reader, xml: str | None) -> str:
        note = reader.root(xml, "WebCreditNote")
        for number, line in enumerate(note.get("LineItems") or [], 1):
            for member in ("ExRate", "Rate", "SellingPrice"):
                if line.get(member) is not None and line[member] <= 0:
                    raise BusinessError(f"{member} must be > 0 on line {number}")
        with self._lock:
            self.credit_notes.append(note)  # no duplicate check: a blind resend makes a second note
        return write_message_xml("WebCreditNote", note)


def _operation_of(body: bytes) -> tuple[str, str]:
    """("Login" | "Execute" | "", MessageType) of a SOAP request, read only to aim injected failures."""
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        envelope = etree.fromstring(body, parser)
    except etree.XMLSyntaxError:
        return "", ""
    soap_body = envelope.find(f"{{{SOAP_ENV_NS}}}Body")
    call = next((child for child in (soap_body if soap_body is not None else []) if isinstance(child.tag, str)),
                None)
    if call is None:
        return "", ""
    operation = etree.QName(call).localname
    if operation == "Login":
        return operation, "Login"
    message_type = call.find(f".//{{{TNS}}}MessageType")
    return operation, (message_type.text or "") if message_type is not None else ""


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM, printing the endpoint URL as the first line (for benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--users", action="append", default=[], metavar="USER:PASSWORD")
    parser.add_argument("--products", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--timezone", default="Africa/Johannesburg")
    parser.add_argument("--comparison", choices=(">", ">="), default=">")
    parser.add_argument("--hide-wsdl", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)  # a wrong password is no news
    users = dict(u.split(":", 1) for u in args.users) if args.users else None
    done = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: done.set())
    server = ISyncServer(users=users, timezone=args.timezone, comparison=args.comparison, latency=args.latency,
                         hide_wsdl=args.hide_wsdl, host=args.host, port=args.port)
    if args.products:
        server.add_products(args.products)
    with server:
        print(server.url, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
