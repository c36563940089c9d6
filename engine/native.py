"""Compiled media modules: loaded when built for exactly these sources.

The per-packet media modules (:data:`MODULES`: the RTP transport and
pacer, RTP and RTCP reception, the jitter buffer, the media session, the
bridge) compile with mypyc, which takes a leg's receive and tick from
69,688 to 45,613 instructions (``bench/media_paths.py --instructions
--rtcp``; see ``docs/architecture.md``). ``tools/build_native.py`` (run by ``run.sh``)
compiles them into a directory outside the source tree with a manifest
of each source's SHA-256; :func:`install` puts a finder first on
``sys.meta_path`` that loads the compiled modules only while every one of
their sources still has its manifest's hash. One edited source, and the
whole group is run from source (the compiled modules call one another
directly, so they are taken together or not at all), with a
``RuntimeWarning`` (printed at start, before any logging is set up):
a compiled module never stands in for code it was not built from.

``CALLBRIDGE_NATIVE=0`` runs everything from source.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["MODULES", "install", "loaded"]

#: The modules compiled, in the order given to mypyc.
MODULES = ("engine.media.jitterbuffer", "engine.media.rtp", "engine.calls.rtp_stream",
           "engine.transport.rtp_transport", "engine.transport.rtp_pace", "engine.media.bridge",
           "engine.media.rtcp")

#: The manifest's name in the build directory.
MANIFEST = "manifest.json"

_ROOT = Path(__file__).resolve().parent.parent


def source_digest(module: str, root: Path = _ROOT) -> str:
    """SHA-256 of ``module``'s source file under ``root``."""
    return hashlib.sha256((root / (module.replace(".", "/") + ".py")).read_bytes()).hexdigest()


class _Finder:
    """Finds the compiled modules (and their shared library) in the build directory."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        so = self.paths.get(fullname)
        if so is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, so)
        return importlib.util.spec_from_file_location(fullname, so, loader=loader)


_installed: list[_Finder] = []


def install(directory: str | None = None) -> bool:
    """Load the compiled modules from ``directory`` (``CALLBRIDGE_NATIVE_DIR``,
    else ``.venv/native`` of the checkout) if their manifest matches the
    sources; ``False`` (and the sources run) otherwise."""
    if _installed:
        return True
    if os.environ.get("CALLBRIDGE_NATIVE", "1") == "0":
        return False
    where = Path(directory or os.environ.get("CALLBRIDGE_NATIVE_DIR") or _ROOT / ".venv" / "native")
    try:
        manifest = json.loads((where / MANIFEST).read_text())
    except OSError:
        return False  # not built: the sources run
    except ValueError:
        manifest = None
    paths = _paths(where, manifest)
    if paths is None:
        return False
    if any(name in sys.modules for name in paths):
        return False  # imported already (from source): too late to swap
    finder = _Finder(paths)
    sys.meta_path.insert(0, finder)
    _installed.append(finder)
    return True


def _paths(where: Path, manifest: object) -> dict[str, str] | None:
    """Module name -> compiled file, from a manifest that matches the
    sources and whose files are all there; ``None`` (with a warning) else."""
    try:
        if not isinstance(manifest, dict):
            raise TypeError("not an object")
        modules, support = manifest["modules"], manifest.get("support", {})
        if sorted(modules) != sorted(MODULES) or manifest.get("python") != sys.implementation.cache_tag:
            _warn(f"compiled media modules in {where} are for another set or interpreter")
            return None
        stale = [m for m in MODULES if source_digest(m) != modules[m]["sha256"]]
        paths = {name: str(where / entry["file"]) for name, entry in modules.items()}
        paths.update((name, str(where / file)) for name, file in support.items())
    except (KeyError, TypeError, AttributeError):
        _warn(f"the manifest of the compiled media modules in {where} is damaged")
        return None
    if stale:
        _warn(f"{', '.join(stale)} changed since the media modules were compiled (./run.sh builds them again)")
        return None
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        _warn(f"compiled media modules missing: {', '.join(missing)}")
        return None
    return paths


def _warn(problem: str) -> None:
    warnings.warn(f"{problem}: running the sources", RuntimeWarning, stacklevel=4)


def loaded() -> bool:
    """Whether the media modules in use are the compiled ones."""
    module = sys.modules.get(MODULES[0])
    return module is not None and isinstance(getattr(module, "__loader__", None),
                                             importlib.machinery.ExtensionFileLoader)
