"""``callbridge serve`` flags and CALLBRIDGE_* variables onto EngineConfig
(engine.cli), for the settings checked here: the RTP inactivity timeout,
guest logins and strict RTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import _config_from, build_parser
from engine.server import EngineConfig
from engine.calls.sip_ua import Trunk


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


BOUNDS = {
    # flag: (variable, field path, default, a value)
    "--message-rate": ("MESSAGE_RATE", "policy.message_rate", 5.0, "2.5"),
    "--message-burst": ("MESSAGE_BURST", "policy.message_burst", 20, "7"),
    "--max-transactions": ("MAX_TRANSACTIONS", "policy.max_transactions", 100_000, "300"),
    "--max-tcp-per-source": ("MAX_TCP_PER_SOURCE", "policy.max_tcp_per_source", 20, "4"),
    "--max-sessions": ("MAX_SESSIONS", "max_sessions", 5000, "50"),
    "--ws-max-per-source": ("WS_MAX_PER_SOURCE", "ws_max_per_source", 10, "3"),
    "--ws-max-connections": ("WS_MAX_CONNECTIONS", "ws_max_connections", 2000, "30"),
}


def _field(cfg: EngineConfig, path: str) -> object:
    value: object = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("flag", sorted(BOUNDS))
def test_bounds_default_flag_and_environment(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check each bound on unauthenticated requests has its documented
    default, reads its CALLBRIDGE_ variable, and the flag wins."""
    variable, path, default, value = BOUNDS[flag]
    monkeypatch.delenv("CALLBRIDGE_" + variable, raising=False)
    assert _field(config([]), path) == default
    monkeypatch.setenv("CALLBRIDGE_" + variable, value)
    assert _field(config([]), path) == type(default)(value)
    assert _field(config([flag, "9"]), path) == 9


def test_zero_caps_are_refused() -> None:
    """A cap of 0 would refuse everything: it is refused with the flag named."""
    with pytest.raises(SystemExit) as info:
        config(["--max-sessions", "0"])
    assert str(info.value) == "callbridge: --max-sessions must be 1 or more, got 0"


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


@pytest.mark.parametrize("argv", [
    ["rooms", "create", "4321", "--data-dir", "d", "--realm", "r"],
    ["rooms", "--data-dir", "d", "--realm", "r", "create", "4321"],
    ["users", "list", "--data-dir", "d", "--realm", "r"],
    ["keys", "delete", "k1", "--data-dir", "d", "--realm", "r"],
    ["keys", "--data-dir", "d", "create", "--realm", "r"],
])
def test_store_options_go_before_or_after_the_action(argv: list[str]) -> None:
    """Check ``--data-dir`` and ``--realm`` of ``rooms``/``users``/``keys``
    are taken after the action's arguments as well as before it (argparse
    refused ``rooms create 4321 --data-dir d``)."""
    from pathlib import Path

    from engine.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.data_dir, args.realm) == (Path("d"), "r")


def test_store_options_default_when_given_nowhere() -> None:
    """Check the action's own parser does not blank the command's defaults."""
    from pathlib import Path

    from engine.cli import build_parser

    args = build_parser().parse_args(["rooms", "create", "4321"])
    assert isinstance(args.data_dir, Path) and args.realm


