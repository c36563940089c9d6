"""A web client joins conference ``conf_<X-Conference-Id>``: hold tone as
early media, answer once the conference has, as a web client, and relay
messages both ways (those the conference sends before the web call is
connected wait for it)."""

from engine.calls.call import CallState
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_alerting(e):
    call = e.call
    conf_id = e.headers.get("X-Conference-Id")
    if not conf_id:
        Logger.write("no X-Conference-Id: rejecting")
        call.reject(404)
        VoxEngine.terminate()
        return
    call.start_early_media()
    call.start_playback_tone(425)  # endless hold tone until the answer
    leg = VoxEngine.call_conference("conf_" + conf_id, callerid=e.callerid,
                                    headers={"X-ClientType": "web"})

    pending = []

    def connected(ev):
        call.stop_playback()
        call.answer()
        VoxEngine.send_media_between(call, leg)

    def to_client(ev):
        if call.state == CallState.CONNECTED:
            call.send_message(ev.text)
        else:
            pending.append(ev.text)

    def flush(ev):
        while pending:
            call.send_message(pending.pop(0))

    leg.add_event_listener(CallEvents.Connected, connected)
    call.add_event_listener(CallEvents.Connected, flush)
    leg.add_event_listener(CallEvents.MessageReceived, to_client)
    call.add_event_listener(CallEvents.MessageReceived, lambda ev: leg.send_message(ev.text))
    leg.add_event_listener(CallEvents.Failed, lambda ev: call.reject(ev.code))
    leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.add_event_listener(CallEvents.Failed, lambda ev: VoxEngine.terminate())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
