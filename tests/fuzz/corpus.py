"""The seed messages the SIP fuzzer mutates, read from the shared corpora
(GPL material: read in place, never copied into the project).

- ``rfc4475/*.dat``: one message a file (49 torture cases and test.dat).
- ``rfc5118/*``: one message a file (LF line ends as shipped).
- ``protos-c07-sip/cases/*``: each file is ``<len> <INVITE template>``
  followed by ``<len> <teardown template>`` (the corpus README); both parts
  are seeds, their placeholders (``<To>``, ``<Call-ID>``...) are filled in
  per message by :func:`fuzz.sip.fill_protos`.
- ``pjsip-fuzz-seeds/fuzz-sip*_seed_corpus.zip``: the ``.sip`` members.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from corpora import corpora_dir

__all__ = ["Seed", "load_seeds", "split_protos"]


@dataclass(frozen=True)
class Seed:
    """One seed message: where it came from, and its bytes (PROTOS ones
    still hold their ``<placeholders>``)."""

    name: str
    data: bytes


def split_protos(raw: bytes) -> list[bytes]:
    """Cut a PROTOS case file into its ``<len> <template>`` parts."""
    out = []
    i = 0
    while i < len(raw):
        space = raw.index(b" ", i)
        size = int(raw[i:space])
        out.append(raw[space + 1 : space + 1 + size])
        i = space + 1 + size
    return out


def load_seeds(root: Path | None = None, protos_step: int = 1) -> list[Seed]:
    """Every seed message, in a stable order (the generator's determinism
    depends on it). ``protos_step`` > 1 takes every n-th PROTOS case only."""
    root = root or corpora_dir()
    seeds: list[Seed] = []
    for path in sorted((root / "rfc4475").glob("*.dat")):
        seeds.append(Seed(f"rfc4475/{path.name}", path.read_bytes()))
    for path in sorted((root / "rfc5118").iterdir()):
        if path.suffix != ".tsv":
            seeds.append(Seed(f"rfc5118/{path.name}", path.read_bytes()))
    for path in sorted((root / "protos-c07-sip" / "cases").iterdir())[::protos_step]:
        for n, part in enumerate(split_protos(path.read_bytes())):
            seeds.append(Seed(f"protos/{path.name}#{n}", part))
    for name in ("fuzz-sip_seed_corpus.zip", "fuzz-sip-dialog_seed_corpus.zip"):
        with zipfile.ZipFile(root / "pjsip-fuzz-seeds" / name) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".sip"):
                    seeds.append(Seed(f"pjsip/{info.filename}", archive.read(info)))
    if not seeds:
        raise RuntimeError(f"no seed messages found under {root}")
    return seeds
