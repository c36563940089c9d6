"""The security log line: one format, safe against caller-chosen values."""

import logging

import pytest

from engine.security_log import quote, security_event


def test_plain_values_stay_bare() -> None:
    """Check addresses and simple names are written as they are."""
    assert quote("203.0.113.7") == "203.0.113.7"
    assert quote("alice@example.com") == "alice@example.com"


def test_hostile_values_cannot_break_the_line() -> None:
    """Check a caller id with a newline, quote or field forgery stays one quoted token."""
    text = quote('x"\nsecurity event=ok src=1.1.1.1')
    assert "\n" not in text and text.startswith('"') and text.endswith('"')
    assert '\\"' in text and "\\n" in text


def test_values_are_cut() -> None:
    """Check a long value is cut so a request cannot fill the log."""
    assert len(quote("a" * 10_000)) <= 80


def test_event_line(caplog: pytest.LogCaptureFixture) -> None:
    """Check the line starts with the event and source, and None fields are left out."""
    with caplog.at_level(logging.WARNING, logger="callbridge.security"):
        security_event("auth_failed", "198.51.100.2", method="REGISTER", user="bob", realm=None)
        security_event("cap_reached", None, table="sessions")
    assert caplog.messages == [
        "security event=auth_failed src=198.51.100.2 method=REGISTER user=bob",
        "security event=cap_reached src=- table=sessions",
    ]
