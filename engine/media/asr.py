"""Speech recognition: a small provider interface, PocketSphinx by default,
and the endpointer that cuts a call's audio into utterances.

Theory of operation
-------------------
A call's received audio (8 kHz ``int16``, 20 ms frames: :mod:`engine.media.pcm`)
goes through two stages, both run off the event loop by the call layer
(:mod:`engine.calls.speech`):

1. *Endpointing*: a voice activity detector classifies each frame as voiced
   or not, and :class:`Endpointer` (sans-IO: frames and booleans in, events
   out) turns that into utterances: :class:`UtteranceStarted` after
   ``start_frames`` voiced frames among the last ``start_window`` (with a
   ``pre_roll`` of the audio before), :class:`UtteranceAudio` while it lasts,
   :class:`UtteranceEnded` after ``end_silence`` seconds of non-speech or,
   against a caller who talks forever, at ``max_utterance`` seconds.
2. *Recognition*: a :class:`Recognizer` (the provider) opens a
   :class:`RecognitionStream` per utterance, restricted to ``hints`` when
   given; the stream takes the utterance's audio (:meth:`RecognitionStream.feed`),
   offers partial hypotheses (:meth:`RecognitionStream.results`) and the
   final one at its end (:meth:`RecognitionStream.finish`).

The VAD is PocketSphinx's own :class:`pocketsphinx.Vad` (WebRTC's GMM
detector, as ``webrtcvad`` wraps it): it ships with the default engine, so no
second package is needed, and unlike an energy threshold it is not fooled by
a loud line hum or comfort noise. :class:`EnergyVad` remains for tests and
for installations without PocketSphinx.

Providers (``--asr``): ``pocketsphinx`` (offline, the English model shipped
in the ``pocketsphinx`` wheel; hints become a JSGF grammar of alternatives,
so short answers like "yes" or "seven" are chosen among a few words rather
than a 130,000-word vocabulary) and ``vosk:/path/to/model`` (when the
``vosk`` package is importable; hints become its grammar list). A cloud
recogniser fits the same :class:`Recognizer` protocol: ``start`` opens a
connection, ``feed`` sends audio, ``results``/``finish`` return what came
back; none is shipped.

:class:`FallbackRecognizer` puts PocketSphinx behind another provider: a
provider that fails (at ``start`` or mid-utterance) is replaced by
PocketSphinx for that utterance, replayed from its start; the failure is
logged once, and the provider is tried again after a back-off.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

import numpy as np

from engine.media.outage import Outage
from engine.media.pcm import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE, Pcm

__all__ = [
    "ASR_PROVIDERS", "AsrError", "AsrUnavailable", "EnergyVad", "Endpointer", "FallbackRecognizer",
    "Hypothesis", "PocketsphinxRecognizer", "RecognitionStream", "Recognizer", "UtteranceAudio",
    "UtteranceEnded", "UtteranceStarted", "VoskRecognizer", "make_recognizer", "make_vad",
    "normalize_hints",
]

logger = logging.getLogger(__name__)

#: What ``--asr`` accepts (``vosk`` takes ``:/path/to/model``).
ASR_PROVIDERS = ("pocketsphinx", "vosk")

#: Hints accepted at most, and characters per hint: a grammar is compiled
#: per distinct hint list, so its size is bounded.
MAX_HINTS = 200
MAX_HINT_CHARS = 100


class AsrError(Exception):
    """Recognition failed, or was asked something it cannot do (names what)."""


class AsrUnavailable(AsrError):
    """The provider cannot recognise at all (not installed, no model)."""


@dataclass(frozen=True)
class Hypothesis:
    """What a recogniser heard.

    :param text: the words, lower case (``""``: nothing recognised).
    :param confidence: 0..1 (the provider's posterior or word confidences).
    :param final: the utterance's final result, not a partial one.
    """

    text: str
    confidence: float
    final: bool


class RecognitionStream(Protocol):
    """One utterance being recognised (blocking calls, one thread at a time)."""

    def feed(self, pcm: Pcm) -> None:
        """More of the utterance: 8 kHz mono ``int16``."""

    def results(self) -> list[Hypothesis]:
        """Partial hypotheses new since the last call (possibly none)."""

    def finish(self) -> Hypothesis:
        """End of the utterance: the final hypothesis."""

    def close(self) -> None:
        """Release the stream's resources (after :meth:`finish`, or instead of it)."""


class Recognizer(Protocol):
    """A speech recognition provider."""

    #: Its name in logs and in results (``"pocketsphinx"``, ``"vosk"``).
    name: str

    def start(self, hints: Sequence[str] | None) -> RecognitionStream:
        """Open a stream for one utterance; ``hints`` (normalised by
        :func:`normalize_hints`) restrict what it may recognise.

        :raises AsrError: the hints cannot be used (names the words), or
            the provider failed (:class:`AsrUnavailable`).
        """
        ...


_HINT_RE = re.compile(r"^[a-z][a-z' ]*$")


def normalize_hints(hints: Sequence[str] | None) -> tuple[str, ...] | None:
    """Hints as recognisers take them: lower case, single spaces, unique,
    in order; ``None`` or empty: no restriction.

    :raises AsrError: too many hints, one too long, or one with other
        characters than letters, apostrophes and spaces (digits are to be
        spelt: ``"seven"``).
    """
    if not hints:
        return None
    if isinstance(hints, str):
        raise AsrError("hints must be a list of words or phrases, not one string")
    if len(hints) > MAX_HINTS:
        raise AsrError(f"at most {MAX_HINTS} hints, got {len(hints)}")
    out: dict[str, None] = {}
    for hint in hints:
        if not isinstance(hint, str):
            raise AsrError(f"a hint must be a string, not {type(hint).__name__}")
        text = " ".join(hint.lower().split())
        if len(text) > MAX_HINT_CHARS:
            raise AsrError(f"hint longer than {MAX_HINT_CHARS} characters: {text[:20]!r}...")
        if not _HINT_RE.match(text):
            raise AsrError(f"hint {hint[:40]!r} must be letters, apostrophes and spaces (spell digits out)")
        out[text] = None
    return tuple(out) or None


# -- voice activity and endpointing ----------------------------------------------

class EnergyVad:
    """Voiced when a frame's RMS level is above ``threshold`` (of full
    scale ``int16``): for tests and as the last resort."""

    def __init__(self, threshold: float = 500.0) -> None:
        self.threshold = threshold

    def __call__(self, frame: Pcm) -> bool:
        if frame.size == 0:
            return False
        return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > self.threshold


def make_vad(mode: int = 1) -> Callable[[Pcm], bool]:
    """The voice activity detector for 20 ms, 8 kHz frames: PocketSphinx's
    WebRTC VAD (``mode`` 0 loose .. 3 strict), else :class:`EnergyVad`."""
    try:
        from pocketsphinx import Vad  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:  # pragma: no cover - pocketsphinx is a dependency
        return EnergyVad()
    vad = Vad(mode, SAMPLE_RATE, FRAME_SECONDS)
    if vad.frame_bytes != FRAME_SAMPLES * 2:  # pragma: no cover - 8 kHz/20 ms is exact
        return EnergyVad()

    def is_speech(frame: Pcm) -> bool:
        data = frame.astype("<i2", copy=False).tobytes()
        if len(data) != FRAME_SAMPLES * 2:
            return False
        return bool(vad.is_speech(data))

    return is_speech


@dataclass(frozen=True)
class UtteranceStarted:
    """Speech began; ``pre_roll`` is the audio just before (and including) its start."""

    pre_roll: Pcm


@dataclass(frozen=True)
class UtteranceAudio:
    """One more frame of the utterance."""

    frame: Pcm


@dataclass(frozen=True)
class UtteranceEnded:
    """The utterance is over: ``reason`` is ``"silence"`` (``end_silence``
    of non-speech) or ``"max_length"`` (cut at ``max_utterance``);
    ``voiced_seconds`` from its start to its last voiced frame."""

    reason: str
    voiced_seconds: float


EndpointEvent = Union[UtteranceStarted, UtteranceAudio, UtteranceEnded]


class Endpointer:
    """Cuts a stream of classified frames into utterances (sans-IO).

    State: ``idle`` (waiting for speech: the last ``pre_roll`` seconds are
    kept) or ``speaking``. Idle -> speaking when ``start_frames`` of the last
    ``start_window`` frames are voiced; speaking -> idle after ``end_silence``
    seconds without a voiced frame, or when the utterance reaches
    ``max_utterance`` seconds.

    :param frame_seconds: the duration of one frame.
    """

    def __init__(self, *, end_silence: float = 0.8, max_utterance: float = 15.0,
                 start_frames: int = 3, start_window: int = 5, pre_roll: float = 0.3,
                 frame_seconds: float = FRAME_SECONDS) -> None:
        if end_silence <= 0 or max_utterance <= 0:
            raise ValueError("end_silence and max_utterance must be positive")
        if not 1 <= start_frames <= start_window:
            raise ValueError("start_frames must be between 1 and start_window")
        self.frame_seconds = frame_seconds
        self.end_frames = max(1, round(end_silence / frame_seconds))
        self.max_frames = max(1, round(max_utterance / frame_seconds))
        self.start_frames = start_frames
        self.recent: collections.deque[bool] = collections.deque(maxlen=start_window)
        self.before: collections.deque[Pcm] = collections.deque(
            maxlen=max(start_window, round(pre_roll / frame_seconds)))
        self.speaking = False
        self._frames = 0        # frames of the current utterance
        self._last_voiced = 0   # its frame count at the last voiced frame
        self._silent = 0

    def feed(self, frame: Pcm, voiced: bool) -> list[EndpointEvent]:
        """One frame and whether it is voiced; the events it causes."""
        if not self.speaking:
            self.before.append(frame)
            self.recent.append(voiced)
            if sum(self.recent) < self.start_frames:
                return []
            self.speaking = True
            pre = np.concatenate(list(self.before)) if self.before else frame
            self.before.clear()
            self.recent.clear()
            self._frames = self._last_voiced = round(len(pre) / max(1, len(frame)))
            self._silent = 0
            return [UtteranceStarted(pre)]
        self._frames += 1
        events: list[EndpointEvent] = [UtteranceAudio(frame)]
        if voiced:
            self._silent = 0
            self._last_voiced = self._frames
        else:
            self._silent += 1
        if self._silent >= self.end_frames:
            events.append(self._end("silence"))
        elif self._frames >= self.max_frames:
            events.append(self._end("max_length"))
        return events

    def _end(self, reason: str) -> UtteranceEnded:
        self.speaking = False
        return UtteranceEnded(reason, self._last_voiced * self.frame_seconds)


# -- PocketSphinx ------------------------------------------------------------------

def _upsample2(pcm: Pcm, last: int) -> tuple[Pcm, int]:
    """8 kHz to 16 kHz by linear interpolation, continuing from ``last``
    (the previous chunk's final sample): the model is a 16 kHz one."""
    x = pcm.astype(np.int32)
    prev = np.concatenate(([last], x[:-1]))
    out = np.empty(2 * len(x), np.int32)
    out[0::2] = (prev + x) // 2
    out[1::2] = x
    return out.astype(np.int16), int(x[-1]) if len(x) else last


class _SphinxStream:
    def __init__(self, owner: PocketsphinxRecognizer, decoder: Any) -> None:
        self.owner = owner
        self.decoder: Any = decoder
        self.last = 0
        self.frames = 0
        self.partial = ""
        decoder.start_utt()

    def feed(self, pcm: Pcm) -> None:
        data, self.last = _upsample2(pcm, self.last)
        self.decoder.process_raw(data.tobytes(), False, False)
        self.frames += max(1, len(pcm) // FRAME_SAMPLES)

    def results(self) -> list[Hypothesis]:
        if self.frames < 10:  # a partial costs a search of the lattice: every 200 ms at most
            return []
        self.frames = 0
        hyp = self.decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if not text or text == self.partial:
            return []
        self.partial = text
        return [Hypothesis(text, 0.0, False)]

    def finish(self) -> Hypothesis:
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        if hyp is None or not hyp.hypstr:
            return Hypothesis("", 0.0, True)
        return Hypothesis(hyp.hypstr, min(1.0, max(0.0, float(hyp.prob))), True)

    def close(self) -> None:
        decoder, self.decoder = self.decoder, None
        if decoder is not None:
            try:
                decoder.end_utt()
            except Exception:  # already ended
                pass
            self.owner._release(decoder)


class PocketsphinxRecognizer:
    """Offline recognition with PocketSphinx and its bundled US English
    model. Decoders take a second to load, so they are pooled (at most
    ``max_decoders`` idle); each keeps the grammars of the hint lists it
    has seen (``max_grammars`` at most). Without hints the bundled
    trigram language model is used (slower, and much less accurate on
    one-word answers)."""

    name = "pocketsphinx"

    def __init__(self, max_decoders: int = 8, max_grammars: int = 32) -> None:
        try:
            import pocketsphinx  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError as exc:
            raise AsrUnavailable("the pocketsphinx package is not installed (pip install pocketsphinx)") from exc
        self._ps = pocketsphinx
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._grammars: dict[int, collections.OrderedDict[str, None]] = {}
        self.max_decoders = max_decoders
        self.max_grammars = max_grammars

    def _new_decoder(self) -> Any:
        config = self._ps.Config(lm=None, loglevel="FATAL")
        return self._ps.Decoder(config)

    def _acquire(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_decoder()

    def _release(self, decoder: Any) -> None:
        with self._lock:
            if len(self._idle) < self.max_decoders:
                self._idle.append(decoder)

    def start(self, hints: Sequence[str] | None) -> RecognitionStream:
        decoder = self._acquire()
        try:
            self._select(decoder, normalize_hints(hints))
        except Exception:
            self._release(decoder)
            raise
        return _SphinxStream(self, decoder)

    def _select(self, decoder: Any, hints: tuple[str, ...] | None) -> None:
        """Activate the grammar for ``hints`` (or the language model)."""
        seen = self._grammars.setdefault(id(decoder), collections.OrderedDict())
        if hints is None:
            name = "lm"
            if name not in seen:
                decoder.add_lm_file(name, str(Path(self._ps.get_model_path()) / "en-us" / "en-us.lm.bin"))
        else:
            name = "g" + format(abs(hash(hints)), "x")
            if name not in seen:
                unknown = sorted({w for h in hints for w in h.split() if decoder.lookup_word(w) is None})
                if unknown:
                    raise AsrError(f"hints not in the pocketsphinx dictionary: {', '.join(unknown[:10])}")
                rule = " | ".join(hints)
                decoder.add_jsgf_string(name, f"#JSGF V1.0;\ngrammar hints;\npublic <hint> = {rule};\n")
        decoder.activate_search(name)
        seen[name] = None
        seen.move_to_end(name)
        while len(seen) > self.max_grammars:
            old, _ = seen.popitem(last=False)
            decoder.remove_search(old)


# -- Vosk --------------------------------------------------------------------------

class _VoskStream:
    def __init__(self, recognizer: Any) -> None:
        self.rec = recognizer
        self.partial = ""

    def feed(self, pcm: Pcm) -> None:
        self.rec.AcceptWaveform(pcm.astype("<i2", copy=False).tobytes())

    def results(self) -> list[Hypothesis]:
        text = str(json.loads(self.rec.PartialResult()).get("partial", ""))
        if not text or text == self.partial:
            return []
        self.partial = text
        return [Hypothesis(text, 0.0, False)]

    def finish(self) -> Hypothesis:
        result = json.loads(self.rec.FinalResult())
        text = " ".join(str(result.get("text", "")).replace("[unk]", "").split())
        words = result.get("result") or []
        conf = float(np.mean([float(w.get("conf", 0.0)) for w in words])) if words and text else 0.0
        return Hypothesis(text, conf, True)

    def close(self) -> None:
        self.rec = None


class VoskRecognizer:
    """Recognition with Vosk (Kaldi) and a model directory the operator
    downloaded (``--asr vosk:/path/to/model``); hints become its grammar,
    with ``[unk]`` for anything else.

    :raises AsrUnavailable: ``vosk`` is not importable or the model does not load.
    """

    name = "vosk"

    def __init__(self, model_path: str | Path) -> None:
        try:
            import vosk  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise AsrUnavailable("--asr vosk needs the vosk package (pip install vosk)") from exc
        path = Path(model_path)
        if not path.is_dir():
            raise AsrUnavailable(f"--asr vosk: model directory {str(path)!r} does not exist")
        vosk.SetLogLevel(-1)
        try:
            self._model = vosk.Model(str(path))
        except Exception as exc:
            raise AsrUnavailable(f"--asr vosk: cannot load the model in {str(path)!r}: {exc}") from exc
        self._vosk = vosk

    def start(self, hints: Sequence[str] | None) -> RecognitionStream:
        words = normalize_hints(hints)
        if words is None:
            rec = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE)
        else:
            rec = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE, json.dumps([*words, "[unk]"]))
        rec.SetWords(True)
        return _VoskStream(rec)


# -- fallback ----------------------------------------------------------------------

class _FallbackStream:
    def __init__(self, owner: FallbackRecognizer, stream: RecognitionStream,
                 hints: Sequence[str] | None, primary: bool) -> None:
        self.owner = owner
        self.stream = stream
        self.hints = hints
        self.primary = primary
        self.audio: list[Pcm] = []   # the utterance so far, replayed into the fallback

    def _switch(self, exc: Exception) -> None:
        self.owner._primary_failed(exc)
        try:
            self.stream.close()
        except Exception:
            pass
        self.stream = self.owner.fallback.start(self.hints)
        self.primary = False
        for pcm in self.audio:
            self.stream.feed(pcm)
        self.audio = []

    def feed(self, pcm: Pcm) -> None:
        if self.primary:
            self.audio.append(pcm)
            try:
                self.stream.feed(pcm)
                return
            except AsrError:
                raise
            except Exception as exc:
                self._switch(exc)
                return
        self.stream.feed(pcm)

    def results(self) -> list[Hypothesis]:
        if self.primary:
            try:
                return self.stream.results()
            except Exception as exc:
                self._switch(exc)
        return self.stream.results()

    def finish(self) -> Hypothesis:
        if self.primary:
            try:
                return self.stream.finish()
            except Exception as exc:
                self._switch(exc)
        return self.stream.finish()

    def close(self) -> None:
        self.stream.close()


class FallbackRecognizer:
    """``primary``, with ``fallback`` (PocketSphinx) when it fails: the
    failure is logged once per outage, and ``primary`` is tried again
    ``retry_after`` seconds later. A refusal of the hints themselves
    (:class:`AsrError` that is not :class:`AsrUnavailable`) is the caller's
    mistake, not an outage: it is raised, not hidden.

    :param clock: the time source (tests pass a fake one).
    """

    def __init__(self, primary: Recognizer, fallback: Recognizer, retry_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.outage = Outage(retry_after, clock)

    @property
    def failures(self) -> int:
        """Failures of the primary provider seen (logged or not)."""
        return self.outage.failures

    @property
    def primary_down(self) -> bool:
        return self.outage.down

    def _primary_failed(self, exc: Exception) -> None:
        if self.outage.failed():
            logger.warning("speech recognition: %s failed (%s); falling back to %s",
                           self.primary.name, exc, self.fallback.name)

    def start(self, hints: Sequence[str] | None) -> RecognitionStream:
        if not self.primary_down:
            try:
                return _FallbackStream(self, self.primary.start(hints), hints, True)
            except AsrError as exc:
                if not isinstance(exc, AsrUnavailable):
                    raise
                self._primary_failed(exc)
            except Exception as exc:
                self._primary_failed(exc)
        return _FallbackStream(self, self.fallback.start(hints), hints, False)

    def recovered(self) -> None:
        """Forget the outage (the next start tries the primary; its next
        failure is logged again)."""
        self.outage.recovered()


def make_recognizer(spec: str) -> Recognizer:
    """The recogniser ``--asr`` names: ``pocketsphinx`` or ``vosk:/path/to/model``
    (behind PocketSphinx as the fallback).

    :raises AsrUnavailable: the provider cannot be used at all (a clear
        startup error: not installed, no model).
    :raises ValueError: an unknown provider.
    """
    name, _, arg = spec.partition(":")
    if name == "pocketsphinx" and not arg:
        return PocketsphinxRecognizer()
    if name == "vosk":
        if not arg:
            raise ValueError("--asr vosk needs a model directory: vosk:/path/to/model")
        return FallbackRecognizer(VoskRecognizer(arg), PocketsphinxRecognizer())
    raise ValueError(f"unknown speech recogniser {spec!r} (choose pocketsphinx or vosk:/path/to/model)")
