"""Where an iSync read starts from: the server's own time less an overlap, and a repeated DST hour."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from engine.adapters.isync import request_start
from engine.errors import ConfigError


def test_first_read_starts_at_start() -> None:
    assert request_start(None, start="2000-01-01T00:00:00", overlap=1, zone=None) == "2000-01-01T00:00:00"


def test_the_cursor_is_reread_by_the_overlap_whatever_the_comparison() -> None:
    assert request_start("2026-03-01T10:00:00", start="x", overlap=1, zone=None) == "2026-03-01T09:59:59"
    assert request_start("2026-03-01T10:00:00.5", start="x", overlap=0, zone=None) == "2026-03-01T10:00:00"


def test_a_cursor_in_a_repeated_hour_goes_back_by_that_hour() -> None:
    london = ZoneInfo("Europe/London")  # 2026-10-25 01:00-02:00 happens twice
    assert request_start("2026-10-25T01:30:00", start="x", overlap=1, zone=london) == "2026-10-25T00:29:59"
    assert request_start("2026-10-25T03:00:00", start="x", overlap=1, zone=london) == "2026-10-25T02:59:59"
    assert request_start("2026-10-25T01:30:00", start="x", overlap=1, zone=ZoneInfo("Africa/Johannesburg")) \
        == "2026-10-25T01:29:59"


def test_a_cursor_that_is_no_timestamp_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a server timestamp"):
        request_start("yesterday", start="x", overlap=1, zone=None)
