"""A scenario that answers and streams the call to a voice bot
(``examples/echo_bot.py``); the rule that runs it, in rules.yaml::

    rules:
      - {name: Bot, pattern: "bot", scenarios: [stream_to_bot]}
"""

from engine.scenario import AppEvents, CallEvents, Logger, StreamEvents, VoxEngine

BOT = "ws://127.0.0.1:8765/"


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    stream = call.stream_to(BOT, direction="inbound", custom={"caller": call.callerid})
    call.add_event_listener(StreamEvents.StreamStarted, lambda ev: Logger.write(f"bot connected (reconnect={ev.reconnect})"))
    call.add_event_listener(StreamEvents.StreamError, lambda ev: Logger.write(f"bot lost: {ev.error}"))
    if not await stream:  # the bot could not be reached, or kept dropping
        await call.say("Sorry, the assistant is not available.")
        call.hangup()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
