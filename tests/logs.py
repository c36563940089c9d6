"""Reading an engine's session logs from tests (the daily files under
``data_dir/logs``), and waiting for a line to appear in them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.server import Engine


def session_logs(engine: Engine) -> str:
    """The text of the daily session log files, once the engine's buffered
    lines are written (they reach the files within ``SessionLogs.FLUSH_AFTER``)."""
    runtime = getattr(engine, "runtime", None)
    if runtime is not None:
        runtime.logs.flush()
    logs = Path(engine.config.data_dir) / "logs"
    return "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))


async def wait_for_log(engine: Engine, text: str, timeout: float = 5.0) -> str:
    """The session logs once ``text`` is in them (or at ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        logs = session_logs(engine)
        if text in logs or loop.time() > deadline:
            return logs
        await asyncio.sleep(0.02)
