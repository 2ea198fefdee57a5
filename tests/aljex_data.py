"""A generated three-day sequence of Aljex morning exports, and what the database must hold after each day.

The truth is a small Aljex database whose records carry their created/updated/ship days relative
to today (UTC). Each export is cut from it the way Aljex cuts it: six files are full snapshots,
Loads and Invoicing hold active records and those touched in the last three days, five files the
records created in the last seven days. The files carry real CSV content: a byte-order mark,
quoted commas and doubled quotes, line breaks inside fields, accents, empty fields, identifiers
with leading zeros and US dates such as ``3/19/2015 4:42:50 PM``.

The expected database after day *k* is, per table, every record seen in some export up to day *k*,
with the values of its latest export, minus the records Aljex deleted by then (the scripted
deletions are all ones the sample pipeline can tell from a record merely leaving its window).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ZONE = ZoneInfo("America/New_York")
DAYS = 3
TEXTS = ("Smith, Jones & Co", 'Ask for "Big" Al', "Bélanger Trânsport — Montréal", "Dock 4\r\nCall ahead, then wait",
         "", "Plain Freight")
ACTIVE = ("Open", "Covered", "Dispatched", "In Transit")


@dataclass
class Item:
    """One record of the truth: its day offsets, its versions by export day, its deletion day."""

    n: int
    created: int
    updated: dict[int, int] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    first: int = 0
    deleted: int | None = None
    ship: int | None = None

    def alive(self, day: int) -> bool:
        """Whether Aljex holds the record on export ``day``."""
        return self.first <= day and (self.deleted is None or day < self.deleted)

    def version(self, day: int) -> int:
        """How many updates the record has had by export ``day``."""
        return len([d for d in self.updated if d <= day])

    def touched(self, day: int) -> int:
        """The latest of created and updated days known on export ``day``."""
        return max([self.created, *(u for d, u in self.updated.items() if d <= day)])

    def state(self, day: int) -> str:
        """The status on export ``day``."""
        return next((self.status[d] for d in sorted(self.status, reverse=True) if d <= day), "Open")


@dataclass
class AljexFile:
    """One of the thirteen files: name, columns with their kinds, key and how its export is cut."""

    name: str
    table: str
    columns: dict[str, str]
    rule: str
    items: list[Item]

    @property
    def key(self) -> str:
        """The key column (always the first)."""
        return next(iter(self.columns))


def _snapshot_items() -> list[Item]:
    items = [Item(n, created=-400 + n) for n in range(5)]
    items[1].updated[1] = -1
    items[2].deleted = 2
    new = Item(5, created=-1, first=1)
    new.updated[2] = 0
    return [*items, new]


def _load_items() -> list[Item]:
    in_transit = Item(0, created=-30, status={0: "In Transit"})
    in_transit.updated[1] = -1
    left = Item(1, created=-9, status={0: "Delivered"}, ship=-6)
    left.updated[0] = -5
    dropped = Item(2, created=-20, status={0: "Dispatched"}, deleted=2)
    delivered_then_dropped = Item(3, created=-10, status={0: "In Transit", 1: "Delivered"}, deleted=2, ship=-3)
    delivered_then_dropped.updated.update({0: -3, 1: -1})
    aged = Item(4, created=-12, status={0: "Delivered"}, ship=-4)
    aged.updated[0] = -4
    ancient = Item(5, created=-60, status={0: "Delivered"}, ship=-58)
    fresh = Item(6, created=0, first=2, status={2: "Open"}, ship=1)
    return [in_transit, left, dropped, delivered_then_dropped, aged, ancient, fresh]


def _invoice_items() -> list[Item]:
    touched = Item(0, created=-2, ship=-3)
    touched.updated[1] = -1
    left = Item(1, created=-5, ship=-7)
    dropped = Item(2, created=-1, first=1, deleted=2, ship=-2)
    fresh = Item(3, created=0, first=2, ship=-1)
    aged = Item(4, created=-4, ship=-6)
    return [touched, left, dropped, fresh, aged]


def _created_items() -> list[Item]:
    corrected = Item(2, created=-3)
    corrected.updated[1] = -1
    return [Item(0, created=-9), Item(1, created=-8), corrected, Item(3, created=-1, first=1),
            Item(4, created=0, first=2), Item(5, created=-30)]


def files() -> list[AljexFile]:
    """The thirteen Aljex files."""
    amount, when = "amount", "datetime"
    return [
        AljexFile("employees.csv", "employees", {"id": "key", "name": "text", "email": "email", "team": "digits",
                                                 "type": "text", "phone": "phone", "status": "text"},
                  "snapshot", _snapshot_items()),
        AljexFile("customers.csv", "customers", {"id": "key", "name": "text", "address": "text", "zip": "zip",
                                                 "credit_limit": amount, "created": when}, "snapshot",
                  _snapshot_items()),
        AljexFile("carriers.csv", "carriers", {"id": "key", "name": "text", "mc_number": "digits", "zip": "zip",
                                               "insurance_expires": "date", "status": "text"}, "snapshot",
                  _snapshot_items()),
        AljexFile("loads.csv", "loads", {"pro": "key", "customer_id": "digits", "status": "status",
                                         "ship_date": "ship", "rate": amount, "notes": "text", "created": when,
                                         "updated": "touched"}, "active_3d", _load_items()),
        AljexFile("payments.csv", "payments", {"check_number": "key", "carrier_id": "digits", "pro": "digits",
                                               "amount": amount, "paid": when}, "snapshot", _snapshot_items()),
        AljexFile("invoicing.csv", "invoicing", {"invoice_number": "key", "pro": "digits", "customer_id": "digits",
                                                 "amount": amount, "invoice_date": "ship", "status": "text",
                                                 "created": when, "updated": "touched"}, "touched_3d",
                  _invoice_items()),
        AljexFile("payments_received.csv", "payments_received",
                  {"id": "key", "invoice_number": "digits", "customer_id": "digits", "amount": amount,
                   "reference": "text", "created": when}, "created_7d", _created_items()),
        AljexFile("debits.csv", "debits", {"id": "key", "pro": "digits", "amount": amount, "reason": "text",
                                           "created": when}, "created_7d", _created_items()),
        AljexFile("credits.csv", "credits", {"id": "key", "pro": "digits", "amount": amount, "reason": "text",
                                             "created": when}, "created_7d", _created_items()),
        AljexFile("salesreps.csv", "salesreps", {"id": "key", "name": "text", "email": "email",
                                                 "commission_pct": amount, "status": "text"}, "snapshot",
                  _snapshot_items()),
        AljexFile("quotes.csv", "quotes", {"quote_number": "key", "customer_id": "digits", "origin": "text",
                                           "rate": amount, "status": "text", "created": when}, "created_7d",
                  _created_items()),
        AljexFile("payable.csv", "payable", {"id": "key", "pro": "digits", "carrier_id": "digits", "amount": amount,
                                             "due_date": "date", "status": "text"}, "snapshot", _snapshot_items()),
        AljexFile("new_purchases.csv", "new_purchases", {"id": "key", "vendor": "text", "description": "text",
                                                         "amount": amount, "created": when}, "created_7d",
                  _created_items()),
    ]


def today() -> date:
    """The day of the last export (the engine's delete conditions compare with the run's UTC date)."""
    return datetime.now(UTC).date()


def us_datetime(offset: int, minute: int = 0) -> str:
    """A US date and time such as ``3/19/2015 4:42:50 PM`` (always in the afternoon, local time)."""
    d = today() + timedelta(days=offset)
    return f"{d.month}/{d.day}/{d.year} 4:{minute:02d}:50 PM"


def us_date(offset: int) -> str:
    """A US date such as ``3/19/2015``."""
    d = today() + timedelta(days=offset)
    return f"{d.month}/{d.day}/{d.year}"


def in_export(spec: AljexFile, item: Item, day: int) -> bool:
    """Whether Aljex puts the record in export ``day`` (0, 1, 2; day 2 is today)."""
    if not item.alive(day):
        return False
    t = day - (DAYS - 1)
    if spec.rule == "snapshot":
        return True
    if spec.rule == "created_7d":
        return item.created >= t - 7
    dates = [item.touched(day), *([item.ship] if item.ship is not None else [])]
    recent = max(dates) >= t - 3
    return recent or (spec.rule == "active_3d" and item.state(day) in ACTIVE)


def raw_row(spec: AljexFile, item: Item, day: int) -> dict[str, str]:
    """The record's CSV values on export ``day``."""
    v = item.version(day)
    row: dict[str, str] = {}
    for j, (column, kind) in enumerate(spec.columns.items()):
        i = item.n + j
        if kind == "key":
            row[column] = f"{item.n + 1:06d}"
        elif kind == "text":
            text = TEXTS[i % len(TEXTS)]
            row[column] = f"{text} (rev {v})" if v and text else text
        elif kind == "email":
            row[column] = "" if item.n == 3 else f"andré.{item.n}@example.com"
        elif kind == "digits":
            row[column] = f"{(item.n * 37 + j) % 1000:07d}"
        elif kind == "phone":
            row[column] = f"732357{8700 + item.n}"
        elif kind == "zip":
            row[column] = "07701" if item.n % 2 == 0 else "08540"
        elif kind == "amount":
            row[column] = "" if item.n == 3 and j > 2 else f"{1250 * (item.n + 1) + v * 10:,.2f}"
        elif kind == "datetime":
            row[column] = us_datetime(item.created, minute=item.n)
        elif kind == "touched":
            row[column] = us_datetime(item.touched(day), minute=item.n)
        elif kind == "date":
            row[column] = us_date(30 + item.n)
        elif kind == "ship":
            row[column] = "" if item.ship is None else us_date(item.ship)
        elif kind == "status":
            row[column] = item.state(day)
    return row


