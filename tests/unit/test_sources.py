"""Audio files (engine.media.sources): WAV, MP3, OGG Vorbis and FLAC tones
written by libsndfile (soundfile) decode to the right tone, level and
length at the call's rate; errors name the file and say what is wrong."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from audio_files import FORMATS, encode, tone

from engine.media import sources
from engine.media.players import PcmSource, PlaybackFinished
from engine.media.sources import (
    AudioFileError, decode_audio, decode_native, decode_source, load_file, sniff_format,
)


def power(x: npt.NDArray[np.float64], freq: float, rate: int = 8000) -> float:
    """Goertzel-style power of ``freq`` in ``x``."""
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * freq * n / rate))) ** 2)


def rms_db(x: npt.NDArray[np.float64], full: float) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x ** 2)) / full))


@pytest.mark.parametrize("kind", sorted(FORMATS))
@pytest.mark.parametrize("rate_in,channels", [(44100, 1), (22050, 2)])
def test_tone_survives_decoding(kind: str, rate_in: int, channels: int) -> None:
    """Check a 1.5 s 1200 Hz tone at -6 dBFS (mono 44.1 kHz, stereo 22.05
    kHz) decodes to int16 mono at 8 kHz: 12,000 samples (within 10 ms),
    1200 Hz dominating its neighbours by 30 dB, level within 1 dB."""
    data = encode(kind, tone(1200, rate_in, 1.5, channels), rate_in)
    assert sniff_format(data) == FORMATS[kind][0]
    pcm = decode_audio(data, f"tone.{kind}")
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert abs(len(pcm) - 12000) <= 80, len(pcm)
    core = pcm[400:-400].astype(np.float64)
    powers = {f: power(core, f) for f in (400, 800, 1000, 1200, 1400, 2000, 3000)}
    assert max(powers, key=powers.__getitem__) == 1200
    assert powers[1200] > 1000 * max(p for f, p in powers.items() if f != 1200), powers
    assert abs(rms_db(core, 32767 * 0.5 / np.sqrt(2))) < 1.0


def test_rate_is_a_parameter() -> None:
    """Check decoding at 16 kHz gives 16,000 samples a second and keeps a
    5 kHz tone that 8 kHz could not carry."""
    data = encode("flac", tone(5000, 44100, 1.0), 44100)
    pcm = decode_audio(data, "wide.flac", rate=16000).astype(np.float64)
    assert abs(len(pcm) - 16000) <= 16
    assert power(pcm, 5000, 16000) > 1000 * power(pcm, 3000, 16000)
    assert abs(rms_db(pcm[400:-400], 32767 * 0.5 / np.sqrt(2))) < 1.0


@pytest.mark.parametrize("freq", [4500, 6000, 10000])
def test_what_8khz_cannot_carry_is_removed_not_folded(freq: float) -> None:
    """Check tones above 4 kHz in a 44.1 kHz file come out at least 30 dB
    down instead of aliasing into the telephone band."""
    pcm = decode_audio(encode("wav", tone(freq, 44100, 1.0), 44100), "high.wav").astype(np.float64)
    assert rms_db(pcm[400:-400], 32767 * 0.5 / np.sqrt(2)) < -30


def test_chunking_does_not_change_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check decoding in small chunks (the filter carried across chunk
    boundaries) gives the same samples as in large ones."""
    data = encode("wav", tone(700, 44100, 0.5) + tone(2300, 44100, 0.5, level=0.2), 44100)
    whole = decode_audio(data, "x.wav")
    monkeypatch.setattr(sources, "CHUNK_FRAMES", 97)
    assert np.array_equal(decode_audio(data, "x.wav"), whole)


def test_mp3_with_id3_tag() -> None:
    """Check an MP3 that starts with an ID3v2 tag is recognised and decoded."""
    mp3 = encode("mp3", tone(1000, 44100, 0.5), 44100)
    tag = b"ID3\x03\x00\x00\x00\x00\x00\x0a" + bytes(10)  # ID3v2.3, 10 bytes of padding
    assert sniff_format(tag + mp3) == "MP3"
    assert abs(len(decode_audio(tag + mp3, "tagged.mp3")) - 4000) <= 80


