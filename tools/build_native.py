"""Compile the per-packet media modules with mypyc (see engine/native.py).

Usage: ``python tools/build_native.py OUTDIR``. The sources are copied to a
scratch directory and compiled there (mypyc builds in place), so the
checkout never holds a compiled module that could shadow an edited
source; the modules, their shared library and a manifest of the sources'
hashes go to OUTDIR, replacing what was there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# importing engine.native imports engine, whose __init__ would look for a
# build (the one being replaced) and warn that it is stale: nothing to load here
os.environ["CALLBRIDGE_NATIVE"] = "0"

from engine.native import MANIFEST, MODULES, source_digest  # noqa: E402


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="callbridge-native-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "engine", scratch / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        # the hashes of what is compiled, the copy: a source edited meanwhile
        # differs from the manifest, so the engine runs it and run.sh builds again
        digests = {m: source_digest(m, scratch) for m in MODULES}
        shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
        files = [m.replace(".", "/") + ".py" for m in MODULES]
        proc = subprocess.run([sys.executable, "-m", "mypyc", *files], cwd=scratch, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"mypyc failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        modules = {}
        for m in MODULES:
            parent = scratch / Path(m.replace(".", "/")).parent
            (so,) = parent.glob(m.rsplit(".", 1)[1] + ".*.so")
            target = m + so.name[so.name.index("."):]
            shutil.copy(so, out / target)
            modules[m] = {"file": target, "sha256": digests[m]}
        support = {}
        for so in scratch.glob("*__mypyc.*.so"):  # the group's shared library, a top-level module
            shutil.copy(so, out / so.name)
            support[so.name.split(".", 1)[0]] = so.name
        manifest = {"python": sys.implementation.cache_tag, "modules": modules, "support": support}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]))
