"""What a caller writes into From (user part, display name) and a MESSAGE
body reaches the session log as one line: escapes are decoded once (RFC 3261
§19.1.2), and the log writer escapes control characters, so no forged line
and no forged ``session=`` field."""

from __future__ import annotations

import re

import pytest
from logs import session_logs

from .conftest import EngineFactory, PeerFactory, wait_for_log
from .sip_peer import request

RULES = """
rules:
  - {name: Greet, pattern: "greet", scenarios: [greet]}
  - {name: Note, pattern: "note", scenarios: [note]}
"""

GREET = '''
"""Log the caller id and display name verbatim, then refuse the call."""
from engine.runtime.scenario import AppEvents, Logger, VoxEngine


def on_alerting(e):
    Logger.write(f"caller {e.callerid} name {e.call.display_name}")
    e.call.reject(486)
    VoxEngine.terminate()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''

NOTE = '''
"""Log a MESSAGE's sender and text verbatim."""
from engine.runtime.scenario import AppEvents, Logger, VoxEngine


def on_message(e):
    Logger.write(f"from {e.callerid} text {e.text}")
    VoxEngine.terminate()


VoxEngine.add_event_listener(AppEvents.MessageReceived, on_message)
'''

SCENARIOS = {"greet": GREET, "note": NOTE}

LINE = re.compile(r"^\S+ session=(\S+) ")


def check_lines(logs: str) -> set[str]:
    """Every line is ``<stamp> session=<id> ...``; return the ids seen."""
    ids = set()
    for line in logs.splitlines():
        m = LINE.match(line)
        assert m is not None, f"a line without its stamp and session: {line!r}"
        ids.add(m[1])
    return ids


async def test_caller_id_and_display_name_cannot_forge_a_session_log_line(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """An INVITE from ``"Eve<VT>session=fake2<U+2028>session=fake3"
    <sip:%250Asession=fake@...>`` (the parser refuses a bare CR, not these
    line breaks): the caller id is ``%0Asession=fake`` (decoded once, not
    into a line feed), the display name's breaks are written as escapes; the
    log holds one session's lines only, each with its stamp and session."""
    engine = await make_engine(RULES, SCENARIOS)
    phone = await peers.udp(engine)
    raw = request("INVITE", f"sip:greet@127.0.0.1:{engine.ua.port}", local=phone.local,
                  from_uri="sip:%250Asession=fake@127.0.0.1", body=b"")
    display = 'From: "Eve\x0bsession=fake2\u2028session=fake3" <'  # a VT and a LINE SEPARATOR
    raw = raw.replace(b"From: <", display.encode(), 1)
    phone.send(raw)
    assert (await phone.expect(486, method="INVITE")).status == 486
    logs = await wait_for_log(engine, "terminated")
    assert check_lines(logs) == {next(iter(engine.runtime.finished))[0]}
    caller = [ln for ln in logs.splitlines() if " caller " in ln]
    assert len(caller) == 1
    assert caller[0].endswith(" caller %0Asession=fake name Eve\\x0bsession=fake2\\u2028session=fake3")
    assert len(logs.splitlines()) == 4  # started, call from, caller, terminated


async def test_message_sender_and_text_cannot_forge_a_session_log_line(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A MESSAGE from ``sip:%250Asession=fake@...`` whose text has a line
    feed and a ``session=`` field: one log line, with the sender decoded
    once and the line feed escaped; read_log of the forged id finds nothing."""
    engine = await make_engine(RULES, SCENARIOS)
    peer = await peers.udp(engine)
    peer.send(request("MESSAGE", f"sip:note@127.0.0.1:{engine.ua.port}", local=peer.local,
                      from_uri="sip:%250Asession=fake@127.0.0.1",
                      body=b"hi\n2024-01-01T00:00:00 session=fake owned", content_type="text/plain"))
    assert (await peer.expect(method="MESSAGE")).status == 200
    logs = await wait_for_log(engine, "terminated")
    assert len(check_lines(logs)) == 1
    line = next(ln for ln in session_logs(engine).splitlines() if " text " in ln)
    assert line.endswith(" from %0Asession=fake text hi\\n2024-01-01T00:00:00 session=fake owned")
    with pytest.raises(KeyError):
        engine.runtime.read_log("fake")
