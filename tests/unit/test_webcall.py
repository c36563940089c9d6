"""A browser's call (:class:`engine.calls.web_call.WebCall`) with a recording
channel and a fake media leg: no socket, no ICE. Checks the frames each
scenario action sends, the events and end codes the scenario sees (the same
as a SIP call's), and that playback goes through the leg's audio port."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import numpy as np
import pytest

from engine.calls.call import CallError, CallEvent, CallEvents, CallState
from engine.media.clock import MediaClock
from engine.calls.web_call import WebCall
from engine.calls.webrtc import WebRtcAudioPort


class Channel:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


class FakeLeg:
    """Stands in for :class:`BrowserMediaLeg`: answers ``v=0 answer`` (or
    fails for an offer of ``bad``)."""

    def __init__(self, on_failed: Callable[[str], None]) -> None:
        self.on_failed = on_failed
        self.port = WebRtcAudioPort()
        self.candidates: list[Any] = []
        self.closed = False

    async def accept_offer(self, sdp: str, candidates: Sequence[Any] = ()) -> str:
        if sdp == "bad":
            raise ValueError("the offer has no audio stream")
        self.candidates.extend(candidates)
        return "v=0 answer"

    async def add_remote_candidate(self, candidate: Any) -> None:
        self.candidates.append(candidate)

    async def close(self) -> None:
        self.closed = True


def make_call(offer: str = "v=0 offer") -> tuple[WebCall, Channel, list[CallEvent]]:
    channel = Channel()
    call = WebCall(channel, "w1", offer=offer, clock=MediaClock(), leg_factory=FakeLeg,  # type: ignore[arg-type]
                   direction="inbound", number="echo", callerid="alice", headers={"X-A": "1"})
    call._set_state(CallState.ALERTING)
    events: list[CallEvent] = []
    for name in CallEvents:
        call.add_event_listener(name, events.append)
    return call, channel, events


def names(events: list[CallEvent]) -> list[str]:
    return [e.name for e in events]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_answer_sends_connected_with_sdp() -> None:
    """Check answer() sends ``connected`` with our SDP and the headers, then
    the call is CONNECTED and Connected is emitted; the awaitable completes."""
    call, channel, events = make_call()
    await asyncio.wait_for(call.answer({"X-B": "2"}), 1)
    assert channel.frames == [{"type": "connected", "call": "w1", "sdp": "v=0 answer", "headers": {"X-B": "2"}}]
    assert call.state == CallState.CONNECTED and names(events) == ["Connected"]
    assert call.headers == {"X-A": "1"} and call.kind == "web"


async def test_ring_early_media_then_answer() -> None:
    """Check ring() sends progress 180, start_early_media() progress 183 with
    the SDP, and answer() afterwards ``connected`` without SDP."""
    call, channel, _ = make_call()
    call.ring()
    call.start_early_media()
    await settle()
    await asyncio.wait_for(call.answer(), 1)
    assert [(f["type"], f.get("code"), "sdp" in f) for f in channel.frames] == [
        ("progress", 180, False), ("progress", 183, True), ("connected", None, False),
    ]


async def test_reject_and_its_limits() -> None:
    """Check reject(486) sends ``failed`` 486 and the scenario sees Failed
    486; codes outside 300-699 and rejecting an answered call raise."""
    call, channel, events = make_call()
    with pytest.raises(CallError):
        call.reject(200)
    call.reject(486)
    assert channel.frames[-1]["type"] == "failed" and channel.frames[-1]["code"] == 486
    assert call.state == CallState.FAILED and events[-1].code == 486
    answered, _, _ = make_call()
    await answered.answer()
    with pytest.raises(CallError):
        answered.reject()


async def test_hangup_before_and_after_the_answer() -> None:
    """Check hangup() before the answer sends ``failed`` 480 (Disconnected 480
    here), after it ``hangup`` (Disconnected 200); a second hangup is a no-op."""
    call, channel, events = make_call()
    call.hangup()
    assert channel.types() == ["failed"] and channel.frames[0]["code"] == 480
    assert (events[-1].name, events[-1].code) == ("Disconnected", 480)
    call, channel, events = make_call()
    await call.answer()
    call.hangup()
    call.hangup()
    assert channel.types() == ["connected", "hangup"]
    assert (events[-1].name, events[-1].code) == ("Disconnected", 200)


async def test_browser_hangup_cancel_and_lost_socket() -> None:
    """Check the browser's hangup is Disconnected 200 once connected and 487
    Cancelled while ringing, and a lost socket is Disconnected 408."""
    call, _, events = make_call()
    call.on_remote_hangup({"X-Why": "bye"})
    assert (events[-1].name, events[-1].code, events[-1].reason) == ("Disconnected", 487, "Cancelled")
    assert events[-1].headers == {"X-Why": "bye"}
    call, _, events = make_call()
    await call.answer()
    call.on_remote_hangup({})
    assert (events[-1].name, events[-1].code) == ("Disconnected", 200)
    call, _, events = make_call()
    await call.answer()
    call.on_connection_lost()
    assert (events[-1].name, events[-1].code, events[-1].reason) == ("Disconnected", 408, "Connection Lost")


async def test_unusable_offer_fails_with_488() -> None:
    """Check an offer the media leg cannot answer fails the call with 488 and
    answer()'s awaitable raises CallError."""
    call, channel, events = make_call(offer="bad")
    with pytest.raises(CallError):
        await asyncio.wait_for(call.answer(), 1)
    assert channel.frames[-1]["code"] == 488 and (events[-1].name, events[-1].code) == ("Failed", 488)


