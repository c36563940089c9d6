"""Fixtures shared by the integration and end-to-end tests: a real engine
started in the test's event loop on ephemeral loopback ports."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import settings

# Property tests check behaviour, never speed: Hypothesis's default 200 ms
# deadline per example fails them on a loaded machine (CI shares 2 cores).
settings.register_profile("callbridge", deadline=None)
settings.load_profile("callbridge")

from engine.server import Engine, EngineConfig
from engine.transport.sip_endpoint import SecurityPolicy

SCENARIOS = Path(__file__).parent / "scenarios"

# The scenario harness (registered by the package's pytest11 entry point once
# installed; named here so the suite also runs from a plain checkout) and
# pytester, with which the harness's own tests run deliberately failing tests.
pytest_plugins = ["engine.testing", "pytester"]

EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """Start engines with the given rules (YAML text) over tests/scenarios,
    over ``scenarios`` (name -> source) written to a temporary folder, or
    over the folder ``scenarios`` (a Path, e.g. the shipped one). Pass
    ``data_dir`` to start on another engine's data (a restart)."""
    engines: list[Engine] = []

    async def factory(
        rules: str,
        scenarios: dict[str, str] | Path | None = None,
        *,
        policy: SecurityPolicy | None = None,
        sip_hosts: list[str] | None = None,
        **overrides: object,
    ) -> Engine:
        app = tmp_path / f"app{len(engines)}"
        app.mkdir()
        (app / "rules.yaml").write_text(textwrap.dedent(rules))
        scen_dir = SCENARIOS
        if isinstance(scenarios, Path):
            scen_dir = scenarios
        elif scenarios is not None:
            scen_dir = app / "scenarios"
            scen_dir.mkdir()
            for name, source in scenarios.items():
                (scen_dir / f"{name}.py").write_text(textwrap.dedent(source))
        config = EngineConfig(
            sip_hosts=sip_hosts or ["127.0.0.1"],
            sip_port=0,
            http_port=0,
            rules=app / "rules.yaml",
            scenarios=scen_dir,
            data_dir=overrides.pop("data_dir", app / "data"),  # type: ignore[arg-type]
            policy=policy or SecurityPolicy(trusted=frozenset({"127.0.0.1", "::1"})),
            **{"session_idle_timeout": 2.0, "sip_tls_port": 0, **overrides},  # type: ignore[arg-type]
        )
        engine = Engine(config)
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop()
