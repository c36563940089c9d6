"""Tests for :mod:`engine.media.dtmf`: Goertzel detection (ITU-T Q.24),
the tone generator and SIP INFO bodies."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from engine.media.dtmf import (
    DIGITS,
    DtmfBodyError,
    DtmfDetector,
    DtmfInfo,
    digit_frequencies,
    generate_dtmf,
    generate_dtmf_sequence,
    normalize_digit,
    parse_dtmf_body,
    parse_dtmf_relay,
    parse_info_body,
)

Pcm = npt.NDArray[np.int16]
PAD = np.zeros(800, dtype=np.int16)


def detect(x: Pcm, chunk: int = 160) -> str:
    """Digits detected in ``x`` fed ``chunk`` samples at a time."""
    det = DtmfDetector()
    found = []
    for i in range(0, len(x), chunk):
        found += det.process(x[i : i + chunk])
    return "".join(t.digit for t in found)


def tone(
    digit: str,
    duration: float = 0.1,
    *,
    level: float = -10.0,
    twist: float = 0.0,
    row_offset: float = 0.0,
    col_offset: float = 0.0,
) -> Pcm:
    """``digit`` for ``duration`` seconds between 100 ms of silence."""
    x = generate_dtmf(digit, duration, level=level, twist=twist, row_offset=row_offset, col_offset=col_offset)
    return np.concatenate([PAD, x, PAD])


def test_generator() -> None:
    """Check the generator's length, keypad frequencies and level."""
    assert digit_frequencies("5") == (770.0, 1336.0)
    assert digit_frequencies("d") == (941.0, 1633.0)
    x = generate_dtmf("1", 0.05, level=-10.0)
    assert x.dtype == np.int16 and x.shape == (400,)
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert rms == pytest.approx(16020 * 10 ** (-0.5) * np.sqrt(2), rel=0.02)  # two tones at -10 dBm0
    assert generate_dtmf_sequence("").size == 0
    assert generate_dtmf_sequence("12", tone=0.05, gap=0.05).shape == (1600,)


@pytest.mark.parametrize("duration", [0.04, 0.05, 0.1])
def test_every_digit_detected(duration: float) -> None:
    """Check each of the 16 digits is detected once from a tone of 40 ms or more."""
    for d in DIGITS:
        assert detect(tone(d, duration)) == d


@pytest.mark.parametrize("level", [-30.0, -20.0, -10.0, 0.0, 3.0])
def test_levels(level: float) -> None:
    """Check detection from -30 dBm0 up to full scale per tone."""
    assert detect(generate_dtmf_sequence(DIGITS, tone=0.05, gap=0.05, level=level)) == DIGITS


def test_too_quiet_rejected() -> None:
    """Check tones at -40 dBm0 are below the energy threshold."""
    assert detect(generate_dtmf_sequence(DIGITS, level=-40.0)) == ""


@pytest.mark.parametrize("duration", [0.01, 0.02, 0.023])
def test_short_tones_rejected(duration: float) -> None:
    """Check tones of 23 ms and shorter give no digit (Q.24 minimum duration)."""
    assert detect(np.concatenate([tone(d, duration) for d in DIGITS])) == ""


@pytest.mark.parametrize("offset", [0.015, -0.015])
def test_frequency_within_tolerance_accepted(offset: float) -> None:
    """Check tones 1.5 % off frequency (one or both) are accepted."""
    for d in DIGITS:
        assert detect(tone(d, row_offset=offset, col_offset=offset)) == d
        assert detect(tone(d, row_offset=offset)) == d
        assert detect(tone(d, col_offset=offset)) == d


@pytest.mark.parametrize("offset", [0.035, -0.035, 0.04, -0.04])
def test_frequency_off_rejected(offset: float) -> None:
    """Check tones 3.5 % and 4 % off frequency (either or both) are rejected."""
    for d in DIGITS:
        assert detect(tone(d, row_offset=offset, col_offset=offset)) == ""
        assert detect(tone(d, row_offset=offset)) == ""
        assert detect(tone(d, col_offset=offset)) == ""


@pytest.mark.parametrize("twist", [-3.0, 0.0, 4.0, 7.0])
def test_twist_accepted(twist: float) -> None:
    """Check twist up to 7 dB forward (high tone weaker) and 3 dB reverse is accepted."""
    for d in DIGITS:
        assert detect(tone(d, twist=twist, level=-5.0)) == d


@pytest.mark.parametrize("twist", [-6.0, 10.0, 14.0])
def test_bad_twist_rejected(twist: float) -> None:
    """Check 6 dB reverse twist and 10 dB or more forward twist are rejected."""
    for d in DIGITS:
        assert detect(tone(d, twist=twist, level=-5.0)) == ""


def test_noise_and_speechlike_rejected() -> None:
    """Check white noise at several levels and harmonic, speech-like signals
    (sawtooth waves and 1/k harmonic series at 90-300 Hz) give no digit."""
    rng = np.random.default_rng(7)
    for sigma in (300, 3000, 12000):
        noise = np.clip(rng.normal(0, sigma, 40000), -32768, 32767).astype(np.int16)
        assert detect(noise) == ""
    t = np.arange(16000) / 8000
    for f0 in range(90, 300, 10):
        saw = (((t * f0) % 1) * 2 - 1) * 10000
        assert detect(saw.astype(np.int16)) == "", f0
        series = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 30)) * 3000
        assert detect(np.asarray(series).astype(np.int16)) == "", f0


