"""bench/call_paths keeps measuring what it says: its UAC completes real
calls against a real engine and against the bare probe in one process
(every call answered, ACKed and ended by BYE), and the CPU figures it
divides are those of the calls."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def call_paths(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("call_paths", None)
    import call_paths

    return call_paths


def test_the_engine_and_the_probe_complete_every_call(call_paths, tmp_path: Path) -> None:
    probe = asyncio.run(call_paths.run_probe(20, 100.0))
    engine = asyncio.run(call_paths.run_engine(20, 100.0, tmp_path))
    assert probe > 0 and engine > 0
    # the engine parses, keeps a session, a dialog and a media session a call:
    # whatever the machine, more than a UAS that parses nothing
    assert engine > probe


def test_a_refused_call_fails_the_run_instead_of_counting(call_paths) -> None:
    async def refusing() -> None:
        loop = asyncio.get_running_loop()

        class Refuse(asyncio.DatagramProtocol):
            def connection_made(self, transport):  # type: ignore[no-untyped-def]
                self.transport = transport

            def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
                if data.startswith(b"INVITE"):
                    self.transport.sendto(call_paths.reply(data, b"486 Busy Here"), addr)

        transport, _ = await loop.create_datagram_endpoint(Refuse, local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            await call_paths._drive(("127.0.0.1", port), 5, 100.0, send_bye=True)
        finally:
            transport.close()

    with pytest.raises(RuntimeError, match="5 of 5 calls failed.*486 Busy Here"):
        asyncio.run(refusing())


def test_instruction_counts_need_valgrind_and_say_so(call_paths, monkeypatch) -> None:
    monkeypatch.setattr(call_paths.valgrind.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="valgrind is not installed"):
        call_paths.instructions("probe", 10, 10.0)
