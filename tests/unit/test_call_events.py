"""The engine's event emitter (engine.calls.call.Emitter): pyee's, with a
fast return for events nobody listens to, and nothing else changed."""

from __future__ import annotations

from typing import Any

import pytest
from pyee import PyeeError

from engine.calls.call import Call, CallEvents, CallState, Emitter


def test_an_event_without_handlers_is_not_handled_and_one_with_them_is() -> None:
    emitter = Emitter()
    seen: list[tuple[Any, ...]] = []
    assert not emitter.listened("x")
    assert emitter.emit("x", 1) is False
    emitter.on("x", lambda *args: seen.append(args))
    assert emitter.listened("x")
    assert emitter.emit("x", 1, 2) is True
    assert seen == [(1, 2)]


def test_a_removed_handler_is_not_called_and_the_event_is_unheard_again() -> None:
    emitter = Emitter()
    seen: list[int] = []

    def handler(n: int) -> None:
        seen.append(n)

    emitter.on("x", handler)
    emitter.remove_listener("x", handler)
    assert emitter.emit("x", 1) is False and seen == []
    assert not emitter.listened("x")


def test_once_handlers_and_new_listener_still_work_as_in_pyee() -> None:
    emitter = Emitter()
    added: list[str] = []
    emitter.on("new_listener", lambda event, _f: added.append(event))
    seen: list[int] = []
    emitter.once("y", seen.append)
    assert added == ["y"]  # the fast path does not hide new_listener from a listener of it
    emitter.emit("y", 1)
    emitter.emit("y", 2)
    assert seen == [1]


def test_error_without_a_handler_still_raises() -> None:
    """pyee raises for an ``error`` nobody handles; the fast path keeps that."""
    emitter = Emitter()
    assert emitter.listened("error")
    with pytest.raises(PyeeError):
        emitter.emit("error", "not an exception")


def test_the_fast_path_reads_pyees_handler_table() -> None:
    """The attribute the fast path reads is pyee's table of handlers (if a
    pyee release renames it, this fails instead of every event vanishing)."""
    emitter = Emitter()
    emitter.on("z", print)
    assert "z" in emitter._events and print in emitter._events["z"]


def test_the_emitter_sets_what_pyees_own_init_sets() -> None:
    """Emitter.__init__ writes pyee's attributes itself (without its two
    __init__ calls): the same names, of the same kinds, as pyee's emitter
    gets, so a pyee release that adds or renames one fails here."""
    from pyee.asyncio import AsyncIOEventEmitter

    ours, theirs = vars(Emitter()), vars(AsyncIOEventEmitter())
    assert sorted(ours) == sorted(theirs)
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}
    emitter = Emitter()
    emitter.on("z", print)
    emitter.remove_all_listeners("z")
    assert not emitter.listeners("z")
    emitter.on("y", print)
    emitter.remove_all_listeners()
    assert not emitter.listeners("y") and not emitter.event_names()


def test_a_call_builds_no_event_for_nobody_and_the_right_one_for_a_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    import engine.calls.call as call_module

    real = call_module.CallEvent

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
            built.append(name)
            super().__init__(name, *args, **kwargs)

    monkeypatch.setattr(call_module, "CallEvent", Counting)
    unheard = Call(direction="inbound", number="100", callerid="200")
    unheard._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "bye")
    assert unheard.state == CallState.DISCONNECTED
    assert built == []  # nobody listened to Disconnected: no event object
    call = Call(direction="inbound", number="100", callerid="200")
    heard: list[Any] = []
    call.emitter.on(str(CallEvents.Disconnected), heard.append)
    call._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "bye")
    assert built == [str(CallEvents.Disconnected)]
    assert len(heard) == 1 and heard[0].name == str(CallEvents.Disconnected) and heard[0].call is call
    assert heard[0].code == 200 and heard[0].reason == "bye"
