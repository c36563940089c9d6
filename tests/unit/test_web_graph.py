"""Browser legs in the media graph: a :class:`~engine.calls.web_call.WebCall`
(fake media leg, real :class:`~engine.calls.webrtc.WebRtcAudioPort`) is routed like
a SIP leg. What the browser "sends" is fed into its port; what the graph
writes to the browser is read from the port's outgoing queue. Checked by
spectrum (which tones are present), never by counting frames, plus the one
rule of the outgoing track: one writer per tick (the player's clock sink
leaves the clock while the graph drives the leg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from engine.calls.call import Call, CallState
from engine.calls.conference import MediaGraph
from engine.media.players import ToneSource
from engine.media.clock import MediaClock
from engine.calls.web_call import WebCall
from engine.calls.webrtc import FRAME_SAMPLES, TRIM_ABOVE, TRIM_WINDOW, LegAudio, WebRtcAudioPort

Pcm = npt.NDArray[np.int16]
RATE = 8000


class ManualClock(MediaClock):
    """A clock that never runs by itself: the test ticks what it holds (the
    graph, which joins the clock on each change, and any player's sink)."""

    def add(self, sink: Any) -> None:
        self._sinks[sink] = None

    def run(self, now: float) -> None:
        for sink in list(self._sinks):
            if not sink.tick(now):
                self._sinks.pop(sink, None)


class Channel:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


class FakeLeg:
    """Stands in for :class:`BrowserMediaLeg` (no ICE): a real port."""

    def __init__(self, on_failed: Callable[[str], None]) -> None:
        self.port = WebRtcAudioPort()
        self.port.sending = True  # as if aiortc pulled the track already

    async def accept_offer(self, sdp: str, candidates: Sequence[Any] = ()) -> str:
        return "v=0 answer"

    async def add_remote_candidate(self, candidate: Any) -> None:
        pass

    async def close(self) -> None:
        self.port.close()


class SipLikePort:
    """A SIP leg's audio: sends a tone, keeps what it is given."""

    def __init__(self, freq: float) -> None:
        self.source = ToneSource(freq, None, -20.0)
        self.received: list[Pcm] = []
        self.last_sent: Pcm | None = None

    def graph_attach(self) -> None:
        pass

    def graph_detach(self) -> None:
        pass

    def pull(self, now: float) -> Pcm | None:
        return self.source.read(FRAME_SAMPLES)

    def push(self, frame: Pcm | None) -> bool:
        if frame is not None:
            self.received.append(frame.copy())
        self.last_sent = frame
        return frame is not None


class SipLeg(Call):
    def __init__(self, freq: float) -> None:
        super().__init__(direction="inbound", number="100", callerid="200")
        self.port = SipLikePort(freq)
        self._set_state(CallState.CONNECTED)

    def media_port(self) -> SipLikePort:
        return self.port


def level(pcm: Pcm, freq: float) -> float:
    if pcm.size == 0:
        return 0.0
    t = np.arange(pcm.size) / RATE
    return float(abs(np.dot(pcm.astype(np.float64), np.exp(-2j * np.pi * freq * t))) * 2 / pcm.size)


def tones(pcm: Pcm, freqs: tuple[float, ...] = (500, 700, 900, 1100)) -> set[float]:
    return {f for f in freqs if level(pcm, f) > 500}


async def web_call(clock: MediaClock, graph: MediaGraph) -> WebCall:
    call = WebCall(Channel(), "w1", offer="v=0 offer", clock=clock, leg_factory=FakeLeg,  # type: ignore[arg-type]
                   direction="inbound", number="joinconf", callerid="alice")
    call._set_state(CallState.ALERTING)
    call.graph = graph
    await call.answer()
    return call


class Browser:
    """The browser's side of a web call's port: a tone in, frames out."""

    def __init__(self, call: WebCall, freq: float | None) -> None:
        port = call.audio_port
        assert port is not None
        self.port = port
        self.source = ToneSource(freq, None, -20.0) if freq else None

    def speak(self) -> None:
        if self.source is not None:
            self.port._received(self.source.read(FRAME_SAMPLES).tobytes())

    def heard(self) -> Pcm:
        frames: list[Pcm] = []
        while not self.port._out.empty():
            frame = self.port._out.get_nowait()
            if frame is not None:
                frames.append(frame)
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)


