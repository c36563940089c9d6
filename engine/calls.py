"""Call objects: one leg each, inbound or outbound, SIP or internal.

A :class:`Call` is what a scenario holds: state, caller id, number, headers,
events (through pyee) and actions (``answer``, ``reject``, ``hangup``,
``ring``, ``start_early_media``, ``send_message``, ``send_info``). Two kinds
exist now:

- :class:`SipCall`, a leg to a phone, trunk or SIP peer, driven by the
  :class:`~engine.ua.UserAgent` (the INVITE session of pjsip's ``sip_inv``:
  it runs offer/answer but does not manage media itself);
- :class:`InternalCall`, one end of a pair joining two scenario sessions
  (``VoxEngine.call_conference``): answering, hanging up and messages cross
  to the other end.

Media plugs in through :class:`MediaHandler`: the call asks it for SDP offers
and answers and tells it what was negotiated; the media issue gives it RTP.

Listeners are called through the ``dispatcher`` the call was created with
(the scenario session), which catches and reports their exceptions, so a
user callback never kills the engine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from pyee.asyncio import AsyncIOEventEmitter

__all__ = [
    "CallEvents",
    "CallState",
    "CallEvent",
    "Call",
    "InternalCall",
    "MediaHandler",
    "Dispatcher",
    "CallError",
    "new_call_pair",
]

logger = logging.getLogger(__name__)


class CallEvents(str, enum.Enum):
    """Names of the events a call emits (VoxEngine's ``CallEvents``)."""

    Alerting = "Alerting"
    Ringing = "Ringing"
    Progress = "Progress"
    Connected = "Connected"
    Disconnected = "Disconnected"
    Failed = "Failed"
    MessageReceived = "MessageReceived"
    InfoReceived = "InfoReceived"
    ReInviteReceived = "ReInviteReceived"
    # Media events (PlaybackFinished, ToneReceived, ...) arrive with the media layer.

    def __str__(self) -> str:
        return self.value


class CallState(str, enum.Enum):
    """Where a call is: ``ALERTING`` (inbound, not answered), ``PROGRESSING``
    (outbound, ringing or early media), ``CONNECTED``, ``DISCONNECTED``
    (ended after connecting, or cancelled) and ``FAILED`` (never connected)."""

    NEW = "NEW"
    ALERTING = "ALERTING"
    PROGRESSING = "PROGRESSING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    FAILED = "FAILED"

    @property
    def ended(self) -> bool:
        return self in (CallState.DISCONNECTED, CallState.FAILED)


class CallError(Exception):
    """An action that the call's state does not allow."""


@dataclass
class CallEvent:
    """What a listener receives. Fields not relevant to an event keep their
    defaults: ``code``/``reason`` for Failed and Disconnected, ``text`` for
    MessageReceived, ``body``/``mime_type`` for InfoReceived, ``headers``
    (the custom ``X-`` headers of the message) for all."""

    name: str
    call: Call
    headers: dict[str, str] = field(default_factory=dict)
    code: int | None = None
    reason: str | None = None
    text: str | None = None
    body: bytes | None = None
    mime_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None


class Dispatcher(Protocol):
    """How a call runs its listeners: the scenario session implements it."""

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None: ...


class _DirectDispatcher:
    """Runs listeners in place, logging failures (for calls outside sessions)."""

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        try:
            result = handler(event)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        except Exception:
            logger.exception("call listener failed")


class MediaHandler(Protocol):
    """The media seam: SDP in and out of a call.

    ``create_offer`` and ``create_answer`` return SDP bytes;
    ``create_answer`` raises :class:`~engine.sip.errors.RemoteProtocolError`
    (status 488) when nothing in the offer is acceptable.
    """

    def create_offer(self) -> bytes: ...

    def create_answer(self, offer: bytes) -> bytes: ...

    def set_answer(self, answer: bytes) -> None: ...

    def close(self) -> None: ...


class Call:
    """One call leg, as a scenario sees it.

    :ivar id: unique across nodes (random).
    :ivar direction: ``"inbound"`` or ``"outbound"``.
    :ivar number: the dialed number (inbound) or the number called (outbound).
    :ivar callerid: the caller's number (inbound) or the number we present.
    :ivar display_name: the caller's display name, if any.
    :ivar headers: the ``X-`` headers of the INVITE (inbound) or of the
        answer (outbound), as received.
    """

    kind = "call"

    def __init__(
        self,
        *,
        direction: str,
        number: str,
        callerid: str,
        display_name: str | None = None,
        headers: dict[str, str] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.id = secrets.token_hex(16)
        self.direction = direction
        self.number = number
        self.callerid = callerid
        self.display_name = display_name
        self.headers: dict[str, str] = dict(headers or {})
        self.state = CallState.NEW
        self.dispatcher: Dispatcher = dispatcher or _DirectDispatcher()
        self.emitter = AsyncIOEventEmitter()
        self.end_code: int | None = None
        self.end_reason: str | None = None
        self.log = logging.LoggerAdapter(logger, {"call_id": self.id})
        self._state_waiters: list[asyncio.Future[CallState]] = []
        self.on_ended: list[Callable[[Call], None]] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id[:8]} {self.direction} {self.number} {self.state.value}>"

    # -- events ----------------------------------------------------------------

    def add_event_listener(self, event: str | CallEvents, handler: Callable[..., Any]) -> None:
        """Call ``handler(event)`` (a function or a coroutine function) on ``event``."""
        name = str(event)

        def run(ev: CallEvent, handler: Callable[..., Any] = handler) -> None:
            self.dispatcher.run_listener(handler, ev)

        run.__wrapped__ = handler  # type: ignore[attr-defined]
        self.emitter.on(name, run)

    on = add_event_listener

    def remove_event_listener(
        self, event: str | CallEvents, handler: Callable[..., Any] | None = None
    ) -> None:
        name = str(event)
        for listener in list(self.emitter.listeners(name)):
            if handler is None or getattr(listener, "__wrapped__", None) is handler:
                self.emitter.remove_listener(name, listener)

    def _emit(self, name: CallEvents, **fields: Any) -> None:
        extra = {k: fields.pop(k) for k in list(fields) if k not in CallEvent.__dataclass_fields__}
        event = CallEvent(str(name), self, extra=extra, **fields)
        self.emitter.emit(str(name), event)

    def wait_for(self, event: str | CallEvents, timeout: float | None = None) -> Awaitable[CallEvent]:
        """Wait for the next ``event``; a timeout does not disturb the call."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CallEvent] = loop.create_future()
        name = str(event)

        def once(ev: CallEvent) -> None:
            if not fut.done():
                fut.set_result(ev)

        self.emitter.once(name, once)
        return asyncio.wait_for(asyncio.shield(fut), timeout)

    def _set_state(self, state: CallState) -> None:
        self.state = state
        self.log.info("state %s", state.value)
        if state.ended:
            for cb in self.on_ended:
                try:
                    cb(self)
                except Exception:
                    self.log.exception("end callback failed")
        waiters, self._state_waiters = self._state_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(state)

    async def _wait_state_change(self) -> CallState:
        fut: asyncio.Future[CallState] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(fut)
        return await fut

    def _finish(self, state: CallState, event: CallEvents, code: int | None, reason: str | None,
                headers: dict[str, str] | None = None) -> None:
        """End the call once: set the state, then emit Disconnected or Failed."""
        if self.state.ended:
            return
        self.end_code, self.end_reason = code, reason
        self._set_state(state)
        self._emit(event, code=code, reason=reason, headers=headers or {})

    # -- actions (overridden by the kinds of call) -----------------------------

    def answer(self, headers: dict[str, str] | None = None) -> Awaitable[None]:
        raise NotImplementedError

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def ring(self, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    async def _await_connected(self) -> None:
        """Return when connected; raise :class:`CallError` if the call ends first."""
        while self.state not in (CallState.CONNECTED,):
            if self.state.ended:
                raise CallError(f"call ended before it connected ({self.end_code} {self.end_reason})")
            await self._wait_state_change()


class InternalCall(Call):
    """One end of a pair of calls between two sessions, joined in memory.

    The caller's end is outbound, the callee's end inbound; the callee
    answers or rejects, either end hangs up, and messages and INFO cross.
    """

    kind = "internal"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peer: InternalCall | None = None

    def _require_peer(self) -> InternalCall:
        if self.peer is None:
            raise CallError("internal call has no peer")
        return self.peer

    async def _answer(self, headers: dict[str, str] | None) -> None:
        await self._await_connected()

    def answer(self, headers: dict[str, str] | None = None) -> Awaitable[None]:
        if self.direction != "inbound":
            raise CallError("only an inbound call can be answered")
        if self.state == CallState.ALERTING:
            peer = self._require_peer()
            self._set_state(CallState.CONNECTED)
            self._emit(CallEvents.Connected, headers=dict(headers or {}))
            if peer.state == CallState.PROGRESSING:
                peer.headers.update(headers or {})
                peer._set_state(CallState.CONNECTED)
                peer._emit(CallEvents.Connected, headers=dict(headers or {}))
        elif self.state.ended:
            raise CallError("call already ended")
        return asyncio.ensure_future(self._answer(headers))

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        if self.state != CallState.ALERTING:
            raise CallError(f"cannot reject a call in state {self.state.value}")
        self._finish(CallState.FAILED, CallEvents.Failed, code, "Rejected")
        if self.peer is not None:
            self.peer._finish(CallState.FAILED, CallEvents.Failed, code, "Rejected", headers)

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        if self.state.ended:
            return
        connected = self.state == CallState.CONNECTED
        state, event = (CallState.DISCONNECTED, CallEvents.Disconnected)
        if not connected and self.direction == "inbound":
            self.reject(480, headers)
            return
        self._finish(state, event, 200 if connected else 487, "Hangup")
        peer = self.peer
        if peer is not None and not peer.state.ended:
            if connected:
                peer._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup", headers)
            else:
                peer._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled", headers)

    def ring(self, headers: dict[str, str] | None = None) -> None:
        peer = self._require_peer()
        if self.state == CallState.ALERTING and peer.state == CallState.PROGRESSING:
            peer._emit(CallEvents.Ringing, headers=dict(headers or {}))

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        peer = self._require_peer()
        if self.state == CallState.ALERTING and peer.state == CallState.PROGRESSING:
            peer._emit(CallEvents.Progress, headers=dict(headers or {}))

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        if self.state != CallState.CONNECTED:
            raise CallError("messages need a connected call")
        peer = self._require_peer()
        peer._emit(CallEvents.MessageReceived, text=text, headers=dict(headers or {}))

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        if self.state != CallState.CONNECTED:
            raise CallError("INFO needs a connected call")
        data = body.encode() if isinstance(body, str) else body
        self._require_peer()._emit(
            CallEvents.InfoReceived, mime_type=mime_type, body=data, headers=dict(headers or {})
        )


def new_call_pair(
    *,
    number: str,
    callerid: str,
    display_name: str | None,
    headers: dict[str, str] | None,
    caller_dispatcher: Dispatcher,
) -> tuple[InternalCall, InternalCall]:
    """Make the two ends of an internal call: (caller's end, callee's end).

    The callee's end has no dispatcher yet: the session that receives it sets
    one before emitting anything.
    """
    out = InternalCall(
        direction="outbound", number=number, callerid=callerid, display_name=display_name,
        headers=headers, dispatcher=caller_dispatcher,
    )
    inc = InternalCall(
        direction="inbound", number=number, callerid=callerid, display_name=display_name,
        headers=headers,
    )
    out.peer, inc.peer = inc, out
    out._set_state(CallState.PROGRESSING)
    inc._set_state(CallState.ALERTING)
    return out, inc
