"""The call-level playback API (engine.calls): handles, PlaybackFinished,
replace/stop/hang-up, say() with a fake TTS, refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from engine.calls import Call, CallError, CallEvent, CallEvents, CallState, new_call_pair
from engine.media.players import FrameSource, PcmSource, PlaybackFinished, ToneSource
from engine.media.tts import TtsCache


class FakeProvider:
    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        if self.fail:
            raise RuntimeError("no voice")
        return np.full(1600, 1000, dtype=np.int16), 8000


class MediaCall(Call):
    """A call with fake media: records what it plays; ``finish()`` ends it."""

    kind = "media"

    def __init__(self, tts: TtsCache) -> None:
        super().__init__(direction="inbound", number="1", callerid="a")
        self.tts = tts
        self.playing: tuple[FrameSource, Callable[[bool], None]] | None = None
        self.ready = True

    def _media_ready(self) -> bool:
        return self.ready

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        if self.playing is not None:
            self.playing[1](False)
        self.playing = (source, done)

    def _stop_media(self) -> None:
        if self.playing is not None:
            playing, self.playing = self.playing, None
            playing[1](False)

    def _tts(self) -> TtsCache:
        return self.tts

    def run_to_end(self) -> None:
        assert self.playing is not None
        source, done = self.playing
        try:
            while True:
                source.read(160)
        except PlaybackFinished:
            self.playing = None
            done(True)

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup", headers)


@pytest.fixture
def call(tmp_path: Path) -> MediaCall:
    c = MediaCall(TtsCache(FakeProvider(), tmp_path))
    c._set_state(CallState.CONNECTED)
    return c


def finished(call: Call) -> list[CallEvent]:
    seen: list[CallEvent] = []
    call.add_event_listener(CallEvents.PlaybackFinished, seen.append)
    return seen


async def test_tone_handle_completes_with_event(call: MediaCall) -> None:
    seen = finished(call)
    pb = call.start_playback_tone(1000, 0.1)
    assert call.playback is pb and isinstance(call.playing[0], ToneSource)  # type: ignore[index]
    assert not pb.done()
    call.run_to_end()
    assert await pb is True and pb.completed is True and call.playback is None
    assert [(e.playback, e.completed) for e in seen] == [(pb, True)]


async def test_replace_and_stop(call: MediaCall) -> None:
    seen = finished(call)
    a = call.start_playback(PcmSource(np.zeros(800, dtype=np.int16)))
    b = call.start_playback_tone(440)
    assert await a is False and call.playback is b
    b.stop()
    assert await b is False
    c = call.start_playback_tone(440)
    call.stop_playback()
    assert await c is False and call.playback is None
    call.stop_playback()  # nothing playing: harmless
    assert [e.completed for e in seen] == [False, False, False]


async def test_hangup_ends_playback(call: MediaCall) -> None:
    pb = call.start_playback_tone(440)
    call.hangup()
    assert await pb is False
    with pytest.raises(CallError):
        call.start_playback_tone(440)


async def test_say_synthesizes_then_plays(call: MediaCall) -> None:
    seen = finished(call)
    pb = call.say("hello")
    assert call.playing is None  # synthesis runs first, off the loop
    for _ in range(200):
        if call.playing is not None:
            break
        await asyncio.sleep(0.01)
    assert call.playing is not None and isinstance(call.playing[0], PcmSource)
    call.run_to_end()
    assert await pb is True and pb.kind == "say" and [e.completed for e in seen] == [True]


async def test_say_stopped_during_synthesis(call: MediaCall) -> None:
    pb = call.say("hello")
    pb.stop()
    assert await asyncio.wait_for(pb, 2) is False
    await asyncio.sleep(0.05)
    assert call.playing is None and call.playback is None


async def test_say_failure_completes_false(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    call = MediaCall(TtsCache(FakeProvider(fail=True), tmp_path))
    call._set_state(CallState.CONNECTED)
    pb = call.say("hello")
    assert await asyncio.wait_for(pb, 2) is False
    assert "speech synthesis failed" in caplog.text


async def test_refusals(call: MediaCall) -> None:
    call.ready = False
    with pytest.raises(CallError):
        call.say("x")
    with pytest.raises(CallError):
        call.start_playback_tone(1000, 1)
    call.ready = True
    with pytest.raises(CallError):
        call.say("   ")
    out, inc = new_call_pair(number="conf", callerid="alice", display_name=None, headers={},
                             caller_dispatcher=None)
    with pytest.raises(CallError, match="this call has no media graph"):
        out.say("hi")
    with pytest.raises(CallError, match="this call has no media graph"):
        inc.start_playback_tone(1000, 1)
