"""The layers of docs/architecture.md, checked on the import graph.

Each tuple below is one layer, highest first: a module may import from its
own layer's siblings (unless the layer says they are independent) and from
any layer below it, never from a layer above. The graph is grimp's (the
library under import-linter), built from the source; the failure message
names each illegal import chain so that whoever added it sees which line to
move. ``docs/architecture.md`` shows the same table: change both together.
"""

from __future__ import annotations

import grimp
from grimp import Layer

#: Highest first. ``independent=True``: siblings may not import each other.
LAYERS: tuple[Layer, ...] = (
    Layer("engine.cli", "engine.testing", "engine.testcall", independent=False),
    Layer("engine.server"),
    Layer("engine.web"),
    Layer("engine.scenario", "engine.runtime", independent=False),
    Layer("engine.calls"),
    Layer("engine.transport"),
    Layer("engine.sip", "engine.media", "engine.state", independent=True),
    Layer("engine.security_log", "engine.entropy", "engine.native", independent=True),
)


def _chains(graph: grimp.ImportGraph, layers: tuple[Layer, ...]) -> list[str]:
    found = []
    for dependency in graph.find_illegal_dependencies_for_layers(layers=layers):
        for route in dependency.routes:
            found.append(f"{' | '.join(route.heads)} -> ... -> {' | '.join(route.tails)}"
                         f" (via {', '.join(route.middle) or 'a direct import'})")
    return sorted(found)


def test_no_layer_imports_one_above_it() -> None:
    """Every module of engine/ is in some layer, and no import goes upward."""
    graph = grimp.build_graph("engine")
    covered = {module for layer in LAYERS for module in layer.module_tails}
    top_level = {m for m in graph.modules if m.count(".") == 1 and m != "engine.__main__"}
    assert top_level <= covered, f"modules in no layer: {sorted(top_level - covered)}"
    assert _chains(graph, LAYERS) == []


def test_the_check_catches_an_upward_import() -> None:
    """The same check, on a graph with one added upward import, reports it:
    the test above could not pass by checking nothing."""
    graph = grimp.build_graph("engine")
    graph.add_import(importer="engine.sip.parser", imported="engine.calls.call")
    assert any("engine.sip.parser" in chain for chain in _chains(graph, LAYERS))


#: Pairs of modules that may import each other one way at most (the call
#: layer's routing graph knows calls through protocols, not the other way round).
ONE_WAY: tuple[tuple[str, str], ...] = (
    ("engine.calls.call", "engine.calls.conference"),
)


def _both_ways(graph: grimp.ImportGraph, pairs: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"{a} <-> {b}" for a, b in pairs
            if graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)]


def test_call_and_conference_do_not_import_each_other_both_ways() -> None:
    """``engine.calls.call`` and ``engine.calls.conference`` are not in an
    import cycle, direct or through other modules (``TYPE_CHECKING`` imports
    count: grimp sees them)."""
    assert _both_ways(grimp.build_graph("engine"), ONE_WAY) == []


def test_the_cycle_check_catches_a_cycle() -> None:
    """The same check reports the pair once an import back is added: the
    test above could not pass by checking nothing."""
    graph = grimp.build_graph("engine")
    graph.add_import(importer="engine.calls.call", imported="engine.calls.conference")
    graph.add_import(importer="engine.calls.conference", imported="engine.calls.call")
    assert _both_ways(graph, ONE_WAY) == ["engine.calls.call <-> engine.calls.conference"]


def test_sip_leg_does_not_import_the_user_agent() -> None:
    """``engine.calls.sip_leg`` (:class:`SipCall`) knows its user agent only
    through the ``SipLegOwner`` protocol: no import chain leads from it to
    ``engine.calls.sip_ua`` (which imports it to create legs)."""
    graph = grimp.build_graph("engine")
    assert graph.chain_exists(importer="engine.calls.sip_ua", imported="engine.calls.sip_leg")
    assert not graph.chain_exists(importer="engine.calls.sip_leg", imported="engine.calls.sip_ua")
