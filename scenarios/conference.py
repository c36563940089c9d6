"""One session per conference (the canonical application's ``Fwd`` rule,
``conf_<id>``): every participant, phone or browser, arrives as a call from
a gatekeeper session (``VoxEngine.call_conference``).

Media, as in Voximplant's video-conference design, uses two mixers:

- ``everyone``: phone callers send and receive; browsers only send. So a
  phone caller hears everyone (other phones and every browser).
- ``phones``: phone callers send; browsers receive. So a browser hears the
  phone callers through the server, and the other browsers peer to peer
  (never twice, never itself).

When the conference is a room (``callbridge rooms create``, the HTTP API),
every participant is admitted through it: a full, locked, not yet started
or ended room refuses the call (a browser gets the refusal's code, a phone
hears why), the room lists who is in (``GET /api/v1/rooms/{id}``), a
moderator's mute reaches phone and browser legs alike, and
``record_on_start`` records the whole conference (so does a request of
the API or a moderator's ``startRecording()``; either can stop it). A participant whose role
is ``moderator`` can send ``{"type": "MODERATE", "action": "mute_all" |
"unmute_all"}`` (a phone moderator's ``*6``/``*7``).

Who joins, and as what, comes from each call's grant (set by the engine:
a join token, the room's PIN, an invite), never from a header; the engine
refuses a room's newcomer without one (``VoxEngine.room_join``).

Browsers get the participant list as a message on each change (only
participants the engine admitted see it), with each one's mute state:
when the API, a moderator's page or a phone's ``*6`` mutes someone, the
pages get ``PARTICIPANT_UPDATED`` and the new list; a participant whose grant
holds ``dial_out`` can ask to dial a phone number into the conference
(``CALL_PARTICIPANT``; the engine's dial-out policy decides where to and
how many, and the call ends when the participant who asked leaves) and
hears how it goes (``CALL_PARTICIPANT_CONNECTED``, ``_DISCONNECTED``,
``_FAILED``, with ``inbound: false``). A phone that dials in by PIN is
announced the same way, with ``inbound: true`` (its ``id``, ``name`` and
``number``), and so is its leaving. Each entry of the participant list
carries the participant's ``role`` and the ``data`` of its join token
(``null`` without one), so pages can show what the application put there. The conference ends when its last participant leaves. Only
gatekeepers reach it: the ``Fwd`` rule takes internal calls only, and a
call of another kind that reaches it anyway gets 404.
"""

import json

from engine.scenario import CallError, CallState
from engine.scenario import AppEvents, CallEvents, Logger, RoomRefused, VoxEngine

#: Caller id presented to people dialled into the conference.
DIAL_OUT_CALLER_ID = "5550100"
#: At most this many dial-outs ringing at once in one conference.
MAX_DIALING = 3

everyone = None
phones = None
participants = {}  # call -> {"id", "name", "number", "kind", "role"}
room_name = None  # conf_<id>, once the first call arrived
dialing = {}  # outbound call -> number


def mixers(name):
    global everyone, phones, room_name
    if everyone is None:
        room_name = name
        everyone = VoxEngine.create_conference("everyone")
        phones = VoxEngine.create_conference("phones")
        room = VoxEngine.room(name)
        if room is not None and room.get("record_on_start"):
            record()


def record():
    """Record the whole conference (``record_on_start``, or asked by the API
    or a moderator); the room knows, so that they can stop it."""
    recording = everyone.record()
    Logger.write(f"recording {room_name} to {recording.path}")
    VoxEngine.room_recording_started(room_name, recording)


def on_recording_requested(e):
    if everyone is not None:
        record()


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
    mixers(e.destination)
    kind = "web" if e.headers.get("X-ClientType") == "web" else "pstn"
    grant = call.grant
    role = grant.role if grant is not None else "guest"
    name = e.display_name or e.callerid or "anonymous"
    try:
        VoxEngine.room_join(e.destination, call, kind=kind, display_name=name)
    except RoomRefused as refused:
        Logger.write(f"{kind} caller {name} refused: {refused.code}")
        if kind == "web":
            call.reject(403, headers={"X-Reason": refused.code})
        else:
            await call.answer()
            await call.say(refused.message)
            call.hangup()
        if not participants and not dialing:
            VoxEngine.terminate()
        return
    await call.answer()
    join(call, kind, name, e.callerid or "", role)


