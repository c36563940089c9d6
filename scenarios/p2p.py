"""Calls between users (the canonical application's ``P2P`` rule, pattern
``.*``, the last rule): the dialed number is a user name.

A browser's call with ``X-DirectCall: true`` is forwarded straight to the
callee's browser: the two connect peer to peer with audio and video, and
the engine relays only the signalling (``forward_call_to_user_direct``).
Any other call (a browser without the header, a SIP phone) rings the user
(their browser, else their registered SIP phone) and is bridged through
the engine's media. A user nobody can reach gets 404 (a phone dialing a
number no rule knows gets the same answer it would without this rule).

A browser that joined a room with a join token calls the room's other
participants directly (the video mesh of the demo page): such a call is
refused (403) unless the caller is in its room at that moment and the
callee is in the same room, so a removed participant cannot call back in.
"""

from engine.scenario import CallError, CallState
from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.add_event_listener(CallEvents.Failed, lambda ev: VoxEngine.terminate())
    if call.kind == "web" and e.headers.get("X-DirectCall", "").lower() in ("1", "true", "yes", "on"):
        direct(call, e)
    else:
        bridged(call, e)


def direct(call, e):
    grant = call.grant
    if grant is not None and grant.room is not None and not (
            VoxEngine.room_has(grant.room, grant.identity) and VoxEngine.room_has(grant.room, e.destination)):
        Logger.write(f"direct call from {e.callerid} to {e.destination}: not both in room {grant.room}")
        call.reject(403)
        return
    callee = call.forward_call_to_user_direct()
    if callee is None:
        Logger.write(f"direct call from {e.callerid} to {e.destination}: not logged in")
        return
    Logger.write(f"direct call from {e.callerid} to {e.destination}")
    callee.add_event_listener(CallEvents.Connected, lambda ev: Logger.write("direct call connected"))
    callee.add_event_listener(CallEvents.Failed, lambda ev: Logger.write(f"direct call failed {ev.code}"))
    callee.add_event_listener(CallEvents.Disconnected,
                              lambda ev: Logger.write(f"direct call ended {ev.code}"))


def bridged(call, e):
    try:
        callee = VoxEngine.call_user(e.destination, callerid=e.callerid or "anonymous",
                                     display_name=e.display_name, headers=e.headers)
    except CallError as exc:
        Logger.write(f"call from {e.callerid} to {e.destination}: {exc}")
        call.reject(404)
        return
    Logger.write(f"call from {e.callerid} to {e.destination} ({callee.kind})")
    call.ring()

    async def connected(ev):
        await call.answer()
        VoxEngine.send_media_between(call, callee)

    def failed(ev):
        if call.state == CallState.ALERTING:
            call.reject(ev.code if ev.code and 300 <= ev.code <= 699 else 480)

    callee.add_event_listener(CallEvents.Connected, connected)
    callee.add_event_listener(CallEvents.Failed, failed)
    callee.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    call.add_event_listener(CallEvents.Disconnected, lambda ev: callee.hangup())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
