"""A conference that only records: each ``CallAlerting`` event goes to
``alerts``, each leg to ``legs`` and the legs' events to ``events``. The
tests answer, reject and hang up the legs themselves."""

from engine.calls.call import CallEvents
from engine.runtime.scenario import AppEvents, VoxEngine

alerts = []
legs = []
events = []


def on_call_alerting(e):
    alerts.append(e)
    legs.append(e.call)
    for name in CallEvents:
        e.call.add_event_listener(name, events.append)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_call_alerting)
