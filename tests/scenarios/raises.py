"""A scenario with a bug: it raises while handling the call."""

from engine.runtime.scenario import AppEvents, VoxEngine


def on_alerting(e):
    raise RuntimeError("scenario bug on purpose")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
