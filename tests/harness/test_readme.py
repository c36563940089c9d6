"""The README's "Testing your scenario" example runs as printed: its
scenarios, rules and tests are written out as a newcomer would copy them,
and pytest passes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def example_files() -> dict[str, str]:
    """The section's code blocks that start with ``# <path>``, by path."""
    text = README.read_text()
    start = text.index("## Testing your scenario")
    section = text[start: text.index("\n## ", start + 1)]
    files = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S):
        first, _, _ = block.partition("\n")
        if first.startswith("# ") and ("/" in first or first.endswith(".yaml")):
            files[first[2:].strip()] = block
    return files


def test_readme_example_passes_as_printed(pytester: pytest.Pytester) -> None:
    """Check the README example's three tests pass, and that the failure
    message the README quotes is the one a wrong PIN gives."""
    files = example_files()
    assert sorted(files) == ["rules.yaml", "scenarios/conference.py", "scenarios/pin.py", "tests/test_pin.py"]
    for path, source in files.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
    quoted = re.search(r"`(expected the call to join .*?)`\.", " ".join(README.read_text().split()))
    assert quoted is not None
    (pytester.path / "tests" / "test_message.py").write_text(
        "from test_pin import app  # the fixture\n\n"
        "def test_message(app):\n"
        "    call = app.incoming_call('5550100')\n"
        "    call.press('9999#')\n"
        f"    assert repr(call.joined('conf_1234')) == {quoted.group(1)!r}\n"
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest("-p", "engine.testing", "-p", "no:hypothesispytest", "tests")
    result.assert_outcomes(passed=4)
