"""The handle of one recording, shared by calls and conferences.

Its own module so that :mod:`engine.calls.call` (``call.record()``) and
:mod:`engine.calls.conference` (the media graph that writes the file) both
import it without importing each other.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Generator, Protocol

from engine.media.recorder import WavRecorder

__all__ = ["Recording", "RecordingOwner"]

logger = logging.getLogger(__name__)


class RecordingOwner(Protocol):
    """What a recording is stopped through (:class:`~engine.calls.conference.MediaGraph`)."""

    def _stop_recording(self, rec: Recording) -> None:
        """Stop writing ``rec`` and finish its file."""


class Recording:
    """The handle of one recording: awaiting it returns the WAV's path once
    the recording has stopped; :meth:`stop` ends it.

    :param graph: what writes it (the media graph).
    :param node: the call or conference recorded.
    :param recorder: the WAV file being written.
    """

    def __init__(self, graph: RecordingOwner, node: Any, recorder: WavRecorder) -> None:
        self.graph = graph
        self.node = node
        self.recorder = recorder
        self.path = recorder.path
        self._fut: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self.on_stopped: list[Callable[[Recording], None]] = []

    def __repr__(self) -> str:
        return f"<Recording {self.path} {self.duration:.1f}s>"

    @property
    def duration(self) -> float:
        return self.recorder.duration

    def done(self) -> bool:
        return self._fut.done()

    def __await__(self) -> Generator[Any, None, Path]:
        return asyncio.shield(self._fut).__await__()

    def stop(self) -> None:
        """End the recording (the file is complete when this returns)."""
        self.graph._stop_recording(self)

    def _finish(self) -> None:
        if self._fut.done():
            return
        self.recorder.close()
        self._fut.set_result(self.path)
        for cb in self.on_stopped:
            try:
                cb(self)
            except Exception:
                logger.exception("recording callback failed")
