"""Rules that say who may use them: kinds, source networks, authentication."""

from __future__ import annotations

import pytest

from engine.runtime.router import Caller, RulesError, parse_rules

RULES = """rules:
  - {name: Office, pattern: ".*", kinds: [sip], networks: [10.0.0.0/8, "2001:db8::/32"], scenarios: [x]}
  - {name: Join, pattern: joinconf, kinds: [web], scenarios: [x]}
  - {name: Conf, pattern: "conf_.+", kinds: [internal], scenarios: [x]}
  - {name: Users, pattern: "[a-z]+", kinds: [sip], authenticated: true, scenarios: [x]}
  - {name: Echo, pattern: echo, scenarios: [x]}
"""


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return parse_rules(RULES)


def test_kinds_pick_the_rule(rules) -> None:  # type: ignore[no-untyped-def]
    """Check a browser reaches joinconf, a phone does not (403, no rule)."""
    assert rules.match("joinconf", Caller("web", "198.51.100.1")).name == "Join"
    assert rules.match("joinconf", Caller("sip", "198.51.100.1")) is None
    assert rules.refusal("conf_1", Caller("web", "198.51.100.1")) == (403, "kind")
    assert rules.refusal("conf_1", Caller("sip", "198.51.100.1")) == (403, "network")
    assert rules.match("conf_1", Caller("internal")).name == "Conf"


def test_networks_take_only_their_sources(rules) -> None:  # type: ignore[no-untyped-def]
    """Check a source inside a network (IPv4, IPv6, IPv4-mapped) takes the
    rule, one outside falls through to the next rule."""
    assert rules.match("echo", Caller("sip", "10.1.2.3")).name == "Office"
    assert rules.match("echo", Caller("sip", "::ffff:10.1.2.3")).name == "Office"
    assert rules.match("echo", Caller("sip", "2001:db8::5")).name == "Office"
    assert rules.match("echo", Caller("sip", "203.0.113.9")).name == "Echo"
    assert rules.match("echo", Caller("sip", None)).name == "Echo"
    assert rules.match("echo", Caller("sip", "not-an-address")).name == "Echo"


def test_authentication_asks_for_a_challenge(rules) -> None:  # type: ignore[no-untyped-def]
    """Check an anonymous phone dialing a user gets 401 (challenge), an
    authenticated one the rule, and a number no pattern matches 404."""
    assert rules.match("alice", Caller("sip", "203.0.113.9")) is None
    assert rules.refusal("alice", Caller("sip", "203.0.113.9")) == (401, "authentication")
    assert rules.match("alice", Caller("sip", "203.0.113.9", authenticated=True)).name == "Users"
    assert parse_rules(RULES.replace('".*"', '"9.*"')).refusal("12", Caller("web")) == (404, "no rule")
    assert rules.refusal("alice", Caller("web", "203.0.113.9")) == (403, "kind")


def test_explain_says_why_a_rule_refused(rules) -> None:  # type: ignore[no-untyped-def]
    """Check explain names the restriction that passed each rule over."""
    verdicts = [(r.name, v) for r, v in rules.explain("alice", Caller("sip", "203.0.113.9"))]
    assert verdicts == [("Office", "refused: network"), ("Join", "pattern does not match"),
                        ("Conf", "pattern does not match"), ("Users", "refused: authentication"),
                        ("Echo", "pattern does not match")]
    assert rules.rules[0].restrictions() == {"kinds": ["sip"], "networks": ["10.0.0.0/8", "2001:db8::/32"]}


def test_a_restricted_catch_all_does_not_shadow_later_rules(rules) -> None:  # type: ignore[no-untyped-def]
    """Check no 'can never match' warning for rules after a restricted '.*'."""
    assert rules.warnings == []


@pytest.mark.parametrize(("snippet", "message"), [
    ("kinds: [phone]", "unknown call kind 'phone' (use web, sip, internal)"),
    ("kinds: web", "'kinds' must be a list, got a string"),
    ("kinds: []", "'kinds' must not be empty (leave it out to take every caller)"),
    ("networks: [10.0.0.300/8]", "'10.0.0.300/8' is not an address or network (e.g. 192.0.2.0/24, ::1)"),
    ("networks: [5]", "'5' is not an address or network (e.g. 192.0.2.0/24, ::1)"),
    ("authenticated: 1", "'authenticated' must be true or false, got an integer"),
])
def test_bad_restrictions_name_what_is_wrong(snippet: str, message: str) -> None:
    """Check each bad restriction stops the file with its line and reason."""
    with pytest.raises(RulesError) as info:
        parse_rules(f"rules:\n  - name: R\n    pattern: x\n    scenarios: [x]\n    {snippet}\n")
    assert str(info.value) == f"rules.yaml:5: rule 'R': {message}"
