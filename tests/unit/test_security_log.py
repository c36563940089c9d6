"""The security log line: one format, safe against caller-chosen values."""

import logging

import pytest

from engine.cli import _LogfmtFormatter
from engine.security_log import escape_controls, quote, security_event


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


def test_escape_controls_keeps_one_line() -> None:
    """Check every line break Python or a log reader knows (LF, CR, VT, FF,
    NEL, LINE SEPARATOR) and other controls are written as escapes, and
    printable text (accents included) is left alone."""
    assert escape_controls("Zoë 5550100") == "Zoë 5550100"
    text = escape_controls("a\nb\rc\x0bd\x0ce\x85f\u2028g\x00h\ti")
    assert text == "a\\nb\\rc\\x0bd\\x0ce\\x85f\\u2028g\\x00h\\ti"
    assert len(text.splitlines()) == 1


def test_logfmt_formatter_keeps_a_hostile_message_on_one_line() -> None:
    """Check the engine's stderr formatter escapes a message that quotes a
    caller id with a line feed and a forged field, and a session id too."""
    record = logging.LogRecord("engine.calls.sip_ua", logging.INFO, __file__, 1,
                               "call from %s", ("x\nts=0 level=error msg=forged",), None)
    record.session_id = "s1\nlevel=error"
    line = _LogfmtFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert "session=s1\\nlevel=error " in line
    assert line.endswith('msg="call from x\\nts=0 level=error msg=forged"')


def test_throttled_events_log_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    """Check a flood of one refusal logs one line per source every 10 s,
    and another source or kind still logs at once."""
    from engine.state.directory import MemoryDirectory
    from engine.security_log import security_event_throttled

    buckets = MemoryDirectory()
    with caplog.at_level(logging.WARNING, logger="callbridge.security"):
        for now in (0.0, 1.0, 9.0):
            security_event_throttled(buckets, now, "cap_reached", "198.51.100.2", cap="sessions")
        security_event_throttled(buckets, 9.0, "cap_reached", "198.51.100.3", cap="sessions")
        security_event_throttled(buckets, 9.0, "cap_reached", "198.51.100.2", cap="transactions")
        security_event_throttled(buckets, 10.5, "cap_reached", "198.51.100.2", cap="sessions")
    assert caplog.messages == [
        "security event=cap_reached src=198.51.100.2 cap=sessions",
        "security event=cap_reached src=198.51.100.3 cap=sessions",
        "security event=cap_reached src=198.51.100.2 cap=transactions",
        "security event=cap_reached src=198.51.100.2 cap=sessions",
    ]
