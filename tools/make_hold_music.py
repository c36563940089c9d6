"""Write scenarios/media/hold.wav: the gatekeeper's hold music.

A soft, loopable arpeggio (C major 7, two octaves) of sine notes with gentle
attack and decay, 8 kHz mono 16-bit, 6.4 s, peaks at -18 dBFS. Generated
rather than downloaded so the repository carries no third-party audio and
its licence is the project's own. Run: ``python tools/make_hold_music.py``.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

RATE = 8000
NOTE = 0.4  # seconds per note
NOTES = [261.63, 329.63, 392.00, 493.88, 523.25, 493.88, 392.00, 329.63] * 2
OUT = Path(__file__).resolve().parents[1] / "scenarios" / "media" / "hold.wav"


def main() -> None:
    n = int(NOTE * RATE)
    t = np.arange(n * 2) / RATE  # each note rings into the next one
    env = np.minimum(t / 0.02, 1.0) * np.exp(-t * 3.0)
    out = np.zeros(n * len(NOTES) + n, dtype=np.float64)
    for i, f in enumerate(NOTES):
        note = env * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2 * f * t))
        out[i * n: i * n + 2 * n] += note
    out[: n] += out[-n:]  # wrap the last note's tail so the loop is seamless
    out = out[: n * len(NOTES)]
    out *= (10 ** (-18 / 20)) / np.max(np.abs(out))
    pcm = np.round(out * 32767).astype("<i2")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(OUT), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    print(f"wrote {OUT} ({len(pcm) / RATE:.1f} s)")


if __name__ == "__main__":
    main()
