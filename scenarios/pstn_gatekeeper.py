"""Phone callers join a conference by PIN (the canonical application's
``InboundFromPSTN`` rule).

Answer, ask for the conference PIN followed by ``#`` (the caller may type
it during the prompt: the first digit stops it), and join the caller to
the conference it opens:

- a room's PIN (``callbridge rooms create ID`` prints it, the API), or its id
  when it has no PIN; a room's moderator PIN joins as moderator;
- an invite's one-time code (``POST /api/v1/rooms/{id}/invites``);
- the id of a conference a browser opened (``conf_<id>``, no room).

A PIN nobody opened is refused like a wrong one, so guessing cannot create
conferences. At most ``MAX_TRIES`` tries, each with a time limit; the
engine also limits wrong PINs by source address and engine-wide
(``VoxEngine.admit_with_pin``), and every failure is logged (without the
digits typed).

A moderator on the phone has keypad commands: ``*6`` mutes everyone else,
``*7`` unmutes them (sent to the conference session, which checks the role).
"""

import json

from engine.scenario import AppEvents, CallEvents, Logger, RoomRefused, VoxEngine

MAX_TRIES = 3
#: Seconds to start typing the PIN, and between two digits.
PIN_TIMEOUT = 15
DIGIT_TIMEOUT = 5
MAX_PIN_DIGITS = 12

PROMPT = "Please enter your conference PIN, followed by the pound key."
RETRY = "Please enter your conference PIN again, followed by the pound key."
#: Refusals after which the caller is not asked again.
FINAL = {"too_many_attempts", "pin_locked", "unavailable"}


async def on_alerting(e):
    call = e.call
    caller = e.callerid or "anonymous"
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    call.handle_tones(True)
    for attempt in range(1, MAX_TRIES + 1):
        # barge-in: the first digit stops the prompt; the time to start
        # typing counts from the prompt's end
        call.say(PROMPT if attempt == 1 else RETRY)
        pin = await call.collect_tones(max_digits=MAX_PIN_DIGITS, terminator="#", timeout=PIN_TIMEOUT,
                                       inter_digit_timeout=DIGIT_TIMEOUT, stop_playback=True)
        if call.state.ended:
            return
        try:
            found = VoxEngine.admit_with_pin(call, pin) if pin else None
        except RoomRefused as refused:
            if refused.code in FINAL:
                Logger.write(f"PIN attempts from {caller} throttled ({refused.code})")
                await call.say(refused.message + " Goodbye.")
                call.hangup()
                return
            found = None
        if found is not None:
            Logger.write(f"PIN accepted for {caller} on try {attempt} ({found['role']})")
            join(call, found["conference"], found["role"], e)
            return
        Logger.write(f"wrong PIN from {caller}: try {attempt} of {MAX_TRIES} ({len(pin)} digits)")
        await call.say("That PIN is not valid." if pin else "No PIN was entered.")
    Logger.write(f"refused {caller} after {MAX_TRIES} tries")
    await call.say("Sorry, we could not find your conference. Goodbye.")
    call.hangup()


def join(call, conference, role, e):
    """Bridge the caller to the conference session's leg, both ways; the
    grant the PIN gave goes with it."""
    call.handle_tones(False)
    leg = VoxEngine.call_conference(conference, callerid=e.callerid, display_name=e.display_name,
                                    headers={"X-ClientType": "pstn"}, on_behalf_of=call)
    def connected(ev):
        VoxEngine.send_media_between(call, leg)
        if role == "moderator":
            keypad_commands(call, leg)

    async def failed(ev):
        Logger.write(f"{conference} refused the caller: {ev.code}")
        await call.say("Sorry, the conference cannot take your call now. Goodbye.")
        call.hangup()

    leg.add_event_listener(CallEvents.Connected, connected)
    leg.add_event_listener(CallEvents.Failed, failed)
    leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    call.add_event_listener(CallEvents.Disconnected, lambda ev: leg.hangup())


COMMANDS = {"6": ("mute_all", "Everyone else is muted."), "7": ("unmute_all", "Everyone is unmuted.")}


def keypad_commands(call, leg):
    """``*6``/``*7`` from a moderator's keypad, relayed to the conference."""
    typed = []
    call.handle_tones(True)

    def on_tone(ev):
        if ev.tone == "*":
            typed[:] = ["*"]
            return
        if typed == ["*"] and ev.tone in COMMANDS:
            action, said = COMMANDS[ev.tone]
            leg.send_message(json.dumps({"type": "MODERATE", "action": action}))
            call.say(said)
        typed.clear()

    call.add_event_listener(CallEvents.ToneReceived, on_tone)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
