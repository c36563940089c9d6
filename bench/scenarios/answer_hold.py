"""Answer and stay connected until the caller hangs up (bench/memory): the
per-call memory of an idle call with its session, nothing else."""

from engine.scenario import AppEvents, CallEvents, VoxEngine


def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
