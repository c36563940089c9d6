"""Transfers in the media graph: ``MediaGraph.replace_node`` (a REFER's new
call or an INVITE with Replaces taking a leg's place) and the engine-side
``Call.transfer_to`` (browser legs, the refused REFER's bridge fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.calls.call import Call, CallError, CallEvents, CallState
from engine.calls.conference import MediaGraph

from test_conference import Leg, ManualClock, run, tones


@pytest.fixture
def graph(tmp_path: Path) -> MediaGraph:
    return MediaGraph(ManualClock(), recordings_dir=tmp_path / "rec")


def test_replace_node_moves_bridge_and_conference_seat(graph: MediaGraph) -> None:
    """After replace_node(b, c): a hears c (not b) and c hears a; c sits in
    b's conference seat, muted as b was; b's end changes nothing."""
    a, b, c, d = Leg(500), Leg(700), Leg(900), Leg(1100)
    graph.connect(a, b)
    graph.connect(b, a)
    conf = graph.create_conference()
    conf.add(b, mute=True)
    conf.add(d)
    graph.replace_node(b, c)
    assert set(graph.flows()) == {(a, c), (c, a), (c, conf), (conf, c), (conf, d), (d, conf)}
    assert conf.is_muted(c) and b not in conf
    b._set_state(CallState.DISCONNECTED)
    run(graph, 30, a, c)
    assert tones(a.port.heard()) == {900}
    assert tones(c.port.heard()) == {500, 1100}


class Dialer:
    """A session double: places the transfer's call as a new Leg."""

    def __init__(self) -> None:
        self.placed: list[tuple[str, Leg]] = []

    def run_listener(self, handler: Any, event: Any) -> None:
        handler(event)

    def dial_transfer_target(self, target: str, callerid: str | None = None,
                             headers: dict[str, str] | None = None) -> Call:
        leg = Leg(1300)
        leg.state = CallState.PROGRESSING
        self.placed.append((target, leg))
        return leg


def test_engine_transfer_rebridges_on_answer(graph: MediaGraph) -> None:
    """transfer_to(uri) on a leg without REFER: the engine dials through the
    session; once that call connects the leg hears it instead of its old
    partner, and TransferComplete names the new call."""
    browser, agent = Leg(500), Leg(700)
    dialer = Dialer()
    browser.dispatcher = dialer
    browser.graph = graph
    graph.connect(browser, agent)
    graph.connect(agent, browser)
    events: list[Any] = []
    browser.add_event_listener(CallEvents.TransferComplete, events.append)
    browser.transfer_to("sip:carol@example.com")
    (target, new), = dialer.placed
    assert target == "sip:carol@example.com" and not events
    new._set_state(CallState.CONNECTED)
    new._emit(CallEvents.Connected)
    assert set(graph.flows()) == {(browser, new), (new, browser)}
    assert events and events[0].new_call is new
    run(graph, 30, browser)
    assert tones(browser.port.heard()) == {1300}


def test_engine_transfer_failure_and_checks(graph: MediaGraph) -> None:
    """The new call failing gives TransferFailed with its code and leaves
    the old flows; bad fallbacks, unconnected calls and no session are refused."""
    browser, agent = Leg(500), Leg(700)
    dialer = Dialer()
    browser.dispatcher, browser.graph = dialer, graph
    graph.connect(agent, browser)
    failed: list[Any] = []
    browser.add_event_listener(CallEvents.TransferFailed, failed.append)
    browser.transfer_to("sip:carol@example.com")
    new = dialer.placed[0][1]
    new._finish(CallState.FAILED, CallEvents.Failed, 486, "Busy Here")
    assert failed[0].code == 486 and failed[0].refused is False
    assert graph.flows() == [(agent, browser)]
    with pytest.raises(CallError, match="fallback must be"):
        browser.transfer_to("sip:x@example.com", fallback="conference")
    with pytest.raises(CallError, match="itself"):
        browser.transfer_to(browser)
    lonely = Leg()
    lonely.graph = graph
    with pytest.raises(CallError, match="no scenario session"):
        lonely.transfer_to("sip:x@example.com")
    ringing = Leg()
    ringing.state = CallState.PROGRESSING
    with pytest.raises(CallError, match="connected call"):
        ringing.transfer_to("sip:x@example.com")
