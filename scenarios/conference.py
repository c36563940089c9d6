"""One session per conference (the canonical application's ``Fwd`` rule,
``conf_<id>``): every participant, phone or browser, arrives as a call from
a gatekeeper session (``VoxEngine.call_conference``).

Media, as in Voximplant's video-conference design, uses two mixers:

- ``everyone``: phone callers send and receive; browsers only send. So a
  phone caller hears everyone (other phones and every browser).
- ``phones``: phone callers send; browsers receive. So a browser hears the
  phone callers through the server, and the other browsers peer to peer
  (never twice, never itself).

Browsers get the participant list as a message on each change; a browser
can ask to dial a phone number into the conference (``CALL_PARTICIPANT``)
and hears how it goes (``CALL_PARTICIPANT_CONNECTED``, ``_DISCONNECTED``,
``_FAILED``). The conference ends when its last participant leaves. Only
gatekeepers reach it: a call dialed straight to ``conf_<id>`` gets 404.
"""

import json
import re

from engine.calls import CallError
from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

#: Caller id presented to people dialled into the conference.
DIAL_OUT_CALLER_ID = "5550100"
#: At most this many dial-outs ringing at once (toll fraud guard).
MAX_DIALING = 3
NUMBER = re.compile(r"\+?[0-9]{3,15}")

everyone = None
phones = None
participants = {}  # call -> {"id", "name", "number", "kind"}
dialing = {}  # outbound call -> number


def mixers():
    global everyone, phones
    if everyone is None:
        everyone = VoxEngine.create_conference("everyone")
        phones = VoxEngine.create_conference("phones")


async def on_alerting(e):
    call = e.call
    if call.kind != "internal":
        # Only gatekeepers (call_conference) reach a conference: a phone or
        # browser dialing conf_<id> itself would skip the PIN check and
        # open conferences by guessing.
        Logger.write(f"refused a {call.kind} call dialed straight to {e.destination}")
        call.reject(404)
        if not participants and not dialing:
            VoxEngine.terminate()
        return
    mixers()
    kind = "web" if e.headers.get("X-ClientType") == "web" else "pstn"
    await call.answer()
    join(call, kind, e.display_name or e.callerid or "anonymous", e.callerid or "")


def join(call, kind, name, number):
    participants[call] = {"id": call.id, "name": name, "number": number, "kind": kind}
    if kind == "pstn":
        everyone.add(call)
        call.send_media_to(phones)
    else:
        call.send_media_to(everyone)
        phones.send_media_to(call)
    Logger.write(f"{kind} participant {name} joined ({len(participants)} in)")
    call.say("You have joined the conference.")
    call.add_event_listener(CallEvents.MessageReceived, lambda ev: on_message(call, ev))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: leave(call))
    broadcast()


def leave(call):
    info = participants.pop(call, None)
    if info is None:
        return
    Logger.write(f"{info['kind']} participant {info['name']} left ({len(participants)} in)")
    if info.get("dialed"):
        notify("CALL_PARTICIPANT_DISCONNECTED", number=info["number"])
    broadcast()
    if not participants and not dialing:
        VoxEngine.terminate()


def web_calls():
    return [c for c, info in participants.items() if info["kind"] == "web"]


def notify(kind, **fields):
    text = json.dumps({"type": kind, **fields})
    for call in web_calls():
        call.send_message(text)


def broadcast():
    notify("PARTICIPANTS", participants=[
        {k: v for k, v in info.items() if k in ("id", "name", "number", "kind")}
        for info in participants.values()
    ])


def on_message(call, ev):
    try:
        data = json.loads(ev.text)
    except (TypeError, ValueError):
        Logger.write(f"ignored a message that is not JSON: {ev.text[:80]!r}")
        return
    if isinstance(data, dict) and data.get("type") == "CALL_PARTICIPANT":
        dial_out(str(data.get("number", "")))


def dial_out(number):
    if not NUMBER.fullmatch(number):
        notify("CALL_PARTICIPANT_FAILED", number=number, code=484, reason="not a phone number")
        return
    if len(dialing) >= MAX_DIALING:
        notify("CALL_PARTICIPANT_FAILED", number=number, code=486, reason="too many calls ringing")
        return
    Logger.write(f"dialing {number} into the conference")
    try:
        call = VoxEngine.call_pstn(number, DIAL_OUT_CALLER_ID)
    except CallError as exc:  # no trunk configured
        Logger.write(f"cannot dial {number}: {exc}")
        notify("CALL_PARTICIPANT_FAILED", number=number, code=503, reason="dialing out is not available")
        return
    dialing[call] = number

    def connected(ev):
        dialing.pop(call, None)
        notify("CALL_PARTICIPANT_CONNECTED", number=number, id=call.id)
        join(call, "pstn", number, number)
        participants[call]["dialed"] = True

    def failed(ev):
        dialing.pop(call, None)
        Logger.write(f"dialing {number} failed: {ev.code} {ev.reason}")
        notify("CALL_PARTICIPANT_FAILED", number=number, code=ev.code, reason=ev.reason)
        if not participants and not dialing:
            VoxEngine.terminate()

    call.add_event_listener(CallEvents.Connected, connected)
    call.add_event_listener(CallEvents.Failed, failed)
    # ended before it connected (cancelled): the same as failing
    call.add_event_listener(CallEvents.Disconnected, lambda ev: failed(ev) if call in dialing else None)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