async def test_messages_and_tones() -> None:
    """Check messages need a connected call both ways, the browser's digits
    are ToneReceived with mode "signalling" while tones are handled, and
    typed-ahead digits serve the next collect_tones()."""
    call, channel, events = make_call()
    with pytest.raises(CallError):
        call.send_message("early")
    with pytest.raises(CallError):
        call.on_remote_message("early", {})
    await call.answer()
    call.send_message("hi", {"X-C": "3"})
    assert channel.frames[-1] == {"type": "message", "call": "w1", "text": "hi", "headers": {"X-C": "3"}}
    call.on_remote_message("yo", {"X-D": "4"})
    assert (events[-1].name, events[-1].text, events[-1].headers) == ("MessageReceived", "yo", {"X-D": "4"})
    call.on_remote_tones("1")  # tones not handled: no event
    assert events[-1].name == "MessageReceived"
    call.handle_tones(True)
    call.on_remote_tones("2#")
    assert [(e.tone, e.mode) for e in events if e.name == "ToneReceived"] == [("2", "signalling"), ("#", "signalling")]
    assert await call.collect_tones(terminator="#", timeout=0.1) == "2"


async def test_candidates_before_media_go_with_the_offer() -> None:
    """Check candidates trickled before the answer reach the leg with the
    offer, later ones directly, and a malformed one raises ValueError."""
    call, _, _ = make_call()
    await call.on_remote_candidate({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"})
    await call.answer()
    await call.on_remote_candidate(None)
    assert call.leg is not None
    leg: Any = call.leg
    assert [c.ip if c is not None else None for c in leg.candidates] == ["127.0.0.1", None]
    with pytest.raises(ValueError):
        await call.on_remote_candidate({"candidate": "candidate:1 2"})


async def test_media_failure_ends_the_call() -> None:
    """Check a failed WebRTC leg ends a connected call: ``hangup`` 503 to the
    browser, Disconnected 503 here, and the leg is closed."""
    call, channel, events = make_call()
    await call.answer()
    leg: Any = call.leg
    leg.on_failed("WebRTC connection failed")
    await settle()
    assert channel.frames[-1]["type"] == "hangup" and channel.frames[-1]["code"] == 503
    assert (events[-1].name, events[-1].code) == ("Disconnected", 503)
    assert leg.closed and call.leg is None


async def test_playback_goes_through_the_audio_port() -> None:
    """Check playback needs media (answer or early media), then a tone's
    frames go to the port once it is sending, and stopping ends it."""
    call, _, events = make_call()
    with pytest.raises(CallError):
        call.start_playback_tone(440)
    await call.answer()
    port = call.audio_port
    assert port is not None
    playback = call.start_playback_tone(440, seconds=0.1)
    first = asyncio.ensure_future(port._next_out())  # aiortc starts pulling
    assert await asyncio.wait_for(playback, 2) is True
    frame = await first
    assert frame is not None and np.abs(frame).max() > 1000
    assert [e.completed for e in events if e.name == "PlaybackFinished"] == [True]
    endless = call.start_playback_tone(440)
    call.hangup()
    assert await endless is False
