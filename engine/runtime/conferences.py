"""Who runs which conference: the ONE session owning a conference name,
claimed in the directory before its scenario runs (so two callers racing
to open a conference reach the same session), and whether a conference is
open at all (a session runs it, or a room was created for it).

A shared directory that cannot be reached (``DirectoryUnavailable``)
refuses the call into a conference with a :class:`CallError`, the refusal
scenarios already handle; the directory logs the outage itself."""

from __future__ import annotations

import logging
import time
from typing import Mapping

from engine.calls.call import CallError
from engine.runtime.session import Session
from engine.state.directory import Directory, DirectoryUnavailable
from engine.state.store import Store

__all__ = ["ConferenceOwners"]

logger = logging.getLogger("engine.runtime.scenario")


class ConferenceOwners:
    """Conference names and the sessions running them, in the directory.

    :param directory: where claims live (shared by the nodes).
    :param node_id: this node's id.
    :param sessions: this node's live sessions, by id.
    :param store: the rooms (``conf_<room id>`` is open once the room exists), or ``None``.
    """

    def __init__(self, directory: Directory, node_id: str, sessions: Mapping[str, Session],
                 store: Store | None = None) -> None:
        self.directory = directory
        self.node_id = node_id
        self.sessions = sessions
        self.store = store

    def live_owner(self, name: str) -> Session | None:
        """The live session of this node owning ``name``, or ``None`` when
        nobody owns it (a stale claim of this node is released).

        :raises CallError: another node owns it (calls between nodes are not
            built yet), or the directory is unavailable.
        """
        try:
            owner = self.directory.conference_owner(name)
        except DirectoryUnavailable as exc:
            raise CallError(f"conference {name!r} cannot be looked up: {exc}") from None
        if owner is None:
            return None
        node, sid = owner
        live = self.sessions.get(sid)
        if live is not None and not live.terminated:
            return live
        if node != self.node_id:
            raise CallError(
                f"conference {name!r} is run by node {node}: calls between nodes are not supported yet"
            )
        self._release(name, sid)  # a stale claim of this node
        return None

    def claim(self, name: str, session: Session) -> Session:
        """Claim ``name`` for ``session`` (not started yet); return the
        session that owns it: ``session``, or the live one that claimed it first.

        :raises CallError: another node claimed it first, or the directory
            is unavailable.
        """
        try:
            node, sid = self.directory.claim_conference(name, self.node_id, session.id)
        except DirectoryUnavailable as exc:
            raise CallError(f"conference {name!r} cannot be claimed: {exc}") from None
        if sid != session.id:  # someone else claimed it first
            live = self.sessions.get(sid)
            if live is not None and not live.terminated:
                return live
            raise CallError(f"conference {name!r} is run by node {node}")
        session.conferences.add(name)
        return session

    def release(self, session: Session) -> None:
        """Release the names an ended session owned (one the directory
        cannot release now stays claimed: this node's next lookup of it
        releases it, and other nodes' once this node's liveness lapses)."""
        for name in session.conferences:
            self._release(name, session.id)

    def _release(self, name: str, session_id: str) -> None:
        try:
            self.directory.release_conference(name, session_id)
        except DirectoryUnavailable as exc:
            logger.warning("conference %r stays claimed by session %s: %s", name, session_id, exc)

    def is_open(self, name: str) -> bool:
        """Whether conference ``name`` exists: a session runs it, or room
        ``ID`` exists for ``conf_ID`` and has not ended.

        :raises CallError: the directory is unavailable.
        """
        try:
            owned = self.directory.conference_owner(name) is not None
        except DirectoryUnavailable as exc:
            raise CallError(f"conference {name!r} cannot be looked up: {exc}") from None
        if owned:
            return True
        if self.store is not None and name.startswith("conf_"):
            try:
                room = self.store.get_room(name[len("conf_"):])
            except Exception as exc:  # a malformed id is simply not a room
                logger.debug("room lookup %r: %s", name, exc)
                return False
            return room is not None and room.state(time.time()) != "ended"
        return False

    def session_of(self, name: str) -> Session | None:
        """This node's session running ``name`` (live or terminating), if
        any; while the directory is unavailable, the session of this node
        that claimed ``name``."""
        try:
            owner = self.directory.conference_owner(name)
        except DirectoryUnavailable:
            return next((s for s in self.sessions.values() if name in s.conferences), None)
        return self.sessions.get(owner[1]) if owner else None
