"""The compiled media modules (engine.native): in use when built for these
sources, never for an edited one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import native

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import engine.native as n, engine.calls.rtp_stream; print(n.loaded())"


def _run(native_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "CALLBRIDGE_NATIVE_DIR": str(native_dir), "CALLBRIDGE_NATIVE": "1", **env}
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=60, check=True)


def _built() -> Path:
    """The build ./run.sh made; a run without it is a broken set-up, not a pass."""
    path = Path(os.environ.get("CALLBRIDGE_NATIVE_DIR") or ROOT / ".venv" / "native")
    assert (path / native.MANIFEST).is_file(), f"no compiled media modules in {path}: ./run.sh test builds them"
    return path


def _copy_build(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the build, to damage, and its manifest."""
    copy = tmp_path / "native"
    shutil.copytree(_built(), copy)
    return copy, json.loads((copy / native.MANIFEST).read_text())


def _write(copy: Path, manifest: dict[str, Any]) -> None:
    (copy / native.MANIFEST).write_text(json.dumps(manifest))


def test_the_tests_run_the_compiled_modules() -> None:
    """Unless CALLBRIDGE_NATIVE=0 asks for the sources, what the suite
    exercises is the compiled media code that serve runs."""
    if os.environ.get("CALLBRIDGE_NATIVE") == "0":
        assert not native.loaded()
        return
    _built()
    assert native.loaded()
    import engine.media.jitterbuffer as jb

    assert jb.__file__ is not None and jb.__file__.endswith(".so")


def test_an_edited_source_runs_from_source_with_a_warning(tmp_path: Path) -> None:
    """A source whose hash is not the manifest's: the whole group runs from
    source (the compiled modules call one another directly), and the
    warning names the module."""
    copy, manifest = _copy_build(tmp_path)
    assert _run(copy).stdout.strip() == "True"
    manifest["modules"]["engine.media.rtp"]["sha256"] = "0" * 64
    _write(copy, manifest)
    proc = _run(copy)
    assert proc.stdout.strip() == "False"
    assert "engine.media.rtp changed since the media modules were compiled" in proc.stderr


@pytest.mark.parametrize("change", ["interpreter", "modules"])
def test_a_build_for_another_interpreter_or_module_set_is_not_loaded(tmp_path: Path, change: str) -> None:
    copy, manifest = _copy_build(tmp_path)
    if change == "interpreter":
        manifest["python"] = "cpython-399"
    else:
        manifest["modules"].pop("engine.calls.rtp_stream")
    _write(copy, manifest)
    proc = _run(copy)
    assert proc.stdout.strip() == "False"
    assert "for another set or interpreter" in proc.stderr


def test_no_build_and_native_off_run_the_sources(tmp_path: Path) -> None:
    assert _run(tmp_path / "nothing").stdout.strip() == "False"
    assert _run(_built(), CALLBRIDGE_NATIVE="0").stdout.strip() == "False"


@pytest.mark.parametrize("damage", ["not json", "not an object", "no hash", "a file gone"])
def test_a_damaged_build_runs_the_sources_and_says_so(tmp_path: Path, damage: str) -> None:
    """Whatever is wrong with the build directory, importing the engine
    works: the sources run, and the warning says what is wrong."""
    copy, manifest = _copy_build(tmp_path)
    if damage == "not json":
        (copy / native.MANIFEST).write_text("{")
    elif damage == "not an object":
        (copy / native.MANIFEST).write_text("[1, 2]")
    elif damage == "no hash":
        del manifest["modules"]["engine.media.rtp"]["sha256"]
        _write(copy, manifest)
    else:
        (copy / manifest["modules"]["engine.media.jitterbuffer"]["file"]).unlink()
    proc = _run(copy)
    assert proc.stdout.strip() == "False"
    expected = "missing" if damage == "a file gone" else "is damaged"
    assert expected in proc.stderr and "running the sources" in proc.stderr
