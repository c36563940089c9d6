"""The ``callbridge`` command.

``callbridge serve`` runs the engine (every flag also reads a ``CALLBRIDGE_*``
environment variable; flags win); ``callbridge rules check`` validates
``rules.yaml`` and the scenarios it names; ``callbridge call NUMBER`` places
a test call through a running engine; ``callbridge users`` and
``callbridge rooms`` manage the store; ``callbridge certs dev`` writes a
self-signed certificate for trying HTTPS/WSS (``serve --tls-cert
--tls-key``; SIGHUP loads the pair again).

Logs are one line per event, ``key=value`` fields with the session and call
ids where there are some.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from engine.media.rtp import PIN_AFTER
from engine.security_log import escape_controls

__all__ = ["main", "build_parser"]

ENV_PREFIX = "CALLBRIDGE_"
#: Most RTP send workers ``--media-send-workers`` starts (each is a process).
MAX_SEND_WORKERS = 16


class _LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... session=... call=... msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}"]
        for attr, key in (("session_id", "session"), ("call_id", "call")):
            value = getattr(record, attr, None)
            if value:
                parts.append(f"{key}={escape_controls(str(value)).replace(' ', '_')}")
        # A message may quote what a caller sent: controls are escaped so it
        # cannot end the line and forge the next one.
        message = escape_controls(record.getMessage()).replace('"', "'")
        parts.append(f'msg="{message}"')
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _env(name: str, default: Any) -> Any:
    return os.environ.get(ENV_PREFIX + name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callbridge", description="Programmable telephony engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the engine")
    serve.add_argument("--sip-host", default=_env("SIP_HOST", "127.0.0.1"),
                       help="SIP listen address(es), comma-separated (IPv4 and/or IPv6)")
    serve.add_argument("--sip-port", type=int, default=int(_env("SIP_PORT", 5060)))
    serve.add_argument("--http-host", default=_env("HTTP_HOST", "127.0.0.1"))
    serve.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", 8080)))
    serve.add_argument("--rules", type=Path, default=Path(_env("RULES", "rules.yaml")))
    serve.add_argument("--scenarios", type=Path, default=Path(_env("SCENARIOS", "scenarios")))
    serve.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", "data")))
    serve.add_argument("--trunk", default=_env("TRUNK", None),
                       help="SIP trunk for call_pstn: sip:user@host:port[;transport=tcp]; give its"
                       " password with --trunk-password-file or CALLBRIDGE_TRUNK_PASSWORD, not in"
                       " the URI (argv is visible to every local user)")
    serve.add_argument("--trunk-ca", type=Path, default=_env("TRUNK_CA", None),
                       help="CA file the trunk's TLS certificate must chain to (default: the system's CAs)")
    serve.add_argument("--trunk-client-cert", type=Path, default=_env("TRUNK_CLIENT_CERT", None),
                       help="client certificate shown to a TLS trunk that asks for one (default: none)")
    serve.add_argument("--trunk-client-key", type=Path, default=_env("TRUNK_CLIENT_KEY", None))
    serve.add_argument("--sip-tls-port", type=int, default=int(_env("SIP_TLS_PORT", 5061)),
                       help="port of SIP over TLS (on with --tls-cert and --tls-key)")
    serve.add_argument("--trunk-password-file", type=Path, default=_env("TRUNK_PASSWORD_FILE", None),
                       help="a file whose first line is the trunk's password")
    serve.add_argument("--pin-min-length", type=int, default=int(_env("PIN_MIN_LENGTH", 6)),
                       help="digits of the PINs drawn for new rooms, and the fewest a given PIN may have")
    serve.add_argument("--advertised-host", default=_env("ADVERTISED_HOST", None),
                       help="address to put in Via, Contact and SDP (behind NAT)")
    serve.add_argument("--rtp-ports", default=_env("RTP_PORTS", "20000-30000"),
                       help="RTP port range START-END")
    serve.add_argument("--rate-limit", type=float, default=float(_env("RATE_LIMIT", 50)),
                       help="new requests per second allowed per source address (0: off)")
    serve.add_argument("--rate-burst", type=int, default=int(_env("RATE_BURST", 200)))
    serve.add_argument("--ban-seconds", type=float, default=float(_env("BAN_SECONDS", 60)))
    serve.add_argument("--trusted", default=_env("TRUSTED", ""),
                       help="comma-separated source addresses exempt from rate limits")
    serve.add_argument("--sip-proxies", default=_env("SIP_PROXIES", ""),
                       help="comma-separated addresses of front SIP proxies (a load balancer such as"
                            " Kamailio's dispatcher): trusted, and a request one forwards is taken to"
                            " come from the address in the Via below its own")
    serve.add_argument("--message-rate", type=float, default=float(_env("MESSAGE_RATE", 5)),
                       help="out-of-dialog MESSAGEs per second per source address, each starting a"
                            " session (503 beyond; 0: off)")
    serve.add_argument("--message-burst", type=int, default=int(_env("MESSAGE_BURST", 20)))
    serve.add_argument("--max-transactions", type=int, default=int(_env("MAX_TRANSACTIONS", 100000)),
                       help="most live SIP server transactions (new requests beyond get 503)")
    serve.add_argument("--silence-suppression", action="store_true",
                       default=_env("SILENCE_SUPPRESSION", "") in ("1", "on", "true"),
                       help="send conference legs nothing while nobody speaks (RFC 3551 section 4.1), with"
                            " RFC 3389 comfort noise (CN offered and accepted); off by default: SIP trunks"
                            " expect continuous RTP")
    serve.add_argument("--overload", choices=("on", "off"), default=_env("OVERLOAD", "on"),
                       help="shed new INVITEs (503, then drop) past the bounds below and a quarter of a"
                            " full SIP UDP receive buffer; off: take every call whatever the load")
    serve.add_argument("--overload-lag-ms", type=float, default=float(_env("OVERLOAD_LAG_MS", 100)),
                       help="smoothed event-loop lag (ms) from which new INVITEs get 503 (0: off)")
    serve.add_argument("--overload-drop-lag-ms", type=float, default=float(_env("OVERLOAD_DROP_LAG_MS", 500)),
                       help="smoothed event-loop lag (ms) from which new INVITEs are dropped unparsed (0: off)")
    serve.add_argument("--overload-rtp-backlog-kb", type=float,
                       default=float(_env("OVERLOAD_RTP_BACKLOG_KB", 8)),
                       help="KiB waiting for the RTP readers on the median sampled call socket from which new"
                            " INVITEs get 503: the media readers fall behind the phones (0: off)")
    serve.add_argument("--overload-late-legs-pct", type=float,
                       default=float(_env("OVERLOAD_LATE_LEGS_PCT", 50)),
                       help="share (percent) of the calls whose audio came late for its tick, in each of the"
                            " last two seconds, from which new INVITEs get 503; counted from 50 calls on (0: off)")
    serve.add_argument("--max-setup-calls", type=int, default=int(_env("MAX_SETUP_CALLS", 1000)),
                       help="incoming calls not answered yet (ringing included) from which new INVITEs"
                            " get 503 (0: off)")
    serve.add_argument("--sip-udp-rcvbuf", type=int, default=int(_env("SIP_UDP_RCVBUF", 4 * 1024 * 1024)),
                       help="bytes of receive buffer asked for each SIP UDP socket (0: the system's)")
    serve.add_argument("--media-send-workers", type=int, default=int(_env("MEDIA_SEND_WORKERS", 0)),
                       help="processes that send conference audio at each 20 ms tick's due time, using "
                            "another core (0: the event loop sends it)")
    serve.add_argument("--media-pacing", choices=("on", "off"), default=_env("MEDIA_PACING", "on"),
                       help="prepare each 20 ms tick's audio a little early and send it at the tick's due time "
                            "(without send workers); off: send each frame as it is made")
    serve.add_argument("--max-tcp-per-source", type=int, default=int(_env("MAX_TCP_PER_SOURCE", 20)),
                       help="most SIP TCP connections one source address may hold")
    serve.add_argument("--max-sessions", type=int, default=int(_env("MAX_SESSIONS", 5000)),
                       help="most scenario sessions at once (calls and MESSAGEs beyond get 503)")
    serve.add_argument("--ws-max-per-source", type=int, default=int(_env("WS_MAX_PER_SOURCE", 10)),
                       help="most SDK WebSockets one client address may hold (429 beyond)")
    serve.add_argument("--ws-max-connections", type=int, default=int(_env("WS_MAX_CONNECTIONS", 2000)),
                       help="most SDK WebSockets in all (503 beyond)")
    serve.add_argument("--idle-timeout", type=float, default=float(_env("IDLE_TIMEOUT", 30)),
                       help="seconds a session with no calls lives on")
    serve.add_argument("--tts", default=_env("TTS", "espeak"),
                       help="text to speech: espeak (offline) or gtts (online, falls back to espeak)")
    serve.add_argument("--asr", default=_env("ASR", "pocketsphinx"),
                       help="speech recognition: pocketsphinx (offline) or vosk:/path/to/model"
                            " (needs the vosk package; falls back to pocketsphinx on failure)")
    serve.add_argument("--asr-max-concurrent", type=int, default=int(_env("ASR_MAX_CONCURRENT", 4)),
                       help="speech recognitions running at once (beyond: gather returns an error)")
    serve.add_argument("--rtp-timeout", type=float, default=float(_env("RTP_TIMEOUT", 60)),
                       help="hang up a connected call after this many seconds without RTP or RTCP"
                            " (not while on hold; 0: never)")
    serve.add_argument("--rtp-strict", choices=("on", "off"), default=_env("RTP_STRICT", "on"),
                       help="latch an RTP source other than the SDP address only after 4 consistent packets,"
                            " and stop sending to an address nothing confirmed 3 s after media start")
    serve.add_argument("--rtp-pin-after", type=int, default=int(_env("RTP_PIN_AFTER", PIN_AFTER)),
                       help="connect a leg's RTP socket to its latched source after this many packets, so that"
                            " the kernel drops every other source's (0: never)")
    serve.add_argument("--srtp-allow-plain-signalling", action="store_true",
                       default=_env("SRTP_ALLOW_PLAIN_SIGNALLING", "") in ("1", "on", "true"),
                       help="accept and offer SDES SRTP keys over plain UDP/TCP SIP (unsafe: anyone on"
                            " the path reads the keys; for tests and trusted networks)")
    serve.add_argument("--cors-origins", default=_env("CORS_ORIGINS", ""),
                       help="comma-separated origins whose pages may call /api/v1 (none by default; * for any)")
    serve.add_argument("--metrics-listen", default=_env("METRICS_LISTEN", None), metavar="HOST:PORT",
                       help="also serve /metrics without an API key on this address (off by default;"
                            " a loopback one such as 127.0.0.1:9464 is the usual choice). On the HTTP"
                            " port /metrics always needs a key with the metrics scope")
    serve.add_argument("--directory", default=_env("DIRECTORY", None), metavar="URL",
                       help="share registrations, conference ownership and login lockouts with the other"
                            " nodes through Redis at URL (redis://host:6379/0, or rediss:// for TLS);"
                            " default: in this process's memory (one node)")
    serve.add_argument("--guests", choices=("on", "off"), default=_env("GUESTS", "on"),
                       help="whether the web SDK may log in as a guest (the demo page does)")
    serve.add_argument("--ad-hoc-conferences", choices=("on", "off"), default=_env("AD_HOC_CONFERENCES", "on"),
                       help="whether a conference that is not a room may be opened by naming it (the demo page)")
    serve.add_argument("--dial-allow", default=_env("DIAL_ALLOW", ""),
                       help="comma-separated patterns of numbers call_pstn may dial (none by default)")
    serve.add_argument("--dial-deny", default=_env("DIAL_DENY", None),
                       help="comma-separated patterns never dialed (default: emergency and premium ranges)")
    serve.add_argument("--dial-max-concurrent", type=int, default=int(_env("DIAL_MAX_CONCURRENT", 10)))
    serve.add_argument("--dial-max-per-hour", type=int, default=int(_env("DIAL_MAX_PER_HOUR", 100)))
    serve.add_argument("--dial-max-per-identity", type=int, default=int(_env("DIAL_MAX_PER_IDENTITY", 2)))
    serve.add_argument("--dial-max-per-identity-hour", type=int,
                       default=int(_env("DIAL_MAX_PER_IDENTITY_HOUR", 20)))
    serve.add_argument("--webhook-private-networks", choices=("allow", "deny"),
                       default=_env("WEBHOOK_PRIVATE_NETWORKS", "deny"),
                       help="whether webhooks may go to loopback, private and link-local"
                            " addresses (deny by default)")
    serve.add_argument("--tls-cert", type=Path, default=_env("TLS_CERT", None),
                       help="PEM certificate (chain): with --tls-key, the HTTP port serves HTTPS and /ws is"
                            " WSS, and SIP over TLS listens on --sip-tls-port; SIGHUP loads the files again")
    serve.add_argument("--tls-key", type=Path, default=_env("TLS_KEY", None),
                       help="the certificate's private key (PEM, unencrypted; keep it mode 0600)")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    serve.add_argument("--uvloop", choices=("auto", "on", "off"), default=_env("UVLOOP", "auto"))

    rules = sub.add_parser("rules", help="rules.yaml tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate rules.yaml and its scenarios")
    check.add_argument("--rules", type=Path, default=Path(_env("RULES", "rules.yaml")))
    check.add_argument("--scenarios", type=Path, default=Path(_env("SCENARIOS", "scenarios")))
    check.add_argument("number", nargs="*", help="numbers to route (shows which rule wins)")
    check.add_argument("--kind", choices=("web", "sip", "internal"),
                       help="route the numbers as this kind of caller (rules' restrictions apply)")
    check.add_argument("--source", help="the caller's address, for rules' networks (with --kind)")
    check.add_argument("--authenticated", action="store_true",
                       help="the caller is authenticated (with --kind)")

    certs = sub.add_parser("certs", help="TLS certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    dev = certs_sub.add_parser("dev", help="write a self-signed development certificate (not for production)")
    dev.add_argument("--out", type=Path, required=True, help="folder for cert.pem and key.pem")
    dev.add_argument("--host", action="append", default=[],
                     help="a host name or address the certificate is for (repeat; localhost, 127.0.0.1"
                          " and ::1 are always in)")
    dev.add_argument("--force", action="store_true", help="replace cert.pem and key.pem if they exist")

    call = sub.add_parser("call", help="place a test call through a running engine")
    call.add_argument("number")
    call.add_argument("--to", default=f"{_env('SIP_HOST', '127.0.0.1').split(',')[0]}:{_env('SIP_PORT', 5060)}",
                      help="the engine's SIP address HOST:PORT")
    call.add_argument("--from", dest="from_", default="callbridge-cli")
    call.add_argument("--duration", type=float, default=5.0, help="seconds to stay connected")
    call.add_argument("--header", action="append", default=[], help="extra header NAME:VALUE")
    call.add_argument("--tcp", action="store_true")

    # --data-dir and --realm go before or after the action ("rooms --data-dir d
    # create 1" and "rooms create 1 --data-dir d"): the actions take them too,
    # SUPPRESSed so that, when not given there, the command's value stands.
    store_opts = argparse.ArgumentParser(add_help=False)
    store_opts.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                            help="the engine's data directory (default: data, or $CALLBRIDGE_DATA_DIR)")
    store_opts.add_argument("--realm", default=argparse.SUPPRESS, help="the SIP realm of digest hashes")

    keys = sub.add_parser("keys", help="manage API keys of /api/v1")
    keys.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", "data")))
    keys.add_argument("--realm", default=_env("REALM", "callbridge"))
    keys_sub = keys.add_subparsers(dest="action", required=True)
    kc = keys_sub.add_parser("create", help="create a key; its secret is shown once", parents=[store_opts])
    kc.add_argument("--scopes", default="admin", help="comma-separated: admin, calls, users, metrics")
    kc.add_argument("--name", help="a label")
    keys_sub.add_parser("list", parents=[store_opts])
    kd = keys_sub.add_parser("delete", parents=[store_opts])
    kd.add_argument("id")

    for name, what in (("users", "web and SIP users"), ("rooms", "conference rooms")):
        p = sub.add_parser(name, help=f"manage {what}")
        p.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", "data")))
        p.add_argument("--realm", default=_env("REALM", "callbridge"))
        s = p.add_subparsers(dest="action", required=True)
        c = s.add_parser("create", parents=[store_opts])
        c.add_argument("id")
        if name == "users":
            c.add_argument("--password", help="the password; visible in the process list to every"
                           " local user: prefer --password-stdin or the prompt")
            c.add_argument("--password-stdin", action="store_true",
                           help="read the password from the first line of standard input")
            c.add_argument("--sip", action="store_true",
                           help="the user may REGISTER a SIP phone (SIP digest hashes are kept only then)")
        else:
            c.add_argument("--max-participants", type=int)
            c.add_argument("--pin", help="the digits phone callers enter (default: a random PIN,"
                           " printed once)")
            c.add_argument("--no-pin", action="store_true",
                           help="an open room: phone callers enter the room's id")
            c.add_argument("--moderator-pin", help="digits that join as a moderator")
            c.add_argument("--pin-min-length", type=int, default=int(_env("PIN_MIN_LENGTH", 6)),
                           help="digits of a drawn PIN, and the fewest a given PIN may have")
        c.add_argument("--display-name")
        s.add_parser("list", parents=[store_opts])
        d = s.add_parser("delete", parents=[store_opts])
        d.add_argument("id")
    return parser


def _config_from(args: argparse.Namespace) -> Any:
    from engine.media.tts import TTS_PROVIDERS
    from engine.server import EngineConfig
    from engine.transport.sip_endpoint import SecurityPolicy

    try:
        start, end = (int(x) for x in args.rtp_ports.split("-"))
    except ValueError:
        raise SystemExit(f"callbridge: --rtp-ports must be START-END, got {args.rtp_ports!r}")
    if args.tts not in TTS_PROVIDERS:
        raise SystemExit(f"callbridge: --tts must be one of {', '.join(TTS_PROVIDERS)}, got {args.tts!r}")
    if args.rtp_timeout < 0:
        raise SystemExit(f"callbridge: --rtp-timeout must be 0 (off) or more seconds, got {args.rtp_timeout}")
    if not (args.asr == "pocketsphinx" or args.asr.startswith("vosk:") and len(args.asr) > 5):
        raise SystemExit(f"callbridge: --asr must be pocketsphinx or vosk:/path/to/model, got {args.asr!r}")
    for flag in ("message_burst", "max_transactions", "asr_max_concurrent", "max_tcp_per_source", "max_sessions",
                 "ws_max_per_source", "ws_max_connections"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"callbridge: --{flag.replace('_', '-')} must be 1 or more, got {getattr(args, flag)}")
    for flag in ("overload_lag_ms", "overload_drop_lag_ms", "overload_rtp_backlog_kb", "max_setup_calls",
                 "sip_udp_rcvbuf"):
        if getattr(args, flag) < 0:
            raise SystemExit(f"callbridge: --{flag.replace('_', '-')} must be 0 (off) or more, got {getattr(args, flag)}")
    if not 0 <= args.overload_late_legs_pct <= 100:
        raise SystemExit("callbridge: --overload-late-legs-pct must be 0 (off) to 100, "
                         f"got {args.overload_late_legs_pct}")
    if args.rtp_pin_after < 0:
        raise SystemExit(f"callbridge: --rtp-pin-after must be 0 (never) or more packets, got {args.rtp_pin_after}")
    if not 0 <= args.media_send_workers <= MAX_SEND_WORKERS:
        raise SystemExit(f"callbridge: --media-send-workers must be 0 (off) to {MAX_SEND_WORKERS}, "
                         f"got {args.media_send_workers}")
    from engine.transport.overload import OverloadBounds

    try:
        overload = OverloadBounds(lag=args.overload_lag_ms / 1000, drop_lag=args.overload_drop_lag_ms / 1000,
                                  setup_calls=args.max_setup_calls,
                                  media_backlog=round(args.overload_rtp_backlog_kb * 1024),
                                  late_legs=args.overload_late_legs_pct / 100)
        if args.overload == "off":
            overload = OverloadBounds(lag=0, drop_lag=0, queue=0, drop_queue=0, setup_calls=0, media_backlog=0,
                                      late_legs=0)
    except ValueError:
        raise SystemExit(f"callbridge: --overload-drop-lag-ms ({args.overload_drop_lag_ms:g}) must not be below"
                         f" --overload-lag-ms ({args.overload_lag_ms:g})") from None
    if args.message_rate < 0:
        raise SystemExit(f"callbridge: --message-rate must be 0 (off) or more, got {args.message_rate}")
    from engine.runtime.dialout import DEFAULT_DENY, DialPolicy

    def patterns(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return default if text is None else tuple(p.strip() for p in text.split(",") if p.strip())

    try:
        dial_policy = DialPolicy(
            allow=patterns(args.dial_allow, ()), deny=patterns(args.dial_deny, DEFAULT_DENY),
            max_concurrent=args.dial_max_concurrent, max_per_hour=args.dial_max_per_hour,
            max_per_identity=args.dial_max_per_identity, max_per_identity_hour=args.dial_max_per_identity_hour,
        )
    except ValueError as exc:
        raise SystemExit(f"callbridge: {exc}") from None
    proxies = frozenset(h.strip() for h in args.sip_proxies.split(",") if h.strip())
    for host in proxies:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise SystemExit(f"callbridge: --sip-proxies: {host!r} is not an IP address (the proxy's"
                             " source address, as its datagrams arrive)") from None
    policy = SecurityPolicy(
        proxies=proxies,
        rate=args.rate_limit, burst=args.rate_burst, ban_seconds=args.ban_seconds,
        trusted=frozenset(h.strip() for h in args.trusted.split(",") if h.strip()),
        message_rate=args.message_rate, message_burst=args.message_burst,
        max_transactions=args.max_transactions, max_tcp_per_source=args.max_tcp_per_source,
        overload=overload, udp_receive_buffer=args.sip_udp_rcvbuf,
    )
    return EngineConfig(
        sip_hosts=[h.strip() for h in args.sip_host.split(",") if h.strip()],
        sip_port=args.sip_port, http_host=args.http_host, http_port=args.http_port,
        rules=args.rules, scenarios=args.scenarios, data_dir=args.data_dir, trunk=_trunk_of(args),
        pin_min_length=args.pin_min_length,
        advertised_host=args.advertised_host, rtp_port_start=start, rtp_port_end=end,
        session_idle_timeout=args.idle_timeout, policy=policy, tts_provider=args.tts,
        asr_provider=args.asr, asr_max_concurrent=args.asr_max_concurrent,
        rtp_timeout=args.rtp_timeout, rtp_strict=args.rtp_strict == "on", rtp_pin_after=args.rtp_pin_after,
        silence_suppression=args.silence_suppression,
        srtp_allow_plain_signalling=args.srtp_allow_plain_signalling, guest_login=args.guests == "on",
        dial_policy=dial_policy, ad_hoc_conferences=args.ad_hoc_conferences == "on",
        max_sessions=args.max_sessions, ws_max_per_source=args.ws_max_per_source,
        ws_max_connections=args.ws_max_connections,
        webhook_private_networks=args.webhook_private_networks == "allow",
        cors_origins=[o.strip() for o in args.cors_origins.split(",") if o.strip()],
        tls_cert=args.tls_cert, tls_key=args.tls_key, sip_tls_port=args.sip_tls_port,
        trunk_ca=args.trunk_ca, trunk_client_cert=args.trunk_client_cert,
        trunk_client_key=args.trunk_client_key,
        metrics_listen=args.metrics_listen or None, media_send_workers=args.media_send_workers,
        media_pacing=args.media_pacing == "on", directory_url=args.directory or None,
    )


def _trunk_of(args: argparse.Namespace) -> str | None:
    """The trunk URI with its password filled in from ``--trunk-password-file``
    or ``CALLBRIDGE_TRUNK_PASSWORD`` (kept out of argv); warns when the
    password came on the command line."""
    from urllib.parse import quote

    trunk = args.trunk
    if trunk is None:
        return None
    argv_trunk = trunk != os.environ.get("CALLBRIDGE_TRUNK")  # else it came from the environment
    scheme, sep, rest = trunk.partition(":")
    userinfo, at, hostpart = rest.rpartition("@")
    if argv_trunk and at and ":" in userinfo:
        print("callbridge: warning: the trunk password in --trunk is visible to other local users"
              " in the process list; use --trunk-password-file or CALLBRIDGE_TRUNK_PASSWORD",
              file=sys.stderr)
    password = os.environ.get("CALLBRIDGE_TRUNK_PASSWORD")
    if args.trunk_password_file is not None:
        try:
            password = Path(args.trunk_password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise SystemExit(f"callbridge: --trunk-password-file {args.trunk_password_file}: cannot read"
                             f" a password: {getattr(exc, 'strerror', None) or 'the file is empty'}")
    if password is None:
        return str(trunk)
    if not sep or not at:
        raise SystemExit("callbridge: --trunk needs a user (sip:user@host) for its password")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}:{user}:{quote(password, safe='')}@{hostpart}"


def _tune_gc() -> None:
    """Move what start-up made out of the collector's way and collect less
    often: a call allocates thousands of short-lived objects, nearly all
    freed by reference counting, and with the default thresholds full
    collections over tens of thousands of live transactions become pauses
    that delay retransmissions (measured with bench/sip_cps: see the README).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _raise_file_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard one and return
    ``(before, after)``: every call holds two RTP/RTCP sockets and the SIP
    and web sides hold more, so the common soft limit of 1,024 would refuse
    calls near 500 live ones while the hard limit allows far more."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, want


