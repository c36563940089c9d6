"""Call transfer, sans-IO: REFER (RFC 3515), its implicit subscription and
NOTIFY ``message/sipfrag`` progress (RFC 3515 §2.4.4-2.4.5, RFC 6665),
``Refer-Sub: false`` (RFC 4488) and the Replaces header (RFC 3891).

Theory of operation
-------------------

Two roles, each a small machine that builds requests within an existing
:class:`~engine.sip.dialog.Dialog` and reads what comes back; neither sends
anything nor reads a clock.

* :class:`ReferNotifier` is the REFER recipient's side (a phone asked us to
  transfer it). Accepting the REFER (202) creates the implicit
  subscription; each :meth:`ReferNotifier.notify` builds a NOTIFY with the
  progress of the new call as a sipfrag status line (``SIP/2.0 100
  Trying``, ``180 Ringing``, ``200 OK`` or the failure). A final status
  terminates the subscription (``Subscription-State: terminated;
  reason=noresource``); so does its expiry (``reason=timeout``, RFC 6665
  §4.2.2). With ``Refer-Sub: false`` (RFC 4488 §4) no NOTIFY is sent.

  ::

      ACTIVE -notify(1xx)-> ACTIVE -notify(>=200) / expiry-> TERMINATED

* :class:`ReferClient` is the REFER sender's side (we transfer a phone or
  trunk). It builds the REFER, then reads the response and the NOTIFYs:

  ::

      SENT -2xx-> ACCEPTED -NOTIFY 1xx-> ACCEPTED -NOTIFY 2xx-> SUCCEEDED
        |            |       -NOTIFY >=300 / terminated without final-> FAILED
        +--300-699 / timeout--+--no final NOTIFY in time--> FAILED (refused / timed out)

Hostile input: a Refer-To longer than :data:`MAX_REFER_TO`, with a scheme
other than ``sip``/``sips`` or with more than one value is refused with 400
(:func:`parse_refer_to`); :class:`ReferBudget` bounds REFERs per dialog.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine.sip.dialog import Dialog
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.headers import parse_name_addr, parse_params
from engine.sip.message import SipRequest, SipResponse
from engine.sip.uri import SipUri

__all__ = [
    "DEFAULT_EXPIRES", "MAX_REFER_TO", "ReferAccepted", "ReferBudget", "ReferClient", "ReferEvent",
    "ReferFailed", "ReferNotifier", "ReferProgress", "ReferState", "ReferSucceeded", "ReferTarget",
    "Replaces", "SIPFRAG", "format_sipfrag", "parse_refer_to", "parse_replaces", "parse_sipfrag",
    "refer_to_value",
]

#: The longest Refer-To value accepted (characters); longer is a 400.
MAX_REFER_TO = 1024
#: The implicit subscription's lifetime (RFC 3515 §2.4.4 leaves it to the
#: notifier; RFC 6665 §4.2.1 caps what we grant).
DEFAULT_EXPIRES = 60
#: The most a sipfrag body may be (a status line and a few headers).
_MAX_SIPFRAG = 1024

SIPFRAG = "message/sipfrag;version=2.0"

_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 408: "Request Timeout",
            480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
            500: "Server Internal Error", 503: "Service Unavailable", 603: "Decline"}


# -- Replaces (RFC 3891 §6.1) ----------------------------------------------------


@dataclass(frozen=True)
class Replaces:
    """A Replaces header: the dialog to replace, named as the RECIPIENT of
    the INVITE sees it (``to_tag`` is the recipient's own tag, RFC 3891 §3).

    :param early_only: only an early dialog may be replaced (§6.1).
    """

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    def __str__(self) -> str:
        text = f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}"
        return text + (";early-only" if self.early_only else "")

    @property
    def dialog_id(self) -> tuple[str, str, str]:
        """The recipient's dialog id ``(call_id, local tag, remote tag)``
        (:attr:`Dialog.id`)."""
        return self.call_id, self.to_tag, self.from_tag

    @classmethod
    def of_dialog(cls, dialog: Dialog) -> Replaces:
        """Replaces naming ``dialog`` as its PEER sees it: the header a third
        party sends to our peer to take our place (RFC 5589 §7)."""
        return cls(dialog.call_id, dialog.remote_tag, dialog.local_tag)


def parse_replaces(text: str) -> Replaces:
    """Parse a Replaces value (``callid;to-tag=..;from-tag=..[;early-only]``).

    :raises RemoteProtocolError: (400) without a Call-ID or either tag.
    """
    call_id, semi, rest = text.strip(" \t").partition(";")
    call_id = call_id.strip(" \t")
    if not call_id or any(c in call_id for c in " \t<>\"\r\n"):
        raise RemoteProtocolError("Replaces has no valid Call-ID")
    params = parse_params(";" + rest, "Replaces") if semi else {}
    to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
    if not to_tag or not from_tag:
        raise RemoteProtocolError("Replaces needs to-tag and from-tag")
    return Replaces(call_id, to_tag, from_tag, "early-only" in params)


# -- Refer-To (RFC 3515 §2.1) ------------------------------------------------------


@dataclass(frozen=True)
class ReferTarget:
    """A parsed Refer-To: where to call (``uri``, its embedded headers
    removed) and the Replaces it carried, if any (attended transfer)."""

    uri: SipUri
    replaces: Replaces | None


def parse_refer_to(values: list[str]) -> ReferTarget:
    """Parse the Refer-To header(s) of a REFER.

    :param values: every Refer-To value of the request.
    :raises RemoteProtocolError: (400) no value or several, a value longer
        than :data:`MAX_REFER_TO`, a URI other than ``sip:``/``sips:`` (a
        phone must not make the engine fetch ``http:`` or dial ``tel:``
        behind the dial policy's back), or a bad embedded Replaces.
    """
    if len(values) != 1:
        raise RemoteProtocolError("REFER needs exactly one Refer-To")
    text = values[0]
    if len(text) > MAX_REFER_TO:
        raise RemoteProtocolError("Refer-To too long")
    addr = parse_name_addr(text)
    uri = addr.uri
    if not isinstance(uri, SipUri) or addr.wildcard:
        raise RemoteProtocolError("Refer-To must be a sip: or sips: URI")
    replaces: Replaces | None = None
    for name, value in uri.headers.items():
        if name.lower() == "replaces":
            replaces = parse_replaces(value)
    return ReferTarget(uri.copy(headers={}), replaces)


def refer_to_value(target: SipUri, replaces: Replaces | None = None) -> str:
    """The Refer-To value for ``target``, with ``replaces`` embedded as a URI
    header (RFC 3891 §7.1, escaped by the URI)."""
    uri = target.copy(headers={"Replaces": str(replaces)}) if replaces is not None else target
    return f"<{uri}>"


# -- sipfrag (RFC 3420, RFC 3515 §2.4.5) ---------------------------------------------


def format_sipfrag(status: int, reason: str | None = None) -> bytes:
    """The body of a progress NOTIFY: one status line."""
    return f"SIP/2.0 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n".encode()


def parse_sipfrag(body: bytes) -> tuple[int, str]:
    """The status line of a sipfrag body: ``(status, reason)``.

    :raises RemoteProtocolError: (400) not a ``SIP/2.0 NNN`` status line.
    """
    if len(body) > _MAX_SIPFRAG:
        raise RemoteProtocolError("sipfrag too long")
    line = body.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0" or len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
        raise RemoteProtocolError("sipfrag is not a SIP status line")
    return int(code), reason.strip()


def _refer_sub_false(request: SipRequest) -> bool:
    value = request.headers.get("Refer-Sub")
    return value is not None and value.strip().lower().startswith("false")


# -- rate ---------------------------------------------------------------------------


class ReferBudget:
    """How many REFERs one dialog may send: ``burst`` at once, then one per
    ``interval`` seconds (a token bucket, on the caller's clock)."""

    def __init__(self, burst: int = 3, interval: float = 10.0) -> None:
        self.burst = burst
        self.interval = interval
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        """Spend one REFER; ``False`` when the budget is empty."""
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


# -- the REFER recipient (notifier) ------------------------------------------------------


class ReferState(enum.Enum):
    """Both roles' states."""

    SENT = "SENT"
    ACCEPTED = "ACCEPTED"
    ACTIVE = "ACTIVE"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"


class ReferNotifier:
    """The implicit subscription a REFER we accepted creates (RFC 3515 §2.4.4).

    :param dialog: the dialog the REFER came in (NOTIFYs go in it).
    :param refer: the REFER (its CSeq number is the ``Event: refer;id=``,
        RFC 3515 §2.4.6; its ``Refer-Sub: false`` turns NOTIFYs off).
    :param expires: the subscription's lifetime in seconds.
    """

    def __init__(self, dialog: Dialog, refer: SipRequest, now: float, expires: int = DEFAULT_EXPIRES) -> None:
        self.dialog = dialog
        self.event_id = refer.cseq.number
        #: ``False`` with ``Refer-Sub: false`` (RFC 4488 §4): no NOTIFY at all.
        self.subscribed = not _refer_sub_false(refer)
        self.expires = expires
        self.expires_at = now + expires
        self.state = ReferState.ACTIVE if self.subscribed else ReferState.TERMINATED
        self.last_status = 100

    def accept(self, refer: SipRequest) -> SipResponse:
        """The 202 Accepted to the REFER (with ``Refer-Sub: false`` echoed
        when the subscription was declined, RFC 4488 §4)."""
        resp = refer.create_response(202)
        if not self.subscribed:
            resp.headers.add("Refer-Sub", "false")
        return resp

    def notify(self, status: int, reason: str | None, now: float) -> SipRequest | None:
        """A NOTIFY with the new call's progress (``None``: no subscription,
        or it has ended). A final ``status`` (>= 200) ends the subscription."""
        if self.state is not ReferState.ACTIVE:
            return None
        self.last_status = status
        if status >= 200:
            self.state = ReferState.TERMINATED
            sub_state = "terminated;reason=noresource"
        else:
            sub_state = f"active;expires={max(0, int(self.expires_at - now))}"
        return self._notify(sub_state, format_sipfrag(status, reason))

    def _notify(self, sub_state: str, body: bytes) -> SipRequest:
        return self.dialog.create_request(
            "NOTIFY",
            [("Event", f"refer;id={self.event_id}"), ("Subscription-State", sub_state)],
            body, SIPFRAG,
        )

    def get_timer(self) -> float | None:
        return self.expires_at if self.state is ReferState.ACTIVE else None

    def handle_timer(self, now: float) -> SipRequest | None:
        """The subscription expired: the last NOTIFY (``reason=timeout``,
        RFC 6665 §4.2.2), carrying the last status."""
        if self.state is not ReferState.ACTIVE or now < self.expires_at:
            return None
        self.state = ReferState.TERMINATED
        return self._notify("terminated;reason=timeout", format_sipfrag(self.last_status))


# -- the REFER sender (subscriber) ----------------------------------------------------------


class ReferEvent:
    """Base class of what a :class:`ReferClient` reports."""


@dataclass(frozen=True)
class ReferAccepted(ReferEvent):
    """The far end took the REFER (2xx)."""

    status: int


@dataclass(frozen=True)
class ReferProgress(ReferEvent):
    """A provisional sipfrag status from the far end's new call."""

    status: int
    reason: str


@dataclass(frozen=True)
class ReferSucceeded(ReferEvent):
    """The far end's new call was answered (sipfrag 2xx)."""

    status: int
    reason: str


@dataclass(frozen=True)
class ReferFailed(ReferEvent):
    """The transfer did not happen.

    :param refused: the far end never took it on: a non-2xx to the REFER
        (405, 501, 603...), no answer, or no final NOTIFY in time. The
        engine may then bridge the call itself.
    """

    status: int
    reason: str
    refused: bool


class ReferClient:
    """One REFER we send, and the subscription it creates (RFC 3515 §2.4).

    :param timeout: how long after sending to wait for the final NOTIFY.
    """

    def __init__(self, dialog: Dialog, target: SipUri, replaces: Replaces | None, now: float,
                 timeout: float = 32.0) -> None:
        self.dialog = dialog
        self.target = target
        self.replaces = replaces
        self.state = ReferState.SENT
        self.deadline = now + timeout
        self.event_id: int | None = None

    def create_refer(self, referred_by: str | None = None) -> SipRequest:
        """The REFER to send (once)."""
        if self.event_id is not None:
            raise LocalProtocolError("the REFER was already built")
        headers = [("Refer-To", refer_to_value(self.target, self.replaces))]
        if referred_by:
            headers.append(("Referred-By", referred_by))
        request = self.dialog.create_request("REFER", headers)
        self.event_id = request.cseq.number
        return request

    @property
    def done(self) -> bool:
        return self.state in (ReferState.SUCCEEDED, ReferState.FAILED)

    def receive_response(self, resp: SipResponse | None) -> list[ReferEvent]:
        """The response to our REFER (``None``: the transaction timed out)."""
        if self.state is not ReferState.SENT:
            return []
        if resp is None:
            return self._fail(408, "Request Timeout", True)
        if resp.status < 200:
            return []
        if resp.status >= 300:
            return self._fail(resp.status, resp.reason or "", True)
        self.state = ReferState.ACCEPTED
        events: list[ReferEvent] = [ReferAccepted(resp.status)]
        if _refer_sub_false_response(resp):
            # RFC 4488 §4: no NOTIFY will come; the 2xx is all we learn.
            self.state = ReferState.SUCCEEDED
            events.append(ReferSucceeded(resp.status, resp.reason or ""))
        return events

    def matches(self, notify: SipRequest) -> bool:
        """Whether ``notify`` is for this REFER's subscription."""
        event = notify.headers.get("Event") or ""
        kind, _, params = event.partition(";")
        if kind.strip().lower() != "refer":
            return False
        try:
            ident = parse_params(";" + params, "Event").get("id") if params else None
        except RemoteProtocolError:
            return False
        return ident is None or ident == str(self.event_id)

    def receive_notify(self, notify: SipRequest) -> list[ReferEvent]:
        """A NOTIFY of the subscription (the adapter answers it 200 unless
        this raises).

        :raises RemoteProtocolError: a body that is not a sipfrag status line.
        """
        body = notify.body
        status, reason = parse_sipfrag(body) if body else (0, "")
        terminated = (notify.headers.get("Subscription-State") or "").strip().lower().startswith("terminated")
        if self.done:
            return []
        if self.state is ReferState.SENT:  # the NOTIFY overtook the 202 (RFC 3515 §2.4.4 allows it)
            self.state = ReferState.ACCEPTED
        if 200 <= status < 300:
            self.state = ReferState.SUCCEEDED
            return [ReferSucceeded(status, reason)]
        if status >= 300:
            return self._fail(status, reason, False)
        if terminated:
            return self._fail(487, "subscription terminated without a final status", False)
        return [ReferProgress(status, reason)] if status else []

    def get_timer(self) -> float | None:
        return None if self.done else self.deadline

    def handle_timer(self, now: float) -> list[ReferEvent]:
        if self.done or now < self.deadline:
            return []
        return self._fail(408, "no final NOTIFY in time", True)

    def _fail(self, status: int, reason: str, refused: bool) -> list[ReferEvent]:
        self.state = ReferState.FAILED
        return [ReferFailed(status, reason, refused)]


def _refer_sub_false_response(resp: SipResponse) -> bool:
    value = resp.headers.get("Refer-Sub")
    return value is not None and value.strip().lower().startswith("false")
