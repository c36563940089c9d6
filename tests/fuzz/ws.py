"""A seeded, deterministic generator of hostile SDK WebSocket frames
(docs/sdk-protocol.md): valid frames with wrong types, missing fields and
huge values, invalid JSON, deeply nested JSON, binary frames, oversized
frames (past the 64 KiB limit, and past the socket's own maximum, which
closes the socket), frames out of order (call before login, answer for an
unknown call), random SDP in ``call``.

:meth:`WsFuzzer.opening` gives the frames that start a socket (usually
hello and a guest login, so later frames reach the call handlers);
:meth:`WsFuzzer.frame` the next frame, a ``str`` (text) or ``bytes``
(binary)."""

from __future__ import annotations

import json
import random
from typing import Any

__all__ = ["WsFuzzer", "TYPES"]

TYPES = ["hello", "ping", "login", "call", "ice", "answer", "reject", "hangup", "message", "dtmf", "moderate"]
NUMBERS = ["100", "answer", "echo", "nobody", "conf_fuzz", "joinconf", "", "x" * 300]


class WsFuzzer:
    """One hostile frame per :meth:`frame`.

    :param seed: the random seed; the sequence depends on it alone.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.calls: list[str] = []

    def opening(self) -> list[str]:
        """The frames a new socket starts with."""
        rng = self.rng
        self.calls = []
        roll = rng.random()
        if roll < 0.1:
            return []
        frames = [json.dumps({"type": "hello", "version": 1, "client": "fuzz/1"})]
        if roll < 0.85:
            frames.append(json.dumps({"type": "login", "guest": f"fuzz{rng.randrange(1000)}"}))
        return frames

    def frame(self) -> str | bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            return json.dumps(self.valid())
        if roll < 0.75:
            return json.dumps(self.broken(self.valid()))
        if roll < 0.85:
            return self.bad_json()
        if roll < 0.9:
            return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 16, 1000])))
        if roll < 0.93:
            return self.oversized()
        return json.dumps(self.any_value(depth=0) if rng.random() < 0.5 else {"type": rng.choice(TYPES)})

    # -- frames --------------------------------------------------------------------

    def call_id(self) -> str:
        rng = self.rng
        if self.calls and rng.random() < 0.7:
            return rng.choice(self.calls)
        cid = f"c{rng.getrandbits(20):x}"
        if len(self.calls) < 16:
            self.calls.append(cid)
        return cid

    def valid(self) -> dict[str, Any]:
        """A well-formed frame of a random type (its content may not make
        sense for the socket's state)."""
        rng = self.rng
        kind = rng.choice(TYPES + ["call", "call", "ice", "hangup", "message", "dtmf"])
        frame: dict[str, Any] = {"type": kind}
        if rng.random() < 0.3:
            frame["ref"] = rng.choice([rng.randrange(10**6), f"r{rng.randrange(100)}"])
        if kind == "hello":
            frame.update(version=rng.choice([1, 1, 2, 0]), client="fuzz")
        elif kind == "ping":
            frame["ts"] = rng.random() * 1e6
        elif kind == "login":
            frame.update(rng.choice([
                {"guest": "g"}, {"username": "alice", "password": "wrong"}, {"token": "%032x" % rng.getrandbits(128)},
                {"token": "eyJhbGciOiJIUzI1NiJ9.eyJyb29tIjoieCJ9.c2ln"}, {"token": "a.b.c"},
            ]))
        elif kind == "call":
            frame.update(call=self.call_id(), number=rng.choice(NUMBERS), sdp=self.sdp(),
                         audio=rng.random() < 0.9, video=rng.random() < 0.2)
            if rng.random() < 0.3:
                frame["headers"] = {f"X-F{i}": "v" * rng.choice([1, 100, 1024]) for i in range(rng.choice([1, 5, 32]))}
            if rng.random() < 0.1:
                frame["headers"] = {"X-DirectCall": "true", "X-Callbridge-Role": "moderator"}
        elif kind == "ice":
            frame.update(call=self.call_id(), candidate=rng.choice([
                None, {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 %d typ host" % rng.randrange(70000),
                       "sdpMid": "0", "sdpMLineIndex": 0},
                {"candidate": "garbage", "sdpMid": None, "sdpMLineIndex": rng.choice([0, -1, 99])}, {}]))
        elif kind == "answer":
            frame.update(call=self.call_id(), sdp=self.sdp())
        elif kind == "reject":
            frame.update(call=self.call_id(), code=rng.choice([486, 603, 400, 699]))
        elif kind == "hangup":
            frame["call"] = self.call_id()
        elif kind == "message":
            frame.update(call=self.call_id(), text=rng.choice(["hi", "x" * 1000, "\u4e2d\u6587"]))
        elif kind == "dtmf":
            frame.update(call=self.call_id(), tones=rng.choice(["1", "123#*", "ABCD", "0" * 64]))
        elif kind == "moderate":
            frame.update(action=rng.choice(["mute", "unmute", "remove", "lock", "unlock", "end", "explode"]),
                         participant=rng.choice(["p1", "", "x" * 100]))
        return frame

    def sdp(self) -> str:
        """A WebRTC-looking offer, often broken."""
        rng = self.rng
        lines = ["v=0", f"o=- {rng.getrandbits(32)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
                 "a=group:BUNDLE 0", f"m=audio {rng.choice([9, 0, 70000, -1])} UDP/TLS/RTP/SAVPF 111 0",
                 "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
                 f"a=ice-ufrag:{rng.getrandbits(16):x}", f"a=ice-pwd:{rng.getrandbits(96):x}",
                 "a=fingerprint:sha-256 " + ":".join(f"{rng.getrandbits(8):02X}" for _ in range(32)),
                 "a=setup:actpass", "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000"]
        roll = rng.random()
        if roll < 0.3:
            del lines[rng.randrange(len(lines))]
        elif roll < 0.45:
            lines.insert(rng.randrange(len(lines)), rng.choice(["m=video 9 UDP/TLS/RTP/SAVPF 96", "garbage",
                                                                "a=candidate:" + "x" * 500, "m=audio"] ))
        elif roll < 0.55:
            lines += ["m=audio 9 RTP/AVP 0"] * rng.choice([10, 200])
        elif roll < 0.6:
            return rng.choice(["", "v=0", "not sdp", "\x00" * 10])
        return "\r\n".join(lines) + "\r\n"

    def any_value(self, depth: int) -> Any:
        rng = self.rng
        choices: list[Any] = [None, True, False, 0, -1, 2**64, -2**63, 1e308, -1e-308, 1.5, "", "x" * 70000,
                              "\u0000", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
        if depth < 3:
            choices += [[self.any_value(depth + 1) for _ in range(rng.randrange(4))],
                        {rng.choice(["type", "call", "sdp", "x"]): self.any_value(depth + 1)}]
        value = rng.choice(choices)
        if isinstance(value, str) and len(value) > 1000 and rng.random() < 0.9:
            value = value[: rng.choice([100, 1000, 10000])]
        return value

    def broken(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Wrong types, missing fields, huge values."""
        rng = self.rng
        keys = list(frame)
        roll = rng.random()
        if roll < 0.3 and len(keys) > 1:
            del frame[rng.choice(keys[1:])]
        elif roll < 0.75:
            frame[rng.choice(keys + ["call", "sdp", "headers", "ref", "number", "candidate", "tones", "text",
                                     "version", "code", "type"])] = self.any_value(0)
        else:
            frame[rng.choice(["x", "call", "extra"])] = "y" * rng.choice([1000, 30000, 60000])
        return frame

    def bad_json(self) -> str:
        rng = self.rng
        return rng.choice([
            "", "{", "}", "null", "[]", "1", '"type"', '{"type":', "{'type': 'hello'}", '{"type":"hello",}',
            "[" * rng.choice([100, 1000, 20000]) + "]" * rng.choice([0, 100]),
            '{"a":' * 5000 + "1" + "}" * 5000, '{"type":"ping","ts":' + "9" * 5000 + "}",
            '{"type":"ping","ts":1e999}', '{"type":"ping","ts":NaN}', '{"type":"ping","ts":Infinity}',
            '{"type":"hello","version":1,"version":2}', '{"type":"\\ud800"}', "\ufeff{}",
        ])

    def oversized(self) -> str | bytes:
        rng = self.rng
        size = rng.choice([65 * 1024, 200 * 1024, 300 * 1024])
        if rng.random() < 0.2:
            return b"\x00" * size
        return json.dumps({"type": "message", "call": "c1", "text": "z" * size})
