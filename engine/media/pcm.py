"""The engine's internal audio format, defined once: 8 kHz mono ``int16``
PCM in 20 ms frames (RFC 3551 section 4.5: G.711's clock rate and its
default 20 ms packetization), the unit every port, player, mixer and
recorder works in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["FRAME_SAMPLES", "FRAME_SECONDS", "Pcm", "SAMPLE_RATE"]

#: Audio samples: a 1D (one frame) or 2D (legs x samples) ``int16`` array.
Pcm = npt.NDArray[np.int16]

#: The internal sample rate (Hz).
SAMPLE_RATE = 8000
#: The duration of one frame, the media clock's tick (seconds).
FRAME_SECONDS = 0.020
#: Samples in one frame at :data:`SAMPLE_RATE`.
FRAME_SAMPLES = 160
