"""TTS (engine.media.tts): WAV parsing, the resampler, the disk cache."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from tools import require_tool

from engine.media.tts import EspeakProvider, TtsCache, TtsError, parse_wav, resample


def band_power(x: np.ndarray, freq: float, rate: int) -> float:
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * freq * n / rate))) ** 2)


def sine(freq: float, rate: int, seconds: float = 0.5, amp: float = 10000) -> np.ndarray:
    return np.round(amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.int16)


def test_resample_keeps_speech_band_and_length() -> None:
    x = sine(1000, 22050)
    y = resample(x, 22050, 8000)
    assert y.dtype == np.int16 and len(y) == 4000
    core = y[200:-200].astype(np.float64)
    assert abs(np.max(np.abs(core)) - 10000) < 300
    assert band_power(core, 1000, 8000) > 1000 * band_power(core, 1500, 8000)


def test_resample_removes_what_would_alias() -> None:
    """A 6 kHz tone at 22.05 kHz cannot exist at 8 kHz: the low-pass
    removes it instead of folding it to 2 kHz."""
    y = resample(sine(6000, 22050), 22050, 8000).astype(np.float64)[200:-200]
    assert np.sqrt(np.mean(y ** 2)) < 10000 * 0.707 * 0.05


def test_resample_up_and_identity() -> None:
    x = sine(500, 8000)
    assert np.array_equal(resample(x, 8000, 8000), x)
    y = resample(x, 8000, 16000)
    assert len(y) == 8000 and band_power(y.astype(float), 500, 16000) > 100 * band_power(y.astype(float), 900, 16000)


def wav_bytes(pcm: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def test_parse_wav_including_pipe_sizes_and_stereo() -> None:
    pcm = np.arange(-500, 500, dtype=np.int16)
    out, rate = parse_wav(wav_bytes(pcm, 22050))
    assert rate == 22050 and np.array_equal(out, pcm)
    data = bytearray(wav_bytes(pcm, 16000))
    struct.pack_into("<I", data, 4, 0xFFFFFFFF)  # as espeak-ng writes to a pipe
    struct.pack_into("<I", data, 40, 0xFFFFFFFF)
    out, rate = parse_wav(bytes(data))
    assert rate == 16000 and np.array_equal(out, pcm)
    stereo = np.repeat(pcm, 2)
    out, _ = parse_wav(wav_bytes(stereo, 8000, channels=2))
    assert np.array_equal(out, pcm)
    with pytest.raises(TtsError):
        parse_wav(b"not a wav")


class FakeProvider:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        self.calls.append((text, voice))
        return sine(300 + 100 * len(text) % 1000, 16000, 0.25), 16000


def test_cache_synthesizes_once_per_text_and_voice(tmp_path: Path) -> None:
    provider = FakeProvider()
    cache = TtsCache(provider, tmp_path / "tts")
    a = cache.get("hello", "en")
    assert len(a) == 2000 and a.dtype == np.int16
    assert np.array_equal(cache.get("hello", "en"), a)
    cache.get("hello", "de")
    cache.get("bye", "en")
    assert provider.calls == [("hello", "en"), ("hello", "de"), ("bye", "en")]
    assert (cache.hits, cache.misses) == (1, 3)
    assert len(list((tmp_path / "tts").glob("*.npy"))) == 3
    assert not list((tmp_path / "tts").glob("*.tmp"))
    # a new cache on the same folder (a restart) finds the files
    again = TtsCache(FakeProvider(), tmp_path / "tts")
    assert np.array_equal(again.get("hello", "en"), a) and again.hits == 1
    assert cache.path_for("hello", "en") != TtsCache(FakeProvider(), tmp_path, rate=16000).path_for("hello", "en")


async def test_cache_get_async_runs_off_the_loop(tmp_path: Path) -> None:
    cache = TtsCache(FakeProvider(), tmp_path)
    pcm = await asyncio.wait_for(cache.get_async("x", "en"), 5)
    assert len(pcm) == 2000


def test_corrupt_cache_file_is_resynthesized(tmp_path: Path) -> None:
    provider = FakeProvider()
    cache = TtsCache(provider, tmp_path)
    cache.path_for("hi", "en").write_bytes(b"garbage")
    assert len(cache.get("hi", "en")) == 2000 and len(provider.calls) == 1


def test_espeak_provider_speaks() -> None:
    require_tool("espeak-ng")
    pcm, rate = EspeakProvider().synthesize("please enter your PIN", "en")
    assert rate > 8000 and 0.5 < len(pcm) / rate < 4 and np.abs(pcm).max() > 1000


def test_espeak_missing_executable_is_tts_error() -> None:
    with pytest.raises(TtsError):
        EspeakProvider(executable="/nonexistent/espeak-ng").synthesize("x", "en")
