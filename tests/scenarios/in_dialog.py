"""Answer and log what arrives inside the call: INFO, MESSAGE, re-INVITE."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(
        CallEvents.InfoReceived, lambda ev: Logger.write(f"info {ev.mime_type} {ev.body!r}")
    )
    call.add_event_listener(
        CallEvents.MessageReceived,
        lambda ev: Logger.write(f"message {ev.text!r} room={ev.headers.get('X-Room')}"),
    )
    call.add_event_listener(CallEvents.ReInviteReceived, lambda ev: Logger.write("reinvite"))

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code}")
        VoxEngine.terminate()

    call.add_event_listener(CallEvents.Disconnected, ended)
    await call.answer()
    Logger.write("connected")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
