"""Audio codecs and a factory keyed by MIME type (aiortc ``codecs/__init__.py`` style).

>>> enc = get_encoder("audio/PCMU"); dec = get_decoder("audio/PCMU")

MIME names are matched case-insensitively, with or without the ``audio/``
prefix. ``telephone-event`` (RFC 4733) is not an audio codec: see
:mod:`engine.media.codecs.telephone_event`.
"""

from __future__ import annotations

from typing import Callable

from engine.media.codecs.base import CodecError, Decoder, Encoder
from engine.media.codecs.g711 import PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder
from engine.media.pcm import Pcm

__all__ = [
    "CodecError",
    "Decoder",
    "Encoder",
    "Pcm",
    "get_decoder",
    "get_encoder",
    "supported_mime_types",
]

_ENCODERS: dict[str, Callable[[], Encoder]] = {
    "audio/pcmu": PcmuEncoder,
    "audio/pcma": PcmaEncoder,
}
_DECODERS: dict[str, Callable[[], Decoder]] = {
    "audio/pcmu": PcmuDecoder,
    "audio/pcma": PcmaDecoder,
}


def _key(mime_type: str) -> str:
    key = mime_type.strip().lower()
    return key if "/" in key else "audio/" + key


def supported_mime_types() -> list[str]:
    """The MIME types :func:`get_encoder` and :func:`get_decoder` accept."""
    return ["audio/PCMU", "audio/PCMA"]


def get_encoder(mime_type: str) -> Encoder:
    """Return a new encoder for ``mime_type`` (e.g. ``"audio/PCMU"``).

    :raises CodecError: the codec is not supported.
    """
    try:
        return _ENCODERS[_key(mime_type)]()
    except KeyError:
        raise CodecError(f"unsupported codec: {mime_type!r}") from None


def get_decoder(mime_type: str) -> Decoder:
    """Return a new decoder for ``mime_type`` (e.g. ``"audio/PCMA"``).

    :raises CodecError: the codec is not supported.
    """
    try:
        return _DECODERS[_key(mime_type)]()
    except KeyError:
        raise CodecError(f"unsupported codec: {mime_type!r}") from None
