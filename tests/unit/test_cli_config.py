"""``callbridge serve`` flags and CALLBRIDGE_* variables onto EngineConfig
(engine.cli), for the settings checked here: the RTP inactivity timeout and
guest logins."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import _config_from, build_parser
from engine.server import EngineConfig
from engine.ua import Trunk


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


def test_trunk_password_stays_out_of_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Check the trunk's password comes from --trunk-password-file or
    CALLBRIDGE_TRUNK_PASSWORD into the URI (escaped), a password written in
    --trunk still works but warns, one in CALLBRIDGE_TRUNK does not warn,
    and an unreadable password file is a clear error; the --pin-min-length
    flag reaches the config."""
    for name in ("CALLBRIDGE_TRUNK", "CALLBRIDGE_TRUNK_PASSWORD", "CALLBRIDGE_TRUNK_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    secret = tmp_path / "trunk.pw"
    secret.write_text("p@ss:word\n")
    made = config(["--trunk", "sip:acct@carrier.example:5080", "--trunk-password-file", str(secret)])
    trunk = Trunk.from_uri(made.trunk or "")
    assert (trunk.username, trunk.password, trunk.port) == ("acct", "p@ss:word", 5080)
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setenv("CALLBRIDGE_TRUNK_PASSWORD", "envpw")
    assert Trunk.from_uri(config(["--trunk", "sip:acct@carrier.example"]).trunk or "").password == "envpw"
    monkeypatch.delenv("CALLBRIDGE_TRUNK_PASSWORD")
    assert config(["--trunk", "sip:acct:inline@carrier.example"]).trunk == "sip:acct:inline@carrier.example"
    assert "warning: the trunk password in --trunk is visible" in capsys.readouterr().err
    monkeypatch.setenv("CALLBRIDGE_TRUNK", "sip:acct:inline@carrier.example")
    config([])
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        config(["--trunk", "sip:acct@carrier.example", "--trunk-password-file", str(tmp_path / "none")])
    assert "--trunk-password-file" in str(info.value) and "cannot read" in str(info.value)
    assert config(["--pin-min-length", "8"]).pin_min_length == 8