def test_decode_source_once_and_looping() -> None:
    """Check decode_source gives a PcmSource at the rate: once it ends
    after the file's samples, looping it goes on past them."""
    data = encode("wav", tone(1000, 8000, 0.1), 8000)
    once = decode_source(data, "beep.wav")
    assert isinstance(once, PcmSource) and once.rate == 8000 and not once.loop
    frames = []
    with pytest.raises(PlaybackFinished):
        while True:
            frames.append(once.read(160))
    assert len(frames) == 5
    looped = decode_source(data, "beep.wav", loop=True, rate=8000)
    for _ in range(20):
        assert len(looped.read(160)) == 160


def test_decode_native_keeps_the_file_rate() -> None:
    """Check decode_native returns the file's own rate and mono samples."""
    pcm, rate = decode_native(encode("mp3", tone(800, 24000, 0.5, channels=2), 24000), "tts.mp3")
    assert rate == 24000 and pcm.ndim == 1 and abs(len(pcm) - 12000) <= 200
    assert power(pcm.astype(np.float64), 800, 24000) > 1000 * power(pcm.astype(np.float64), 1200, 24000)


def test_load_file_str_and_path(tmp_path: Path) -> None:
    """Check a file is read by str path and by Path alike."""
    path = tmp_path / "tone.ogg"
    path.write_bytes(encode("ogg", tone(1000, 44100, 0.5), 44100))
    a = load_file(str(path))
    b = load_file(path, rate=8000)
    assert np.array_equal(a, b) and abs(len(a) - 4000) <= 40


def opus_file() -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, tone(1000, 48000, 0.2).astype(np.float32), 48000, format="OGG", subtype="OPUS")
    return buf.getvalue()


def header_only_wav() -> bytes:
    return encode("wav", tone(1000, 8000, 0.1), 8000)[:44]


@pytest.mark.parametrize("name,data,message", [
    ("empty.wav", b"", "empty.wav: empty file"),
    ("page.mp3", b"<html><body>Not here</body></html>", "page.mp3: not a WAV, MP3, OGG or FLAC file"),
    ("bad.wav", b"RIFF\0\0\0\0WAVEjunkjunkjunk", "bad.wav: corrupt WAV data (cannot decode)"),
    ("bad.flac", b"fLaC" + bytes(100), "bad.flac: corrupt FLAC data (cannot decode)"),
    ("bad.ogg", b"OggS" + b"\x01" * 100, "bad.ogg: corrupt OGG data (cannot decode)"),
    ("bad.mp3", b"ID3" + bytes(100), "bad.mp3: corrupt MP3 data (cannot decode)"),
    ("silent.wav", header_only_wav(), "silent.wav: no audio in the WAV file"),
    ("voice.opus", opus_file(), "voice.opus: OGG Opus is not supported (OGG Vorbis is)"),
])
def test_decode_errors(name: str, data: bytes, message: str) -> None:
    """Check each way a file cannot be played gets its own exact error."""
    with pytest.raises(AudioFileError) as err:
        decode_audio(data, name)
    assert str(err.value) == message
    with pytest.raises(AudioFileError) as err:
        decode_native(data, name)
    assert str(err.value) == message


def test_file_errors(tmp_path: Path) -> None:
    """Check a missing file, a folder and a file that is not audio name the
    path and say what is wrong."""
    with pytest.raises(AudioFileError) as err:
        load_file(tmp_path / "nope.wav")
    assert str(err.value) == f"{tmp_path / 'nope.wav'}: file not found"
    with pytest.raises(AudioFileError) as err:
        load_file(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a directory, not a file"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(AudioFileError) as err:
        load_file(str(notes))
    assert str(err.value) == f"{notes}: not a WAV, MP3, OGG or FLAC file"
