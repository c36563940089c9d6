"""Speech recognition without a model: the endpointer, hint checks, the
provider fallback, the worker pipeline with a scripted recogniser, the
media graph's tap, ``Call.gather``'s busy and timeout results, and the
``--asr`` choices."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from engine.calls.call import CallEvents
from engine.calls.conference import MediaGraph
from engine.calls.speech import SpeechBusy, SpeechEvent, SpeechService, set_default_speech
from engine.media.asr import (
    AsrError, AsrUnavailable, EnergyVad, Endpointer, FallbackRecognizer, Hypothesis, UtteranceAudio,
    UtteranceEnded, UtteranceStarted, make_recognizer, normalize_hints,
)
from engine.media.pcm import Pcm

from test_conference import Leg, ManualClock, run

LOUD = np.full(160, 3000, np.int16)
QUIET = np.zeros(160, np.int16)


def feed(ep: Endpointer, pattern: str) -> list[object]:
    """Feed frames: ``#`` voiced, ``.`` not."""
    events: list[object] = []
    for c in pattern:
        events.extend(ep.feed(LOUD if c == "#" else QUIET, c == "#"))
    return events


def test_endpointer_starts_on_speech_with_pre_roll_and_ends_on_silence() -> None:
    """Three voiced frames of five start an utterance (its pre-roll holds
    the frames before); 0.1 s of silence (5 frames) ends it, reporting the
    voiced length."""
    ep = Endpointer(end_silence=0.1, pre_roll=0.1)
    events = feed(ep, "...##.#")
    assert len(events) == 1 and isinstance(events[0], UtteranceStarted)
    assert len(events[0].pre_roll) == 5 * 160
    events = feed(ep, "###.....")
    assert [type(e) for e in events] == [UtteranceAudio] * 8 + [UtteranceEnded]
    end = events[-1]
    assert isinstance(end, UtteranceEnded) and end.reason == "silence"
    assert end.voiced_seconds == pytest.approx((5 + 3) * 0.02)
    assert not ep.speaking


def test_endpointer_ignores_clicks() -> None:
    """Isolated voiced frames (two in any five) never start an utterance."""
    ep = Endpointer()
    assert feed(ep, "#...#...#....##...." * 5) == []


def test_endpointer_cuts_a_caller_who_talks_forever() -> None:
    """Hostile input: voice without a pause is cut at max_utterance (1 s:
    50 frames), again and again: no utterance outgrows it."""
    ep = Endpointer(max_utterance=1.0)
    events = feed(ep, "#" * 200)
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert ends and ends[0].reason == "max_length"
    starts = [e for e in events if isinstance(e, UtteranceStarted)]
    assert len(starts) == len(ends) == 4  # 200 frames: four cuts of 50
    assert all(e.reason == "max_length" and e.voiced_seconds == 1.0 for e in ends)


def test_hints_are_normalised_and_checked() -> None:
    """Hints are lower-cased and deduplicated; digits, a single string,
    too many and too long ones are refused, naming the problem."""
    assert normalize_hints(["Yes", "yes", " no  thanks "]) == ("yes", "no thanks")
    assert normalize_hints([]) is None
    with pytest.raises(AsrError, match="spell digits"):
        normalize_hints(["7"])
    with pytest.raises(AsrError, match="list of words"):
        normalize_hints("yes")  # type: ignore[arg-type]
    with pytest.raises(AsrError, match="at most 200"):
        normalize_hints(["yes"] * 201)
    with pytest.raises(AsrError, match="longer than"):
        normalize_hints(["a" * 101])


class Scripted:
    """A recogniser whose streams say ``text``; ``fail`` raises at start
    (``"start"``) or on feed (``"feed"``)."""

    def __init__(self, name: str, text: str, fail: str | None = None) -> None:
        self.name = name
        self.text = text
        self.fail = fail
        self.fed: list[int] = []
        self.starts = 0

    def start(self, hints: Sequence[str] | None) -> "Scripted":
        self.starts += 1
        if self.fail == "start":
            raise AsrUnavailable(f"{self.name} is down")
        if hints and "bad" in hints:
            raise AsrError("hint 'bad' unknown")
        return self

    def feed(self, pcm: Pcm) -> None:
        if self.fail == "feed":
            raise ConnectionError("reset")
        self.fed.append(len(pcm))

    def results(self) -> list[Hypothesis]:
        return []

    def finish(self) -> Hypothesis:
        return Hypothesis(self.text, 0.9, True)

    def close(self) -> None:
        pass


def test_fallback_when_the_provider_cannot_start(caplog: pytest.LogCaptureFixture) -> None:
    """A provider that fails to start is replaced by the fallback, logged
    once for two failures; after the back-off it is tried again."""
    now = [0.0]
    primary, fallback = Scripted("cloud", "x", fail="start"), Scripted("pocketsphinx", "yes")
    rec = FallbackRecognizer(primary, fallback, retry_after=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="engine.media.asr"):
        assert rec.start(None).finish().text == "yes"
        now[0] = 61
        assert rec.start(None).finish().text == "yes"
    assert primary.starts == 2 and rec.failures == 2
    assert len([r for r in caplog.records if "falling back" in r.message]) == 1
    now[0] = 62  # still backed off: the primary is not asked
    rec.start(None)
    assert primary.starts == 2