def export_text(spec: AljexFile, day: int) -> bytes:
    """The file's bytes on export ``day``: BOM, CRLF line ends, minimal quoting."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(spec.columns), lineterminator="\r\n")
    writer.writeheader()
    for item in spec.items:
        if in_export(spec, item, day):
            writer.writerow(raw_row(spec, item, day))
    return out.getvalue().encode("utf-8-sig")


def write_exports(folder: Path, day: int) -> None:
    """Upload (write) the thirteen files of export ``day``, with that morning as modification time."""
    folder.mkdir(parents=True, exist_ok=True)
    morning = datetime.combine(today() + timedelta(days=day - (DAYS - 1)), time(5, 0), UTC).timestamp()
    for spec in files():
        path = folder / spec.name
        path.write_bytes(export_text(spec, day))
        os.utime(path, (morning, morning))


def mapped(kind: str, raw: str) -> Any:
    """What the sample mapping makes of a raw value (written independently of the engine's filters)."""
    if raw == "":
        return None
    if kind in ("datetime", "touched"):
        parsed = datetime.strptime(raw, "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=ZONE)
        return parsed.isoformat()
    if kind in ("date", "ship"):
        return datetime.strptime(raw, "%m/%d/%Y").date().isoformat()
    if kind == "amount":
        return str(Decimal(raw.replace(",", "")))
    return raw


def expected(spec: AljexFile, day: int) -> dict[str, dict[str, Any]]:
    """Rows by key that the table must hold after the run of export ``day``."""
    rows: dict[str, dict[str, Any]] = {}
    for item in spec.items:
        if item.deleted is not None and item.deleted <= day:
            continue
        seen = [d for d in range(day + 1) if in_export(spec, item, d)]
        if seen:
            raw = raw_row(spec, item, seen[-1])
            rows[raw[spec.key]] = {c: mapped(k, raw[c]) for c, k in spec.columns.items()}
    return rows


def left_window(spec: AljexFile, day: int) -> list[str]:
    """Keys of live records seen before ``day`` that are not in export ``day``: they must stay."""
    return [raw_row(spec, item, 0)[spec.key] for item in spec.items
            if item.alive(day) and not in_export(spec, item, day) and any(in_export(spec, item, d)
                                                                           for d in range(day))]
