"""The engine as one object: store, directory, rules, scenario runtime, SIP
user agent and the HTTP server, started and stopped in pairs.

:class:`EngineConfig` holds every setting ``callbridge serve`` takes (flags
and ``CALLBRIDGE_*`` environment variables map onto it one to one), and
:class:`Engine` is what the CLI and the tests run. Start-up fails with a
clear error (file, line and reason) for a bad ``rules.yaml`` or a scenario
that does not compile, and teardown runs only for what started.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.calls.sip_media import SipLegMedia
from engine.calls.call import Call, InternalCall, MediaHandler
from engine.state.directory import Directory, DirectoryUnavailable, LoginBackoff, MemoryDirectory
from engine.state.redis_directory import RedisDirectory
from engine.runtime.rooms import RoomService
from engine.runtime.router import RuleSet, load_rules
from engine.runtime.protocols import CallEventHook, Dialer, HttpSessionFactory, LogLineHook, WebUsers as WebUsersSeam
from engine.runtime.scenario import AppEvents, ScenarioError, ScenarioRuntime, Session
from engine.state.store import SqliteStore, Store
from engine.runtime.tokens import Keys
from engine.sip.transaction import Timers
from engine.media.tts import TtsCache, make_tts_provider
from engine.media.asr import AsrUnavailable, make_recognizer
from engine.calls.speech import SpeechService, set_default_speech
from engine.media.rtp import PIN_AFTER, PROBATION, SEND_GRACE, RtpSourcePolicy
from engine.transport.audio_fetch import AudioLoader
from engine.media.clock import MediaClock
from engine.calls.conference import Conference, MediaGraph
from engine.calls.recording import Recording
from engine.transport.rtp_pace import TickPacer
from engine.transport.rtp_send import SendWorkers
from engine.transport.rtp_socket import RtpPortAllocator
from engine.transport.sip_endpoint import Peer, SecurityPolicy, request_source
from engine.transport.tls import CertificateInfo, TlsError, check_pair, load_server_context, reload_server_context
from engine.runtime.dialout import DialPolicy
from engine.calls.sip_ua import SipCall, Trunk, UaConfig, UserAgent, received_headers
from engine.web.app import create_app
from engine.web.metrics import EngineMetrics, MetricsSources, create_metrics_app, parse_listen
from engine.web.webhooks import WebhookDispatcher
from engine.web.ws import SdkConnection, WebUsers
from engine.calls.web_call import wait_background as wait_web_background
from engine.calls.webrtc import add_ice_host_addresses

__all__ = ["EngineConfig", "Engine", "EngineParts", "StartupError", "build_engine"]

logger = logging.getLogger(__name__)



#: RTP/RTCP port pairs each allocator keeps open for reuse after a call
#: (4,096 sockets at most; see :class:`~engine.transport.rtp_socket.RtpPortAllocator`).
RTP_POOL = 2048

class StartupError(Exception):
    """The engine cannot start; the text says what to fix."""


@dataclass
class EngineConfig:
    sip_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    sip_port: int = 5060
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    rules: Path = Path("rules.yaml")
    scenarios: Path = Path("scenarios")
    data_dir: Path = Path("data")
    trunk: str | None = None
    advertised_host: str | None = None
    rtp_port_start: int = 20000
    rtp_port_end: int = 30000
    session_idle_timeout: float = 30.0
    invite_timeout: float = 60.0
    #: Seconds a connected call may receive no RTP nor RTCP (while not on
    #: hold) before it is hung up; 0 never (see engine.calls.sip_media).
    rtp_timeout: float = 60.0
    #: Silence suppression (engine.media.dtx): legs fed by the media graph
    #: are sent nothing while their mix is silence (RFC 3551 section 4.1),
    #: with RFC 3389 comfort noise where the peer negotiated CN, which is
    #: then offered and accepted. Off: SIP trunks expect continuous RTP.
    silence_suppression: bool = False
    #: Strict RTP (engine.media.rtp.RtpSourcePolicy): a source other than
    #: the SDP address is latched only after ``rtp_probation`` consistent
    #: packets, and media goes to an address nothing confirmed only for
    #: ``rtp_send_grace`` seconds after media start. False: the first packet
    #: from anywhere latches and the SDP address is always sent to.
    rtp_strict: bool = True
    #: Whether SDES SRTP keys may travel over plain UDP/TCP SIP (they are
    #: refused with 488 unless the signalling is TLS; see engine.calls.sip_media).
    srtp_allow_plain_signalling: bool = False
    rtp_probation: int = PROBATION
    rtp_send_grace: float = SEND_GRACE
    #: Packets after which a leg's RTP socket is connected to its latched
    #: source (engine.transport.rtp_transport.RtpTransport.pin); 0: never.
    rtp_pin_after: int = PIN_AFTER
    #: RTP send workers (engine.transport.rtp_send): processes that send the
    #: media clock's frames at their due time; 0: the event loop sends them.
    media_send_workers: int = 0
    #: Without send workers: hold each tick's datagrams and send them at its
    #: due time from the event loop (engine.transport.rtp_pace); False: each
    #: frame leaves as it is made.
    media_pacing: bool = True
    realm: str = "callbridge"
    policy: SecurityPolicy = field(default_factory=SecurityPolicy)
    timers: Timers = field(default_factory=Timers)
    register_min_expires: int = 60
    register_max_expires: int = 3600
    #: Who speaks ``call.say()``: ``"espeak"`` (espeak-ng, offline) or
    #: ``"gtts"`` (Google's voice through gTTS, espeak-ng when unreachable).
    tts_provider: str = "espeak"
    #: Who recognises speech (``call.gather``, ``call.start_recognition``):
    #: ``"pocketsphinx"`` (offline) or ``"vosk:/path/to/model"``.
    asr_provider: str = "pocketsphinx"
    #: Recognitions running at once at most (beyond: a ``SpeechError``).
    asr_max_concurrent: int = 4
    #: Seconds after which a caller's utterance is cut and recognised.
    asr_max_utterance: float = 15.0
    #: Seconds between WebSocket pings to SDK clients; one unanswered for
    #: half of that closes the socket and ends its calls.
    ws_heartbeat: float = 10.0
    #: Addresses offered as ICE host candidates to browsers besides the
    #: machine's interfaces (aioice leaves out loopback, which a browser on
    #: this machine needs).
    webrtc_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    #: Origins whose pages may call ``/api/v1`` from a browser (CORS);
    #: none by default, ``*`` for any.
    cors_origins: list[str] = field(default_factory=list)
    #: Webhook retries: the first after this many seconds, doubling, at most
    #: ``webhook_max_attempts`` attempts.
    webhook_retry_delay: float = 1.0
    webhook_max_attempts: int = 8
    #: Whether webhooks may go to loopback, private, link-local and other
    #: non-global addresses (registration and delivery); closed by default.
    webhook_private_networks: bool = False
    #: Whether the web SDK may log in as a guest (``login`` with a display
    #: name only: the demo page's way in); guests get a random
    #: ``guest-…`` user name for the socket's life and are never stored.
    guest_login: bool = True
    #: Where and how much the trunk may be dialed (:mod:`engine.runtime.dialout`):
    #: nothing is allowed until ``--dial-allow`` says where.
    dial_policy: DialPolicy = field(default_factory=DialPolicy)
    #: Whether conferences that are not rooms may be opened and joined
    #: (the demo page's way: anyone who names one).
    ad_hoc_conferences: bool = True
    #: Most scenario sessions running at once; a call or MESSAGE beyond it
    #: gets 503 (each session lives at least ``session_idle_timeout``).
    max_sessions: int = 5000
    #: Most SDK WebSockets (``/ws``) open from one client address (429
    #: beyond it), and in all (503 beyond it).
    ws_max_per_source: int = 10
    ws_max_connections: int = 2000
    #: Lockouts after wrong passwords (REGISTER and the web SDK's login),
    #: per account and per source address.
    login_backoff: LoginBackoff = field(default_factory=LoginBackoff)
    #: Digits of the PINs the engine draws for new rooms, and the fewest an
    #: operator's PIN may have (API and CLI).
    pin_min_length: int = 6
    #: A PEM certificate (chain) and its private key: with both, the HTTP
    #: port serves HTTPS and ``/ws`` is WSS (engine.transport.tls), and SIP
    #: over TLS (RFC 3261 §26) listens on ``sip_tls_port`` with the same
    #: context, so one SIGHUP renews both. Neither: clear text.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    sip_tls_port: int = 5061
    #: A CA file the trunk's TLS certificate is verified against instead of
    #: the system's CAs (a private CA); its host name is always checked.
    trunk_ca: Path | None = None
    #: A client certificate and key shown to the trunk over TLS when it
    #: asks for one; none is sent when unset (it is never the server pair
    #: implicitly: that key would then answer for two roles).
    trunk_client_cert: Path | None = None
    trunk_client_key: Path | None = None
    #: ``HOST:PORT`` where ``/metrics`` is also served without an API key
    #: (engine.web.metrics); ``None``, the default: nowhere (the HTTP port's
    #: ``/metrics`` needs a key with the ``metrics`` scope).
    metrics_listen: str | None = None
    #: Where the state nodes share lives (engine.state.redis_directory):
    #: ``redis://host:port/db`` or ``rediss://``; ``None``, the default: in
    #: this process's memory (one node).
    directory_url: str | None = None


def _trunk_tls_context(cfg: EngineConfig) -> ssl.SSLContext | None:
    """The TLS context towards the trunk from ``trunk_ca`` and
    ``trunk_client_cert``/``trunk_client_key`` (``None``: the system's CAs,
    no client certificate). The listener's context is :meth:`Engine._load_tls`'s.

    :raises StartupError: naming the file that cannot be used and why.
    """
    if (cfg.trunk_client_cert is None) != (cfg.trunk_client_key is None):
        raise StartupError("--trunk-client-cert and --trunk-client-key go together: give both or neither")
    if cfg.trunk_ca is None and cfg.trunk_client_cert is None:
        return None
    try:
        trunk = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.trunk_ca)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"--trunk-ca {cfg.trunk_ca}: {exc}") from None
    if cfg.trunk_client_cert is not None and cfg.trunk_client_key is not None:
        try:
            trunk.load_cert_chain(cfg.trunk_client_cert, cfg.trunk_client_key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"--trunk-client-cert {cfg.trunk_client_cert}: {exc}") from None
    return trunk


@dataclass
class EngineParts:
    """What :func:`build_engine` wires: the scenario runtime and the rooms it admits to."""

    runtime: ScenarioRuntime
    rooms: RoomService


def build_engine(
    config: EngineConfig,
    *,
    rules: RuleSet,
    dialer: Dialer | None,
    store: Store,
    keys: Keys,
    graph: MediaGraph,
    tts: TtsCache | None,
    audio: AudioLoader | None,
    web_users: WebUsersSeam | None,
    directory: Directory,
    node_id: str | None = None,
    log_dir: Path | None = None,
    trunk_configured: bool = True,
    on_event: list[CallEventHook] | None = None,
    on_log_line: LogLineHook | None = None,
    on_conference_call: Callable[[Session, str, InternalCall], None] | None = None,
    http_session: HttpSessionFactory | None = None,
) -> EngineParts:
    """Wire the application layer the one way both ``serve`` (:class:`Engine`)
    and the test harness (:class:`engine.testing.app.App`) run it: rooms
    (mutes through ``graph``, an ended room ends its conference's session)
    and the scenario runtime over them, with ``config``'s session settings,
    dial-out policy, ad-hoc conferences and trusted sources; every scenario
    the rules name is compiled.

    :param dialer: places outbound calls (the SIP user agent), or ``None``.
    :param web_users: rings browsers logged in with the web SDK, or ``None``.
    :param directory: the engine's one directory (rate limits, lockouts,
        conference claims), shared with the SIP user agent.
    :param on_event: hooks for room and call events (``(name, data)``:
        the webhooks), or ``None``.
    :param trunk_configured: whether ``call_pstn`` has a SIP trunk.
    :raises ScenarioError: a scenario does not compile (file, line, reason).
    """
    hooks = list(on_event or ())
    runtime: ScenarioRuntime | None = None

    def end_conference(room_id: str) -> None:
        session = runtime.conference_session(f"conf_{room_id}") if runtime is not None else None
        if session is not None and not session.terminated:
            session.write_log(f"room {room_id} ended: terminating its conference")
            session.terminate()

    def tell_conference(event: str, data: dict[str, Any]) -> None:
        """A participant's change reaches its conference's session (which
        tells the pages: the roster's mute state)."""
        if event != "participant.updated" or runtime is None:
            return
        session = runtime.conference_session(f"conf_{data['room']}")
        if session is not None and not session.terminated:
            session.emit(AppEvents.ParticipantUpdated, data=dict(data["participant"]))

    def request_recording(room_id: str) -> None:
        """Ask room ``room_id``'s conference session to record (it answers
        with ``VoxEngine.room_recording_started``)."""
        session = runtime.conference_session(f"conf_{room_id}") if runtime is not None else None
        if session is not None and not session.terminated:
            session.emit(AppEvents.RecordingRequested, data={"room": room_id})

    rooms = RoomService(store, muter=graph.set_muted, on_event=[*hooks, tell_conference],
                        on_room_ended=[end_conference])
    rooms.recording_starter = request_recording
    runtime = ScenarioRuntime(
        rules, config.scenarios, ua=dialer, directory=directory, node_id=node_id,
        idle_timeout=config.session_idle_timeout, log_dir=log_dir, graph=graph, tts=tts, audio=audio,
        store=store, max_sessions=config.max_sessions, rooms=rooms, keys=keys, web_users=web_users,
        dial_policy=config.dial_policy, ad_hoc_conferences=config.ad_hoc_conferences,
        trusted_sources=config.policy.trusted, trunk_configured=trunk_configured,
        on_call_event=hooks, on_log_line=on_log_line, on_conference_call=on_conference_call,
        http_session=http_session,
    )
    runtime.compile_all()
    return EngineParts(runtime, rooms)


class Engine:
    """Everything ``callbridge serve`` runs."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.node_id = secrets.token_hex(6)
        #: The shared directory when ``directory_url`` names one (connected,
        #: and this node kept alive in it, by :meth:`start`).
        self.shared_directory: RedisDirectory | None = None
        self.directory: Directory
        if config.directory_url:
            try:
                self.shared_directory = RedisDirectory(config.directory_url, clock=time.monotonic)
            except ValueError as exc:
                raise StartupError(f"--directory: {exc}") from None
            self.directory = self.shared_directory
        else:
            self.directory = MemoryDirectory()
        self._heartbeat: asyncio.Task[None] | None = None
        self.ua: UserAgent = None  # type: ignore[assignment]
        #: Time of the login lockouts (registrar and web SDK); tests set a virtual one.
        self.clock = time.monotonic
        self.store: SqliteStore | None = None
        self.rules: RuleSet | None = None
        self._runtime: ScenarioRuntime | None = None
        self.rtp_policy = RtpSourcePolicy()
        self.http_runner: web.AppRunner | None = None
        #: Prometheus figures (``GET /metrics``); the ``--metrics-listen`` server, if any.
        self.metrics: EngineMetrics | None = None
        self.metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None
        #: The server context of ``tls_cert``/``tls_key`` (None: clear
        #: text); :meth:`reload_tls` loads a new pair into this same object.
        self.tls_context: ssl.SSLContext | None = None
        #: Rooms' participants and lifetimes; webhook deliveries; secret keys.
        self.rooms: RoomService | None = None
        self.webhooks: WebhookDispatcher | None = None
        self.keys: Keys | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.http_port: int | None = None
        self._started: list[str] = []
        #: The one media clock of this process (ticks only while audio flows).
        self.media_clock = MediaClock()
        #: The RTP send workers, when ``media_send_workers`` asks for them.
        self.send_workers: SendWorkers | None = None
        #: What sends the clock's frames at their due time without workers (``media_pacing``).
        self.pacer: TickPacer | None = None
        try:
            provider = make_tts_provider(config.tts_provider)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.tts = TtsCache(provider, Path(config.data_dir) / "tts-cache")
        self.speech = _make_speech(config)
        #: Files and URLs played into calls; downloads cached under the data directory.
        self.audio = AudioLoader(Path(config.data_dir) / "audio-cache")
        #: Conferences and media flows, ticked by the media clock.
        self.media_graph = MediaGraph(self.media_clock, recordings_dir=Path(config.data_dir) / "recordings",
                                      silence_suppression=config.silence_suppression)

    @property
    def clock(self) -> Callable[[], float]:
        """What the SIP side reads the time with; set, it is handed to the
        user agent and its endpoint, which call it directly (no lambda in
        between: they read it several times a message)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        if self.shared_directory is not None:  # the registrar's and logins' now come from it
            self.shared_directory.clock = clock
        if self.ua is not None:
            self.ua.clock = clock
            self.ua.endpoint.clock = clock

    @property
    def runtime(self) -> ScenarioRuntime:
        """The scenario runtime, built by :meth:`start`.

        :raises RuntimeError: the engine has not started (or failed before
            the runtime was built)."""
        if self._runtime is None:
            raise RuntimeError("the engine has no scenario runtime before start()")
        return self._runtime

    # -- start and stop ----------------------------------------------------------

    def load_rules(self) -> RuleSet:
        try:
            return load_rules(self.config.rules, self.config.scenarios)
        except Exception as exc:  # RulesError carries file, line and reason
            raise StartupError(str(exc)) from None

    async def start(self) -> None:
        """Start every part; if one fails, stop those already started."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        self.rules = self.load_rules()
        self.tls_context = self._load_tls()
        for warning in self.rules.warnings:
            logger.warning("%s", warning)
        trunk = None
        if cfg.trunk:
            try:
                trunk = Trunk.from_uri(cfg.trunk)
            except Exception as exc:
                raise StartupError(f"--trunk: {exc}") from None
        if cfg.rtp_timeout < 0:
            raise StartupError(f"rtp_timeout must be 0 (off) or more seconds, not {cfg.rtp_timeout}")
        try:
            self.rtp_policy = RtpSourcePolicy(cfg.rtp_strict, cfg.rtp_probation, cfg.rtp_send_grace,
                                              cfg.rtp_pin_after)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        if self.shared_directory is not None:
            self._start_directory(self.shared_directory)
        try:
            _private_data_dir(cfg.data_dir)
        except OSError as exc:
            raise StartupError(f"{cfg.data_dir}: cannot create or protect the data directory: {exc}") from None
        try:
            self.keys = Keys.in_directory(cfg.data_dir)
        except (OSError, ValueError) as exc:
            raise StartupError(f"{cfg.data_dir / 'secret.key'}: cannot read or create the key: {exc}") from None
        self.store = SqliteStore.in_directory(cfg.data_dir, sip_realm=cfg.realm, pin_key=self.keys.pin_key)
        self._started.append("store")
        # One RTP allocator per listen address: media is bound where SIP
        # listens, in the peer's address family; only the SDP carries the
        # advertised address.
        self.ports = {
            host: RtpPortAllocator(host, cfg.rtp_port_start, cfg.rtp_port_end, pool=RTP_POOL)
            for host in cfg.sip_hosts
        }
        trunk_tls_context = _trunk_tls_context(cfg)
        ua_config = UaConfig(
            hosts=cfg.sip_hosts, port=cfg.sip_port, advertised_host=cfg.advertised_host,
            realm=cfg.realm, trunk=trunk, invite_timeout=cfg.invite_timeout, policy=cfg.policy,
            timers=cfg.timers, register_min_expires=cfg.register_min_expires,
            register_max_expires=cfg.register_max_expires, login_backoff=cfg.login_backoff,
            tls_port=cfg.sip_tls_port, tls_context=self.tls_context, trunk_tls_context=trunk_tls_context,
        )
        self.ua = UserAgent(
            ua_config,
            media_factory=self._media_for,
            on_incoming_call=lambda call, request: self.runtime.on_incoming_call(call, request),
            on_message=self._on_message,
            directory=self.directory,
            user_ha1=self._user_ha1,
            clock=self.clock,
        )
        connections: set[SdkConnection] = set()
        self.webhooks = WebhookDispatcher(
            self.store, base_delay=cfg.webhook_retry_delay, max_attempts=cfg.webhook_max_attempts,
            allow_private=cfg.webhook_private_networks,
        )
        try:
            parts = build_engine(
                cfg, rules=self.rules, dialer=self.ua, store=self.store, keys=self.keys,
                graph=self.media_graph, tts=self.tts, audio=self.audio,
                web_users=WebUsers(connections, self), directory=self.directory, node_id=self.node_id,
                log_dir=cfg.data_dir / "logs", trunk_configured=trunk is not None,
                on_event=[self.webhooks.publish],
            )
        except ScenarioError as exc:
            raise StartupError(str(exc)) from None
        self._runtime, self.rooms = parts.runtime, parts.rooms
        self._started.append("runtime")
        self.metrics = EngineMetrics(MetricsSources(
            runtime=self.runtime, ua=self.ua, clock=self.media_clock, graph=self.media_graph,
            webhooks=self.webhooks, send_workers=lambda: self.send_workers))
        self.runtime.records.on_track.append(self.metrics.on_call)
        self._start_rooms()
        try:
            await self.ua.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen for SIP on {','.join(cfg.sip_hosts)} port {cfg.sip_port}: {exc.strerror}"
            ) from None
        self._started.append("sip")
        if cfg.media_send_workers:
            self.send_workers = SendWorkers(cfg.media_send_workers)
            if cfg.media_pacing:
                self.send_workers.on_give_up = self._pace_instead_of_workers
            self.send_workers.start()
            self.media_clock.dispatch = self.send_workers
            self._started.append("send_workers")
        elif cfg.media_pacing:
            self.media_clock.dispatch = self.pacer = TickPacer()
            self._started.append("pacer")
        add_ice_host_addresses(cfg.webrtc_hosts)
        app = create_app(self, connections)
        self.http_runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.http_runner.setup()
        self._started.append("http")
        site = web.TCPSite(self.http_runner, cfg.http_host, cfg.http_port, ssl_context=self.tls_context)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen for HTTP on {cfg.http_host} port {cfg.http_port}: {exc.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.http_port
        if cfg.metrics_listen:
            await self._start_metrics(cfg.metrics_listen)
        logger.info(
            "callbridge ready: sip=%s:%d (udp+tcp%s) %s=%s:%d node=%s",
            ",".join(cfg.sip_hosts), self.ua.port,
            f", tls {self.ua.endpoint.tls_port}" if self.tls_context else "",
            "https" if self.tls_context else "http",
            cfg.http_host, self.http_port, self.node_id,
        )

    def _start_directory(self, directory: RedisDirectory) -> None:
        """Connect to the shared directory, announce this node alive in it, and
        keep it alive (a heartbeat every third of the directory's ``node_ttl``).

        :raises StartupError: Redis does not answer, naming its URL.
        """
        try:
            directory.connect()
            directory.heartbeat(self.node_id)
        except DirectoryUnavailable as exc:
            directory.close()
            raise StartupError(f"--directory {directory.where}: cannot use Redis: {exc.reason}") from None
        self._started.append("directory")
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._keep_alive(directory), name="directory-heartbeat")
        logger.info("directory %s (node %s)", directory.where, self.node_id)

    async def _keep_alive(self, directory: RedisDirectory) -> None:
        """Renew this node's liveness until cancelled; an outage is logged by
        the directory, and the next beat tries again."""
        period = directory.node_ttl / 3
        while True:
            await asyncio.sleep(period)
            try:
                directory.heartbeat(self.node_id)
            except DirectoryUnavailable:
                pass

    async def _stop_directory(self, directory: RedisDirectory) -> None:
        """Stop the heartbeat, release what this node still claims and end
        its liveness (other nodes may claim its conferences at once), close."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        try:
            released = directory.leave(self.node_id)
        except DirectoryUnavailable as exc:
            logger.warning("%s: this node's conferences stay claimed until its liveness lapses"
                           " (%g s)", exc, directory.node_ttl)
        else:
            if released:
                logger.info("released conferences %s in directory %s", ", ".join(released), directory.where)
        finally:
            directory.close()

    async def _start_metrics(self, listen: str) -> None:
        """Serve ``/metrics`` without a key on ``listen`` (``--metrics-listen``)."""
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.metrics_runner = web.AppRunner(create_metrics_app(self), handle_signals=False, access_log=None)
        await self.metrics_runner.setup()
        self._started.append("metrics")
        site = web.TCPSite(self.metrics_runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen for metrics on {host} port {port}: {exc.strerror}") from None
        sockets = getattr(site._server, "sockets", None) or []
        self.metrics_port = sockets[0].getsockname()[1] if sockets else port
        logger.info("metrics without a key on http://%s:%d/metrics", host, self.metrics_port)

    def _load_tls(self) -> ssl.SSLContext | None:
        """The TLS context of ``tls_cert``/``tls_key``, checked (files,
        key matching the certificate, validity period); None without them."""
        cert, key = self.config.tls_cert, self.config.tls_key
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
            raise StartupError(f"{given} needs {missing}: give the certificate and its key together")
        try:
            info = check_pair(cert, key)
            context = load_server_context(cert, key)
        except TlsError as exc:
            raise StartupError(str(exc)) from None
        logger.info("TLS certificate: %s serial=%x valid until %s UTC", info.subject, info.serial,
                    f"{info.not_after:%Y-%m-%d %H:%M}")
        _warn_about_certificate(info)
        try:
            if os.stat(key).st_mode & 0o007:
                logger.warning("TLS key %s is readable by every local user: chmod 600 it", key)
        except OSError:
            pass  # read a moment ago; a race changes nothing here
        return context

    def reload_tls(self) -> bool:
        """Load ``tls_cert``/``tls_key`` again (SIGHUP) into the same
        context: new handshakes get the new certificate, open connections
        (calls, WebSockets) stay. A pair that fails the checks is refused
        with an error log and the old certificate stays in use.

        :returns: whether the new pair is in use.
        """
        cert, key = self.config.tls_cert, self.config.tls_key
        if self.tls_context is None or cert is None or key is None:
            logger.warning("TLS reload asked for, but the engine serves no TLS")
            return False
        try:
            info = reload_server_context(self.tls_context, cert, key)
        except TlsError as exc:
            logger.error("TLS reload refused, the previous certificate stays in use: %s", exc)
            return False
        logger.info("TLS certificate reloaded: %s serial=%x valid until %s UTC", info.subject, info.serial,
                    f"{info.not_after:%Y-%m-%d %H:%M}")
        _warn_about_certificate(info)
        return True

    def _start_rooms(self) -> None:
        """Run the rooms' schedule and the webhook deliveries; a finished
        recording becomes a webhook too."""
        assert self.rooms is not None and self.webhooks is not None
        self.media_graph.on_recording_done.append(self._recording_ready)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.rooms.run(), name="rooms-schedule"),
            loop.create_task(self.webhooks.run(), name="webhooks"),
        ]
        self._started.append("rooms")

    def _recording_ready(self, rec: Recording) -> None:
        """``recording.ready``: the file, its length, and the rooms of the
        session whose conference (or call) it recorded."""
        if self.webhooks is None:
            return
        node: Call | Conference = rec.node
        session = node.dispatcher if isinstance(node.dispatcher, Session) else None
        conferences = sorted(session.conferences) if session is not None else []
        self.webhooks.publish("recording.ready", {
            "path": str(rec.path), "duration": round(rec.duration, 3),
            "conference": node.name if isinstance(node, Conference) else None, "call_id": node.id,
            "session_id": session.id if session is not None else None,
            "rooms": [c[len("conf_"):] for c in conferences if c.startswith("conf_")],
        })

    def _pace_instead_of_workers(self) -> None:
        """The send workers were given up (they kept dying): the event loop
        sends the clock's frames from now on, paced onto the grid as
        without workers."""
        self.media_clock.dispatch = self.pacer = TickPacer()
        logger.warning("media frames are paced by the event loop from now on")

    async def stop(self) -> None:
        errors: list[BaseException] = []
        if self.speech is not None:
            self.speech.shutdown()
            set_default_speech(None)
        for part in reversed(self._started):
            try:
                if part == "rooms":
                    for task in self._tasks:
                        task.cancel()
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                    self._tasks = []
                    if self.rooms is not None:
                        self.rooms.close()
                elif part == "http" and self.http_runner is not None:
                    await self.http_runner.cleanup()
                elif part == "metrics" and self.metrics_runner is not None:
                    await self.metrics_runner.cleanup()
                elif part == "runtime":
                    await self.runtime.stop()
                    await wait_web_background()  # browser legs the sessions' end closed
                elif part == "sip":
                    await self.ua.stop()
                    await self.media_graph.stop()
                    await self.media_clock.stop()
                    for ports in self.ports.values():
                        ports.close()
                elif part == "send_workers" and self.send_workers is not None:
                    self.media_clock.dispatch = None
                    self.send_workers.stop()
                    if self.pacer is not None:  # it took over from workers given up
                        self.pacer.stop()
                elif part == "pacer" and self.pacer is not None:
                    self.media_clock.dispatch = None
                    self.pacer.stop()
                elif part == "store" and self.store is not None:
                    self.store.close()
                elif part == "directory" and self.shared_directory is not None:
                    await self._stop_directory(self.shared_directory)
            except Exception as exc:  # gather, keep stopping the rest
                errors.append(exc)
                logger.exception("stopping %s failed", part)
        self._started.clear()
        if errors:
            raise errors[0]

    def health_problems(self) -> list[str]:
        return [p for p in ("store", "runtime", "rooms", "sip", "http") if p not in self._started]

    # -- glue ----------------------------------------------------------------------

    def _media_for(self, call: SipCall) -> MediaHandler:
        host = self.ua.endpoint.listen_host_for(call.peer)
        address = self.config.advertised_host or host
        # SRTP: the rule's or the call's policy; by default answer in kind
        # inbound and offer plain RTP outbound.
        srtp = call.srtp or ("optional" if call.direction == "inbound" else "off")
        secure = call.peer.transport == "TLS" or self.config.srtp_allow_plain_signalling
        return SipLegMedia(self.ports[host], address, clock=self.media_clock, tts=self.tts,
                           audio=self.audio,
                           rtp_timeout=self.config.rtp_timeout, rtp_policy=self.rtp_policy,
                           call_id=call.id, srtp=srtp,
                           secure_signalling=secure, source=call.source or call.peer.host,
                           comfort_noise=self.config.silence_suppression)

    def _user_ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        assert self.store is not None
        return self.store.sip_ha1(user, realm, algorithm)

    def _on_message(self, request: Any, peer: Peer) -> int:
        text = request.body.decode("utf-8", errors="replace")
        # The URI parser decoded the user part's escapes once (RFC 3261 §19.1.2).
        callerid = getattr(request.from_.uri, "user", None) or ""
        destination = getattr(request.uri, "user", None) or ""
        source = request_source(request, peer).host
        return self.runtime.on_message(text, callerid, destination, received_headers(request.headers, source),
                                       source=source)

    def reload_rules(self) -> RuleSet:
        rules = self.load_rules()
        self.runtime.reload(rules)
        self.rules = rules
        return rules


def _warn_about_certificate(info: CertificateInfo) -> None:
    """Loud warnings for a self-signed certificate and one about to expire."""
    if info.self_signed:
        logger.warning("TLS certificate %s is self-signed: development certificate, not for production"
                       " (browsers and phones will not trust it)", info.subject)
    left = info.not_after - datetime.datetime.now(datetime.timezone.utc)
    if left < datetime.timedelta(days=14):
        logger.warning("TLS certificate %s expires in %d days (%s UTC): renew it and send SIGHUP",
                       info.subject, left.days, f"{info.not_after:%Y-%m-%d %H:%M}")


def _private_data_dir(data_dir: Path) -> None:
    """Create the data directory with mode 0700, or tighten it (and what is
    in it: database, key, logs, recordings, caches) when group or others
    may read it, with a warning: it holds password hashes, the master key,
    recordings and logs of who called whom."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    loose = 0
    for root, dirs, files in os.walk(data_dir):
        for name, mode in [(root, 0o700)] + [(os.path.join(root, d), 0o700) for d in dirs] + [
                (os.path.join(root, f), 0o600) for f in files]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                os.chmod(name, mode)
                loose += 1
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    if loose:
        logger.warning("%s: took group and other access away from %d files and directories"
                       " (the data directory is private: mode 0700, files 0600)", data_dir, loose)


async def run_forever(engine: Engine, stop: asyncio.Event) -> None:
    await engine.start()
    try:
        await stop.wait()
    finally:
        await engine.stop()


def _make_speech(config: EngineConfig) -> SpeechService | None:
    """The speech service ``asr_provider`` names, made the calls' default.
    A provider named explicitly that cannot run is a startup error; the
    default PocketSphinx missing only turns recognition off (logged), so
    an engine without it still serves calls.

    :raises StartupError: an unknown or unusable provider.
    """
    try:
        recognizer = make_recognizer(config.asr_provider)
    except AsrUnavailable as exc:
        if config.asr_provider != "pocketsphinx":
            raise StartupError(str(exc)) from None
        logger.warning("speech recognition off: %s", exc)
        return None
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    service = SpeechService(recognizer, config.asr_max_concurrent, config.asr_max_utterance)
    set_default_speech(service)
    return service
