"""Tests for media in the harness: flows read from the engine's media graph
(:mod:`engine.testing.media`), speech heard through conferences and
internal calls, ``joined`` as "its audio reaches the conference", and the
stepped graph clock that keeps long waits cheap."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from engine.calls.call import CallState
from engine.testing import App, Harness

#: A conference session with one mixer: answers, adds the call, greets it
#: through the mixer (conference.say), mutes callers whose id starts with
#: "mute", and records when told so by a message.
ROOM = """
    from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

    mixer = None

    async def on_alerting(e):
        global mixer
        mixer = mixer or VoxEngine.create_conference("main")
        call = e.call
        await call.answer()
        mixer.add(call, mute=e.callerid.startswith("mute"))
        await mixer.say("Welcome to the room.")
        Logger.write("greeted")
        await call.say("This is for you alone.")

    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

#: Forwards a phone caller to conf_<dialed digits>, bridged both ways once connected.
GATE = """
    from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

    async def on_alerting(e):
        call = e.call
        await call.answer()
        leg = VoxEngine.call_conference("conf_" + e.destination[4:], callerid=e.callerid)
        leg.add_event_listener(CallEvents.Connected, lambda ev: VoxEngine.send_media_between(call, leg))
        leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
        call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())

    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

RULES = """
    rules:
      - {name: Gate, pattern: "gate[0-9]+", scenarios: [gate]}
      - {name: Room, pattern: "conf_[0-9]+", scenarios: [room]}
      - {name: Echo, pattern: "echo", scenarios: [echo]}
"""

ECHO = """
    from engine.runtime.scenario import AppEvents, VoxEngine

    async def on_alerting(e):
        await e.call.answer()
        e.call.send_media_to(e.call)

    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


@pytest.fixture
def app(callbridge: Harness) -> App:
    return callbridge.load_text(RULES, {"gate": GATE, "room": ROOM, "echo": ECHO})


def test_conference_speech_reaches_the_caller_through_the_wire(app: App) -> None:
    """Check a conference's say is heard by a phone bridged to it through a
    call_conference pair, and lasts its length on the virtual clock: the
    arrival action listens to the end, as a caller would. Both ends of the
    pair speak with the engine's TTS."""
    call = app.incoming_call("gate7", name="ann")
    assert call.heard_speech("Welcome to the room")
    welcome = call.speech[0]
    assert welcome.via == "conf_7/main" and welcome.completed is True
    assert app.conference("conf_7").log[-1] == "greeted"
    assert app.now >= welcome.duration
    # the room's say to ITS end of the internal call comes out of ours, in
    # the engine's voice (the runtime's TTS, not the default espeak-ng)
    assert call.heard_speech("for you alone") and call.speech[1].via == "conf_7"
    assert call.speech[1].playback.what == "This is for you alone."
    (leg,) = app.conference("conf_7").legs
    assert leg.tts is app.runtime.tts and leg.peer is not None and leg.peer.tts is app.runtime.tts
    assert "heard 'Welcome to the room.' from conf_7/main" in [e.text for e in call.transcript]


def test_joined_means_audio_reaches_the_conference(app: App) -> None:
    """Check joined() and the flows follow the graph: the caller's audio
    goes through the wire into the mixer and back; a muted caller still
    hears (flows from the mixer) but sends nothing, and has not joined."""
    ann = app.incoming_call("gate7", name="ann")
    assert ann.joined("conf_7") and ann.conferences == ["conf_7"]
    assert app.flows.between(ann, "conf_7") and app.flows.between(ann, "conf_7/main")
    assert [str(f) for f in app.flows] == ["ann -> conf_7/main (call to conf_7)",
                                           "conf_7/main -> ann (call to conf_7)"]
    bob = app.incoming_call("gate7", callerid="mute-bob", name="bob")
    assert app.flows.sends("conf_7", bob) and not app.flows.sends(bob, "conf_7")
    verdict = bob.joined("conf_7")
    assert not verdict
    assert "calls that connected but whose audio reached no conference there: conf_7 (CONNECTED)" in repr(verdict)
    assert app.conference("conf_7").participants == ["ann", "bob"]
    ann.hang_up()
    assert ann.joined("conf_7")  # it did, earlier
    assert not app.flows.sends(ann, "conf_7")
    assert app.conference("conf_7").participants == ["bob"]


def test_call_to_call_flows(app: App) -> None:
    """Check a call sending to itself (echo) is one flow, and that it goes
    when the call ends."""
    call = app.incoming_call("echo", name="eve")
    assert app.flows.between(call, call)
    assert [str(f) for f in app.flows] == ["eve -> eve"]
    call.hang_up()
    assert app.flows.describe() == "none"


def test_long_waits_do_not_tick_the_graph_every_20_ms(app: App) -> None:
    """Check the graph steps only at edits and playback ends: an hour with
    a conference in session costs a handful of graph ticks, not 180 000."""
    call = app.incoming_call("gate7")
    before = app.graph.stepped.ticks
    call.wait(3600)
    assert call.connected and app.now > 3600
    assert app.graph.stepped.ticks - before <= 2


def test_endless_conference_music_does_not_hold_actions(callbridge: Harness) -> None:
    """Check looping music in a conference neither blocks an action (it
    has no end to listen to) nor makes time run; the caller is told it
    plays (heard_playback)."""
    app = callbridge.load_text(RULES, {"gate": GATE, "echo": ECHO, "room": """
        from engine.media.players import ToneSource
        from engine.runtime.scenario import AppEvents, VoxEngine

        async def on_alerting(e):
            mixer = VoxEngine.create_conference("music")
            await e.call.answer()
            mixer.add(e.call)
            mixer.start_playback(ToneSource(425))

        VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
    """})
    call = app.incoming_call("gate1")
    assert call.heard_playback("tone 425 Hz") and call.played[0].duration is None
    assert app.now == 0.0


def test_recording_lasts_the_virtual_time(callbridge: Harness, tmp_path: Path) -> None:
    """Check call.record() in the graph writes a WAV as long as the virtual
    time it ran, though the graph did not tick every 20 ms."""
    target = tmp_path / "rec.wav"
    app = callbridge.load_text(RULES, {"gate": GATE, "room": ROOM, "echo": f"""
        from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

        async def on_alerting(e):
            await e.call.answer()
            rec = e.call.record({str(target)!r})
            e.call.add_event_listener(CallEvents.RecordStopped,
                                      lambda ev: Logger.write(f"recorded {{ev.duration:.2f}}"))

        VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
    """})
    call = app.incoming_call("echo")
    call.wait(12.5)
    call.hang_up()
    assert call.logged("recorded 12.50")
    with wave.open(str(target)) as wav:
        assert wav.getnframes() == 12.5 * 8000


def test_graph_failures_fail_the_test(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check an exception in the media graph's tick (an engine bug) fails
    the test at the next action, with the traceback."""
    call = app.incoming_call("gate7")

    def broken(now: float) -> bool:
        raise RuntimeError("graph bug on purpose")

    monkeypatch.setattr(app.graph, "tick", broken)
    with pytest.raises(AssertionError, match="graph bug on purpose"):
        call.hang_up()
    assert call.state == CallState.DISCONNECTED
