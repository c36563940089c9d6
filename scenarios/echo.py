"""The echo test every telephony platform ships: answer, explain, beep,
then send the caller's own audio back to them for a minute."""

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine, set_timeout

ECHO_SECONDS = 60


async def on_alerting(e):
    call = e.call
    Logger.write(f"echo test for {e.callerid}")
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    await call.say("This is the callbridge echo test. After the tone, speak, and you will hear yourself.")
    await call.start_playback_tone(1000, 0.4)
    call.start_echo()
    set_timeout(call.hangup, ECHO_SECONDS * 1000)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
