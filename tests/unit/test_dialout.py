"""The dial-out policy: where the trunk may be dialed, by whom, how much."""

from __future__ import annotations

import pytest

from engine.calls.call import CallState, InternalCall
from engine.runtime.dialout import DialPolicy, DialRefused, normalize_number
from engine.calls.grants import Grant


class Buckets:
    """Hourly buckets as the directory keeps them, without time passing."""

    def __init__(self) -> None:
        self.taken: dict[str, int] = {}

    def __call__(self, key: str, per_hour: float, burst: int) -> bool:
        if self.taken.get(key, 0) >= burst:
            return False
        self.taken[key] = self.taken.get(key, 0) + 1
        return True


def participant(*permissions: str, identity: str = "ann") -> InternalCall:
    call = InternalCall(direction="inbound", number="conf_1", callerid=identity)
    call.grant = Grant(identity=identity, authenticated_by="join-token", room="1", admitted_by="join-token",
                       permissions=frozenset(permissions))
    call._set_state(CallState.CONNECTED)
    return call


def dialed() -> InternalCall:
    call = InternalCall(direction="outbound", number="+15550100", callerid="5550100")
    call._set_state(CallState.PROGRESSING)
    return call


def test_nothing_is_allowed_by_default() -> None:
    """Check a policy without an allow-list refuses every destination (closed by default)."""
    with pytest.raises(DialRefused) as info:
        DialPolicy().check("+15551234567", requested_by=None, hit=Buckets())
    assert (info.value.code, info.value.reason) == (403, "destination not allowed")


@pytest.mark.parametrize("number", ["911", "112", "+1 900 555 0100", "+882 1234 5678", "+979123456", "999"])
def test_emergency_and_premium_are_denied_even_when_everything_is_allowed(number: str) -> None:
    """Check the default deny-list wins over an allow-everything list."""
    with pytest.raises(DialRefused) as info:
        DialPolicy(allow=(r"\+?[0-9]+",)).check(number, requested_by=None, hit=Buckets())
    assert info.value.code == 403


def test_not_a_number_is_484() -> None:
    """Check letters, SIP URIs and too short or long numbers are refused 484."""
    policy = DialPolicy(allow=(".*",))
    for number in ("12", "sip:x@evil.example", "+1234567890123456", "555-CALL"):
        with pytest.raises(DialRefused) as info:
            policy.check(number, requested_by=None, hit=Buckets())
        assert info.value.code == 484, number


def test_allowed_destination_is_returned_normalized() -> None:
    """Check an allowed number comes back without separators."""
    assert normalize_number("+1 (555) 010-0100") == "+15550100100"
    policy = DialPolicy(allow=(r"\+1[2-9][0-9]{9}",))
    assert policy.check("+1 555 010 0100", requested_by=None, hit=Buckets()) == "+15550100100"


def test_a_guest_never_dials_out() -> None:
    """Check a participant without dial_out is refused, with or without a grant."""
    policy = DialPolicy(allow=(".*",))
    guest = participant("mute_self")
    with pytest.raises(DialRefused) as info:
        policy.check("+15551234567", requested_by=guest, hit=Buckets())
    assert (info.value.code, info.value.reason) == (403, "not allowed to dial out")
    anonymous = participant()
    anonymous.grant = None
    with pytest.raises(DialRefused):
        policy.check("+15551234567", requested_by=anonymous, hit=Buckets())


def test_caps_per_identity_and_engine() -> None:
    """Check the concurrent caps (per participant, engine-wide) and the hourly ones."""
    policy = DialPolicy(allow=(".*",), max_concurrent=3, max_per_identity=2, max_per_hour=100,
                        max_per_identity_hour=100)
    hit = Buckets()
    ann, bob = participant("dial_out"), participant("dial_out", identity="bob")
    calls = []
    for requester in (ann, ann):
        number = policy.check("+15551234567", requested_by=requester, hit=hit)
        call = dialed()
        policy.started(call, requester)
        calls.append(call)
    with pytest.raises(DialRefused) as info:
        policy.check("+15551234567", requested_by=ann, hit=hit)
    assert info.value.reason == "too many calls out for this participant"
    policy.started(dialed(), bob)
    with pytest.raises(DialRefused) as info:
        policy.check("+15551234567", requested_by=bob, hit=hit)
    assert info.value.reason == "too many calls out"
    assert number == "+15551234567" and policy.live() == 3
    hourly, hit = DialPolicy(allow=(".*",), max_per_identity_hour=1), Buckets()
    hourly.check("+15551234567", requested_by=ann, hit=hit)
    with pytest.raises(DialRefused) as info:
        hourly.check("+15551234567", requested_by=ann, hit=hit)
    assert info.value.reason == "hourly limit of calls out reached for this participant"


def test_the_call_ends_when_its_requester_leaves() -> None:
    """Check a dialed leg is hung up when the participant who asked ends, and
    the counters come back down."""
    policy = DialPolicy(allow=(".*",))
    ann = participant("dial_out")
    call = dialed()
    policy.started(call, ann)
    assert policy.live() == 1 and policy.live("join-token:ann") == 1
    ann.hangup()
    assert call.state.ended
    assert policy.live() == 0 and policy.live("join-token:ann") == 0


def test_bad_configuration_is_named() -> None:
    """Check a broken pattern or a negative cap is refused with its name."""
    with pytest.raises(ValueError, match="dial-out allow pattern '\\(' is not a valid regular expression"):
        DialPolicy(allow=("(",))
    with pytest.raises(ValueError, match="dial-out max-concurrent must be a whole number"):
        DialPolicy(max_concurrent=-1)