def test_serve_raises_the_open_files_limit_to_the_hard_one() -> None:
    """Check a process started with a soft limit of 256 open files (where
    some 120 live calls would exhaust it) leaves with its hard limit."""
    import resource
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = ("import resource; from engine.cli import _raise_file_limit; "
            "print(_raise_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=low, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    want = hard if hard != resource.RLIM_INFINITY else 1_048_576
    assert out == ["(256,", f"{want})", str(want)]


def test_rtp_pin_after_default_flag_environment_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check a leg's RTP socket is pinned after 50 packets by default, that
    CALLBRIDGE_RTP_PIN_AFTER and --rtp-pin-after (0: never) set it, and that a
    negative count is refused by name."""
    monkeypatch.delenv("CALLBRIDGE_RTP_PIN_AFTER", raising=False)
    assert config([]).rtp_pin_after == 50
    assert config(["--rtp-pin-after", "0"]).rtp_pin_after == 0
    monkeypatch.setenv("CALLBRIDGE_RTP_PIN_AFTER", "10")
    assert config([]).rtp_pin_after == 10
    with pytest.raises(SystemExit) as info:
        config(["--rtp-pin-after", "-1"])
    assert str(info.value) == "callbridge: --rtp-pin-after must be 0 (never) or more packets, got -1"


def test_media_send_workers_default_flag_environment_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check RTP send workers are off by default, read CALLBRIDGE_MEDIA_SEND_WORKERS
    and the flag, and a count below 0 or above 16 (each is a process) is refused by name."""
    monkeypatch.delenv("CALLBRIDGE_MEDIA_SEND_WORKERS", raising=False)
    assert config([]).media_send_workers == 0
    assert config(["--media-send-workers", "2"]).media_send_workers == 2
    monkeypatch.setenv("CALLBRIDGE_MEDIA_SEND_WORKERS", "1")
    assert config([]).media_send_workers == 1
    for bad in ("-1", "17"):
        with pytest.raises(SystemExit) as info:
            config(["--media-send-workers", bad])
        assert str(info.value) == f"callbridge: --media-send-workers must be 0 (off) to 16, got {bad}"


def test_media_pacing_on_by_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check frames are paced onto the grid by default, and --media-pacing off
    or CALLBRIDGE_MEDIA_PACING=off sends each as it is made."""
    monkeypatch.delenv("CALLBRIDGE_MEDIA_PACING", raising=False)
    assert config([]).media_pacing is True
    assert config(["--media-pacing", "off"]).media_pacing is False
    monkeypatch.setenv("CALLBRIDGE_MEDIA_PACING", "off")
    assert config([]).media_pacing is False
    assert config(["--media-pacing", "on"]).media_pacing is True


def test_silence_suppression_off_by_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check silence suppression is off by default (SIP trunks expect
    continuous RTP), and --silence-suppression or
    CALLBRIDGE_SILENCE_SUPPRESSION=on turns it on."""
    monkeypatch.delenv("CALLBRIDGE_SILENCE_SUPPRESSION", raising=False)
    assert config([]).silence_suppression is False
    assert EngineConfig().silence_suppression is False
    assert config(["--silence-suppression"]).silence_suppression is True
    monkeypatch.setenv("CALLBRIDGE_SILENCE_SUPPRESSION", "on")
    assert config([]).silence_suppression is True


def test_directory_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the directory is in memory by default (no URL), comes from
    CALLBRIDGE_DIRECTORY, and --directory wins over the variable."""
    monkeypatch.delenv("CALLBRIDGE_DIRECTORY", raising=False)
    assert config([]).directory_url is None
    monkeypatch.setenv("CALLBRIDGE_DIRECTORY", "redis://10.0.0.5:6379/1")
    assert config([]).directory_url == "redis://10.0.0.5:6379/1"
    assert config(["--directory", "rediss://cache:6380/0"]).directory_url == "rediss://cache:6380/0"
    monkeypatch.setenv("CALLBRIDGE_DIRECTORY", "")
    assert config([]).directory_url is None


def test_overload_rtp_backlog_default_flag_environment_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check new calls are refused past 8 KiB waiting for the RTP readers by
    default, that CALLBRIDGE_OVERLOAD_RTP_BACKLOG_KB and the flag set it (0:
    off), that ``--overload off`` turns it off with the rest, and that a
    negative size is refused by name."""
    monkeypatch.delenv("CALLBRIDGE_OVERLOAD_RTP_BACKLOG_KB", raising=False)
    assert config([]).policy.overload.media_backlog == 8192
    assert config(["--overload-rtp-backlog-kb", "32"]).policy.overload.media_backlog == 32768
    assert config(["--overload-rtp-backlog-kb", "0"]).policy.overload.media_backlog == 0
    assert config(["--overload", "off"]).policy.overload.media_backlog == 0
    monkeypatch.setenv("CALLBRIDGE_OVERLOAD_RTP_BACKLOG_KB", "4")
    assert config([]).policy.overload.media_backlog == 4096
    with pytest.raises(SystemExit) as info:
        config(["--overload-rtp-backlog-kb", "-1"])
    assert str(info.value) == "callbridge: --overload-rtp-backlog-kb must be 0 (off) or more, got -1.0"


def test_overload_late_legs_default_flag_environment_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check new calls are refused once half the calls had late audio in a
    second by default, that CALLBRIDGE_OVERLOAD_LATE_LEGS_PCT and the flag
    set it (0: off), that ``--overload off`` turns it off, and that a share
    outside 0-100 is refused by name."""
    monkeypatch.delenv("CALLBRIDGE_OVERLOAD_LATE_LEGS_PCT", raising=False)
    assert config([]).policy.overload.late_legs == 0.5
    assert config(["--overload-late-legs-pct", "20"]).policy.overload.late_legs == 0.2
    assert config(["--overload", "off"]).policy.overload.late_legs == 0
    monkeypatch.setenv("CALLBRIDGE_OVERLOAD_LATE_LEGS_PCT", "0")
    assert config([]).policy.overload.late_legs == 0
    for bad in ("-1", "101"):
        with pytest.raises(SystemExit) as info:
            config(["--overload-late-legs-pct", bad])
        assert str(info.value) == f"callbridge: --overload-late-legs-pct must be 0 (off) to 100, got {float(bad)}"
