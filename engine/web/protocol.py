"""The web SDK's signalling protocol, sans-IO: frames in, checked; frames out.

Every frame is one JSON object in one WebSocket text message, with a
``type``. :func:`parse_frame` checks a client frame against :data:`SCHEMA`
(required and optional fields and their JSON types, plus the few rules a
table cannot say) and returns it as a dict, or raises :class:`ProtocolError`
with a stable :class:`ErrorCode`; the socket handler answers that with an
``error`` frame and goes on. Nothing here touches sockets, calls or the
store. The protocol is written down in ``docs/sdk-protocol.md``; that file
and this table change together.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_BYTES",
    "MODERATE_ACTIONS",
    "ErrorCode",
    "ProtocolError",
    "SCHEMA",
    "parse_frame",
    "error_frame",
    "check_headers",
]

#: The version this engine speaks (``hello``'s ``version``).
PROTOCOL_VERSION = 1

#: Largest frame accepted (an SDP offer with video is about 6 KiB).
MAX_FRAME_BYTES = 64 * 1024

#: Custom headers: ``X-`` names of token characters, at most this many.
MAX_HEADERS = 32
MAX_HEADER_VALUE = 1024
_HEADER_NAME = re.compile(r"[Xx]-[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
#: A guest's display name (``login`` with ``guest``), at most this long.
MAX_GUEST_NAME = 64
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TONES = re.compile(r"[0-9*#A-Da-d]{1,32}")


class ErrorCode(str, enum.Enum):
    """The ``code`` of an ``error`` frame (stable: clients switch on it)."""

    BAD_JSON = "bad_json"  #: not JSON, or not a JSON object
    BAD_FRAME = "bad_frame"  #: a field is missing, of the wrong type or out of range
    UNKNOWN_TYPE = "unknown_type"  #: ``type`` is not one of the protocol's
    FRAME_TOO_LARGE = "frame_too_large"
    HELLO_REQUIRED = "hello_required"  #: the first frame must be ``hello``
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_LOGGED_IN = "not_logged_in"  #: calls need ``login`` first
    ALREADY_LOGGED_IN = "already_logged_in"
    LOGIN_FAILED = "login_failed"  #: wrong user name, password or token
    GUESTS_NOT_ALLOWED = "guests_not_allowed"  #: ``login`` as a guest on an engine that refuses guests
    UNKNOWN_CALL = "unknown_call"  #: no call of this socket has that ``call`` id
    CALL_EXISTS = "call_exists"  #: a ``call`` reuses a live call's id
    TOO_MANY_CALLS = "too_many_calls"
    BAD_STATE = "bad_state"  #: the call's state does not allow the action
    FORBIDDEN = "forbidden"  #: the join token does not grant it (``moderate``)
    UNKNOWN_PARTICIPANT = "unknown_participant"  #: no such participant in the token's room
    LISTEN_ONLY = "listen_only"  #: a subscriber (listen only) cannot be unmuted nor send
    INTERNAL = "internal"  #: the engine failed; the socket stays up

    def __str__(self) -> str:
        return self.value


class ProtocolError(Exception):
    """A client frame the protocol refuses; answered with an ``error`` frame.

    :param ref: the offending frame's ``ref``, echoed back.
    :param call: the offending frame's ``call``, echoed back.
    """

    def __init__(self, code: ErrorCode, message: str, *, ref: Any = None, call: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.call = call


# JSON types, as the checks below name them.
STR, INT, BOOL, OBJ, NUM = "string", "integer", "boolean", "object", "number"

#: type -> field -> (JSON type, required). ``ref`` (a string or number the
#: client chooses) is allowed on every frame and echoed in the replies.
SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "hello": {"version": (INT, True), "client": (STR, False)},
    "ping": {"ts": (NUM, False)},
    "login": {"username": (STR, False), "password": (STR, False), "token": (STR, False),
              "guest": (STR, False)},
    "call": {
        "call": (STR, True), "number": (STR, True), "sdp": (STR, True),
        "headers": (OBJ, False), "audio": (BOOL, False), "video": (BOOL, False),
        "display_name": (STR, False),
    },
    "answer": {"call": (STR, True), "sdp": (STR, True), "headers": (OBJ, False)},
    "reject": {"call": (STR, True), "code": (INT, False), "headers": (OBJ, False)},
    "hangup": {"call": (STR, True), "headers": (OBJ, False)},
    "ice": {"call": (STR, True), "candidate": (OBJ, True)},
    "message": {"call": (STR, True), "text": (STR, True), "headers": (OBJ, False)},
    "dtmf": {"call": (STR, True), "tones": (STR, True)},
    "moderate": {"action": (STR, True), "participant": (STR, False)},
    "ice_failed": {"call": (STR, True), "sdp": (STR, False), "sdp_type": (STR, False)},
}

#: ``moderate`` actions and the permission each needs (engine.runtime.tokens);
#: ``mute``/``unmute`` of oneself needs ``mute_self`` instead.
MODERATE_ACTIONS = {
    "mute": "mute_others", "unmute": "mute_others", "remove": "remove",
    "mute_all": "mute_others", "unmute_all": "mute_others",
    "lock": "lock", "unlock": "lock", "end": "end",
    "start_recording": "record", "stop_recording": "record",
}

_PY_TYPES: dict[str, tuple[type, ...]] = {
    STR: (str,), INT: (int,), BOOL: (bool,), OBJ: (dict,), NUM: (int, float),
}


def _is(value: Any, kind: str) -> bool:
    if kind in (INT, NUM) and isinstance(value, bool):
        return False  # JSON true is not a number
    return isinstance(value, _PY_TYPES[kind])


def check_headers(value: Any, *, ref: Any = None, call: str | None = None) -> dict[str, str]:
    """Custom headers: an object of at most :data:`MAX_HEADERS` ``X-`` names
    to string values without control characters."""
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "headers must be an object", ref=ref, call=call)
    if len(value) > MAX_HEADERS:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"at most {MAX_HEADERS} headers", ref=ref, call=call)
    out: dict[str, str] = {}
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"header {name!r}: custom headers start with X-",
                                ref=ref, call=call)
        if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in text
        ):
            raise ProtocolError(ErrorCode.BAD_FRAME,
                                f"header {name}: a string of at most {MAX_HEADER_VALUE} printable characters",
                                ref=ref, call=call)
        out[name] = text
    return out


def parse_frame(text: str | bytes) -> dict[str, Any]:
    """Check one client frame and return it (``headers`` normalised to a
    dict of strings, ``tones`` upper-cased).

    :raises ProtocolError: with the first problem found.
    """
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frames are at most {MAX_FRAME_BYTES} bytes")
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not JSON: {exc}") from None
    except RecursionError:
        # 64 KiB of "[[[[..." nests deeper than the interpreter's stack: the
        # decoder recurses per level (found by bench/fuzz.py).
        raise ProtocolError(ErrorCode.BAD_JSON, "not JSON: nested too deeply") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "a frame is a JSON object")
    ref = frame.get("ref")
    if ref is not None and not (
        (isinstance(ref, str) and len(ref) <= 64) or (_is(ref, NUM))
    ):
        raise ProtocolError(ErrorCode.BAD_FRAME, "ref must be a string (64 characters at most) or a number")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "type must be a string", ref=ref)
    fields = SCHEMA.get(kind)
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}", ref=ref)
    call = frame.get("call") if isinstance(frame.get("call"), str) else None
    for name, (json_type, required) in fields.items():
        value = frame.get(name)
        if value is None:
            if required and not (name == "candidate" and "candidate" in frame):
                raise ProtocolError(ErrorCode.BAD_FRAME, f"{kind}: {name} is required", ref=ref, call=call)
            continue
        if not _is(value, json_type):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{kind}: {name} must be a {json_type}", ref=ref, call=call)
    if call is not None and not _CALL_ID.fullmatch(call):
        raise ProtocolError(ErrorCode.BAD_FRAME, "call ids are 1-64 characters of A-Z a-z 0-9 _ -", ref=ref)
    if "headers" in fields and frame.get("headers") is not None:
        frame["headers"] = check_headers(frame["headers"], ref=ref, call=call)
    if kind == "login":
        has_password = frame.get("username") is not None and frame.get("password") is not None
        ways = [has_password, frame.get("token") is not None, frame.get("guest") is not None]
        if sum(ways) != 1:
            raise ProtocolError(ErrorCode.BAD_FRAME, "login: username and password, or token, or guest", ref=ref)
        guest = frame.get("guest")
        if guest is not None:
            guest = guest.strip()
            if not 0 < len(guest) <= MAX_GUEST_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in guest):
                raise ProtocolError(ErrorCode.BAD_FRAME,
                                    f"login: guest is a display name of 1-{MAX_GUEST_NAME} printable characters",
                                    ref=ref)
            frame["guest"] = guest
    elif kind == "call":
        number = frame["number"]
        if not 0 < len(number) <= 128 or any(ord(c) < 0x21 or c in "@<>\"" for c in number):
            raise ProtocolError(ErrorCode.BAD_FRAME, "call: number must be 1-128 visible characters, no @",
                                ref=ref, call=call)
    elif kind == "moderate":
        if frame["action"] not in MODERATE_ACTIONS:
            raise ProtocolError(ErrorCode.BAD_FRAME,
                                f"moderate: action must be one of {', '.join(MODERATE_ACTIONS)}", ref=ref)
        if frame["action"] in ("mute", "unmute", "remove") and frame.get("participant") is None:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"moderate: {frame['action']} needs participant", ref=ref)
    elif kind == "ice_failed":
        if (frame.get("sdp") is None) != (frame.get("sdp_type") is None) or frame.get("sdp_type") not in (
                None, "offer", "answer"):
            raise ProtocolError(ErrorCode.BAD_FRAME, "ice_failed: sdp goes with sdp_type offer or answer",
                                ref=ref, call=call)
    elif kind == "reject":
        code = frame.get("code")
        if code is not None and not 400 <= code <= 699:
            raise ProtocolError(ErrorCode.BAD_FRAME, "reject: code must be 400-699", ref=ref, call=call)
    elif kind == "dtmf":
        if not _TONES.fullmatch(frame["tones"]):
            raise ProtocolError(ErrorCode.BAD_FRAME, "dtmf: tones are 1-32 of 0-9 * # A-D", ref=ref, call=call)
        frame["tones"] = frame["tones"].upper()
    elif kind == "ice":
        cand = frame.get("candidate")
        if cand is not None:
            if not isinstance(cand.get("candidate", ""), str) or len(cand.get("candidate", "")) > 1024:
                raise ProtocolError(ErrorCode.BAD_FRAME, "ice: candidate.candidate must be a string",
                                    ref=ref, call=call)
            mid, index = cand.get("sdpMid"), cand.get("sdpMLineIndex")
            if mid is not None and not isinstance(mid, str):
                raise ProtocolError(ErrorCode.BAD_FRAME, "ice: sdpMid must be a string", ref=ref, call=call)
            if index is not None and not (_is(index, INT) and 0 <= index < 64):
                raise ProtocolError(ErrorCode.BAD_FRAME, "ice: sdpMLineIndex must be 0-63", ref=ref, call=call)
    return frame


def error_frame(code: ErrorCode, message: str, *, ref: Any = None, call: str | None = None) -> dict[str, Any]:
    """The ``error`` frame for ``code`` (``ref`` and ``call`` only when given)."""
    frame: dict[str, Any] = {"type": "error", "code": str(code), "message": message}
    if ref is not None:
        frame["ref"] = ref
    if call is not None:
        frame["call"] = call
    return frame
