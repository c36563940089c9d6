"""Answer, log every DTMF tone with how it came, collect digits until '#'
(10 s at most) and log them; the caller hangs up."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.handle_tones(True)
    call.add_event_listener(
        CallEvents.ToneReceived, lambda ev: Logger.write(f"tone {ev.tone} {ev.mode}")
    )

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code}")
        VoxEngine.terminate()

    call.add_event_listener(CallEvents.Disconnected, ended)
    await call.answer()
    digits = await call.collect_tones(terminator="#", timeout=10)
    Logger.write(f"digits {digits!r}")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
