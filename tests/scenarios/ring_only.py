"""Ring and never answer; log how the call ended."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_alerting(e):
    call = e.call

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code} {ev.reason}")
        VoxEngine.terminate()

    call.add_event_listener(CallEvents.Disconnected, ended)
    call.add_event_listener(CallEvents.Failed, ended)
    call.ring()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
