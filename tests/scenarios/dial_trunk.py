"""Started without a call (from the runtime, as the API will): dial a PSTN
number through the trunk and log what happens."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_started(e):
    number = VoxEngine.custom_data() or "5551234"
    out = VoxEngine.call_pstn(number, "5550100", headers={"X-Test": "trunk"})
    out.add_event_listener(CallEvents.Ringing, lambda ev: Logger.write("ringing"))
    out.add_event_listener(CallEvents.Connected, lambda ev: Logger.write("connected"))

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code}")
        VoxEngine.terminate()

    out.add_event_listener(CallEvents.Disconnected, ended)
    out.add_event_listener(CallEvents.Failed, ended)


VoxEngine.add_event_listener(AppEvents.Started, on_started)
