"""Audio files as players: WAV, MP3, OGG Vorbis and FLAC bytes to 16-bit mono PCM.

:func:`decode_audio` turns the bytes of a file into int16 mono samples at
the call's rate, :func:`decode_source` into a
:class:`~engine.media.players.PcmSource`; :func:`load_file` reads a path
first. Fetching URLs (and caching them) is I/O and lives in
:mod:`engine.transport.audio_fetch`; this module only reads local files
and decodes, so it runs anywhere, and callers on the event loop run it in a
worker thread (a minute of MP3 takes a noticeable fraction of a second).

Decoding is miniaudio's (dr_wav, dr_mp3, dr_flac, stb_vorbis: one small
wheel, no system libraries). The format is recognised by its magic bytes
first, so that a file which is none of the four (an HTML error page, an
OGG Opus file) gets an error that says so instead of a decoder's code.

Sample-rate conversion is split in two. miniaudio mixes down to mono and
converts to twice the target rate with its linear resampler, then our
windowed-sinc low-pass (cutoff at 0.45 of the target rate, as
:func:`engine.media.tts.resample`) removes everything the target rate
cannot carry and every other sample is kept. Measured on 44.1 kHz tones
decoded to 8 kHz: miniaudio alone lets a 4.5 kHz tone through at -6 dB
and folds a 6 kHz one to 2 kHz at -16 dB; the two stages keep both below
-36 dB and pass 3 kHz at -0.1 dB. Both stages run over chunks, so memory
stays at the size of the output (about 1 MB a minute at 8 kHz).

Errors are :class:`AudioFileError`, whose text starts with the file's name
(path or URL) and says what is wrong: not found, empty, not one of the
four formats, corrupt, no audio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import miniaudio  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from engine.media.players import PcmSource
from engine.media.pcm import Pcm

__all__ = [
    "AudioFileError", "AUDIO_FORMATS", "sniff_format", "decode_audio", "decode_native",
    "decode_source", "load_file", "lowpass_taps",
]


#: The formats :func:`decode_audio` plays, as :func:`sniff_format` names them.
AUDIO_FORMATS = ("WAV", "MP3", "OGG", "FLAC")

#: Frames decoded per step (at twice the target rate).
CHUNK_FRAMES = 16384

#: Length of the anti-alias low-pass filter.
LOWPASS_TAPS = 63


class AudioFileError(Exception):
    """A file or URL cannot be played; the text names it and says why."""


def sniff_format(data: bytes) -> str | None:
    """The format of ``data`` by its magic bytes (one of
    :data:`AUDIO_FORMATS`), or ``None``. An MP3 starts with an ID3v2 tag or
    an MPEG audio frame sync (11 set bits)."""
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "OGG"
    if data[:3] == b"ID3" or (len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    return None


def _check(data: bytes, name: str) -> str:
    """The format of ``data``, or :class:`AudioFileError` saying why it cannot be played."""
    if not data:
        raise AudioFileError(f"{name}: empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise AudioFileError(f"{name}: not a WAV, MP3, OGG or FLAC file")
    if fmt == "OGG" and b"OpusHead" in data[:512]:
        raise AudioFileError(f"{name}: OGG Opus is not supported (OGG Vorbis is)")
    return fmt


def lowpass_taps(cutoff: float, taps: int = LOWPASS_TAPS) -> npt.NDArray[np.float64]:
    """A windowed-sinc (Hamming) low-pass with unit gain at DC; ``cutoff``
    as a fraction of the sample rate."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
    return np.asarray(h / h.sum(), dtype=np.float64)


