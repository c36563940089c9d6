"""DTMF: in-band detection (Goertzel, ITU-T Q.24), tone generation, SIP INFO bodies.

In-band detection, theory of operation
--------------------------------------
Every *hop* (5 ms) the detector looks back over the recent samples and
measures the power at each of the eight DTMF frequencies (and at their
second harmonics) with a single-bin DFT, which is what a Goertzel filter
computes, done as one NumPy matrix product over all hops of the chunk.
Each frequency gets its own window of :data:`WINDOW_CYCLES` periods, so a
given *relative* frequency error moves every tone by the same fraction of a
bin: ±1.5 % costs about 1 dB, ±3.5 % about 7 dB, which the tests below turn
into accept and reject (ITU-T Q.24 frequency tolerance).

A hop is a *hit* for digit (row, column) when all of these hold:

* both tones are at least :attr:`DtmfDetector.min_level` dBm0;
* twist: the low (row) tone is at most 8 dB above the high tone (forward) and
  at most 4 dB below it (reverse);
* each chosen tone stands clearly above the other tones of its group;
* the two tones carry most of the signal's power (:data:`MIN_TONE_RATIO`),
  which rejects noise, speech and the sidebands of off-frequency tones;
* each tone's second harmonic is weak (speech and other harmonic signals).

A digit is reported once when :data:`MIN_HITS` consecutive hops agree, which
accepts tones of 40 ms and rejects those of about 23 ms and shorter. It is
not reported again until :data:`MIN_GAP_HOPS` hops without it have passed (a
pause between repeats; short drop-outs inside a tone do not count as a gap).
Hops sit at fixed positions of the stream, so the result does not depend on
how the audio is chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.media.codecs.telephone_event import DIGIT_TO_EVENT, EVENT_TO_DIGIT

__all__ = [
    "COL_FREQS",
    "DIGITS",
    "ROW_FREQS",
    "DtmfBodyError",
    "DtmfDetector",
    "DtmfInfo",
    "ToneDetected",
    "digit_frequencies",
    "generate_dtmf",
    "generate_dtmf_sequence",
    "normalize_digit",
    "parse_dtmf_body",
    "parse_dtmf_relay",
    "parse_info_body",
]

#: Low-group (row) frequencies in Hz.
ROW_FREQS = (697.0, 770.0, 852.0, 941.0)
#: High-group (column) frequencies in Hz.
COL_FREQS = (1209.0, 1336.0, 1477.0, 1633.0)
#: The keypad, row by row.
KEYPAD = ("123A", "456B", "789C", "*0#D")
#: Every DTMF digit.
DIGITS = "0123456789*#ABCD"

#: Peak amplitude of a 0 dBm0 sine in 16-bit PCM (G.711: +3.17 dBm0 is full scale).
DBM0_PEAK = 32124 / 10 ** (3.17 / 20)
#: Window length of each frequency's filter, in periods of that frequency.
WINDOW_CYCLES = 18.75
#: Hop between decisions in seconds.
HOP = 0.005
#: Consecutive hits needed to report a digit.
MIN_HITS = 5
#: Hops without the digit needed before it can be reported again.
MIN_GAP_HOPS = 4
#: Share of signal power the two tones must carry.
MIN_TONE_RATIO = 0.65
#: Second harmonic must be this many dB below its fundamental.
HARMONIC_REJECT_DB = 10.0
#: The chosen tone must be this many dB above the others of its group.
GROUP_DOMINANCE_DB = 8.0


def digit_frequencies(digit: str) -> tuple[float, float]:
    """(row, column) frequencies of ``digit``.

    :raises DtmfBodyError: not a DTMF digit.
    """
    d = normalize_digit(digit)
    for r, row in enumerate(KEYPAD):
        c = row.find(d)
        if c >= 0:
            return ROW_FREQS[r], COL_FREQS[c]
    raise AssertionError(d)  # pragma: no cover - normalize_digit checked it


def generate_dtmf(
    digit: str,
    duration: float,
    *,
    rate: int = 8000,
    level: float = -10.0,
    twist: float = 0.0,
    row_offset: float = 0.0,
    col_offset: float = 0.0,
) -> npt.NDArray[np.int16]:
    """A DTMF tone pair.

    :param duration: seconds.
    :param level: level of the row (low) tone in dBm0.
    :param twist: dB by which the column (high) tone is *below* the row tone
        (negative: above).
    :param row_offset: relative frequency error of the row tone (0.04 = +4 %).
    :param col_offset: relative frequency error of the column tone.
    """
    fr, fc = digit_frequencies(digit)
    t = np.arange(round(duration * rate)) / rate
    a_row = DBM0_PEAK * 10 ** (level / 20)
    a_col = a_row * 10 ** (-twist / 20)
    x = a_row * np.sin(2 * np.pi * fr * (1 + row_offset) * t) + a_col * np.sin(
        2 * np.pi * fc * (1 + col_offset) * t
    )
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def generate_dtmf_sequence(
    digits: str, *, tone: float = 0.1, gap: float = 0.1, rate: int = 8000, level: float = -10.0
) -> npt.NDArray[np.int16]:
    """Several digits, each ``tone`` seconds followed by ``gap`` seconds of silence."""
    silence = np.zeros(round(gap * rate), dtype=np.int16)
    parts: list[npt.NDArray[np.int16]] = []
    for d in digits:
        parts += [generate_dtmf(d, tone, rate=rate, level=level), silence]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


@dataclass(frozen=True, slots=True)
class ToneDetected:
    """An in-band DTMF digit.

    :param digit: ``0-9 * # A-D``.
    :param position: stream position in samples (since the detector started)
        at which the digit was confirmed.
    """

    digit: str
    position: int


class DtmfDetector:
    """Stateful in-band DTMF detector: feed PCM in chunks of any size.

    :param rate: sample rate in Hz.
    :param min_level: minimum level of each tone in dBm0.
    :param forward_twist: dB the row tone may exceed the column tone by.
    :param reverse_twist: dB the column tone may exceed the row tone by.
    """

    def __init__(
        self,
        rate: int = 8000,
        *,
        min_level: float = -33.0,
        forward_twist: float = 8.0,
        reverse_twist: float = 4.0,
    ) -> None:
        self.rate = rate
        self.min_level = min_level
        self.hop = max(1, round(HOP * rate))
        freqs = np.array(ROW_FREQS + COL_FREQS)
        lengths = np.rint(WINDOW_CYCLES * rate / freqs).astype(np.int64)
        self._lengths = lengths
        self._window = int(lengths.max())
        # Rows 0-7 fundamentals, 8-15 second harmonics (same windows),
        # each right-aligned in a window of self._window samples.
        n = np.arange(self._window)
        basis = np.zeros((16, self._window), dtype=np.complex128)
        for i, (f, length) in enumerate(zip(np.concatenate([freqs, 2 * freqs]), np.tile(lengths, 2))):
            k = n[self._window - length :]
            basis[i, self._window - length :] = np.exp(-2j * np.pi * f * k / rate) * (2.0 / length)
        self._basis_t = basis.T.copy()
        # amplitude**2 / 2 = mean power of a sine; threshold on that
        amp = DBM0_PEAK * 10 ** (min_level / 20)
        self._min_power = amp * amp / 2
        self._fwd = 10 ** (forward_twist / 10)
        self._rev = 10 ** (reverse_twist / 10)
        self._dom = 10 ** (GROUP_DOMINANCE_DB / 10)
        self._harm = 10 ** (-HARMONIC_REJECT_DB / 10)
        self._hist = np.zeros(self._window, dtype=np.float64)  # last window of samples
        self._pending = np.zeros(0, dtype=np.float64)  # samples not yet a whole hop
        self._position = 0  # samples consumed into hops
        self._candidate: str | None = None
        self._count = 0
        self._reported: str | None = None
        self._misses = 0

    def process(self, pcm: npt.NDArray[np.int16]) -> list[ToneDetected]:
        """Feed samples; return the digits confirmed in them."""
        data = np.concatenate([self._pending, np.asarray(pcm, dtype=np.float64)])
        hops = data.size // self.hop
        self._pending = data[hops * self.hop :]
        if hops == 0:
            return []
        used = data[: hops * self.hop]
        buf = np.concatenate([self._hist, used])
        self._hist = buf[-self._window :]
        ends = np.arange(1, hops + 1) * self.hop + self._window  # exclusive window ends in buf
        windows = np.lib.stride_tricks.sliding_window_view(buf, self._window)[ends - self._window]
        hits = self._classify(windows)
        out: list[ToneDetected] = []
        base = self._position
        self._position += hops * self.hop
        for i, hit in enumerate(hits):
            digit = self._step(hit)
            if digit is not None:
                out.append(ToneDetected(digit, base + (i + 1) * self.hop))
        return out

    def _classify(self, windows: npt.NDArray[np.float64]) -> list[str | None]:
        """One decision per window (rows of ``windows``), vectorised over all."""
        power = np.abs(windows @ self._basis_t) ** 2 / 2  # (hops, 16): sine mean power
        fund, harm = power[:, :8], power[:, 8:]
        rows, cols = fund[:, :4], fund[:, 4:]
        r = rows.argmax(axis=1)
        c = cols.argmax(axis=1)
        idx = np.arange(len(windows))
        pr, pc = rows[idx, r], cols[idx, c]
        # mean signal power over the chosen row tone's window (the longer one)
        sq = windows**2
        csum = np.cumsum(sq[:, ::-1], axis=1)  # csum[:, k-1] = energy of last k samples
        lr = self._lengths[r]
        total = csum[idx, lr - 1] / lr
        rows_other = np.sort(rows, axis=1)[:, -2]
        cols_other = np.sort(cols, axis=1)[:, -2]
        ok = (
            (pr >= self._min_power)
            & (pc >= self._min_power)
            & (pr <= pc * self._fwd)
            & (pc <= pr * self._rev)
            & (pr >= rows_other * self._dom)
            & (pc >= cols_other * self._dom)
            & (pr + pc >= MIN_TONE_RATIO * total)
            & (harm[idx, r] <= pr * self._harm)
            & (harm[idx, c + 4] <= pc * self._harm)
        )
        return [KEYPAD[ri][ci] if k else None for ri, ci, k in zip(r.tolist(), c.tolist(), ok.tolist())]

    def _step(self, hit: str | None) -> str | None:
        if hit is None:
            self._candidate = None
            self._count = 0
            self._misses += 1
            if self._misses >= MIN_GAP_HOPS:
                self._reported = None
            return None
        self._misses = 0
        if hit == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = hit, 1
        if self._count >= MIN_HITS and self._reported != hit:
            self._reported = hit
            return hit
        return None


# --- SIP INFO bodies -------------------------------------------------------


class DtmfBodyError(ValueError):
    """A SIP INFO DTMF body cannot be understood."""


@dataclass(frozen=True, slots=True)
class DtmfInfo:
    """A digit carried by SIP INFO.

    :param digit: ``0-9 * # A-D``.
    :param duration: milliseconds, when the body gave one.
    """

    digit: str
    duration: int | None = None


def normalize_digit(text: str) -> str:
    """``text`` as a DTMF digit: a key (``0-9 * # A-D``, any case) or an RFC 4733
    event code ``0``-``15``.

    :raises DtmfBodyError: anything else.
    """
    t = text.strip().upper()
    if t in DIGIT_TO_EVENT:
        return t
    if t.isdigit() and int(t) in EVENT_TO_DIGIT:
        return EVENT_TO_DIGIT[int(t)]
    raise DtmfBodyError(f"not a DTMF digit or event code 0-15: {text.strip()!r}")


def _text(body: str | bytes) -> str:
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise DtmfBodyError("DTMF body is not UTF-8 text") from None
    return body


def parse_dtmf_relay(body: str | bytes) -> DtmfInfo:
    """Parse an ``application/dtmf-relay`` body (``Signal=5\\r\\nDuration=160``).

    Keys are case-insensitive, unknown keys are ignored, ``Duration`` (ms) is optional.

    :raises DtmfBodyError: no Signal, a bad Signal or a bad Duration.
    """
    fields: dict[str, str] = {}
    for lineno, line in enumerate(_text(body).splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DtmfBodyError(f"dtmf-relay line {lineno} is not key=value: {line.strip()!r}")
        fields[key.strip().lower()] = value.strip()
    if "signal" not in fields:
        raise DtmfBodyError("dtmf-relay body has no Signal")
    digit = normalize_digit(fields["signal"])
    duration: int | None = None
    if "duration" in fields:
        raw = fields["duration"]
        if not raw.isdigit() or not 0 < int(raw) <= 60000:
            raise DtmfBodyError(f"dtmf-relay Duration is not a number of ms in 1-60000: {raw!r}")
        duration = int(raw)
    return DtmfInfo(digit, duration)


def parse_dtmf_body(body: str | bytes) -> DtmfInfo:
    """Parse an ``application/dtmf`` body: one digit or event code (``5``).

    :raises DtmfBodyError: empty or not a digit.
    """
    text = _text(body).strip()
    if not text:
        raise DtmfBodyError("application/dtmf body is empty")
    return DtmfInfo(normalize_digit(text))


def parse_info_body(content_type: str, body: str | bytes) -> DtmfInfo:
    """Parse a SIP INFO DTMF body by its Content-Type (parameters ignored).

    :raises DtmfBodyError: unsupported content type or bad body.
    """
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/dtmf-relay":
        return parse_dtmf_relay(body)
    if mime == "application/dtmf":
        return parse_dtmf_body(body)
    raise DtmfBodyError(f"not a DTMF content type: {content_type!r}")


