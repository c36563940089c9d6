"""Call the caller back on the number in ``X-Callback``: say so, hang up,
dial out; a busy line is logged and nobody is called again."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine, set_timeout


async def on_alerting(e):
    call = e.call
    number = e.headers.get("X-Callback", "")
    await call.answer()
    await call.say("We will call you back in a moment.")
    call.hangup()
    set_timeout(lambda: dial(number), 2000)


def dial(number):
    out = VoxEngine.call_pstn(number, "5550100", headers={"X-Reason": "callback"})
    out.add_event_listener(CallEvents.Connected, lambda ev: out.say("Hello, this is your callback."))

    def failed(ev):
        Logger.write(f"callback to {number} failed: {ev.code} {ev.reason}")
        VoxEngine.terminate()

    out.add_event_listener(CallEvents.Failed, failed)
    out.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
