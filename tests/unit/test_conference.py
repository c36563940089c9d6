"""The media graph: conferences, directed flows, wires, players, recordings.

Legs are fake audio ports fed with tones; what each leg receives is checked
by its spectrum (which tones are in it), never by counting frames.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from engine.calls.call import Call, CallState, new_call_pair
from engine.calls.conference import Conference, ConferenceError, MediaGraph
from engine.calls.recording import Recording
from engine.media.players import ToneSource
from engine.media.clock import MediaClock

Pcm = npt.NDArray[np.int16]
RATE = 8000
N = 160


class ManualClock(MediaClock):
    """A clock that never runs by itself: the test ticks the graph."""

    def add(self, sink: Any) -> None:
        self._sinks[sink] = None


class FakePort:
    """A leg's audio: sends a tone (or silence), keeps what it is given."""

    def __init__(self, freq: float | None) -> None:
        self.source = ToneSource(freq, None, -20.0) if freq else None
        self.received: list[Pcm | None] = []
        self.attached = False
        self.last_sent: Pcm | None = None

    def graph_attach(self) -> None:
        self.attached = True

    def graph_detach(self) -> None:
        self.attached = False

    def pull(self, now: float) -> Pcm | None:
        return self.source.read(N) if self.source is not None else None

    def push(self, frame: Pcm | None) -> bool:
        self.received.append(None if frame is None else frame.copy())
        self.last_sent = frame
        return frame is not None

    def heard(self, last: int = 25) -> Pcm:
        frames = [f for f in self.received[-last:] if f is not None]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


class Leg(Call):
    """A call with media of its own (as a SIP leg has)."""

    def __init__(self, freq: float | None = None) -> None:
        super().__init__(direction="inbound", number="100", callerid="200")
        self.port = FakePort(freq)
        self._set_state(CallState.CONNECTED)

    def media_port(self) -> FakePort:
        return self.port


def level(pcm: Pcm, freq: float) -> float:
    """Amplitude of ``freq`` in ``pcm`` (single-bin DFT)."""
    if pcm.size == 0:
        return 0.0
    t = np.arange(pcm.size) / RATE
    return float(abs(np.dot(pcm.astype(np.float64), np.exp(-2j * np.pi * freq * t))) * 2 / pcm.size)


def tones(pcm: Pcm, freqs: tuple[float, ...] = (500, 700, 900, 1100, 1300)) -> set[float]:
    """Which of ``freqs`` are clearly present."""
    return {f for f in freqs if level(pcm, f) > 500}


@pytest.fixture
def graph(tmp_path: Path) -> MediaGraph:
    return MediaGraph(ManualClock(), recordings_dir=tmp_path / "rec")


def run(graph: MediaGraph, ticks: int = 30, *legs: Leg) -> None:
    """Tick ``ticks`` times, after forgetting what ``legs`` received so far."""
    for leg in legs:
        leg.port.received.clear()
    for i in range(ticks):
        graph.tick(i * 0.02)


def test_conference_mix_minus(graph: MediaGraph) -> None:
    """Check each conference member hears every other member and not itself."""
    conf = graph.create_conference("c")
    legs = [Leg(f) for f in (500, 700, 900)]
    for leg in legs:
        conf.add(leg)
    run(graph)
    assert tones(legs[0].port.heard()) == {700, 900}
    assert tones(legs[1].port.heard()) == {500, 900}
    assert tones(legs[2].port.heard()) == {500, 700}
    assert all(leg.port.attached for leg in legs)
    assert conf.endpoints == legs


def test_mute_deaf_volume(graph: MediaGraph) -> None:
    """Check mute takes a member out of the mix, deaf sends it nothing, and
    volume scales what it contributes."""
    conf = graph.create_conference()
    a, b, c = Leg(500), Leg(700), Leg(900)
    for leg in (a, b, c):
        conf.add(leg)
    conf.set_mute(a)
    conf.set_deaf(b)
    run(graph)
    assert tones(c.port.heard()) == {700}
    assert tones(a.port.heard()) == {700, 900}
    assert all(f is None for f in b.port.received[-5:])  # deaf: nothing mixed for it
    conf.set_mute(a, False)
    conf.set_volume(b, 0.5)
    run(graph)
    heard = c.port.heard()
    assert tones(heard) == {500, 700}
    assert level(heard, 700) == pytest.approx(level(heard, 500) / 2, rel=0.05)


