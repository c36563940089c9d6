"""Answers every call and ends the session when the call ends."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_call_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: Logger.write(f"ended {ev.code}"))
    call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_call_alerting)
