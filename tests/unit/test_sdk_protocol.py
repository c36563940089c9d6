"""The web SDK protocol's frame checks (:mod:`engine.web.protocol`), with no
socket: each bad input raises :class:`ProtocolError` with its code and the
frame's ``ref``/``call`` to echo; good frames come back normalised. Also the
media seam's passive parts: :class:`WebRtcAudioPort` buffering and
:class:`PortPlayer` pulling a player into it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from engine.media.players import ToneSource
from engine.web.protocol import (
    MAX_FRAME_BYTES, ErrorCode, ProtocolError, error_frame, parse_frame,
)
from engine.calls.webrtc import FRAME_SAMPLES, MAX_BUFFERED, WebRtcAudioPort, PortPlayer, parse_candidate


def code_of(frame: Any) -> ErrorCode:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    return info.value.code


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("", ErrorCode.BAD_JSON),
        ("{", ErrorCode.BAD_JSON),
        ("null", ErrorCode.BAD_JSON),
        ('"hello"', ErrorCode.BAD_JSON),
        ({"version": 1}, ErrorCode.BAD_FRAME),
        ({"type": 7}, ErrorCode.BAD_FRAME),
        ({"type": "HELLO", "version": 1}, ErrorCode.UNKNOWN_TYPE),
        ({"type": "hello"}, ErrorCode.BAD_FRAME),
        ({"type": "hello", "version": True}, ErrorCode.BAD_FRAME),
        ({"type": "hello", "version": 1, "ref": ["x"]}, ErrorCode.BAD_FRAME),
        ({"type": "login", "username": "a", "password": "b", "token": "c"}, ErrorCode.BAD_FRAME),
        ({"type": "login", "password": "b"}, ErrorCode.BAD_FRAME),
        ({"type": "login", "guest": "Ann", "token": "c"}, ErrorCode.BAD_FRAME),
        ({"type": "login", "guest": "  "}, ErrorCode.BAD_FRAME),
        ({"type": "login", "guest": "A" * 65}, ErrorCode.BAD_FRAME),
        ({"type": "login", "guest": "Ann\nB"}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "", "sdp": "v=0"}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "a@b", "sdp": "v=0"}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "1", "sdp": "v=0", "video": "yes"}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "x" * 65, "number": "1", "sdp": "v=0"}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "1", "sdp": "v=0", "headers": []}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "1", "sdp": "v=0", "headers": {"X-A": 1}}, ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "1", "sdp": "v=0", "headers": {"X-A": "a\r\nB: c"}},
         ErrorCode.BAD_FRAME),
        ({"type": "call", "call": "c", "number": "1", "sdp": "v=0",
          "headers": {f"X-H{i}": "v" for i in range(33)}}, ErrorCode.BAD_FRAME),
        ({"type": "reject", "call": "c", "code": 200}, ErrorCode.BAD_FRAME),
        ({"type": "ice", "call": "c"}, ErrorCode.BAD_FRAME),
        ({"type": "ice", "call": "c", "candidate": {"candidate": 5}}, ErrorCode.BAD_FRAME),
        ({"type": "ice", "call": "c", "candidate": {"candidate": "", "sdpMLineIndex": -1}}, ErrorCode.BAD_FRAME),
        ({"type": "ice", "call": "c", "candidate": {"candidate": "", "sdpMid": 0}}, ErrorCode.BAD_FRAME),
        ({"type": "dtmf", "call": "c", "tones": ""}, ErrorCode.BAD_FRAME),
        ({"type": "message", "call": "c"}, ErrorCode.BAD_FRAME),
        ("x" * (MAX_FRAME_BYTES + 1), ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_bad_frames(frame: Any, code: ErrorCode) -> None:
    """Check each malformed frame is refused with the code that says why."""
    assert code_of(frame) == code


@pytest.mark.parametrize("text", ["[" * 20000, '{"a":' * 5000 + "1" + "}" * 5000], ids=["array", "object"])
def test_deeply_nested_json_is_bad_json(text: str) -> None:
    """Check a frame under 64 KiB nested deeper than the JSON decoder's
    recursion can go is refused as ``bad_json``, not an internal error (the
    fuzz run's RecursionError)."""
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    assert info.value.code == ErrorCode.BAD_JSON
    assert info.value.message == "not JSON: nested too deeply"


def test_errors_echo_ref_and_call() -> None:
    """Check a refused frame's error carries its ``ref`` and ``call``."""
    with pytest.raises(ProtocolError) as info:
        parse_frame(json.dumps({"type": "dtmf", "call": "c9", "tones": "?", "ref": 4}))
    exc = info.value
    assert error_frame(exc.code, exc.message, ref=exc.ref, call=exc.call) == {
        "type": "error", "code": "bad_frame", "message": "dtmf: tones are 1-32 of 0-9 * # A-D",
        "ref": 4, "call": "c9",
    }


def test_good_frames_come_back_normalised() -> None:
    """Check good frames pass: tones upper-cased, headers kept, a null
    candidate allowed (end of candidates), unknown extra fields ignored."""
    assert parse_frame('{"type":"dtmf","call":"a","tones":"1a#"}')["tones"] == "1A#"
    call = parse_frame(json.dumps({
        "type": "call", "call": "a_1-B", "number": "+15550100", "sdp": "v=0",
        "headers": {"X-Conference-Id": "42", "x-directcall": "bob"}, "extra": 1,
    }))
    assert call["headers"] == {"X-Conference-Id": "42", "x-directcall": "bob"}
    assert parse_frame('{"type":"ice","call":"a","candidate":null}')["candidate"] is None
    assert parse_frame('{"type":"login","token":"abc"}')["token"] == "abc"
    assert parse_frame('{"type":"login","guest":"  Ada L. "}')["guest"] == "Ada L."
    assert parse_frame('{"type":"ping"}') == {"type": "ping"}


def test_candidates_parse_or_fail_clearly() -> None:
    """Check a browser candidate becomes aiortc's, the empty one and null
    mean the end, and a malformed one raises ValueError (not aiortc's assert)."""
    c = parse_candidate({"candidate": "candidate:842163049 1 udp 1677729535 127.0.0.1 5000 typ host",
                         "sdpMid": "0", "sdpMLineIndex": 0})
    assert c is not None and c.ip == "127.0.0.1" and c.port == 5000 and c.sdpMid == "0"
    assert parse_candidate(None) is None
    assert parse_candidate({"candidate": ""}) is None
    with pytest.raises(ValueError):
        parse_candidate({"candidate": "candidate:1 1 udp"})


def test_audio_port_buffers_and_bounds() -> None:
    """Check the port gives 160-sample frames, silence when empty, keeps at
    most MAX_BUFFERED frames each way (dropping the oldest) and refuses
    frames of the wrong size."""
    port = WebRtcAudioPort()
    assert not port.read_frame().any() and port.available == 0
    for i in range(MAX_BUFFERED + 5):
        port._received(np.full(FRAME_SAMPLES, i, dtype=np.int16).tobytes())
    assert port.available == MAX_BUFFERED and port.frames_in == MAX_BUFFERED + 5
    assert port.read_frame()[0] == 5  # the five oldest were dropped
    for i in range(MAX_BUFFERED + 3):
        port.write_frame(np.full(FRAME_SAMPLES, i, dtype=np.int16))
    assert port._out.qsize() == MAX_BUFFERED
    with pytest.raises(ValueError):
        port.write_frame(np.zeros(80, dtype=np.int16))


async def test_port_player_waits_for_sending_then_plays_to_the_end() -> None:
    """Check a player pulls nothing until the port is sending, then one
    frame a tick, and reports ``done(True)`` at its end, once."""
    port = WebRtcAudioPort()
    done: list[bool] = []
    player = PortPlayer(port, ToneSource(440, 0.05), done.append)
    assert player.tick(0.0) and port._out.qsize() == 0
    await_sending = port._next_out()
    port.write_frame(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    assert (await await_sending) is not None and port.sending
    ticks = 0
    while player.tick(0.0):
        ticks += 1
    assert ticks == 3 and done == [True]  # 400 samples: 3 frames, the last padded
    player.stop()
    assert done == [True]