def _serve(args: argparse.Namespace) -> int:
    from engine.server import Engine, StartupError

    setup_logging(args.log_level)
    before, after = _raise_file_limit()
    if after != before:
        logging.getLogger("engine.cli").debug("open files limit raised from %d to %d", before, after)
    if args.uvloop != "off":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            if args.uvloop == "on":
                print("callbridge: --uvloop on but uvloop is not installed", file=sys.stderr)
                return 2
    config = _config_from(args)

    async def run() -> int:
        try:
            engine = Engine(config)  # a bad --directory URL or --tts is refused here
        except StartupError as exc:
            print(f"callbridge: {exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, engine.reload_tls)
        try:
            await engine.start()
        except StartupError as exc:
            print(f"callbridge: {exc}", file=sys.stderr)
            return 2
        _tune_gc()
        try:
            await stop.wait()
        finally:
            await engine.stop()
        return 0

    return asyncio.run(run())


def _rules_check(args: argparse.Namespace) -> int:
    from engine.runtime.router import Caller, RulesError, load_rules
    from engine.runtime.scenario import ScenarioError, ScenarioRuntime
    from engine.state.directory import MemoryDirectory

    try:
        rules = load_rules(args.rules, args.scenarios)
        ScenarioRuntime(rules, args.scenarios, ua=None, directory=MemoryDirectory()).compile_all()
    except (RulesError, ScenarioError) as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 1
    for warning in rules.warnings:
        print(f"warning: {warning}")
    for rule in rules.rules:
        limits = "".join(f" {key}={','.join(v) if isinstance(v, list) else v}"
                         for key, v in rule.restrictions().items())
        print(f"{rule.name}: {rule.pattern.pattern} -> {', '.join(rule.scenarios)}"
              + (f" (only{limits})" if limits else ""))
    caller = Caller(args.kind, args.source, args.authenticated) if args.kind else None
    for number in args.number:
        for rule, verdict in rules.explain(number, caller):
            print(f"  {number!r} {rule.name}: {verdict}")
        if rules.match(number, caller) is None:
            code, why = rules.refusal(number, caller) if caller is not None else (404, "no rule")
            print(f"  {number!r}: no rule takes it ({code} {why})")
    print(f"{args.rules}: {len(rules.rules)} rules OK")
    return 0


def _certs_dev(args: argparse.Namespace) -> int:
    from engine.transport.tls import DEV_CERT_DAYS, TlsError, spki_sha256, write_dev_certificate

    try:
        cert, key = write_dev_certificate(args.out, args.host, overwrite=args.force)
    except TlsError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"callbridge: {args.out}: cannot write the certificate: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {cert} and {key} (key mode 0600): self-signed, valid {DEV_CERT_DAYS} days")
    print("development certificate, not for production: browsers and phones will not trust it")
    print(f"SPKI SHA-256 (Chromium --ignore-certificate-errors-spki-list): {spki_sha256(cert.read_bytes())}")
    print(f"use: callbridge serve --tls-cert {cert} --tls-key {key}")
    return 0


