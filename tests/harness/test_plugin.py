"""Tests for the harness as a pytest plugin, run with pytester: a test of a
deliberately broken scenario fails with a message a person can act on, and
the plugin loads once however it is named (entry point, ``-p``,
``pytest_plugins``)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

APP = Path(__file__).parent / "app"

#: Options of every inner run: the harness plugin, and not hypothesis's
#: (its set-up costs half a second a run and these tests need none of it).
PLUGIN = ("-p", "engine.testing", "-p", "no:hypothesispytest")


@pytest.fixture(autouse=True)
def inner_config(pytester: pytest.Pytester) -> None:
    """The inner runs' pytest.ini: pytest-asyncio's loop scope set, as in
    pyproject.toml, so it has nothing to warn about."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


TEST_PIN = f"""
from pathlib import Path

APP = Path(__file__).parent / "app"


def test_pin_joins_the_conference(callbridge):
    app = callbridge.load(APP)
    app.http.respond("http://api.example/rooms/1234", json={{"id": "1234"}})
    call = app.incoming_call("5550100")
    assert call.heard_speech("enter your conference PIN")
    call.press("1234#")
    assert call.joined("conf_1234")
"""

#: The bug: the rooms API's answer is read as the wrong type, so every PIN is refused.
BUG = ("        if room.code == 200:", "        if room.code == '200':")


def copy_app(pytester: pytest.Pytester, broken: bool) -> None:
    target = pytester.path / "app"
    shutil.copytree(APP, target)
    if broken:
        gate = target / "scenarios" / "pin_gate.py"
        source = gate.read_text()
        assert BUG[0] in source
        gate.write_text(source.replace(*BUG))
    pytester.makepyfile(test_pin=TEST_PIN)


def test_a_broken_scenario_fails_its_test_readably(pytester: pytest.Pytester) -> None:
    """Check the same test passes against the scenario and fails against a
    broken copy, saying which conference was expected, that none was
    joined, and what the caller last heard."""
    copy_app(pytester, broken=False)
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=1)

    shutil.rmtree(pytester.path / "app")
    copy_app(pytester, broken=True)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "E       AssertionError: assert expected the call to join conf_1234, it joined nothing; "
        "it is CONNECTED; last said: 'That PIN is not valid. Please try again.'",
    ])


def test_a_scenario_error_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    """Check a scenario that raises, in a test that never looks at
    ``app.errors``, errors at teardown with the scenario's traceback."""
    pytester.makepyfile(test_raises=textwrap.dedent('''
        def test_call(callbridge):
            app = callbridge.load_text(
                'rules: [{name: In, pattern: "in", scenarios: [bad]}]',
                {"bad": """
                    from engine.runtime.scenario import AppEvents, VoxEngine
                    def on_alerting(e):
                        e.call.answer()
                        {}["missing"]
                    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
                """},
            )
            app.incoming_call("in")
    '''))
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "E * AssertionError: scenario of rule In failed: KeyError: 'missing'",
        "*scenario error: Traceback (most recent call last):",
        '*{}?"missing"?',  # fnmatch: [ ] would be a character class
        "*(read app.errors in the test if this is expected)",
    ])


def test_the_plugin_loads_once_however_it_is_named(pytester: pytest.Pytester) -> None:
    """Check the pytest11 entry point (as ``pip install`` writes it) gives
    the fixture with no option, and that naming the plugin again with
    ``-p engine.testing`` or ``pytest_plugins`` does not register it twice."""
    site = pytester.mkdir("site")
    dist = site / "callbridge_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: callbridge-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nengine.testing = engine.testing\n")
    pytester.syspathinsert(site)
    pytester.makepyfile(test_fixture="def test_fixture(callbridge):\n    assert callbridge.now == 0.0\n")
    quick = ("-p", "no:hypothesispytest")
    pytester.runpytest(*quick).assert_outcomes(passed=1)
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=1)
    pytester.makeconftest('pytest_plugins = ["engine.testing"]\n')
    pytester.runpytest(*quick).assert_outcomes(passed=1)
    (pytester.path / "conftest.py").unlink()
    pytester.runpytest(*quick, "-p", "no:engine.testing").assert_outcomes(errors=1)
