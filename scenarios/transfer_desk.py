"""A reception desk that hands callers on to a second phone (README,
"Transferring calls"). Not in the shipped rules.yaml; add a rule to use it:

    - {name: Desk, pattern: "^desk$", scenarios: [transfer_desk]}

The caller is connected to the desk phone (the SIP user ``desk``, or the
URI in ``DESK``). The desk transfers with its phone's transfer key (a
REFER): only the targets in ``ALLOWED`` are taken, so a phone cannot make
the engine dial anywhere it likes (a target on the trunk would still go
through the dial-out policy). The engine calls the new phone, puts it in
the desk's place and ends the desk's leg. A caller can also be sent on by
the scenario itself: ``caller.transfer_to("sip:...", fallback="bridge")``.
"""

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

DESK = "desk"  # a registered user name, or a sip: URI
ALLOWED = ("sip:sales@", "sip:support@")  # prefixes of the URIs the desk may transfer to


def on_alerting(e):
    caller = e.call
    caller.answer()
    desk = VoxEngine.call_sip(DESK) if DESK.startswith("sip:") else VoxEngine.call_user(DESK)
    state = {"transferring": False}

    def requested(ev):
        if not ev.target.startswith(ALLOWED):
            Logger.write(f"transfer to {ev.target} refused")
            ev.reject(403)
            return
        Logger.write(f"desk transfers the caller to {ev.target}")
        state["transferring"] = True
        new = ev.accept(callerid=caller.callerid)
        new.add_event_listener(CallEvents.Disconnected, lambda _: caller.hangup())
        new.add_event_listener(CallEvents.Failed, lambda _: state.update(transferring=False))

    def desk_ended(ev):
        if ev.reason != "Transferred" and not state["transferring"]:
            caller.hangup()

    desk.add_event_listener(CallEvents.Connected, lambda _: VoxEngine.send_media_between(caller, desk))
    desk.add_event_listener(CallEvents.TransferRequested, requested)
    desk.add_event_listener(CallEvents.Failed, lambda _: caller.hangup())
    desk.add_event_listener(CallEvents.Disconnected, desk_ended)
    caller.add_event_listener(CallEvents.Disconnected, lambda _: VoxEngine.terminate())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
