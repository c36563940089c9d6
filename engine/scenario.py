"""The API scenarios import: ``from engine.scenario import VoxEngine, ...``.

Scenario code sees only this module; where the runtime behind it lives
(:mod:`engine.runtime.scenario`, :mod:`engine.calls.call`) may change without
touching a scenario. Everything here is what the README documents.
"""

from engine.calls.call import Call, CallError, CallEvent, CallEvents, CallState
from engine.calls.conference import Conference, ConferenceError, ConferenceEvents
from engine.calls.media_stream import MediaStream, StreamEvent, StreamEvents
from engine.runtime.rooms import RoomRefused
from engine.runtime.scenario import (
    HTTP_MAX_BODY,
    AppEvent,
    AppEvents,
    ApplicationStorage,
    HttpResponse,
    Logger,
    Net,
    VoxEngine,
    clear_timeout,
    set_timeout,
)

__all__ = [
    "AppEvent",
    "AppEvents",
    "ApplicationStorage",
    "Call",
    "CallError",
    "CallEvent",
    "CallEvents",
    "CallState",
    "Conference",
    "ConferenceError",
    "ConferenceEvents",
    "HTTP_MAX_BODY",
    "HttpResponse",
    "Logger",
    "MediaStream",
    "Net",
    "RoomRefused",
    "VoxEngine",
    "clear_timeout",
    "StreamEvent",
    "StreamEvents",
    "set_timeout",
]
