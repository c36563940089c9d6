"""Players (engine.media.players): frame sizes, lengths, loop, end, phase."""

from __future__ import annotations

import numpy as np
import pytest

from engine.media.players import PcmSource, PlaybackFinished, SilenceSource, ToneSource, silence


def goertzel_power(x: np.ndarray, freq: float, rate: int = 8000) -> float:
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * freq * n / rate))) ** 2)


def drain(src: object, samples: int = 160) -> list[np.ndarray]:
    frames = []
    for _ in range(10_000):
        try:
            frames.append(src.read(samples))  # type: ignore[attr-defined]
        except PlaybackFinished:
            return frames
    raise AssertionError("source never ended")


def test_tone_length_frequency_level_and_continuous_phase() -> None:
    frames = drain(ToneSource(1000, 1.0, level=-6.0))
    assert len(frames) == 50 and all(f.dtype == np.int16 and len(f) == 160 for f in frames)
    pcm = np.concatenate(frames).astype(np.float64)
    assert abs(np.max(np.abs(pcm)) - 32767 * 10 ** (-6 / 20)) < 2
    assert goertzel_power(pcm, 1000) > 1000 * goertzel_power(pcm, 1100)
    ref = np.round(32767 * 10 ** (-6 / 20) * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000))
    assert np.array_equal(pcm, ref)  # no phase jump between frames


def test_tone_last_frame_padded_and_endless_tone() -> None:
    frames = drain(ToneSource(440, 0.025))
    assert len(frames) == 2 and not frames[1][40:].any() and frames[1][:40].any()
    endless = ToneSource(440)
    for _ in range(500):
        endless.read(160)


def test_tone_rejects_bad_frequency() -> None:
    with pytest.raises(ValueError):
        ToneSource(4000)
    with pytest.raises(ValueError):
        ToneSource(0)


def test_pcm_source_once_and_loop() -> None:
    pcm = np.arange(400, dtype=np.int16)
    frames = drain(PcmSource(pcm))
    assert len(frames) == 3
    assert np.array_equal(np.concatenate(frames)[:400], pcm) and not frames[2][80:].any()
    looping = PcmSource(pcm, loop=True)
    out = np.concatenate([looping.read(160) for _ in range(10)])
    assert np.array_equal(out, np.tile(pcm, 4))
    with pytest.raises(PlaybackFinished):
        PcmSource(np.zeros(0, dtype=np.int16)).read(160)


def test_silence() -> None:
    assert len(drain(silence(0.1))) == 5
    src = SilenceSource()
    assert not any(src.read(160).any() for _ in range(100))
