"""Phone callers join a conference by PIN (the canonical application's
``InboundFromPSTN`` rule).

Answer, ask for the conference PIN followed by ``#``, and join the caller to
conference ``conf_<PIN>`` -- but only a conference that is open (a browser
is in it, or the room was created with ``callbridge rooms create PIN`` or
the API): a PIN nobody opened is refused like a wrong one, so guessing
cannot create conferences. At most ``MAX_TRIES`` tries, each with a time
limit; PIN attempts are also limited per caller id over time, and every
failure is logged (without the digits typed).
"""

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

MAX_TRIES = 3
#: Seconds to start typing the PIN, and between two digits.
PIN_TIMEOUT = 15
DIGIT_TIMEOUT = 5
MAX_PIN_DIGITS = 12
#: Attempts per caller id: a burst of this many, then this many per minute.
ATTEMPT_BURST = 6
ATTEMPTS_PER_MINUTE = 2

PROMPT = "Please enter your conference PIN, followed by the pound key."
RETRY = "Please enter your conference PIN again, followed by the pound key."


async def on_alerting(e):
    call = e.call
    caller = e.callerid or "anonymous"
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    call.handle_tones(True)
    for attempt in range(1, MAX_TRIES + 1):
        await call.say(PROMPT if attempt == 1 else RETRY)
        pin = await call.collect_tones(max_digits=MAX_PIN_DIGITS, terminator="#",
                                       timeout=PIN_TIMEOUT, inter_digit_timeout=DIGIT_TIMEOUT)
        if call.state.ended:
            return
        if not VoxEngine.rate_limit("pin:" + caller, ATTEMPTS_PER_MINUTE, ATTEMPT_BURST):
            Logger.write(f"PIN attempts from {caller} throttled")
            await call.say("Too many attempts. Please try again later. Goodbye.")
            call.hangup()
            return
        if pin and VoxEngine.conference_is_open("conf_" + pin):
            Logger.write(f"PIN accepted for {caller} on try {attempt}")
            join(call, pin, e)
            return
        Logger.write(f"wrong PIN from {caller}: try {attempt} of {MAX_TRIES} ({len(pin)} digits)")
        await call.say("That PIN is not valid." if pin else "No PIN was entered.")
    Logger.write(f"refused {caller} after {MAX_TRIES} tries")
    await call.say("Sorry, we could not find your conference. Goodbye.")
    call.hangup()


def join(call, pin, e):
    """Bridge the caller to the conference session's leg, both ways."""
    call.handle_tones(False)
    leg = VoxEngine.call_conference("conf_" + pin, callerid=e.callerid, display_name=e.display_name,
                                    headers={"X-ClientType": "pstn"})

    def connected(ev):
        VoxEngine.send_media_between(call, leg)

    async def failed(ev):
        Logger.write(f"conference conf_{pin} refused the caller: {ev.code}")
        await call.say("Sorry, the conference cannot take your call now. Goodbye.")
        call.hangup()

    leg.add_event_listener(CallEvents.Connected, connected)
    leg.add_event_listener(CallEvents.Failed, failed)
    leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    call.add_event_listener(CallEvents.Disconnected, lambda ev: leg.hangup())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