def _decimate2(chunks: Iterable[npt.NDArray[np.int16]], h: npt.NDArray[np.float64]) -> Pcm:
    """Filter a stream with ``h`` (as ``np.convolve(x, h, "same")`` over the
    whole) and keep the even samples, one chunk at a time.

    The stream is zero-padded by half the filter at both ends; each step
    convolves what is carried over (the last ``len(h) - 1`` padded samples)
    plus the new chunk, ``"valid"`` only, so the output is exact across
    chunk boundaries.
    """
    half = (len(h) - 1) // 2
    carry = np.zeros(half, dtype=np.float64)
    produced = 0
    out: list[Pcm] = []

    def step(buf: npt.NDArray[np.float64]) -> None:
        nonlocal produced
        y = np.convolve(buf, h, mode="valid")
        keep = y[(-produced) % 2:: 2]
        produced += len(y)
        out.append(np.clip(np.round(keep), -32768, 32767).astype(np.int16))

    for chunk in chunks:
        buf = np.concatenate([carry, np.asarray(chunk, dtype=np.float64)])
        if len(buf) < len(h):
            carry = buf
            continue
        step(buf)
        carry = buf[len(buf) - (len(h) - 1):]
    last = np.concatenate([carry, np.zeros(half, dtype=np.float64)])
    if len(last) >= len(h):  # shorter only when the stream was empty
        step(last)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def decode_audio(data: bytes, name: str, rate: int = 8000) -> Pcm:
    """The bytes of a WAV, MP3, OGG Vorbis or FLAC file as int16 mono
    samples at ``rate`` (blocking: CPU-bound).

    :param name: the file's path or URL, for the error text.
    :raises AudioFileError: empty, not one of the formats, corrupt, or no audio.
    """
    fmt = _check(data, name)
    try:
        stream = miniaudio.stream_memory(
            data, output_format=miniaudio.SampleFormat.SIGNED16, nchannels=1,
            sample_rate=2 * rate, frames_to_read=CHUNK_FRAMES,
        )
    except miniaudio.MiniaudioError:
        raise AudioFileError(f"{name}: corrupt {fmt} data (cannot decode)") from None
    try:
        chunks = (np.frombuffer(chunk, dtype=np.int16) for chunk in stream)
        pcm = _decimate2(chunks, lowpass_taps(0.45 / 2))
    except miniaudio.MiniaudioError:
        raise AudioFileError(f"{name}: corrupt {fmt} data (decoding failed part way)") from None
    finally:
        stream.close()
    if not len(pcm):
        raise AudioFileError(f"{name}: no audio in the {fmt} file")
    return pcm


def decode_native(data: bytes, name: str) -> tuple[Pcm, int]:
    """The bytes of a file as (int16 mono samples, the file's own rate),
    for short clips that are resampled later (TTS). Errors as
    :func:`decode_audio`."""
    fmt = _check(data, name)
    info_of = {"WAV": miniaudio.wav_get_info, "MP3": miniaudio.mp3_get_info,
               "OGG": miniaudio.vorbis_get_info, "FLAC": miniaudio.flac_get_info}[fmt]
    try:
        rate = int(info_of(data).sample_rate)
        decoded = miniaudio.decode(data, output_format=miniaudio.SampleFormat.SIGNED16,
                                   nchannels=1, sample_rate=rate)
    except miniaudio.MiniaudioError:
        raise AudioFileError(f"{name}: corrupt {fmt} data (cannot decode)") from None
    pcm = np.frombuffer(decoded.samples, dtype=np.int16).copy()
    if not len(pcm):
        raise AudioFileError(f"{name}: no audio in the {fmt} file")
    return pcm, rate


def decode_source(data: bytes, name: str, *, loop: bool = False, rate: int = 8000) -> PcmSource:
    """:func:`decode_audio` as a player (``loop``: repeat until stopped)."""
    return PcmSource(decode_audio(data, name, rate), loop=loop, rate=rate)


def load_file(path: str | os.PathLike[str], rate: int = 8000) -> Pcm:
    """Read and decode the file at ``path`` (blocking: file I/O and CPU).

    :raises AudioFileError: the file cannot be read, or as :func:`decode_audio`.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise AudioFileError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise AudioFileError(f"{p}: is a directory, not a file") from None
    except PermissionError:
        raise AudioFileError(f"{p}: permission denied") from None
    except OSError as exc:
        raise AudioFileError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return decode_audio(data, str(p), rate)
