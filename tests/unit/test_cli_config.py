"""``callbridge serve`` flags and CALLBRIDGE_* variables onto EngineConfig
(engine.cli), for the settings checked here: the RTP inactivity timeout,
guest logins and strict RTP."""

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


def test_rtp_strict_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check strict RTP is on by default with probation 4 and a 3 s send
    grace, and --rtp-strict off or CALLBRIDGE_RTP_STRICT=off turns it off."""
    monkeypatch.delenv("CALLBRIDGE_RTP_STRICT", raising=False)
    default = config([])
    assert (default.rtp_strict, default.rtp_probation, default.rtp_send_grace) == (True, 4, 3.0)
    assert config(["--rtp-strict", "off"]).rtp_strict is False
    monkeypatch.setenv("CALLBRIDGE_RTP_STRICT", "off")
    assert config([]).rtp_strict is False
    assert config(["--rtp-strict", "on"]).rtp_strict is True
