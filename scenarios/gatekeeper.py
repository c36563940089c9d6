"""A browser joins a conference (the canonical application's
``InboundCall`` rule, number ``joinconf``).

The web client's call carries ``X-Conference-Id``. While the conference
session answers, the caller hears hold music as early media; then the call
is answered and bridged to the conference with ``X-ClientType: web``, and
messages are relayed both ways (the participant list down, requests such
as ``CALL_PARTICIPANT`` up; those that come before the answer wait for
it). The conference ending ends the call.
"""

import re
from pathlib import Path

from engine.calls import CallState
from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

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
    granted = e.headers.get("X-Callbridge-Room")
    if granted is not None and granted != conf_id:
        Logger.write(f"refused: join token for room {granted[:40]!r}, not {conf_id!r}")
        call.reject(403)
        return
    call.start_early_media()
    call.start_playback(HOLD_MUSIC, loop=True)
    # the engine sets X-Callbridge-* (room, role, identity from a join token;
    # a browser cannot forge them): the conference admits by them
    headers = {k: v for k, v in e.headers.items() if k.startswith("X-Callbridge-")}
    headers["X-ClientType"] = "web"
    leg = VoxEngine.call_conference("conf_" + conf_id, callerid=e.callerid, display_name=e.display_name,
                                    headers=headers)
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


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
