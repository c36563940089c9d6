"""The shipped "say yes or no" scenario on simulated calls: ``say()``
reaches ``gather(speech=True)``, ``press()`` its digits, silence its timeout."""

from __future__ import annotations

from pathlib import Path

from engine.testing import Harness

ROOT = Path(__file__).parents[2]


def test_yes_by_voice_branches_to_call_back(callbridge: Harness) -> None:
    """Check a spoken 'yes' is the scenario's answer and it says it will call back."""
    app = callbridge.load(ROOT)
    call = app.incoming_call("yesno")
    assert call.heard_speech("Say yes or no")
    call.say("yes")
    assert call.logged("answer speech 'yes'")
    assert call.heard_speech("We will call you back")


def test_no_by_key_and_silence_asks_again(callbridge: Harness) -> None:
    """Check silence gets a second question, and key 2 then means 'no'."""
    app = callbridge.load(ROOT)
    call = app.incoming_call("yesno")
    call.wait(10)
    assert call.logged("answer timeout None")
    assert call.heard_speech("did not get that")
    call.press("2")
    assert call.logged("answer digits 'no'")
    assert call.heard_speech("Goodbye")
