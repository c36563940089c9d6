"""Say yes or no: the speech-recognition sample. The caller is asked a
question and may answer by voice ("yes"/"no") or by key (1 yes, 2 no);
the scenario branches on the answer, asks again once after silence or an
unclear answer, then gives up."""

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

QUESTION = "Would you like a call back? Say yes or no, or press 1 for yes and 2 for no."
KEYS = {"1": "yes", "2": "no"}


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    for attempt in range(2):
        r = await call.gather(prompt=QUESTION, hints=["yes", "no"], digits=True, timeout=6)
        answer = r.text if r.kind == "speech" else KEYS.get(r.digits) if r.kind == "digits" else None
        Logger.write(f"answer {r.kind} {answer!r} confidence={r.confidence:.2f}")
        if r.kind in ("hangup", "error"):
            break
        if answer == "yes":
            await call.say("Thank you. We will call you back.")
            break
        if answer == "no":
            await call.say("All right. Goodbye.")
            break
        if attempt == 0:
            await call.say("Sorry, I did not get that.")
    call.hangup()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
