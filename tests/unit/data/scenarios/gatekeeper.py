"""A caller of conference ``conf_<X-Conf>``: answers its own call, calls the
conference with the caller's id, name and ``X-ClientType: web``, and keeps
the conference leg in ``leg`` and that leg's events in ``leg_events``."""

from engine.calls.call import CallEvents
from engine.runtime.scenario import AppEvents, VoxEngine

leg = None
leg_events = []


def on_call_alerting(e):
    global leg
    e.call.answer()
    leg = VoxEngine.call_conference(
        "conf_" + e.headers.get("X-Conf", "1"),
        callerid=e.callerid,
        display_name=e.display_name,
        headers={"X-ClientType": "web"},
    )
    for name in CallEvents:
        leg.add_event_listener(name, leg_events.append)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_call_alerting)
