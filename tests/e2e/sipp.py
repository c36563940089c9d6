"""Running sipp (Debian's sip-tester) from tests: bounded, on loopback, with
its statistics read back."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from tools import require_tool

SIPP_DIR = Path(__file__).parent / "sipp"


def sipp_path() -> str:
    """The sipp binary; a missing sipp fails the test (never skips it)."""
    return require_tool("sipp")


@dataclass
class SippResult:
    returncode: int
    output: str
    errors: str

    def stat(self, name: str) -> int:
        """A cumulative counter from sipp's final screen ('Successful call')."""
        for line in self.output.splitlines():
            if line.strip().startswith(name):
                cells = [c.strip() for c in line.split("|")]
                numbers = [c for c in cells if c.isdigit()]
                if numbers:
                    return int(numbers[-1])
        return -1

    @property
    def successful(self) -> int:
        return self.stat("Successful call")

    @property
    def failed(self) -> int:
        return self.stat("Failed call")


async def run_sipp(
    args: list[str], *, scenario: str | None = None, target: str | None = None,
    timeout: float = 60.0, cwd: Path | None = None,
) -> SippResult:
    """Run sipp to completion. ``scenario`` names an XML file in tests/e2e/sipp."""
    cmd = [sipp_path()]
    if scenario is not None:
        cmd += ["-sf", str(SIPP_DIR / scenario)]
    cmd += ["-i", "127.0.0.1", "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error"]
    cmd += args
    if target is not None:
        cmd.append(target)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 15)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.decode(errors="replace"))
    return SippResult(proc.returncode if proc.returncode is not None else -1, text,
                      err.decode(errors="replace"))


async def start_sipp(args: list[str], *, scenario: str | None = None, timeout: float = 60.0,
                     cwd: Path | None = None) -> asyncio.subprocess.Process:
    """Start sipp in the background (a UAS waiting for the engine's calls)."""
    cmd = [sipp_path()]
    if scenario is not None:
        cmd += ["-sf", str(SIPP_DIR / scenario)]
    cmd += ["-i", "127.0.0.1", "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error"] + args
    return await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
    )
