"""Answer, stay connected for a second, hang up: the smallest useful scenario
(and the one `bench/sip_cps` drives)."""

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine, set_timeout


def on_alerting(e):
    call = e.call
    Logger.write(f"call from {e.callerid} to {e.destination}")
    call.add_event_listener(CallEvents.Connected, lambda ev: set_timeout(call.hangup, 1000))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