def _call(args: argparse.Namespace) -> int:
    from engine.testcall import place_test_call

    host, _, port = args.to.rpartition(":")
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            print(f"callbridge: --header must be NAME:VALUE, got {item!r}", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    setup_logging("warning")
    result = asyncio.run(place_test_call(
        host.strip("[]"), int(port), args.number, caller=args.from_, duration=args.duration,
        headers=headers, transport="TCP" if args.tcp else "UDP", echo=print,
    ))
    return 0 if result.connected else 1


def _password_of(args: argparse.Namespace) -> str | None:
    """The new user's password: ``--password-stdin`` (one line), else
    ``--password`` (with a warning: argv is public), else typed at a
    prompt; ``None`` after printing why there is none."""
    if args.password is not None and args.password_stdin:
        print("callbridge: give --password or --password-stdin, not both", file=sys.stderr)
        return None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        print("callbridge: warning: --password is visible to other local users in the process"
              " list and shell history; use --password-stdin", file=sys.stderr)
        password = args.password
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("callbridge: the passwords differ", file=sys.stderr)
            return None
    else:
        print("callbridge: give the password with --password-stdin (or type it at a terminal)",
              file=sys.stderr)
        return None
    if not password:
        print("callbridge: invalid password: must not be empty", file=sys.stderr)
        return None
    return password


def _store_command(args: argparse.Namespace) -> int:
    from engine.runtime.rooms import GENERATE, create_room_with_pin
    from engine.state.store import SqliteStore, StoreError
    from engine.runtime.tokens import Keys

    try:
        # The engine's keys: room PINs are hashed with one derived from them.
        keys = Keys.in_directory(args.data_dir)
    except (OSError, ValueError) as exc:
        print(f"callbridge: {args.data_dir}/secret.key: cannot read or create the key: {exc}", file=sys.stderr)
        return 1
    store = SqliteStore.in_directory(args.data_dir, sip_realm=args.realm, pin_key=keys.pin_key)
    try:
        if args.command == "keys":
            if args.action == "create":
                scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
                key, secret = store.create_api_key(scopes, args.name)
                print(f"created API key {key.key_id} ({','.join(key.scopes)})")
                print(f"secret (shown once): {secret}")
                print(f"use: Authorization: Bearer {key.key_id}.{secret}")
            elif args.action == "list":
                for key in store.list_api_keys():
                    print(f"{key.key_id}\t{','.join(key.scopes)}\t{key.name or ''}")
            elif args.action == "delete":
                if not store.delete_api_key(args.id):
                    print(f"callbridge: no API key {args.id!r}", file=sys.stderr)
                    return 1
                print(f"deleted API key {args.id}")
        elif args.command == "users":
            if args.action == "create":
                password = _password_of(args)
                if password is None:
                    return 1
                user = store.create_user(args.id, password, args.display_name, sip=args.sip)
                print(f"created user {user.name}" + (" (SIP enabled)" if user.sip else ""))
            elif args.action == "list":
                for user in store.list_users(0, 1000):
                    print(f"{user.name}\t{user.display_name or ''}\t{'sip' if user.sip else 'web'}")
            elif args.action == "delete":
                if not store.delete_user(args.id):
                    print(f"callbridge: no user {args.id!r}", file=sys.stderr)
                    return 1
                print(f"deleted user {args.id}")
        else:
            if args.action == "create":
                if args.no_pin and args.pin is not None:
                    print("callbridge: give --pin or --no-pin, not both", file=sys.stderr)
                    return 1
                room, pin = create_room_with_pin(
                    store, args.id, display_name=args.display_name,
                    max_participants=args.max_participants,
                    pin=None if args.no_pin else GENERATE if args.pin is None else args.pin,
                    moderator_pin=args.moderator_pin, min_length=args.pin_min_length)
                # Shown this once: the store keeps only keyed hashes of the PINs.
                print(f"created room {room.room_id}: phone callers join with PIN {pin or room.room_id}")
                if args.moderator_pin:
                    print(f"moderators join with PIN {args.moderator_pin}")
            elif args.action == "list":
                for room in store.list_rooms():
                    print(f"{room.room_id}\t{room.display_name or ''}\t{'pin' if room.has_pin else 'open'}")
            elif args.action == "delete":
                if not store.delete_room(args.id):
                    print(f"callbridge: no room {args.id!r}", file=sys.stderr)
                    return 1
                print(f"deleted room {args.id}")
    except StoreError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "users", "rooms", "keys"):
        # Everything these write (database, key, logs, recordings, caches)
        # is private to the service's user: files 0600, directories 0700.
        os.umask(0o077)
    if args.command == "serve":
        return _serve(args)
    if args.command == "rules":
        return _rules_check(args)
    if args.command == "call":
        return _call(args)
    if args.command == "certs":
        return _certs_dev(args)
    return _store_command(args)


if __name__ == "__main__":
    sys.exit(main())
