"""One session per conference: answers every participant into one mixer,
tells web clients who is in, and dials a phone participant out when a web
client sends ``CALL_PARTICIPANT <number>``."""

import json

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

participants = []
mixer = None


def broadcast():
    names = [p.callerid for p in participants]
    for p in participants:
        if p.headers.get("X-ClientType") == "web":
            p.send_message(json.dumps({"type": "participants", "names": names}))


def on_alerting(e):
    global mixer
    if mixer is None:
        mixer = VoxEngine.create_conference("mixer")
    call = e.call
    participants.append(call)
    Logger.write(f"{e.callerid} joins ({e.headers.get('X-ClientType')})")

    def left(ev):
        participants.remove(call)
        Logger.write(f"{call.callerid} left")
        broadcast()

    call.add_event_listener(CallEvents.Disconnected, left)
    call.add_event_listener(CallEvents.MessageReceived, lambda ev: on_message(call, ev.text))
    call.answer()
    mixer.add(call)
    broadcast()


def on_message(call, text):
    if text.startswith("CALL_PARTICIPANT "):
        number = text.split()[1]
        out = VoxEngine.call_pstn(number, "5550100")

        def failed(ev):
            Logger.write(f"dial-out to {number} failed: {ev.code}")
            call.send_message(json.dumps({"type": "dial_failed", "number": number, "code": ev.code}))

        out.add_event_listener(CallEvents.Failed, failed)

        def answered(ev):
            Logger.write(f"{number} answered")
            mixer.add(out)

        out.add_event_listener(CallEvents.Connected, answered)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