def test_fallback_mid_utterance_replays_the_audio() -> None:
    """A provider failing on feed hands the utterance, from its start, to the fallback."""
    primary, fallback = Scripted("cloud", "x", fail="feed"), Scripted("pocketsphinx", "no")
    stream = FallbackRecognizer(primary, fallback).start(["no"])
    stream.feed(LOUD)
    stream.feed(QUIET[:80])
    assert stream.finish().text == "no"
    assert fallback.fed == [160, 80]


def test_fallback_does_not_hide_bad_hints() -> None:
    """Hints the provider refuses are the scenario's mistake: raised, no fallback."""
    rec = FallbackRecognizer(Scripted("cloud", "x"), Scripted("pocketsphinx", "y"))
    with pytest.raises(AsrError, match="bad"):
        rec.start(["bad"])
    assert rec.failures == 0


def test_make_recognizer_choices() -> None:
    """vosk without the package is a clear startup error; unknown names are refused."""
    with pytest.raises(AsrUnavailable, match="vosk package"):
        make_recognizer("vosk:/nowhere")
    with pytest.raises(ValueError, match="model directory"):
        make_recognizer("vosk")
    with pytest.raises(ValueError, match="unknown speech recogniser"):
        make_recognizer("cloud")


def test_tap_gets_only_what_the_leg_said(tmp_path: Path) -> None:
    """A tap on a leg gets its received audio each tick, not the conference
    mix it hears; stop_tap and the call's end stop it."""
    graph = MediaGraph(ManualClock(), recordings_dir=tmp_path)
    talker, other = Leg(700), Leg(1100)
    conf = graph.create_conference()
    conf.add(talker)
    conf.add(other)
    got: list[Pcm] = []

    class Sink:
        def write(self, frame: Pcm) -> None:
            got.append(frame)

    sink = Sink()
    graph.start_tap(talker, sink)
    run(graph, 10)
    assert len(got) == 10
    spectrum = np.abs(np.fft.rfft(np.concatenate(got[2:]).astype(float)))
    freqs = np.fft.rfftfreq(8 * 160, 1 / 8000)
    assert abs(freqs[int(np.argmax(spectrum))] - 700) < 10
    graph.stop_tap(talker, sink)
    run(graph, 5)
    assert len(got) == 10


async def speech_service(text: str, max_concurrent: int = 1) -> SpeechService:
    return SpeechService(Scripted("scripted", text), max_concurrent, max_utterance=2.0,  # type: ignore[arg-type]
                         vad_factory=EnergyVad)


async def test_worker_recognises_an_utterance_off_the_loop() -> None:
    """Frames written to a session (as the tap does) are endpointed and
    recognised in a worker thread: started, then final with the text."""
    service = await speech_service("yes")
    events: list[SpeechEvent] = []
    session = service.open(["yes"], events.append, end_silence=0.1)
    for frame in [QUIET] * 3 + [LOUD] * 10 + [QUIET] * 10:
        session.write(frame)
    for _ in range(200):
        if any(e.kind == "final" for e in events):
            break
        await asyncio.sleep(0.01)
    assert [e.kind for e in events] == ["started", "final"]
    assert events[1].text == "yes" and events[1].reason == "silence"
    session.close()
    service.shutdown()


async def test_busy_beyond_max_concurrent_and_gather_says_so(tmp_path: Path) -> None:
    """With one slot taken, a second recognition is refused (SpeechBusy);
    a call's gather then returns kind 'error' naming the limit and emits
    SpeechError; a gather with nothing said times out."""
    service = await speech_service("yes")
    set_default_speech(service)
    try:
        first = service.open(None, lambda e: None)
        with pytest.raises(SpeechBusy, match="asr-max-concurrent"):
            service.open(None, lambda e: None)
        graph = MediaGraph(ManualClock(), recordings_dir=tmp_path)
        leg = Leg()
        leg.graph = graph
        leg._media_ready = lambda: True  # type: ignore[method-assign]
        errors: list[str] = []
        leg.add_event_listener(CallEvents.SpeechError, lambda e: errors.append(e.error))
        result = await leg.gather(hints=["yes"], digits=False, timeout=0.1)
        assert result.kind == "error" and "asr-max-concurrent" in (result.error or "")
        await asyncio.sleep(0)
        assert errors and "asr-max-concurrent" in errors[0]
        first.close()
        for _ in range(100):
            if service.active == 0:
                break
            await asyncio.sleep(0.01)
        result = await leg.gather(hints=["yes"], digits=False, timeout=0.1)
        assert result.kind == "timeout"
    finally:
        set_default_speech(None)
        service.shutdown()