def test_one_way_and_both_ways(graph: MediaGraph) -> None:
    """Check send_media_to is one way, both ways hears both, and stop ends it."""
    a, b = Leg(500), Leg(700)
    graph.connect(a, b)
    run(graph)
    assert tones(b.port.heard()) == {500}
    assert tones(a.port.heard()) == set()
    graph.connect(b, a)
    run(graph)
    assert tones(a.port.heard()) == {700}
    graph.disconnect(a, b)
    run(graph, 30, b)
    assert tones(b.port.heard()) == set()
    assert graph.flows() == [(b, a)]


def test_echo(graph: MediaGraph) -> None:
    """Check a call sending media to itself hears itself (the echo helper)."""
    a = Leg(1100)
    a.graph = graph
    a.start_echo()
    run(graph)
    assert tones(a.port.heard()) == {1100}
    a.stop_echo()
    run(graph, 30, a)
    assert tones(a.port.heard()) == set()


def phone_bridged_into_conference(graph: MediaGraph) -> tuple[Leg, Leg, Call]:
    """The canonical application's routing: a phone (500 Hz) bridged both
    ways to an internal call whose other end is in a conference with
    another leg (900 Hz); returns (phone, other, the conference's end)."""
    phone, other = Leg(500), Leg(900)
    out, inc = new_call_pair(number="conf_1", callerid="200", display_name=None, headers=None,
                             caller_dispatcher=_Direct())
    out._set_state(CallState.CONNECTED)
    inc._set_state(CallState.CONNECTED)
    graph.connect(phone, out)
    graph.connect(out, phone)
    conf = graph.create_conference()
    conf.add(inc)
    conf.add(other)
    return phone, other, inc


def test_internal_call_is_a_wire(graph: MediaGraph) -> None:
    """Check the canonical application's routing: a phone bridged to an
    internal call whose other end is in a conference hears the conference
    and is heard in it, and never hears itself."""
    phone, other, inc = phone_bridged_into_conference(graph)
    run(graph)
    assert tones(phone.port.heard()) == {900}
    assert tones(other.port.heard()) == {500}


def test_graph_mute_of_an_internal_leg_mutes_the_caller_behind_it(graph: MediaGraph) -> None:
    """Check MediaGraph.set_muted on a conference's internal leg (a room
    moderator muting a participant) stops the phone behind it from
    reaching the conference while it still hears the others; unmuting
    restores it, and nobody hears themselves meanwhile."""
    phone, other, inc = phone_bridged_into_conference(graph)
    graph.set_muted(inc)
    assert graph.is_muted(inc)
    run(graph, 30, phone, other)
    assert tones(other.port.heard()) == set()
    assert tones(phone.port.heard()) == {900}
    graph.set_muted(inc, False)
    run(graph, 30, phone, other)
    assert tones(other.port.heard()) == {500}
    assert tones(phone.port.heard()) == {900}


def test_players(graph: MediaGraph) -> None:
    """Check a conference's player reaches every member and an internal
    call's player reaches the leg bridged to its other end; done(True) at
    the end."""
    a, b = Leg(), Leg()
    conf = graph.create_conference()
    conf.add(a)
    conf.add(b)
    ended: list[bool] = []
    graph.start_player(conf, ToneSource(1300, 0.2, -20.0), ended.append)
    run(graph, 5)
    assert tones(a.port.heard(5)) == {1300} and tones(b.port.heard(5)) == {1300}
    run(graph, 10)
    assert ended == [True]
    phone = Leg()
    out, inc = new_call_pair(number="x", callerid="y", display_name=None, headers=None,
                             caller_dispatcher=_Direct())
    graph.connect(out, phone)
    graph.start_player(inc, ToneSource(1100, None, -20.0))
    run(graph, 5)
    assert tones(phone.port.heard(5)) == {1100}
    graph.stop_player(inc)
    run(graph, 5, phone)
    assert tones(phone.port.heard(5)) == set()


