"""The sans-IO core of media streams to bots (engine.media.stream_codec):
frames both ways, µ-law, the playout queue with its marks and bounds,
clear, bad frames from an untrusted bot."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from engine.media.codecs.g711 import ulaw_decode, ulaw_encode
from engine.media.stream_codec import (
    BadFrame,
    BotCleared,
    BotStopped,
    OutgoingFrame,
    PlayoutQueue,
    QueueFull,
    SendQueue,
    StreamCodec,
    StreamConfig,
    StreamConfigError,
    downsample,
    upsample,
)


def tone(freq: float = 1000.0, n: int = 160, level: int = 8000) -> np.ndarray:
    t = np.arange(n) / 8000.0
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def codec(**kw: object) -> StreamCodec:
    return StreamCodec(StreamConfig(stream_sid="MZ1", call_sid="CA1", **kw))  # type: ignore[arg-type]


def bot_media(pcm: np.ndarray) -> str:
    return json.dumps({"event": "media", "streamSid": "MZ1",
                       "media": {"payload": base64.b64encode(ulaw_encode(pcm).tobytes()).decode()}})


def test_opening_is_connected_then_start_with_twilio_fields() -> None:
    """connected, then start with streamSid, callSid, tracks, mediaFormat and customParameters."""
    c = codec(custom={"lang": "en"})
    frames = [json.loads(f) for f in c.opening(10.0)]
    assert frames[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = frames[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1" and start["streamSid"] == "MZ1"
    assert start["start"]["callSid"] == "CA1" and start["start"]["streamSid"] == "MZ1"
    assert start["start"]["tracks"] == ["inbound", "outbound"]
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["customParameters"] == {"lang": "en"}


def test_media_frames_per_track_with_chunk_timestamp_and_mulaw_round_trip() -> None:
    """One media message per track a tick; chunk counts, timestamp is ms
    since the start, the payload decodes back to the tone (µ-law error small)."""
    c = codec()
    c.opening(10.0)
    pcm = tone()
    heard = tone(500.0)
    first = [json.loads(f) for f in c.media(pcm, heard, 10.0)]
    second = [json.loads(f) for f in c.media(pcm, None, 10.02)]
    assert [m["media"]["track"] for m in first] == ["inbound", "outbound"]
    assert [m["media"]["chunk"] for m in first + second] == ["1", "1", "2", "2"]
    assert [m["media"]["timestamp"] for m in second] == ["20", "20"]
    assert [m["sequenceNumber"] for m in first + second] == ["2", "3", "4", "5"]
    codes = np.frombuffer(base64.b64decode(first[0]["media"]["payload"]), dtype=np.uint8)
    assert len(codes) == 160
    back = ulaw_decode(codes).astype(np.int32)
    assert np.max(np.abs(back - pcm)) < 300  # µ-law's step at this level
    silence = ulaw_decode(np.frombuffer(base64.b64decode(second[1]["media"]["payload"]), dtype=np.uint8))
    assert np.max(np.abs(silence)) <= 8


def test_direction_picks_the_tracks() -> None:
    """inbound sends only what the caller said, outbound only what it heard."""
    assert [json.loads(f)["media"]["track"] for f in codec(direction="inbound").media(tone(), tone(), 0)] == ["inbound"]
    assert [json.loads(f)["media"]["track"] for f in codec(direction="outbound").media(tone(), tone(), 0)] == ["outbound"]


def test_dtmf_mark_and_stop_shapes() -> None:
    """dtmf carries the digit on inbound_track; stop the account and call."""
    c = codec()
    assert json.loads(c.dtmf("5")[0])["dtmf"] == {"track": "inbound_track", "digit": "5"}
    assert json.loads(c.mark_echo("m1"))["mark"] == {"name": "m1"}
    stop = json.loads(c.closing()[0])
    assert stop["event"] == "stop" and stop["stop"] == {"accountSid": "callbridge", "callSid": "CA1"}


def test_bot_audio_plays_a_frame_a_tick_and_the_mark_comes_after_it() -> None:
    """Audio queued before a mark plays first; the mark is echoed on the
    tick its last sample plays, not before."""
    c = codec()
    pcm = tone(n=400)  # 2.5 frames
    assert c.receive(bot_media(pcm)) == ([], [])
    c.receive(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "end"}}))
    frames, echoes = [], []
    for _ in range(4):
        frame, due = c.playout()
        frames.append(frame)
        echoes.append([json.loads(d)["mark"]["name"] for d in due])
    assert echoes == [[], [], ["end"], []]
    assert frames[3] is None
    played = np.concatenate([f for f in frames[:3] if f is not None])
    assert len(played) == 480 and np.all(played[400:] == 0)
    assert np.max(np.abs(played[:400].astype(np.int32) - pcm)) < 300


def test_clear_drops_queued_audio_and_echoes_pending_marks() -> None:
    """clear empties the queue at once (the next tick is silent) and sends
    back the marks that will now never play."""
    c = codec()
    c.receive(bot_media(tone(n=8000)))
    c.receive(json.dumps({"event": "mark", "mark": {"name": "a"}}))
    assert c.playout()[0] is not None
    events, replies = c.receive(json.dumps({"event": "clear", "streamSid": "MZ1"}))
    assert events == [BotCleared(8000 - 160, ["a"])]
    assert [json.loads(r)["mark"]["name"] for r in replies] == ["a"]
    assert c.playout() == (None, [])


def test_mark_on_an_empty_queue_is_due_at_once() -> None:
    """A mark with nothing before it is echoed on the next tick."""
    c = codec()
    c.receive(json.dumps({"event": "mark", "mark": {"name": "now"}}))
    _frame, due = c.playout()
    assert [json.loads(d)["mark"]["name"] for d in due] == ["now"]


@pytest.mark.parametrize("data, reason", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"event": "hello"}', "unknown event"),
    ('{"event": "media", "media": {"payload": "@@@"}}', "bad base64"),
    ('{"event": "media", "media": {}}', "media without payload"),
    ('{"event": "mark", "mark": {"name": 7}}', "mark without a valid name"),
    ('{"event": "mark", "mark": {"name": "a\\nb"}}', "mark without a valid name"),
    (b"\x00\x01", "binary frame"),
])
def test_bad_frames_are_counted_and_ignored(data: str | bytes, reason: str) -> None:
    """Each kind of bad frame gives a BadFrame naming it, a count, nothing queued."""
    c = codec()
    assert c.receive(data) == ([BadFrame(reason)], [])
    assert c.bad_frames[reason] == 1
    assert c.queue.queued == 0


def test_oversize_frame_is_ignored() -> None:
    """A frame over max_frame_bytes is refused before it is parsed."""
    c = codec(max_frame_bytes=1000)
    assert c.receive(bot_media(tone(n=2000))) == ([BadFrame("oversize")], [])
    assert c.queue.queued == 0


def test_the_bot_cannot_queue_more_than_the_cap() -> None:
    """A flood of audio stops at max_queue_seconds; the excess is counted."""
    c = codec(max_queue_seconds=1.0)
    for _ in range(3):
        events, _ = c.receive(bot_media(tone(n=4000)))
    assert c.queue.queued == 8000
    assert events == [QueueFull(4000)]
    assert c.queue.dropped_samples == 4000


def test_marks_are_capped() -> None:
    """More marks than max_marks are dropped and counted."""
    c = codec(max_marks=2)
    for i in range(3):
        c.receive(json.dumps({"event": "mark", "mark": {"name": f"m{i}"}}))
    assert c.queue.dropped_marks == 1
    assert len(c.playout()[1]) == 2


def test_linear16_metadata_then_binary_stereo_at_16k() -> None:
    """linear16: a JSON metadata frame first, then interleaved L16 at 16 kHz."""
    c = codec(format="linear16", rate=16000, custom={"k": "v"})
    meta = json.loads(c.opening(0)[0])
    assert meta["sampleRate"] == 16000 and meta["mixType"] == "stereo" and meta["customParameters"] == {"k": "v"}
    frame = c.media(tone(), np.zeros(160, np.int16), 0)[0]
    assert isinstance(frame, bytes) and len(frame) == 160 * 2 * 2 * 2
    samples = np.frombuffer(frame, dtype="<i2")
    assert np.any(samples[0::2] != 0) and not np.any(samples[1::2])
    assert c.closing() == []


def test_linear16_bot_audio_kill_and_marks() -> None:
    """Binary PCM from the bot is queued (16 kHz halved), killAudio clears and
    echoes marks as cleared, disconnect stops, an odd length is bad."""
    c = codec(format="linear16", rate=16000, direction="inbound")
    c.receive(np.zeros(640, "<i2").tobytes())
    assert c.queue.queued == 320
    c.receive(json.dumps({"type": "mark", "data": {"name": "x"}}))
    events, replies = c.receive(json.dumps({"type": "killAudio"}))
    assert events == [BotCleared(320, ["x"])]
    assert json.loads(replies[0]) == {"type": "mark", "data": {"name": "x", "event": "cleared"}}
    assert c.receive(b"\x00\x00\x00") == ([BadFrame("odd PCM length")], [])
    assert c.receive(json.dumps({"type": "disconnect"})) == ([BotStopped()], [])


def test_resampling_keeps_a_tone() -> None:
    """8k -> 16k -> 8k gives back the tone closely."""
    pcm = tone(400.0)
    assert len(upsample(pcm)) == 320
    back = downsample(upsample(pcm)).astype(np.int32)
    assert np.max(np.abs(back[1:-1] - pcm[1:-1])) < 200


@pytest.mark.parametrize("kw, text", [
    ({"format": "opus"}, "stream format must be one of twilio, linear16"),
    ({"direction": "sideways"}, "stream direction must be one of both, inbound, outbound"),
    ({"rate": 44100}, "stream rate must be 8000 or 16000"),
    ({"rate": 16000}, "rate=16000 needs format='linear16'"),
    ({"custom": {"a": 1}}, "stream custom parameters must map strings"),
])
def test_config_errors_name_the_problem(kw: dict[str, object], text: str) -> None:
    """A bad parameter is refused with a message naming it."""
    with pytest.raises(StreamConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        codec(**kw)


def test_send_queue_drops_oldest_media_never_control() -> None:
    """A full send queue drops its oldest media frame, keeps control frames, counts."""
    q = SendQueue(3)
    q.put(OutgoingFrame("start", 0, False))
    q.put(OutgoingFrame("m1", 0, True))
    q.put(OutgoingFrame("m2", 0, True))
    q.put(OutgoingFrame("m3", 0, True))
    assert [q.get().data for _ in range(3)] == ["start", "m2", "m3"]  # type: ignore[union-attr]
    assert q.dropped == 1
    q.put(OutgoingFrame("m4", 0, True))
    q.put(OutgoingFrame("mark", 0, False))
    assert q.drop_media() == 1 and q.get().data == "mark"  # type: ignore[union-attr]


def test_playout_queue_clear_then_new_marks_count_from_there() -> None:
    """After a clear, a new mark is due once the audio queued after the clear has played."""
    q = PlayoutQueue(8000, 8)
    q.put(tone(n=320))
    q.clear()
    q.put(tone(n=160))
    q.mark("after")
    assert q.next_frame()[1] == ["after"]
