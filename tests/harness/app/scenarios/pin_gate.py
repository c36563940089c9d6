"""Phone dial-in: answer, ask for the conference PIN (digits until '#'),
check it with the rooms API, and join conference ``conf_<pin>``. Three
wrong PINs or ten seconds of silence end the call."""

from engine.runtime.scenario import AppEvents, CallEvents, Logger, Net, VoxEngine

API = "http://api.example/rooms/"
ATTEMPTS = 3


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    await call.say("Welcome. Please enter your conference PIN, then press the pound key.")
    for _ in range(ATTEMPTS):
        pin = await call.collect_tones(terminator="#", timeout=10)
        if not pin:
            await call.say("We did not receive a PIN. Goodbye.")
            call.hangup()
            return
        room = await Net.http_request(API + pin)
        Logger.write(f"PIN {pin}: rooms API answered {room.code}")
        if room.code == 200:
            await call.say("Thank you. Joining the conference.")
            join(call, "conf_" + pin)
            return
        await call.say("That PIN is not valid. Please try again.")
    await call.say("Too many attempts. Goodbye.")
    call.hangup()


def join(call, name):
    leg = VoxEngine.call_conference(name, callerid=call.callerid, headers={"X-ClientType": "pstn"})

    def connected(ev):
        VoxEngine.send_media_between(call, leg)
        Logger.write(f"joined {name}")

    leg.add_event_listener(CallEvents.Connected, connected)
    leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    leg.add_event_listener(CallEvents.Failed, lambda ev: call.hangup())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