def test_call_end_leaves_conference(graph: MediaGraph) -> None:
    """Check an ended call leaves its conference (EndpointRemoved) and the
    others stop hearing it."""
    conf = graph.create_conference()
    a, b = Leg(500), Leg(700)
    conf.add(a)
    conf.add(b)
    removed: list[Any] = []
    conf.add_event_listener("EndpointRemoved", lambda e: removed.append(e.endpoint))
    run(graph, 5)
    a._set_state(CallState.DISCONNECTED)
    run(graph, 30, b)
    assert removed == [a]
    assert conf.endpoints == [b]
    assert tones(b.port.heard()) == set()


def test_linked_conferences(graph: MediaGraph) -> None:
    """Check two conferences joined both ways act as one: each member hears
    the members of both, once, and not itself."""
    c1, c2 = graph.create_conference("one"), graph.create_conference("two")
    a, b, c = Leg(500), Leg(700), Leg(900)
    c1.add(a)
    c1.add(b)
    c2.add(c)
    graph.connect(c1, c2)
    graph.connect(c2, c1)
    run(graph)
    assert tones(c.port.heard()) == {500, 700}
    assert tones(a.port.heard()) == {700, 900}
    assert level(a.port.heard(), 700) == pytest.approx(level(a.port.heard(), 900), rel=0.05)


def _recorded_pair(graph: MediaGraph, tmp_path: Path) -> tuple[Leg, Recording, Recording]:
    """Two legs (500 and 700 Hz) in a conference; the first leg and the
    conference recorded. Returns the first leg and the two recordings."""
    conf = graph.create_conference()
    a, b = Leg(500), Leg(700)
    conf.add(a)
    conf.add(b)
    return a, graph.start_recording(a), graph.start_recording(conf, tmp_path / "conf.wav")


