"""Round-trip callbridge's Twilio frames through Pipecat's TwilioFrameSerializer.

Not part of the pytest suite (pipecat-ai pulls ~500 MB: onnxruntime, numba,
openai...): run it with a Python that has pipecat-ai and numpy, from the
repository root::

    /path/to/venv/bin/python tests/interop/pipecat_twilio.py

It checks that Pipecat reads our ``media`` as audio at 8 kHz (the caller's
tone intact) and that what Pipecat sends (audio, clear) is accepted by
:class:`engine.media.stream_codec.StreamCodec`. Exits non-zero on a mismatch.
"""

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from engine.media.stream_codec import BotCleared, StreamCodec, StreamConfig
from pipecat.frames.frames import InputAudioRawFrame, InterruptionFrame, OutputAudioRawFrame, StartFrame
from pipecat.serializers.twilio import TwilioFrameSerializer


async def main() -> int:
    codec = StreamCodec(StreamConfig(stream_sid="MZ1", call_sid="CA1", direction="inbound"))
    start = json.loads(codec.opening(0.0)[1])
    ser = TwilioFrameSerializer(stream_sid=start["start"]["streamSid"], call_sid=start["start"]["callSid"],
                                params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
    await ser.setup(StartFrame(audio_in_sample_rate=8000, audio_out_sample_rate=8000))
    tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(160) / 8000)).astype(np.int16)
    frame = await ser.deserialize(codec.media(tone, None, 0.02)[0])
    assert isinstance(frame, InputAudioRawFrame) and frame.sample_rate == 8000, frame
    got = np.frombuffer(frame.audio, dtype=np.int16).astype(np.int32)
    assert len(got) == 160 and np.max(np.abs(got - tone)) < 300, "tone altered"
    out = await ser.serialize(OutputAudioRawFrame(audio=tone.tobytes(), sample_rate=8000, num_channels=1))
    events, _ = codec.receive(out)
    assert events == [] and codec.queue.queued == 160, (events, out)
    clear = await ser.serialize(InterruptionFrame())
    events, _ = codec.receive(clear)
    assert events == [BotCleared(160, [])], (events, clear)
    print("pipecat round trip ok:", json.loads(out)["event"], json.loads(clear)["event"])
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
