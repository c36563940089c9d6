"""bench/fuzz: the long fuzz run against a live ``callbridge serve``.

Sends ``--sip`` generated SIP messages (mutations of the RFC 4475, RFC 5118,
PROTOS c07-sip and pjsip seed corpora in ``../shared/corpora``, plus
state-driving requests; a share over TCP) and ``--ws`` SDK WebSocket frames,
checks every ``--check-every`` messages that the engine answers OPTIONS and
``/healthz``, samples its RSS, and prints the figures and every error line or
traceback the engine logged, grouped. The engine runs with ``--trusted
127.0.0.1`` so the rate limiter does not ban the fuzzer. The generators and
the runner live in ``tests/fuzz`` (the suite runs a short version:
``tests/fuzz/test_fuzz.py``).

Usage: ``./run.sh bench fuzz --sip 1000000 --ws 100000 --seed 1``
Exit status: 0 when nothing crashed and nothing was logged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # before bench/: "fuzz" is the tests/fuzz package
sys.path.insert(1, str(ROOT))

from fuzz.runner import FuzzConfig, run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sip", type=int, default=1_000_000, help="SIP messages to send")
    parser.add_argument("--ws", type=int, default=100_000, help="WebSocket frames to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tcp-share", type=float, default=0.1, help="share of SIP messages sent over TCP")
    parser.add_argument("--check-every", type=int, default=5000, help="SIP messages between liveness checks")
    parser.add_argument("--workdir", type=Path, help="where the engine's data and stderr go (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    config = FuzzConfig(sip=args.sip, ws=args.ws, seed=args.seed, tcp_share=args.tcp_share,
                        check_every=args.check_every, progress=True)
    report = asyncio.run(run_fuzz(config, args.workdir))
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