def run(clock: ManualClock, browsers: list[Browser], ticks: int = 8) -> list[Pcm]:
    """Tick the clock (the graph and the players); return what each browser heard."""
    heard: list[list[Pcm]] = [[] for _ in browsers]
    for i in range(ticks):
        for b in browsers:
            b.speak()
        clock.run(i * 0.02)
        for k, b in enumerate(browsers):
            heard[k].append(b.heard())
    return [np.concatenate(h) for h in heard]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def graph(clock: ManualClock, tmp_path: Path) -> MediaGraph:
    return MediaGraph(clock, recordings_dir=tmp_path / "rec")


async def test_browsers_and_a_phone_in_a_conference(clock: ManualClock, graph: MediaGraph) -> None:
    """Check two browsers and a SIP leg in one conference each hear the
    others and never themselves (mix-minus), and the phone hears both."""
    a, b = await web_call(clock, graph), await web_call(clock, graph)
    phone = SipLeg(900)
    conf = graph.create_conference("c")
    for leg in (a, b, phone):
        conf.add(leg)
    ba, bb = Browser(a, 500), Browser(b, 700)
    heard_a, heard_b = run(clock, [ba, bb], 30)
    assert tones(heard_a[-800:]) == {700, 900}
    assert tones(heard_b[-800:]) == {500, 900}
    assert tones(np.concatenate(phone.port.received[-5:])) == {500, 700}


async def test_send_media_between_a_browser_and_a_phone(clock: ManualClock, graph: MediaGraph) -> None:
    """Check a direct bridge both ways (what the gatekeeper does) and one way."""
    a = await web_call(clock, graph)
    phone = SipLeg(900)
    graph.connect(a, phone)
    graph.connect(phone, a)
    (heard,) = run(clock, [Browser(a, 500)], 10)
    assert tones(heard[-800:]) == {900}
    assert tones(np.concatenate(phone.port.received[-5:])) == {500}
    graph.disconnect(phone, a)
    phone.port.received.clear()
    (heard,) = run(clock, [Browser(a, 500)], 10)
    assert tones(np.concatenate(phone.port.received[-5:])) == {500}
    assert level(heard, 900) < 100


async def test_player_is_mixed_in_by_the_graph_and_one_writer_per_tick(
    clock: ManualClock, graph: MediaGraph,
) -> None:
    """Check a browser leg's own player is mixed with the conference by the
    graph (one frame a tick to the track, the clock sink gone), and that it
    goes back to the clock when the graph lets go."""
    a = await web_call(clock, graph)
    phone = SipLeg(900)
    conf = graph.create_conference("c")
    conf.add(a)
    conf.add(phone)
    playback = a.start_playback_tone(500)
    audio = a.media_port()
    assert isinstance(audio, LegAudio)
    assert audio in clock  # standalone until the graph ticks
    browser = Browser(a, None)
    port = browser.port
    run(clock, [browser], 2)
    assert audio not in clock and audio.graph_driven
    assert port._out.qsize() == 0
    frames: list[Pcm] = []
    for i in range(10):
        clock.run(i * 0.02)
        assert port._out.qsize() == 1  # exactly one writer
        frame = port._out.get_nowait()
        assert frame is not None
        frames.append(frame)
    assert tones(np.concatenate(frames)) == {500, 900}
    assert audio.last_sent is not None
    # The graph lets go: the player is ticked by the clock again, alone.
    conf.remove(a)
    clock.run(1.0)
    assert not audio.graph_driven and audio in clock
    (heard,) = run(clock, [browser], 10)
    assert tones(heard) == {500}
    playback.stop()
    assert await playback is False
    assert audio not in clock


