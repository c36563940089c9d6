"""The real gTTS provider when Google cannot be reached: gTTS is pointed at
a closed port on 127.0.0.1 (nothing here ever goes to the internet), it
fails at once with TtsUnavailable, and behind a FallbackProvider
espeak-ng speaks instead, with one warning for the outage."""

from __future__ import annotations

import logging
import socket
from typing import Iterator

import gtts.tts
import numpy as np
import pytest
from tools import require_tool

from engine.media.tts import EspeakProvider, FallbackProvider, GttsProvider, TtsCache, TtsUnavailable


@pytest.fixture
def google_unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """gTTS's endpoint moved to a port on 127.0.0.1 that refuses
    connections, and no proxy in the environment."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as closed:  # bound, never listening
        closed.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.setattr(gtts.tts, "_translate_url", lambda tld="com", path="": f"{base}/{path}")
        yield base


def test_gtts_fails_fast_when_unreachable(google_unreachable: str) -> None:
    """Check the real GttsProvider raises TtsUnavailable naming the failed
    connection when its service cannot be reached."""
    with pytest.raises(TtsUnavailable) as err:
        GttsProvider(timeout=2).synthesize("hello", "en")
    assert str(err.value).startswith("gTTS failed: Failed to connect"), err.value


def test_gtts_falls_back_to_espeak(google_unreachable: str, tmp_path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """Check the engine's gtts setup (gTTS behind espeak-ng) speaks with
    espeak-ng while Google is unreachable, logs the outage once over
    several prompts, and caches the speech as espeak-ng's."""
    require_tool("espeak-ng")
    cache = TtsCache(FallbackProvider(GttsProvider(timeout=2), EspeakProvider()), tmp_path)
    first = cache.get("please hold", "en")
    second = cache.get("your call is important", "en")
    assert len(first) > 4000 and np.abs(first).max() > 1000 and len(second) > 4000
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("TTS gtts failed (gTTS failed: Failed to connect")
    assert warnings[0].endswith("speaking with espeak-ng, retrying gtts in 60 s")
    assert cache.path_for("please hold", "en", "espeak-ng").exists()
    assert not cache.path_for("please hold", "en", "gtts").exists()
