"""TTS (engine.media.tts): WAV parsing, the resampler, the disk cache, the
gTTS provider without gTTS or a network, the fallback provider (logged
once, backed off, cached under the provider that spoke)."""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from tools import require_tool

from engine.media.tts import (
    EspeakProvider, FallbackProvider, GttsProvider, TtsCache, TtsError, TtsUnavailable,
    make_tts_provider, parse_wav, resample,
)


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


class Flaky:
    """A provider that fails with ``error`` while ``down``, and counts calls."""

    def __init__(self, name: str, freq: float, error: Exception | None = None) -> None:
        self.name = name
        self.freq = freq
        self.error = error or TtsUnavailable("service unreachable")
        self.down = False
        self.calls = 0

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        self.calls += 1
        if self.down:
            raise self.error
        return sine(self.freq, 8000, 0.1), 8000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_fallback_logs_once_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """Check that while the primary is down the fallback speaks, the
    failure is logged once (not per request), the primary is tried again
    only after the back-off, and its recovery is logged once."""
    caplog.set_level(logging.DEBUG, logger="engine.media.tts")
    primary, backup, clock = Flaky("gtts", 1000), Flaky("espeak-ng", 500), Clock()
    provider = FallbackProvider(primary, backup, retry_after=60, clock=clock)
    primary.down = True
    for _ in range(5):
        _, _, name = provider.synthesize_tagged("hi", "en")
        assert name == "espeak-ng"
    assert (primary.calls, backup.calls) == (1, 5) and provider.primary_down
    assert fallback_warnings(caplog) == [
        "TTS gtts failed (service unreachable): speaking with espeak-ng, retrying gtts in 60 s"]
    clock.now += 61  # back-off over: one more try, still down, not logged again as a warning
    assert provider.synthesize_tagged("hi", "en")[2] == "espeak-ng"
    assert provider.synthesize_tagged("hi", "en")[2] == "espeak-ng"
    assert primary.calls == 2 and len(fallback_warnings(caplog)) == 1
    assert "TTS gtts still failing: service unreachable" in caplog.text
    primary.down = False
    clock.now += 61
    assert provider.synthesize_tagged("hi", "en")[2] == "gtts"
    assert provider.synthesize("hi", "en")[1] == 8000 and primary.calls == 4
    assert caplog.text.count("TTS gtts works again") == 1 and not provider.primary_down


def test_a_refused_request_falls_back_without_backoff(caplog: pytest.LogCaptureFixture) -> None:
    """Check a plain TtsError (say, a voice the primary lacks) has the
    fallback speak that request but leaves the primary in use; an
    unexpected exception counts as the primary being down."""
    primary, backup = Flaky("gtts", 1000, TtsError("gTTS has no voice 'xx'")), Flaky("espeak-ng", 500)
    provider = FallbackProvider(primary, backup)
    primary.down = True
    assert provider.synthesize_tagged("hi", "xx")[2] == "espeak-ng"
    assert provider.synthesize_tagged("hi", "xx")[2] == "espeak-ng"
    assert primary.calls == 2 and not provider.primary_down
    assert "TTS gtts: gTTS has no voice 'xx': speaking with espeak-ng" in caplog.text
    primary.error = RuntimeError("boom")
    provider.synthesize_tagged("hi", "en")
    provider.synthesize_tagged("hi", "en")
    assert primary.calls == 3 and provider.primary_down