async def test_recording_a_browser_leg(clock: ManualClock, graph: MediaGraph, tmp_path: Path) -> None:
    """Check a browser leg's recording has what it said and what it heard."""
    a = await web_call(clock, graph)
    phone = SipLeg(900)
    graph.connect(a, phone)
    graph.connect(phone, a)
    rec = a.record(tmp_path / "a.wav")
    run(clock, [Browser(a, 500)], 25)
    rec.stop()
    import wave

    with wave.open(str(await rec)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert tones(pcm[-1600:]) == {500, 900}


async def test_no_media_before_the_answer(clock: ManualClock, graph: MediaGraph) -> None:
    """Check a browser leg not yet answered has no audio port (the graph
    waits), and an ended one leaves the graph."""
    call = WebCall(Channel(), "w2", offer="v=0 offer", clock=clock, leg_factory=FakeLeg,  # type: ignore[arg-type]
                   direction="inbound", number="joinconf", callerid="bob")
    call._set_state(CallState.ALERTING)
    call.graph = graph
    assert call.media_port() is None
    await call.answer()
    assert call.media_port() is not None
    phone = SipLeg(900)
    graph.connect(phone, call)
    run(clock, [Browser(call, None)], 3)
    call.hangup()
    clock.run(0.2)
    assert call not in graph._attached


def test_a_browser_legs_buffered_frames_of_skipped_ticks_are_dropped() -> None:
    """After the media clock skipped ticks, a browser leg's pull drops as
    many buffered frames (nothing was pulled for those ticks) and gives the
    one after them; without a skip each pull takes the next frame."""
    clock = MediaClock()
    port = WebRtcAudioPort()
    audio = LegAudio(port, clock)
    for i in range(8):
        port._received(np.full(FRAME_SAMPLES, i + 1, dtype=np.int16).tobytes())
    first = audio.pull(0.0)
    assert first is not None and int(first[0]) == 1
    clock.skipped += 3  # frames 2-4 belonged to ticks that never ran
    after = audio.pull(0.08)
    assert after is not None and int(after[0]) == 5
    following = audio.pull(0.1)
    assert following is not None and int(following[0]) == 6
    clock.skipped += 10  # more than is buffered: what is there goes, nothing more
    assert audio.pull(0.32) is None and port.available == 0


def _frame(value: int) -> bytes:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16).tobytes()


def test_a_standing_surplus_from_the_browser_is_cut_in_one_go() -> None:
    """Frames waiting at every read of a second are delay that would stay
    for the whole call (a burst never drained): after that second the
    surplus over two waiting frames is dropped at once, one cut rather
    than one a second, and what is read stays in order."""
    port = WebRtcAudioPort()
    for i in range(6):  # a backlog of six frames, then one in for one out
        port._received(_frame(i))
    values = []
    for i in range(6, 6 + 7 * TRIM_WINDOW):
        port._received(_frame(i))
        values.append(int(port.read_frame()[0]))
    assert port.frames_trimmed == 5 and port.available == 1
    steps = [b - a for a, b in zip(values, values[1:])]
    assert steps.index(6) == TRIM_WINDOW - 2  # the last read of the first second comes after the cut
    assert steps.count(6) == 1 and steps.count(1) == len(steps) - 1


def test_a_browser_clock_running_ahead_loses_a_frame_at_a_time() -> None:
    """A browser whose clock runs ahead of ours (one frame more every 120
    ticks) leaves three frames waiting now and then: each time a single
    frame is dropped, never more, and the delay stays at two frames."""
    port = WebRtcAudioPort()
    n = 0
    for _ in range(2):
        port._received(_frame(n))
        n += 1
    values, most = [], 0
    for tick in range(30 * TRIM_WINDOW):
        port._received(_frame(n % 30000))
        n += 1
        if tick % 120 == 119:
            port._received(_frame(n % 30000))
            n += 1
        most = max(most, port.available)
        values.append(int(port.read_frame()[0]))
    steps = [b - a for a, b in zip(values, values[1:])]
    assert set(steps) <= {1, 2, 1 - 30000}
    assert port.frames_trimmed == steps.count(2) >= 10
    assert most <= TRIM_ABOVE + 1


def test_a_jittery_browser_keeps_its_frames() -> None:
    """Frames that come in bursts (three every third tick) leave the buffer
    nearly empty at some read of each second: nothing is trimmed."""
    port = WebRtcAudioPort()
    n = 0
    for tick in range(6 * TRIM_WINDOW):
        if tick % 3 == 0:
            for _ in range(3):
                port._received(_frame(n % 30000))
                n += 1
        port.read_frame()
    assert port.frames_trimmed == 0
