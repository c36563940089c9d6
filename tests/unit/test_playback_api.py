"""The call-level playback API (engine.calls): handles, PlaybackFinished,
replace/stop/hang-up, say() with a fake TTS, files and URLs (a stand-in for
the download), failures with their error, refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from audio_files import encode, tone

from engine.calls.call import Call, CallError, CallEvent, CallEvents, CallState, new_call_pair
from engine.media.players import FrameSource, PcmSource, PlaybackFinished, ToneSource
from engine.media.tts import TtsCache
from engine.transport.audio_fetch import AudioLoader


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

    def __init__(self, tts: TtsCache, audio: AudioLoader | None = None) -> None:
        super().__init__(direction="inbound", number="1", callerid="a")
        self.tts = tts
        self.audio = audio
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

    def _audio(self) -> AudioLoader:
        assert self.audio is not None
        return self.audio

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
    c = MediaCall(TtsCache(FakeProvider(), tmp_path), AudioLoader(tmp_path / "audio-cache"))
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
    seen = finished(call)
    pb = call.say("hello")
    assert await asyncio.wait_for(pb, 2) is False
    assert "speech synthesis failed" in caplog.text
    assert pb.error == "speech synthesis failed: no voice"
    assert [(e.completed, e.error) for e in seen] == [(False, "speech synthesis failed: no voice")]


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


async def until_playing(call: MediaCall) -> FrameSource:
    """The source once the call plays it (decoding runs in a thread)."""
    for _ in range(500):
        if call.playing is not None:
            return call.playing[0]
        await asyncio.sleep(0.01)
    raise AssertionError("nothing played")


async def test_file_plays_after_decoding(call: MediaCall, tmp_path: Path) -> None:
    """Check start_playback(path) returns a handle at once, plays the file
    decoded to 8 kHz, and ends True with PlaybackFinished (error None)."""
    path = tmp_path / "beep.wav"
    path.write_bytes(encode("wav", tone(1000, 16000, 0.2), 16000))
    seen = finished(call)
    pb = call.start_playback(path)
    assert call.playback is pb and pb.kind == "playback" and call.playing is None
    source = await until_playing(call)
    assert isinstance(source, PcmSource) and len(source.pcm) == 1600 and not source.loop
    call.run_to_end()
    assert await pb is True and pb.error is None
    assert [(e.playback, e.completed, e.error) for e in seen] == [(pb, True, None)]


async def test_file_loops_until_stopped(call: MediaCall, tmp_path: Path) -> None:
    """Check loop=True repeats the file until the handle is stopped."""
    path = tmp_path / "beep.ogg"
    path.write_bytes(encode("ogg", tone(1000, 8000, 0.1), 8000))
    pb = call.start_playback(str(path), loop=True)
    source = await until_playing(call)
    for _ in range(50):  # 1 s of a 0.1 s file
        assert len(source.read(160)) == 160
    pb.stop()
    assert await pb is False and pb.error is None and call.playing is None


async def test_url_plays_from_the_loader(call: MediaCall, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check a URL goes through the loader's fetch and plays."""
    urls: list[str] = []

    async def fetch(url: str) -> bytes:
        urls.append(url)
        return encode("mp3", tone(1000, 44100, 0.5), 44100)

    assert call.audio is not None
    monkeypatch.setattr(call.audio, "fetch", fetch)
    pb = call.start_playback("https://media.example/hold.mp3")
    source = await until_playing(call)
    assert isinstance(source, PcmSource) and abs(len(source.pcm) - 4000) <= 40
    call.run_to_end()
    assert await pb is True and urls == ["https://media.example/hold.mp3"]


async def test_missing_file_ends_the_handle_with_its_error(
        call: MediaCall, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Check a missing file neither raises nor plays: the handle ends
    False, PlaybackFinished carries the error, the reason is logged, and
    the call can play the next thing."""
    seen = finished(call)
    missing = tmp_path / "nope.mp3"
    pb = call.start_playback(missing)
    assert await asyncio.wait_for(pb, 2) is False
    error = f"{missing}: file not found"
    assert pb.error == error and [(e.completed, e.error) for e in seen] == [(False, error)]
    assert call.playing is None and call.playback is None
    assert f"playback failed: {error}" in caplog.text
    nxt = call.start_playback_tone(1000, 0.1)
    call.run_to_end()
    assert await nxt is True


async def test_file_stopped_or_replaced_while_loading(call: MediaCall, tmp_path: Path) -> None:
    """Check a file playback stopped (or replaced) before its decoding ends
    never starts playing."""
    path = tmp_path / "beep.flac"
    path.write_bytes(encode("flac", tone(1000, 8000, 0.5), 8000))
    a = call.start_playback(path)
    a.stop()
    b = call.start_playback(path)
    c = call.start_playback_tone(440)
    assert await asyncio.wait_for(a, 2) is False and await asyncio.wait_for(b, 2) is False
    await asyncio.sleep(0.1)
    assert call.playback is c and isinstance(call.playing[0], ToneSource)  # type: ignore[index]


async def test_file_refusals(call: MediaCall, tmp_path: Path) -> None:
    """Check a file needs media like any playback (CallError at once), and
    loop=True is refused for a player, which loops itself."""
    with pytest.raises(ValueError, match="loop=True is for a file or URL"):
        call.start_playback(ToneSource(1000, 1), loop=True)
    call.ready = False
    with pytest.raises(CallError):
        call.start_playback(tmp_path / "x.wav")
    with pytest.raises(CallError):
        call.start_playback("http://media.example/x.wav")
