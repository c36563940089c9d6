"""A WebSocket client that stays connected: the socket side of a media
stream to a bot (:mod:`engine.calls.media_stream`; the frames are
:mod:`engine.media.stream_codec`'s).

It sends what its :class:`~engine.media.stream_codec.SendQueue` holds, in
order, and measures how late each frame reached the socket
(:class:`~engine.media.stream_codec.LatenessMeter`). A dropped connection is
retried with a doubling backoff, ``attempts`` times in a row at most; each
new connection starts with the handler's opening frames, and the media
queued while the socket was down is dropped as stale (counted). What the
bot sends goes to the handler, which never raises (it counts bad frames).
Frames over ``max_msg_size`` close the connection (aiohttp's own cap, a
ceiling above the codec's, which ignores smaller oversize frames).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aiohttp

from engine.media.stream_codec import Frame, LatenessMeter, OutgoingFrame, SendQueue

__all__ = ["WsClient", "WsHandler"]

logger = logging.getLogger(__name__)


class WsHandler(Protocol):
    """What the client reports to (the media stream)."""

    def on_open(self, attempt: int) -> list[Frame]:
        """A connection is up (``attempt`` 0 the first, then each reconnect):
        the frames to send before anything queued."""

    def on_frame(self, data: Frame) -> None:
        """A frame from the bot (never raises)."""

    def on_drop(self, error: str, retry_in: float | None) -> None:
        """The connection failed or closed; ``retry_in`` seconds to the
        next attempt, ``None``: the client gave up."""


class WsClient:
    """One stream's connection (see the module notes).

    :param url: ``ws://`` or ``wss://`` (checked by the caller).
    :param headers: sent with the upgrade request.
    :param attempts: failed connections in a row before giving up.
    :param backoff: the first retry delay and the longest (seconds).
    :param max_msg_size: aiohttp's cap on a received frame (bytes).
    """

    def __init__(self, url: str, handler: WsHandler, queue: SendQueue, *,
                 headers: dict[str, str] | None = None, attempts: int = 5,
                 backoff: tuple[float, float] = (0.2, 5.0), max_msg_size: int = 4 * 1024 * 1024,
                 connect_timeout: float = 5.0) -> None:
        self.url = url
        self.handler = handler
        self.queue = queue
        self.headers = dict(headers or {})
        self.attempts = attempts
        self.backoff = backoff
        self.max_msg_size = max_msg_size
        self.connect_timeout = connect_timeout
        self.lateness = LatenessMeter()
        #: Connections made, and frames written to sockets.
        self.connections = 0
        self.frames_sent = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ws-stream {self.url}")

    def wake(self) -> None:
        """Frames were queued."""
        self._wake.set()

    async def close(self, last: list[OutgoingFrame], timeout: float = 2.0) -> None:
        """Send what is queued plus ``last`` (if connected), then close."""
        for frame in last:
            self.queue.put(frame)
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except (asyncio.TimeoutError, Exception):
            task.cancel()
            try:
                await task
            except BaseException:
                pass

    async def _run(self) -> None:
        failures = 0
        attempt = 0
        async with aiohttp.ClientSession() as session:
            while not self._closing:
                error = await self._connection(session, attempt)
                attempt += 1
                if self._closing:
                    break
                if error is None:  # it was up: a fresh run of attempts
                    failures = 0
                    error = "closed by the bot"
                failures += 1
                if failures > self.attempts:
                    self.handler.on_drop(error, None)
                    return
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (failures - 1))
                self.handler.on_drop(error, delay)
                try:
                    await asyncio.wait_for(self._sleep_until_closing(), delay)
                except asyncio.TimeoutError:
                    pass
                self.queue.drop_media()

    async def _sleep_until_closing(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self._wake.wait()

    async def _connection(self, session: aiohttp.ClientSession, attempt: int) -> str | None:
        """One connection's life: ``None`` when it was up (and ended),
        else why it could not be made."""
        try:
            ws = await session.ws_connect(self.url, headers=self.headers, max_msg_size=self.max_msg_size,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=1.0), autoping=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return f"connect failed: {type(exc).__name__}: {exc}"[:200]
        self._ws = ws
        self.connections += 1
        loop = asyncio.get_running_loop()
        try:
            opening = self.handler.on_open(attempt)
            now = loop.time()
            self.queue.put_front([OutgoingFrame(f, now, False) for f in opening])
            reader = loop.create_task(self._read(ws))
            try:
                await self._write(ws, reader)
            finally:
                if not reader.done():
                    reader.cancel()
                    try:
                        await reader
                    except BaseException:
                        pass
        finally:
            self._ws = None
            if not ws.closed:
                await ws.close()
        return None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.handler.on_frame(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.handler.on_frame(msg.data)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                logger.info("stream socket error: %s", ws.exception())
                break
        self._wake.set()

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = self.queue.get()
            if frame is None:
                if self._closing or reader.done() or ws.closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if isinstance(frame.data, str):
                    await ws.send_str(frame.data)
                else:
                    await ws.send_bytes(frame.data)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                logger.info("stream socket send failed: %s", exc)
                if not frame.media:
                    self.queue.put_front([frame])
                return
            self.frames_sent += 1
            if frame.media:
                self.lateness.add(loop.time() - frame.stamp)