def test_cache_keys_speech_by_the_provider_that_spoke(tmp_path: Path) -> None:
    """Check fallback speech is cached under the fallback's name, never as
    the primary's; it is reused only while the primary is backed off, and
    once the primary is back its own speech is made and cached."""
    primary, backup, clock = Flaky("gtts", 1000), Flaky("espeak-ng", 500), Clock()
    cache = TtsCache(FallbackProvider(primary, backup, retry_after=60, clock=clock), tmp_path)
    primary.down = True
    spoken = cache.get("hello", "en")
    assert band_power(spoken.astype(float), 500, 8000) > 100 * band_power(spoken.astype(float), 1000, 8000)
    assert not cache.path_for("hello", "en").exists()
    assert cache.path_for("hello", "en", "espeak-ng").exists()
    assert np.array_equal(cache.get("hello", "en"), spoken) and cache.hits == 1
    assert backup.calls == 1  # served from the cache while gTTS is backed off
    primary.down = False
    clock.now += 61
    fresh = cache.get("hello", "en")
    assert band_power(fresh.astype(float), 1000, 8000) > 100 * band_power(fresh.astype(float), 500, 8000)
    assert cache.path_for("hello", "en").exists() and primary.calls == 2
    assert np.array_equal(cache.get("hello", "en"), fresh) and primary.calls == 2


def test_gtts_not_installed_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the gTTS provider without the package raises TtsUnavailable
    saying how to install it (the engine imports gTTS only when used)."""
    monkeypatch.setitem(sys.modules, "gtts", None)
    with pytest.raises(TtsUnavailable) as err:
        GttsProvider().synthesize("hello", "en")
    assert str(err.value) == "gTTS is not installed (pip install 'callbridge[tts-google]')"


def test_gtts_language_for_voice() -> None:
    """Check espeak-style regional voices map to gTTS languages, and an
    unknown voice is a TtsError (a refused request, not an outage)."""
    from gtts.lang import tts_langs

    langs = tts_langs()
    assert GttsProvider.language_for("en", langs) == "en"
    assert GttsProvider.language_for("en-us", langs) == "en"
    assert GttsProvider.language_for("zh-CN", langs) == "zh-CN"
    with pytest.raises(TtsError) as err:
        GttsProvider.language_for("xx-yy", langs)
    assert str(err.value) == "gTTS has no voice 'xx-yy'" and not isinstance(err.value, TtsUnavailable)


def test_make_tts_provider() -> None:
    """Check the names of the tts_provider setting."""
    assert isinstance(make_tts_provider("espeak"), EspeakProvider)
    gtts = make_tts_provider("gtts")
    assert isinstance(gtts, FallbackProvider) and gtts.name == "gtts"
    assert isinstance(gtts.primary, GttsProvider) and isinstance(gtts.fallback, EspeakProvider)
    with pytest.raises(ValueError) as err:
        make_tts_provider("polly")
    assert str(err.value) == "unknown TTS provider 'polly' (choose from espeak, gtts)"


def test_tts_setting_from_flag_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Check ``--tts`` and ``CALLBRIDGE_TTS`` reach EngineConfig.tts_provider
    (flag wins; espeak by default), a bad name stops with a clear message,
    and the engine speaks through the named provider."""
    from engine.cli import _config_from, build_parser
    from engine.server import Engine, EngineConfig, StartupError

    def config(*flags: str) -> EngineConfig:
        return _config_from(build_parser().parse_args(["serve", *flags]))  # type: ignore[no-any-return]

    monkeypatch.delenv("CALLBRIDGE_TTS", raising=False)
    assert config().tts_provider == "espeak"
    assert config("--tts", "gtts").tts_provider == "gtts"
    monkeypatch.setenv("CALLBRIDGE_TTS", "gtts")
    assert config().tts_provider == "gtts" and config("--tts", "espeak").tts_provider == "espeak"
    monkeypatch.setenv("CALLBRIDGE_TTS", "polly")
    with pytest.raises(SystemExit) as exit_:
        config()
    assert str(exit_.value) == "callbridge: --tts must be one of espeak, gtts, got 'polly'"
    engine = Engine(EngineConfig(data_dir=tmp_path, tts_provider="gtts"))
    assert isinstance(engine.tts.provider, FallbackProvider)
    assert engine.tts.directory == tmp_path / "tts-cache" and engine.audio.cache_dir == tmp_path / "audio-cache"
    with pytest.raises(StartupError, match=r"^unknown TTS provider 'polly' \(choose from espeak, gtts\)$"):
        Engine(EngineConfig(data_dir=tmp_path, tts_provider="polly"))
