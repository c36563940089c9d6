"""``callbridge serve`` flags and CALLBRIDGE_* variables onto EngineConfig
(engine.cli), for the settings checked here: the RTP inactivity timeout and
guest logins."""

from __future__ import annotations

import pytest

from engine.cli import _config_from, build_parser
from engine.server import EngineConfig


def config(argv: list[str]) -> EngineConfig:
    result = _config_from(build_parser().parse_args(["serve", *argv]))
    assert isinstance(result, EngineConfig)
    return result


def test_rtp_timeout_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check --rtp-timeout defaults to 60 s, reads CALLBRIDGE_RTP_TIMEOUT,
    and the flag wins over the variable; 0 (off) is accepted."""
    monkeypatch.delenv("CALLBRIDGE_RTP_TIMEOUT", raising=False)
    assert config([]).rtp_timeout == 60.0
    monkeypatch.setenv("CALLBRIDGE_RTP_TIMEOUT", "7.5")
    assert config([]).rtp_timeout == 7.5
    assert config(["--rtp-timeout", "0"]).rtp_timeout == 0.0


def test_negative_rtp_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLBRIDGE_RTP_TIMEOUT", raising=False)
    with pytest.raises(SystemExit) as info:
        config(["--rtp-timeout", "-1"])
    assert str(info.value) == "callbridge: --rtp-timeout must be 0 (off) or more seconds, got -1.0"


def test_guests_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check guests may log in by default (the demo page needs it), and
    --guests off or CALLBRIDGE_GUESTS=off admits only the store's users."""
    monkeypatch.delenv("CALLBRIDGE_GUESTS", raising=False)
    assert config([]).guest_login is True
    assert config(["--guests", "off"]).guest_login is False
    monkeypatch.setenv("CALLBRIDGE_GUESTS", "off")
    assert config([]).guest_login is False
    assert config(["--guests", "on"]).guest_login is True


def test_webhook_private_networks_denied_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check webhooks to private networks are denied by default (closed by
    default), allowed by the flag or CALLBRIDGE_WEBHOOK_PRIVATE_NETWORKS, and
    a value other than allow/deny is refused."""
    monkeypatch.delenv("CALLBRIDGE_WEBHOOK_PRIVATE_NETWORKS", raising=False)
    assert config([]).webhook_private_networks is False
    assert config(["--webhook-private-networks", "allow"]).webhook_private_networks is True
    monkeypatch.setenv("CALLBRIDGE_WEBHOOK_PRIVATE_NETWORKS", "allow")
    assert config([]).webhook_private_networks is True
    with pytest.raises(SystemExit):
        config(["--webhook-private-networks", "maybe"])
