"""A browser joins a conference (the canonical application's
``InboundCall`` rule, number ``joinconf``).

The web client's call carries ``X-Conference-Id``. A room admits it with
a join token for that room (its login) or with the room's PIN in
``X-Conference-Pin``; otherwise it is refused 403 with ``X-Reason:
pin_required`` (``wrong_pin``, ``too_many_attempts``, ``pin_locked``, ``unavailable``,
``wrong_room``). While the conference
session answers, the caller hears hold music as early media; then the call
is answered and bridged to the conference with ``X-ClientType: web``, and
messages are relayed both ways (the participant list down, requests such
as ``CALL_PARTICIPANT`` up; those that come before the answer wait for
it). The conference ending ends the call.
"""

import re
from pathlib import Path

from engine.scenario import CallState
from engine.scenario import AppEvents, CallEvents, Logger, RoomRefused, VoxEngine

HOLD_MUSIC = Path(__file__).parent / "media" / "hold.wav"
CONFERENCE_ID = re.compile(r"[A-Za-z0-9]{1,32}")
CONNECT_TIMEOUT = 20


async def on_alerting(e):
    call = e.call
    conf_id = e.headers.get("X-Conference-Id", "")
    if not CONFERENCE_ID.fullmatch(conf_id):
        Logger.write(f"refused: bad X-Conference-Id {conf_id[:40]!r}")
        call.reject(400)
        return
    if not admitted(call, conf_id, e.headers.get("X-Conference-Pin")):
        return
    call.start_early_media()
    call.start_playback(HOLD_MUSIC, loop=True)
    # the caller's grant (join token, PIN, guest) goes with the call: the
    # conference admits by it, never by a header
    leg = VoxEngine.call_conference("conf_" + conf_id, callerid=e.callerid, display_name=e.display_name,
                                    headers={"X-ClientType": "web"}, on_behalf_of=call)
    call.add_event_listener(CallEvents.Disconnected, lambda ev: (leg.hangup(), VoxEngine.terminate()))
    leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    # a refusal's reason (X-Reason: room_full, room_locked, ...) reaches the browser
    leg.add_event_listener(CallEvents.Failed, lambda ev: call.reject(
        ev.code or 480, headers={k: v for k, v in (ev.headers or {}).items() if k == "X-Reason"}))
    # relay messages both ways; the conference's first ones (the participant
    # list) come before the browser's call is answered: they wait for it
    early = []

    def down(ev):
        if call.state == CallState.CONNECTED:
            call.send_message(ev.text)
        elif not call.state.ended:
            early.append(ev.text)

    leg.add_event_listener(CallEvents.MessageReceived, down)
    call.add_event_listener(CallEvents.MessageReceived, lambda ev: leg.send_message(ev.text))
    try:
        await leg.wait_for(CallEvents.Connected, timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        Logger.write(f"conference conf_{conf_id} did not answer in {CONNECT_TIMEOUT} s")
        call.reject(480)
        leg.hangup()
        return
    if call.state.ended:
        return
    call.stop_playback()
    await call.answer()
    VoxEngine.send_media_between(call, leg)
    for text in early:
        call.send_message(text)
    early.clear()
    Logger.write(f"{e.callerid} joined conf_{conf_id}")


def admitted(call, conf_id, pin):
    """Whether the browser may go on to room ``conf_id``: a join token for
    it, or the room's PIN sent in ``X-Conference-Pin`` (checked by the
    engine, which limits wrong tries). A conference that is not a room is
    left to the conference (ad-hoc conferences may be switched off)."""
    grant = call.grant
    if grant is not None and grant.room is not None and grant.room != conf_id:
        Logger.write(f"refused: join token for room {grant.room[:40]!r}, not {conf_id!r}")
        call.reject(403, headers={"X-Reason": "wrong_room"})
        return False
    if VoxEngine.room(conf_id) is None or (grant is not None and grant.admitted_to(conf_id)):
        return True
    if not pin:
        Logger.write(f"refused: room {conf_id} needs a join token or its PIN")
        call.reject(403, headers={"X-Reason": "pin_required"})
        return False
    try:
        VoxEngine.admit_with_pin(call, pin, room=conf_id)
    except RoomRefused as refused:
        Logger.write(f"refused: {refused.code} for room {conf_id}")
        call.reject(403, headers={"X-Reason": refused.code})
        return False
    return True


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