def join(call, kind, name, number, role="guest", dialed=False):
    grant = call.grant
    participants[call] = {"id": call.id, "name": name, "number": number, "kind": kind, "role": role,
                          "guest": grant is not None and grant.guest, "dialed": dialed,
                          "data": grant.data if grant is not None else None, "muted": False,
                          "custom_id": grant.custom_id if grant is not None else None,
                          "picture": grant.picture if grant is not None else None}
    if kind == "pstn":
        everyone.add(call)
        call.send_media_to(phones)
    else:
        call.send_media_to(everyone)
        phones.send_media_to(call)
    Logger.write(f"{kind} participant {name} joined ({len(participants)} in)")
    if kind == "pstn" and not dialed:
        # a phone that dialed in, as the tutorial's browsers learn of it
        notify("CALL_PARTICIPANT_CONNECTED", inbound=True, id=call.id, name=name, number=number)
    call.say("You have joined the conference.")
    call.add_event_listener(CallEvents.MessageReceived, lambda ev: on_message(call, ev))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: leave(call))
    broadcast()


def mute_all(moderator, muted):
    """Everyone but ``moderator``: through the room when there is one (the
    API sees it), else in the mixers."""
    if VoxEngine.room(room_name) is not None:
        count = VoxEngine.room_mute_all(room_name, muted, except_call=moderator)
    else:
        count = 0
        for other in participants:
            if other is not moderator:
                for mixer in (everyone, phones):
                    if other in mixer:
                        mixer.set_mute(other, muted)
                participants[other]["muted"] = muted
                count += 1
        broadcast()
    Logger.write(f"{'muted' if muted else 'unmuted'} {count} participants")


def leave(call):
    info = participants.pop(call, None)
    if info is None:
        return
    Logger.write(f"{info['kind']} participant {info['name']} left ({len(participants)} in)")
    if info["guest"]:
        VoxEngine.delete_user(info["number"])  # a guest's profile lives as long as its visit
    if info["kind"] == "pstn":
        notify("CALL_PARTICIPANT_DISCONNECTED", inbound=not info["dialed"], id=info["id"], name=info["name"],
               number=info["number"])
    broadcast()
    if not participants and not dialing:
        VoxEngine.terminate()


def web_calls():
    return [c for c, info in participants.items()
            if info["kind"] == "web" and c.state == CallState.CONNECTED]


def notify(kind, **fields):
    text = json.dumps({"type": kind, **fields})
    for call in web_calls():
        call.send_message(text)


def broadcast():
    notify("PARTICIPANTS", participants=[
        {k: v for k, v in info.items() if k in ("id", "name", "number", "kind", "role", "data", "muted", "custom_id",
                                        "picture")}
        for info in participants.values()
    ])


def on_participant_updated(e):
    """The room muted or unmuted someone (the API, a moderator, ``*6``):
    the pages show it."""
    for call, info in participants.items():
        if call.id == e.data.get("id"):
            info["muted"] = bool(e.data.get("muted"))
            notify("PARTICIPANT_UPDATED", participant={"id": call.id, "muted": info["muted"]})
            broadcast()
            return


def on_message(call, ev):
    try:
        data = json.loads(ev.text)
    except (TypeError, ValueError):
        Logger.write(f"ignored a message that is not JSON: {ev.text[:80]!r}")
        return
    if not isinstance(data, dict):
        return
    if data.get("type") == "CALL_PARTICIPANT":
        dial_out(call, str(data.get("number", ""))[:32])
    elif data.get("type") == "MODERATE":
        info = participants.get(call)
        if info is None or info["role"] != "moderator":
            Logger.write("ignored MODERATE from a participant who is not a moderator")
            return
        if data.get("action") in ("mute_all", "unmute_all"):
            mute_all(call, data["action"] == "mute_all")


def dial_out(requester, number):
    """Dial ``number`` into the conference for ``requester`` (a participant's
    call): the engine checks the requester's ``dial_out`` permission, the
    destination lists and the caps, and hangs up when the requester leaves."""
    if requester not in participants:
        return
    if len(dialing) >= MAX_DIALING:
        notify("CALL_PARTICIPANT_FAILED", number=number, code=486, reason="too many calls ringing")
        return
    try:
        call = VoxEngine.call_pstn(number, DIAL_OUT_CALLER_ID, requested_by=requester)
    except CallError as exc:  # refused by the dial-out policy, or no trunk configured
        Logger.write(f"cannot dial {number}: {exc}")
        notify("CALL_PARTICIPANT_FAILED", number=number, code=getattr(exc, "code", 503),
               reason=getattr(exc, "reason", "dialing out is not available"))
        return
    Logger.write(f"dialing {number} into the conference for {participants[requester]['name']}")
    dialing[call] = number

    def connected(ev):
        dialing.pop(call, None)
        try:
            VoxEngine.room_join(room_name, call, kind="pstn", display_name=number)
        except RoomRefused as refused:
            notify("CALL_PARTICIPANT_FAILED", number=number, code=403, reason=refused.code)
            call.hangup()
            return
        notify("CALL_PARTICIPANT_CONNECTED", inbound=False, id=call.id, name=number, number=number)
        join(call, "pstn", number, number, dialed=True)

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
VoxEngine.add_event_listener(AppEvents.ParticipantUpdated, on_participant_updated)
VoxEngine.add_event_listener(AppEvents.RecordingRequested, on_recording_requested)