def test_repeats_need_a_pause() -> None:
    """Check a digit held with a 40 ms pause is reported twice, with a 10 ms
    drop-out or no pause once; a change of digit without pause counts."""
    t = generate_dtmf("5", 0.06)

    def gap(s: float) -> Pcm:
        return np.zeros(round(s * 8000), dtype=np.int16)

    assert detect(np.concatenate([PAD, t, gap(0.04), t, PAD])) == "55"
    assert detect(np.concatenate([PAD, t, gap(0.01), t, PAD])) == "5"
    assert detect(np.concatenate([PAD, t, t, t, PAD])) == "5"
    assert detect(np.concatenate([PAD, t, generate_dtmf("6", 0.06), PAD])) == "56"


@pytest.mark.parametrize("chunk", [1, 7, 80, 161, 1000, 100000])
def test_chunk_size_independent(chunk: int) -> None:
    """Check chunks other than 160 samples give the same digits at the same positions."""
    x = generate_dtmf_sequence("147*2580369#ABCD", tone=0.045, gap=0.045)

    def run(c: int) -> list[tuple[str, int]]:
        det = DtmfDetector()
        out = []
        for i in range(0, len(x), c):
            out += [(t.digit, t.position) for t in det.process(x[i : i + c])]
        return out

    ref = run(160)
    assert "".join(d for d, _ in ref) == "147*2580369#ABCD"
    assert run(chunk) == ref
    # the first digit is confirmed within its tone
    assert 0 < ref[0][1] <= 360


def test_other_rate() -> None:
    """Check the detector and generator work at 16 kHz."""
    x = generate_dtmf_sequence("9#", tone=0.05, gap=0.05, rate=16000)
    det = DtmfDetector(rate=16000)
    assert "".join(t.digit for t in det.process(x)) == "9#"


def test_dtmf_relay_body() -> None:
    """Check application/dtmf-relay bodies: digits, event codes, case,
    spacing, optional Duration, unknown keys."""
    assert parse_dtmf_relay("Signal=5\r\nDuration=160\r\n") == DtmfInfo("5", 160)
    assert parse_dtmf_relay(b"signal = #\nduration= 250") == DtmfInfo("#", 250)
    assert parse_dtmf_relay("Signal=10\r\nDuration=100") == DtmfInfo("*", 100)
    assert parse_dtmf_relay("Signal=11") == DtmfInfo("#", None)
    assert parse_dtmf_relay("Signal=d\r\nVolume=10\r\n\r\n") == DtmfInfo("D", None)
    assert parse_dtmf_relay("Signal=15") == DtmfInfo("D", None)


@pytest.mark.parametrize(
    "body,message",
    [
        ("", "has no Signal"),
        ("Duration=160", "has no Signal"),
        ("Signal=16", "not a DTMF digit or event code 0-15: '16'"),
        ("Signal=E", "not a DTMF digit or event code 0-15: 'E'"),
        ("Signal=", "not a DTMF digit or event code 0-15: ''"),
        ("Signal=5\r\nDuration=abc", "Duration is not a number of ms in 1-60000: 'abc'"),
        ("Signal=5\r\nDuration=0", "Duration is not a number of ms"),
        ("Signal 5", "line 1 is not key=value: 'Signal 5'"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_dtmf_relay_bad_bodies(body: str | bytes, message: str) -> None:
    """Check bad dtmf-relay bodies raise DtmfBodyError naming the fault."""
    with pytest.raises(DtmfBodyError, match=message):
        parse_dtmf_relay(body)


def test_dtmf_body() -> None:
    """Check application/dtmf bodies and their errors."""
    assert parse_dtmf_body("5") == DtmfInfo("5")
    assert parse_dtmf_body(b" 11\r\n") == DtmfInfo("#")
    assert parse_dtmf_body("a") == DtmfInfo("A")
    with pytest.raises(DtmfBodyError, match="body is empty"):
        parse_dtmf_body("  ")
    with pytest.raises(DtmfBodyError, match="'55'"):
        parse_dtmf_body("55")


def test_info_body_dispatch() -> None:
    """Check dispatch on Content-Type (with parameters) and rejection of others."""
    assert parse_info_body("application/dtmf-relay", "Signal=1") == DtmfInfo("1")
    assert parse_info_body("Application/DTMF; charset=utf-8", "*") == DtmfInfo("*")
    with pytest.raises(DtmfBodyError, match="not a DTMF content type: 'text/plain'"):
        parse_info_body("text/plain", "5")


def test_normalize_digit() -> None:
    """Check keys and event codes 0-15 map to digits."""
    assert [normalize_digit(str(i)) for i in range(16)] == list(DIGITS)
    assert normalize_digit("b") == "B"
    with pytest.raises(DtmfBodyError):
        normalize_digit("x")
    with pytest.raises(DtmfBodyError):
        digit_frequencies("x")


def test_second_harmonic_rejected() -> None:
    """Check a tone pair whose row tone has a strong second harmonic (6 dB
    down, as in speech) is rejected, and a weak one (20 dB down) is not."""
    t = np.arange(800) / 8000
    for rel, expected in ((-6.0, ""), (-20.0, DIGITS)):
        got = ""
        for d in DIGITS:
            fr, _ = digit_frequencies(d)
            harmonic = 22656 * 10 ** ((-10.0 + rel) / 20) * np.sin(2 * np.pi * 2 * fr * t)
            x = (generate_dtmf(d, 0.1) + harmonic).astype(np.int16)
            got += detect(np.concatenate([PAD, x, PAD]))
        assert got == expected
