"""A web call's test scenario: log how the call came, answer, play a 440 Hz
tone, send "welcome" (number "early": early media with the tone first,
answer 300 ms later), echo each message back ("echo: <text>", header
X-Echo), log tones (with their mode) and the end of the call."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_alerting(e):
    call = e.call
    headers = ",".join(f"{k}={v}" for k, v in sorted(e.headers.items()))
    Logger.write(f"alerting {call.kind} from {e.callerid} ({e.display_name}) to {e.destination} [{headers}]")
    call.handle_tones(True)
    call.add_event_listener(CallEvents.ToneReceived, lambda ev: Logger.write(f"tone {ev.tone} {ev.mode}"))

    def on_message(ev):
        Logger.write(f"message {ev.text} [{ev.headers.get('X-Note', '')}]")
        call.send_message(f"echo: {ev.text}", {"X-Echo": "1"})

    def on_connected(ev):
        Logger.write("connected")
        call.start_playback_tone(440)
        call.send_message("welcome")

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code} {ev.reason}")
        VoxEngine.terminate()

    call.add_event_listener(CallEvents.MessageReceived, on_message)
    call.add_event_listener(CallEvents.Connected, on_connected)
    call.add_event_listener(CallEvents.Disconnected, ended)
    call.add_event_listener(CallEvents.Failed, ended)
    if e.destination == "early":
        call.start_early_media()
        call.start_playback_tone(440)
        VoxEngine.set_timeout(call.answer, 300)
    else:
        call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
