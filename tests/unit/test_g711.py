"""Tests for :mod:`engine.media.codecs.g711` and the codec factory."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from engine.media.codecs import CodecError, get_decoder, get_encoder, supported_mime_types
from engine.media.codecs.g711 import (
    ALAW_DECODE,
    ALAW_ENCODE,
    PLC_FADE_FRAMES,
    ULAW_DECODE,
    ULAW_ENCODE,
    G711Decoder,
    PcmaDecoder,
    PcmuDecoder,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

# A straightforward, per-sample reference of ITU-T G.711 (the Sun g711.c algorithm).
_SEG_UEND = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]
_SEG_AEND = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]


def _search(val: int, table: list[int]) -> int:
    for i, end in enumerate(table):
        if val <= end:
            return i
    return len(table)


def ref_linear2ulaw(pcm: int) -> int:
    pcm >>= 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)
    seg = _search(pcm, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def ref_ulaw2linear(code: int) -> int:
    code = ~code & 0xFF
    t = ((code & 0x0F) << 3) + 0x84
    t <<= (code & 0x70) >> 4
    return 0x84 - t if code & 0x80 else t - 0x84


def ref_linear2alaw(pcm: int) -> int:
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = _search(pcm, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> (1 if seg < 2 else seg)) & 0x0F
    return aval ^ mask


def ref_alaw2linear(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_decode_table_exact() -> None:
    """Check all 256 µ-law codes decode as the G.711 reference does."""
    assert [int(v) for v in ULAW_DECODE] == [ref_ulaw2linear(c) for c in range(256)]


def test_alaw_decode_table_exact() -> None:
    """Check all 256 A-law codes decode as the G.711 reference does."""
    assert [int(v) for v in ALAW_DECODE] == [ref_alaw2linear(c) for c in range(256)]


def test_ulaw_encode_exact() -> None:
    """Check all 65536 linear inputs encode to µ-law as the G.711 reference does."""
    expected = np.array([ref_linear2ulaw(int(x)) for x in ALL_PCM], dtype=np.uint8)
    assert np.array_equal(ulaw_encode(ALL_PCM), expected)
    assert ULAW_ENCODE.shape == (65536,)


def test_alaw_encode_exact() -> None:
    """Check all 65536 linear inputs encode to A-law as the G.711 reference does."""
    expected = np.array([ref_linear2alaw(int(x)) for x in ALL_PCM], dtype=np.uint8)
    assert np.array_equal(alaw_encode(ALL_PCM), expected)
    assert ALAW_ENCODE.shape == (65536,)


def test_codes_round_trip() -> None:
    """Check decode then encode gives back every code (except µ-law's negative zero)."""
    codes = np.arange(256, dtype=np.uint8)
    a = alaw_encode(alaw_decode(codes))
    assert np.array_equal(a, codes)
    u = ulaw_encode(ulaw_decode(codes))
    differ = np.nonzero(u != codes)[0].tolist()
    assert differ == [0x7F]  # 0x7F and 0xFF both decode to 0; 0 encodes as 0xFF
    assert u[0x7F] == 0xFF


@pytest.mark.parametrize("encode,decode", [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_round_trip_error_bound(encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> None:
    """Check the quantisation error is within half a step: ≤ 1/32 of the
    magnitude plus a small constant, and never above the largest G.711 step."""
    out = decode(encode(ALL_PCM)).astype(np.int32)
    x = ALL_PCM.astype(np.int32)
    err = np.abs(out - x)
    # clipping at the ends of the range aside
    inside = np.abs(x) <= 31000
    assert np.all(err[inside] <= np.abs(x[inside]) / 16 + 16)
    assert err[inside].max() <= 1024
    # large inputs: relative error under 6.5 %
    big = (np.abs(x) > 1000) & inside
    assert np.all(err[big] / np.abs(x[big]) < 0.065)


def test_factory() -> None:
    """Check the factory builds codecs by MIME name, case-insensitively, and
    rejects unknown names."""
    assert supported_mime_types() == ["audio/PCMU", "audio/PCMA"]
    pcm = (np.sin(np.arange(160) / 5) * 8000).astype(np.int16)
    for mime in ("audio/PCMU", "pcma", "AUDIO/pcmu"):
        enc, dec = get_encoder(mime), get_decoder(mime)
        assert enc.clock_rate == dec.clock_rate == 8000
        payload = enc.encode(pcm)
        assert len(payload) == 160
        out = dec.decode(payload)
        assert out.dtype == np.int16 and out.shape == (160,)
        assert np.max(np.abs(out.astype(np.int32) - pcm)) < 300
    assert get_encoder("PCMU").encode(np.zeros(2, dtype=np.int16)) == b"\xff\xff"
    assert get_encoder("PCMA").encode(np.zeros(2, dtype=np.int16)) == b"\xd5\xd5"
    with pytest.raises(CodecError, match="unsupported codec: 'audio/opus'"):
        get_encoder("audio/opus")
    with pytest.raises(CodecError, match="unsupported codec: 'G729'"):
        get_decoder("G729")


def test_plc_fades_to_silence() -> None:
    """Check concealment repeats the last frame with falling energy, reaches
    silence after the fade, and a good frame restarts it."""
    dec = get_decoder("audio/PCMU")
    assert not dec.conceal(160).any()  # nothing received yet: silence
    pcm = np.full(160, 10000, dtype=np.int16)
    dec.decode(get_encoder("audio/PCMU").encode(pcm))
    energies = []
    for _ in range(PLC_FADE_FRAMES + 2):
        frame = dec.conceal(160)
        assert frame.dtype == np.int16 and frame.shape == (160,)
        energies.append(float(np.sum(frame.astype(np.float64) ** 2)))
    fading = energies[:PLC_FADE_FRAMES]
    assert all(a > b for a, b in zip(fading, fading[1:]))
    assert energies[0] > 0.5 * 160 * 10000**2
    assert energies[PLC_FADE_FRAMES - 1] < 0.05 * energies[0]
    assert energies[PLC_FADE_FRAMES:] == [0.0, 0.0]
    dec.decode(get_encoder("audio/PCMU").encode(pcm))
    assert dec.conceal(160).max() > 8000  # the first lost frame at 0.9 of the last


@pytest.mark.parametrize("decoder_class, decode, encode",
                         [(PcmuDecoder, ULAW_DECODE, ULAW_ENCODE), (PcmaDecoder, ALAW_DECODE, ALAW_ENCODE)])
@pytest.mark.parametrize("size, n", [(160, 160), (100, 160), (320, 160), (960, 960)])
def test_plc_codes_follow_the_fade(decoder_class: type[G711Decoder], decode: Any, encode: Any,
                                   size: int, n: int) -> None:
    """Check every concealed code is the code of the last good frame's sample
    (the frame repeated or cut to the length asked) times lost frame k's
    gain, ``1 - (k + 0.5) / fade``, re-encoded; then silence (the code of
    0), and a new good frame restarts the fade."""
    rng = np.random.default_rng(size + n)
    last = rng.integers(0, 256, size).astype(np.uint8).tobytes()
    dec = decoder_class()
    dec.decode(last)
    src = decode[np.frombuffer(np.resize(np.frombuffer(last, np.uint8), n).tobytes(), np.uint8)].astype(np.float64)
    silence = bytes([encode[0]]) * n
    for k in range(PLC_FADE_FRAMES):
        got = dec.conceal_payload(n)
        want = encode[np.rint(src * (1 - (k + 0.5) / PLC_FADE_FRAMES)).astype(np.int16).view(np.uint16)]
        assert isinstance(got, bytes) and got == want.tobytes()
    assert dec.conceal_payload(n) == silence
    assert np.abs(dec.conceal(n)).max() <= 8  # A-law has no zero: its silence is +-8
    dec.remember(last)  # taken undecoded by the graph: the fade starts again from it
    assert dec.conceal_payload(n) != silence


def test_plc_conceal_is_the_payload_decoded() -> None:
    """Check :meth:`conceal` (samples, for a leg decoded alone) and
    :meth:`conceal_payload` (codes, for the graph) follow one fade: the
    samples are the codes decoded, frame after frame; an empty last payload
    conceals as silence; a payload given as a memoryview conceals as its bytes."""
    pcm = np.linspace(-20000, 20000, 160).astype(np.int16)
    payload = get_encoder("PCMA").encode(pcm)
    by_samples, by_codes = PcmaDecoder(), PcmaDecoder()
    by_samples.decode(payload)
    by_codes.remember(payload)
    for _ in range(PLC_FADE_FRAMES + 1):
        frame = by_samples.conceal(160)
        assert frame.dtype == np.int16
        assert frame.tolist() == ALAW_DECODE[np.frombuffer(by_codes.conceal_payload(160), np.uint8)].tolist()
    empty = PcmuDecoder()
    empty.decode(b"")
    assert empty.conceal_payload(160) == b"\xff" * 160
    viewed, plain = PcmaDecoder(), PcmaDecoder()  # a payload handed over as a view of a datagram
    viewed.decode(memoryview(bytes(12) + payload)[12:])
    plain.decode(payload)
    assert viewed.conceal_payload(160) == plain.conceal_payload(160)
