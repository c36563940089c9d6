"""Scenario tests without a network: callbridge's pytest plugin.

Load an application (``rules.yaml`` and ``scenarios/``), place calls into
it, act as the people on them, and check what they experienced, on a
virtual clock (a 30-second timeout takes no time)::

    def test_pin_joins_the_conference(callbridge):
        app = callbridge.load("path/to/app")           # rules.yaml + scenarios/
        call = app.incoming_call("5550100", callerid="+15551234567")
        assert call.heard_speech("enter your conference PIN")
        call.press("1234#")
        assert call.joined("conf_1234")

The scenario code is run by the engine's own
:class:`~engine.runtime.runtime.ScenarioRuntime` and its call legs are real
:class:`~engine.calls.call.Call` objects (:class:`SimCall`); only the SIP and
web transports, the calls' own audio, TTS, HTTP and the clock are
simulated; conferences and media routing are the engine's media graph.
See :mod:`engine.testing.app` for the driving model,
:mod:`engine.testing.clock` for the virtual-time loop and
:mod:`engine.testing.media` for the graph's stepped clock.

The plugin is registered by the package's ``pytest11`` entry point (named
``engine.testing``, like the module, so ``-p engine.testing`` or a
``pytest_plugins = ["engine.testing"]`` line load the same plugin once);
``-p no:engine.testing`` turns it off. It adds one fixture,
:func:`callbridge`.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from engine.testing.app import App, ConferenceView, Flow, Harness, LogLine, MediaFlows
from engine.testing.calls import (
    Callee,
    Caller,
    Endpoint,
    Message,
    Played,
    RecordingTts,
    SimCall,
    SimUserAgent,
    SimWebCall,
    Speech,
    Verdict,
    estimate_speech,
)
from engine.testing.clock import Plan, VirtualTimeLoop
from engine.testing.media import GraphPlayer, HarnessGraph, SteppedClock
from engine.testing.http import CannedResponse, HttpExchange, HttpMock

__all__ = [
    "App",
    "Callee",
    "Caller",
    "CannedResponse",
    "ConferenceView",
    "Endpoint",
    "Flow",
    "GraphPlayer",
    "HarnessGraph",
    "Harness",
    "HttpExchange",
    "HttpMock",
    "LogLine",
    "MediaFlows",
    "Message",
    "Plan",
    "Played",
    "RecordingTts",
    "SimCall",
    "SimUserAgent",
    "SimWebCall",
    "Speech",
    "SteppedClock",
    "Verdict",
    "VirtualTimeLoop",
    "callbridge",
    "estimate_speech",
]


@pytest.fixture
def callbridge(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A :class:`Harness`: ``callbridge.load(path)`` gives an :class:`App`.

    At the end of the test every session is ended and the loop closed; a
    scenario error the test did not read (``app.errors``) or an HTTP request
    it did not register fails the test there, with the traceback.
    """
    harness = Harness(tmp_dir=lambda: request.getfixturevalue("tmp_path"))
    yield harness
    harness.close()
