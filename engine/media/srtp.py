"""SRTP and SRTCP (RFC 3711) for one call leg, keyed by SDES (RFC 4568).

:class:`SrtpContext` wraps two :class:`pylibsrtp.Session` objects, one per
direction: the outbound one holds our key (the one we wrote in our SDP),
the inbound one the peer's. Each protects or unprotects RTP and RTCP with
the same master key, as RFC 3711 section 4.3 derives the SRTCP keys from it.
It does no I/O: the media session calls :meth:`~SrtpContext.protect_rtp`
just before a datagram leaves and :meth:`~SrtpContext.unprotect_rtp` just
after one arrives.

A packet that fails authentication, is a replay (RFC 3711 section 3.3.2)
or cannot be processed at all is dropped: the unprotect methods return
``None`` and count it in :attr:`SrtpContext.stats`; nothing is raised to
the caller, since anyone on the network can send such packets.

The inbound session takes any SSRC (``SSRC_ANY_INBOUND``): libsrtp makes a
stream for an SSRC only once a packet of it authenticated, so a stranger's
packets cost one HMAC each and no memory.
"""

from __future__ import annotations

import pylibsrtp

__all__ = ["SrtpContext", "SrtpError", "PROFILES", "TOTALS"]

#: Refused packets of every context of this process, by reason (the
#: keys of :attr:`SrtpContext.stats`), for the engine's metrics.
TOTALS: dict[str, int] = {"srtp_auth_failed": 0, "srtp_replay": 0, "srtp_malformed": 0}

#: SDES crypto-suite names (RFC 4568 section 6.2, RFC 7714 section 14.2) to libsrtp profiles.
PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}

# libsrtp's messages (pylibsrtp.ERRORS) for the two kinds of drop we count apart.
_AUTH = "authentication failure"
_REPLAY = ("replay check failed (bad index)", "replay check failed (index too old)")


class SrtpError(Exception):
    """The keys cannot be used (an unknown suite, a key of the wrong length)."""


def _session(suite: str, key: bytes, ssrc_type: int) -> pylibsrtp.Session:
    profile = PROFILES.get(suite)
    if profile is None:
        raise SrtpError(f"unsupported SRTP crypto-suite {suite!r}")
    try:
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    except (ValueError, TypeError, pylibsrtp.Error) as exc:
        raise SrtpError(f"bad {suite} key: {exc}") from None
    return pylibsrtp.Session(policy)


class SrtpContext:
    """Protect what we send and unprotect what we receive on one leg.

    The call layer maps SDP's :class:`~engine.sip.offer_answer.SrtpParameters`
    to these arguments (media/ does not read SDP).

    :param suite: the SDES crypto-suite name (a key of :data:`PROFILES`).
    :param send_key: our master key and salt (the one in our SDP).
    :param recv_key: the peer's master key and salt.
    :raises SrtpError: if the suite or a key cannot be used.
    """

    def __init__(self, suite: str, send_key: bytes, recv_key: bytes) -> None:
        #: ``(suite, send_key, recv_key)``, to tell whether a re-INVITE changed them.
        self.keys = (suite, send_key, recv_key)
        self._tx = _session(suite, send_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(suite, recv_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        #: Dropped inbound packets: ``srtp_auth_failed``, ``srtp_replay``,
        #: ``srtp_malformed`` (too short, too long, an unknown error).
        self.stats: dict[str, int] = {"srtp_auth_failed": 0, "srtp_replay": 0, "srtp_malformed": 0}

    def __repr__(self) -> str:  # never print keys
        return f"SrtpContext({self.keys[0]})"

    def protect_rtp(self, packet: bytes) -> bytes | None:
        """The SRTP packet for the RTP ``packet`` (``None`` if libsrtp refuses it: too long)."""
        return self._protect(self._tx.protect, packet)

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        """The SRTCP packet for the RTCP ``packet`` (``None`` if libsrtp refuses it)."""
        return self._protect(self._tx.protect_rtcp, packet)

    def unprotect_rtp(self, packet: bytes) -> bytes | None:
        """The RTP packet inside the SRTP ``packet``, or ``None`` (dropped and counted)."""
        return self._unprotect(self._rx.unprotect, packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """The RTCP packet inside the SRTCP ``packet``, or ``None`` (dropped and counted)."""
        return self._unprotect(self._rx.unprotect_rtcp, packet)

    @staticmethod
    def _protect(func: object, packet: bytes) -> bytes | None:
        try:
            return bytes(func(packet))  # type: ignore[operator]
        except (pylibsrtp.Error, ValueError, TypeError):
            return None

    def _unprotect(self, func: object, packet: bytes) -> bytes | None:
        try:
            return bytes(func(packet))  # type: ignore[operator]
        except pylibsrtp.Error as exc:
            message = str(exc)
            if message == _AUTH:
                self._count("srtp_auth_failed")
            elif message in _REPLAY:
                self._count("srtp_replay")
            else:
                self._count("srtp_malformed")
        except (ValueError, TypeError):
            self._count("srtp_malformed")
        return None

    def _count(self, what: str) -> None:
        """Count a refused packet here and in the process-wide :data:`TOTALS`
        (the engine's metrics read those; only refused packets pay)."""
        self.stats[what] += 1
        TOTALS[what] += 1
