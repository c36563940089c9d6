"""The scenario runtime's names in one place, for the engine and tests.

The runtime is split into parts (see :mod:`engine.runtime.runtime`); this
module re-exports them so ``from engine.runtime.scenario import ...`` keeps
working. Scenarios import :mod:`engine.scenario`, the public facade.
"""

from __future__ import annotations

from engine.calls.call import CallEvents
from engine.runtime.compiler import ScenarioCompiler, ScenarioError
from engine.runtime.invites import PinAdmission, PinLimits, redeem_invite
from engine.runtime.protocols import Dialer, WebUsers
from engine.runtime.rooms import RoomRefused
from engine.runtime.runtime import INTERNAL_CALLER, ScenarioRuntime, SessionLimitReached, caller_of
from engine.runtime.scenario_api import (
    HTTP_MAX_BODY,
    ApplicationStorage,
    HttpResponse,
    Logger,
    Net,
    VoxEngine,
    clear_timeout,
    set_timeout,
)
from engine.runtime.session import AppEvent, AppEvents, Session, current_session

__all__ = [
    "AppEvents",
    "AppEvent",
    "CallEvents",
    "Dialer",
    "INTERNAL_CALLER",
    "PinAdmission",
    "PinLimits",
    "ScenarioCompiler",
    "ScenarioError",
    "ScenarioRuntime",
    "SessionLimitReached",
    "Session",
    "VoxEngine",
    "Logger",
    "Net",
    "HttpResponse",
    "HTTP_MAX_BODY",
    "ApplicationStorage",
    "RoomRefused",
    "WebUsers",
    "caller_of",
    "current_session",
    "redeem_invite",
    "set_timeout",
    "clear_timeout",
]
