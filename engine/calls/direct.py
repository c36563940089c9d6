"""Direct calls: one browser's call joined to another browser's, peer to peer.

``call.forward_call_to_user_direct()`` rings the user a browser dialed and
lets the two browsers talk to each other: the engine relays offer, answer,
ICE candidates and messages between the two sockets and carries no media.
The rules of such a pair live here, in :class:`DirectCallLeg`, shared by
the real browser leg (:class:`engine.calls.web_call.WebCall`) and the
scenario harness's simulation of it (:class:`engine.testing.calls.SimWebCall`),
which differ only in the hooks: how the callee is rung, what goes to the
browser, what the transcript notes. This module imports no WebRTC code, so
the harness runs without aiortc loaded.

The pair, once forwarded::

    caller (inbound, ALERTING)  --rings-->  callee (outbound, PROGRESSING)
    callee answers      -> caller CONNECTED (Connected), then callee CONNECTED (Connected 200)
    either end ends     -> the other ends too (end_other_end: a ringing caller
                           is rejected with the callee's code, else hung up)
    message from either -> relayed to the other once it is connected
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from engine.calls.call import Call, CallAction, CallError, CallEvents, CallState, check_action, end_other_end
from engine.security_log import security_event

__all__ = ["Adopter", "CalleeListensOnly", "DirectCallLeg"]


class CalleeListensOnly(CallError):
    """Raised by a direct call's dialer instead of ringing a callee that only
    listens (a join token's ``subscriber``): it sends no media to anyone, so
    no one may call it directly either."""

    def __init__(self, callee: str) -> None:
        self.callee = callee
        super().__init__(f"{callee!r} listens only and takes no direct calls")


@runtime_checkable
class Adopter(Protocol):
    """A dispatcher that can take a call in (a scenario session,
    :meth:`engine.runtime.session.Session.adopt`): the callee of a direct
    call joins the caller's session, so its listeners run there too."""

    def adopt(self, call: Call) -> None: ...


def _pass_end_on(ended: Call) -> None:
    """One end of a direct call ended: end the other (hang up once connected
    or while it rings for the callee; reject the caller with the callee's
    code when it failed)."""
    assert isinstance(ended, DirectCallLeg)
    other = ended.direct_peer
    if other is None or other.state.ended:
        return
    other._end_for_other_end(ended)


class DirectCallLeg(Call):
    """A browser's call leg that can be one end of a direct call (see the
    module notes). Subclasses set ``_answering`` (the answer is on its way)
    and supply the hooks :meth:`_offer_answered`, :meth:`_direct_dialer`,
    :meth:`_forwarded` and :meth:`_connect_direct`."""

    #: A direct call: media goes browser to browser, the engine relays
    #: only signalling to :attr:`direct_peer`.
    direct: bool = False
    #: The other end of a direct call.
    direct_peer: DirectCallLeg | None = None
    _answering: bool = False

    # -- hooks -------------------------------------------------------------------------

    def _offer_answered(self) -> bool:
        """Hook: whether the engine already answered this browser's offer
        (early media), which a direct call can no longer use."""
        raise NotImplementedError

    def _direct_dialer(self) -> Callable[[dict[str, str]], DirectCallLeg | None]:
        """Hook: what rings the user this call dialed with the headers
        given, returning the callee's leg or ``None`` when not logged in.

        :raises CallError: this call has no way to reach web users.
        """
        raise NotImplementedError

    def _forwarded(self, peer: DirectCallLeg) -> None:
        """Hook: ``peer`` now rings for this call (before ``ring()``)."""

    def _connect_direct(self, callee: DirectCallLeg, sdp: str | None, headers: dict[str, str]) -> None:
        """Hook: ``callee`` answered this (the caller's) leg with ``sdp``;
        called just before this leg becomes ``CONNECTED``."""

    def _end_for_other_end(self, ended: DirectCallLeg) -> None:
        """End this leg because ``ended``, the other end, ended."""
        end_other_end(ended, self)

    # -- the rules ---------------------------------------------------------------------

    def forward_call_to_user_direct(self, headers: dict[str, str] | None = None) -> DirectCallLeg | None:
        """Ring the user this browser dialed (:attr:`number`) and connect the
        two browsers peer to peer, audio and video: the engine relays the
        offer, the answer and the ICE candidates between the two sockets and
        carries no media. Both calls report their events to the scenario
        (the callee's is returned, owned by the same session); the call's
        end, failure or rejection is passed on to the other, and messages
        are relayed both ways.

        :param headers: ``X-`` headers for the callee besides the caller's.
        :return: the callee's call, or ``None`` when the user is not logged
            in with the SDK (the caller's call is then rejected with 480), or
            when the caller or the callee only listens (a join token's
            ``subscriber``: it sends no media to anyone, so the call is
            rejected 403 with ``X-Reason: listen_only``).
        :raises CallError: not a browser's call that still rings, or the
            engine already answered its offer (early media).
        """
        check_action(self, CallAction.FORWARD_DIRECT, answered=self._answering)
        if self._offer_answered():
            raise CallError("the engine already answered this call's offer (early media)")
        if self.grant is not None and self.grant.listen_only:
            self.log.info("direct call refused: the caller listens only (role %s)", self.grant.role)
            security_event("listen_only_direct_call", self.source,
                           identity=self.grant.identity)
            self.reject(403, headers={"X-Reason": "listen_only"})
            return None
        dial = self._direct_dialer()
        self.direct = True
        try:
            peer = dial({**self.headers, **(headers or {})})
        except CalleeListensOnly as refused:
            self.log.info("direct call refused: %s", refused)
            security_event("listen_only_direct_call", self.source, callee=refused.callee,
                           identity=self.grant.identity if self.grant is not None else None)
            self.direct = False
            self.reject(403, headers={"X-Reason": "listen_only"})
            return None
        if peer is None:
            self.log.info("direct call: %r is not logged in", self.number)
            self.reject(480)
            return None
        if isinstance(self.dispatcher, Adopter):
            self.dispatcher.adopt(peer)
        self.direct_peer, peer.direct_peer = peer, self
        self.on_ended.append(_pass_end_on)
        peer.on_ended.append(_pass_end_on)
        self._forwarded(peer)
        if not peer.state.ended:
            self.ring()
        return peer

    def _direct_answered(self, sdp: str | None, headers: dict[str, str]) -> None:
        """The callee's browser answered a direct call (this is the callee's
        leg): both are connected, the caller first, as a SIP caller gets its
        200 OK before the callee gets the ACK."""
        self._answering = True
        self.headers.update(headers)
        self._set_state(CallState.CONNECTED)
        caller = self.direct_peer
        if caller is not None and caller.state == CallState.ALERTING:
            caller._answering = True
            caller._connect_direct(self, sdp, headers)
            caller._set_state(CallState.CONNECTED)
            caller._emit(CallEvents.Connected, headers={})
        self._emit(CallEvents.Connected, code=200, reason="OK", headers=headers)

    #: ``ice_failed`` frames one leg may relay (an ICE restart needs two or
    #: three: the report, the new offer, its answer); a flood is refused.
    MAX_ICE_RESTARTS = 12
    _ice_relayed: int = 0

    def _relay_ice_failed(self, sdp: str | None, sdp_type: str | None) -> None:
        """This leg's browser says its peer connection's ICE failed (with an
        ICE-restart offer or its answer, or without SDP: "please restart"):
        the other browser is told, so one of them restarts ICE.

        :raises CallError: not a connected direct call, or too many restarts.
        """
        peer = self.direct_peer
        if not self.direct or peer is None or self.state != CallState.CONNECTED:
            raise CallError("ICE_FAILED is for a connected direct call")
        if self._ice_relayed >= self.MAX_ICE_RESTARTS:
            raise CallError(f"at most {self.MAX_ICE_RESTARTS} ICE restarts per call")
        self._ice_relayed += 1
        self.log.info("direct call: ICE failed on one end (%s), telling the other", sdp_type or "no sdp")
        if peer.state == CallState.CONNECTED:
            peer._send_ice_failed(sdp, sdp_type)

    def _send_ice_failed(self, sdp: str | None, sdp_type: str | None) -> None:
        """Hook: tell this leg's browser the other end's ICE failed."""

    def _relay_message(self, text: str, headers: dict[str, str]) -> None:
        """A message this leg's browser sent goes on to the other browser,
        once that one is connected."""
        peer = self.direct_peer
        if peer is not None and peer.state == CallState.CONNECTED:
            peer.send_message(text, headers)
