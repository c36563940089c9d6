"""Records every session event, and every event of the calls it is offered,
in ``events`` (the tests read it through the session's namespace)."""

from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

events = []


def on_call_alerting(e):
    for name in CallEvents:
        e.call.add_event_listener(name, events.append)


for name in AppEvents:
    VoxEngine.add_event_listener(name, events.append)
VoxEngine.add_event_listener(AppEvents.CallAlerting, on_call_alerting)
