"""Answer, wait a moment, hang up (the engine sends the BYE)."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine, set_timeout


def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Connected, lambda ev: set_timeout(call.hangup, 200))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