def _samples(rec: Recording) -> Pcm:
    with wave.open(str(rec.path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


async def test_recordings(graph: MediaGraph, tmp_path: Path) -> None:
    """Check a call's recording holds what it says and hears, and a
    conference's recording its whole mix."""
    _a, rec_a, rec_c = _recorded_pair(graph, tmp_path)
    run(graph, 50)
    rec_a.stop()
    rec_c.stop()
    for rec in (rec_a, rec_c):
        pcm = _samples(rec)
        assert pcm.size == 50 * N
        assert tones(pcm) == {500, 700}
    assert rec_a.path.parent.parent == tmp_path / "rec"
    assert rec_a.done()


async def test_recordings_and_taps_keep_time_over_ticks_the_clock_skipped(graph: MediaGraph, tmp_path: Path) -> None:
    """The clock skipped 7 ticks (its loop was blocked): a call's and a
    conference's recordings get 7 frames of silence there, so they last as
    long as the call did, and a tap gets them one frame a write; the graph
    that was idle meanwhile adds nothing for skips before it ticked."""
    a, rec_a, rec_c = _recorded_pair(graph, tmp_path)
    tapped: list[Pcm] = []

    class Tap:
        def write(self, frame: Pcm) -> None:
            tapped.append(frame)

    graph.start_tap(a, Tap())
    graph.clock.skipped += 3  # before the graph's first tick: not its gap
    run(graph, 10)
    graph.clock.skipped += 7
    for i in range(10, 20):
        graph.tick(i * 0.02)
    rec_a.stop()
    rec_c.stop()
    for rec in (rec_a, rec_c):
        pcm = _samples(rec)
        assert pcm.size == 27 * N
        assert not pcm[10 * N:17 * N].any()  # the skipped ticks: silence
        assert tones(pcm[:10 * N]) == {500, 700} and tones(pcm[17 * N:]) == {500, 700}
    assert len(tapped) == 27 and all(f.shape == (N,) for f in tapped)
    assert not np.concatenate(tapped[10:17]).any() and tones(np.concatenate(tapped[:10])) == {500}


async def test_skips_while_the_graph_was_idle_add_no_silence(graph: MediaGraph, tmp_path: Path) -> None:
    """Skips that happened while the graph had nothing to do (off the
    clock) are not its gap: a recording started after them is not given
    silence for them."""
    conf = graph.create_conference()
    a = Leg(500)
    conf.add(a)
    run(graph, 3)
    graph.remove_node(a)
    assert graph.tick(0.1) is False  # nothing left: idle
    graph.clock.skipped += 4
    b = Leg(700)
    conf.add(b)
    rec = graph.start_recording(b, tmp_path / "b.wav")
    for i in range(5):
        graph.tick(0.2 + i * 0.02)
    rec.stop()
    assert _samples(rec).size == 5 * N


async def test_errors(graph: MediaGraph, tmp_path: Path) -> None:
    """Check refused routing names what is wrong."""
    conf = graph.create_conference("room")
    a = Leg(500)
    with pytest.raises(ConferenceError, match="cannot join itself"):
        conf.add(conf)
    with pytest.raises(ConferenceError, match="volume must be between 0 and 4, not 9"):
        conf.add(a, volume=9)
    with pytest.raises(ConferenceError, match="is not in room"):
        conf.set_mute(Leg())
    with pytest.raises(ConferenceError, match="media flows join calls and conferences, not str"):
        graph.connect(a, "b")  # type: ignore[arg-type]
    ended = Leg()
    ended._set_state(CallState.DISCONNECTED)
    with pytest.raises(ConferenceError, match="has ended"):
        conf.add(ended)
    with pytest.raises(ConferenceError, match="cannot record to"):
        graph.start_recording(a, tmp_path / "file.wav" / "x.wav") if (tmp_path / "file.wav").write_text("") is not None else None
    conf.stop()
    with pytest.raises(ConferenceError, match="room has been stopped"):
        conf.add(a)
    other = MediaGraph(ManualClock())
    with pytest.raises(ConferenceError, match="another engine"):
        graph.connect(a, other.create_conference())
    with pytest.raises(Exception, match="no media graph"):
        Leg().send_media_to(a)


def test_stop_conference(graph: MediaGraph) -> None:
    """Check stopping a conference removes its endpoints and emits Stopped once."""
    conf: Conference = graph.create_conference()
    a, b = Leg(500), Leg(700)
    conf.add(a)
    conf.add(b)
    events: list[str] = []
    for name in ("EndpointRemoved", "Stopped"):
        conf.add_event_listener(name, lambda e: events.append(e.name))
    run(graph, 3)
    conf.stop()
    conf.stop()
    assert events == ["EndpointRemoved", "EndpointRemoved", "Stopped"]
    run(graph, 3)
    assert not a.port.attached and not b.port.attached


async def test_stopping_a_conference_finishes_its_recording(graph: MediaGraph, tmp_path: Path) -> None:
    """Check a conference's recording ends with the conference (file
    closed, RecordStopped, the graph's on_recording_done hooks called
    once), not only at engine shutdown."""
    conf: Conference = graph.create_conference()
    conf.add(Leg(500))
    done: list[Path] = []
    graph.on_recording_done.append(lambda r: done.append(r.path))
    stopped: list[str] = []
    conf.add_event_listener("RecordStopped", lambda e: stopped.append(e.name))
    rec = conf.record(tmp_path / "room.wav")
    run(graph, 10)
    conf.stop()
    assert rec.done() and done == [tmp_path / "room.wav"] and stopped == ["RecordStopped"]
    with wave.open(str(rec.path)) as w:
        assert w.getnframes() == 10 * N
    run(graph, 3)
    conf.stop()
    assert done == [tmp_path / "room.wav"]


class _Direct:
    def run_listener(self, handler: Any, event: Any) -> None:
        handler(event)


async def test_conference_playback_handle(graph: MediaGraph) -> None:
    """Check conference.start_playback_tone returns an awaitable handle that
    every member hears, ending with PlaybackFinished(completed=True), and
    that a missing file ends the handle with False and an error."""
    conf = graph.create_conference()
    a, b = Leg(), Leg()
    conf.add(a)
    conf.add(b)
    finished: list[tuple[bool, Any]] = []
    conf.add_event_listener("PlaybackFinished", lambda e: finished.append((e.completed, e.error)))
    pb = conf.start_playback_tone(1300, 0.1, -20.0)
    run(graph, 10)
    assert tones(a.port.heard(10)) == {1300} and tones(b.port.heard(10)) == {1300}
    assert await pb is True
    missing = conf.start_playback("/nonexistent/hold.wav")
    assert await missing is False
    assert finished[0] == (True, None)
    assert finished[1][0] is False and "file not found" in finished[1][1]
