"""Errors raised by the sans-IO SIP layer.

Following h11, errors caused by the peer (:class:`RemoteProtocolError`) are
kept apart from errors caused by our own misuse (:class:`LocalProtocolError`).
A remote error carries the SIP status code the transport should answer with
(400 unless a more specific one applies, e.g. 505 for a bad version).
"""


class SipError(Exception):
    """Base class of all SIP layer errors."""


class RemoteProtocolError(SipError):
    """The peer sent something that violates the protocol.

    :param message: a human-readable reason, used as the response's reason
        phrase (so keep it short and free of CR/LF).
    :param status: the SIP status code to answer with, when an answer is
        possible.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalProtocolError(SipError):
    """We tried to do something the protocol does not allow."""
