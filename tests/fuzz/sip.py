"""A seeded, deterministic generator of hostile SIP messages.

Each :meth:`SipFuzzer.message` is one of:

- a corpus seed (:mod:`fuzz.corpus`), its Via pointed at the sender most of
  the time so answers come back, with one to three mutations;
- a structurally valid request that drives state (INVITE, then CANCEL, ACK,
  BYE, re-INVITE, INFO, MESSAGE in the dialogs the engine answered, which
  :meth:`SipFuzzer.learn` records from its 2xx; REGISTER with random
  Authorization; OPTIONS), sometimes mutated too.

The mutations: byte flips, truncation, header duplication and deletion,
huge/negative/overflowing Content-Length, CRLF variations, long tokens,
random methods and URI schemes, Via/branch/CSeq/Call-ID mangling, SDP body
mutations (bad c=/m= lines, huge ports, many m= lines), compact header
names, UTF-8, NUL and control bytes in fields, header folding.

Same seed, same corpus, same answers learnt: same messages."""

from __future__ import annotations

import random
import re
from collections import deque
from typing import Callable

from .corpus import Seed

__all__ = ["SipFuzzer", "fill_protos", "MUTATIONS"]

METHODS = [b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"REGISTER", b"INFO", b"MESSAGE",
           b"PRACK", b"UPDATE", b"SUBSCRIBE", b"NOTIFY", b"REFER", b"PUBLISH"]
SCHEMES = [b"sip", b"sips", b"tel", b"http", b"mailto", b"urn", b"x-", b"", b"SIP", b"s\x00ip", b"sip" * 300]
#: Numbers the valid INVITEs dial: answered (shipped Answer rule), echo,
#: nobody (P2P: unknown user), and the gatekeeper's PIN prompt now and then.
NUMBERS = [b"100", b"answer", b"echo", b"nobody", b"fuzz", b"100", b"answer", b"joinconf"]
COMPACT = {b"Via": b"v", b"From": b"f", b"To": b"t", b"Call-ID": b"i", b"Contact": b"m",
           b"Content-Length": b"l", b"Content-Type": b"c", b"Supported": b"k", b"Subject": b"s",
           b"Content-Encoding": b"e"}
WEIRD = [b"\x00", b"\xff\xfe", "\u00e9\u4e2d\U0001f600".encode(), b"\xc3\x28", b"\xed\xa0\x80", b"\r", b"\n",
         b"\t", b"\x7f", b"%00", b"%", b"\\", b'"', b"<", b">", b";", b",", b":", b"@", b"\x1b[31m"]
INTS = [b"0", b"-1", b"4294967295", b"4294967296", b"18446744073709551616", b"99999999999999999999999999",
        b"-99999999999", b"1e9", b"0x10", b"", b" ", b"65536", b"2147483648", b"1.5", b"\xd9\xa3"]

_HEADER_LINE = re.compile(rb"\r?\n([^\s:][^:\r\n]*):")
_VIA = re.compile(rb"^(Via|v)[ \t]*:[^\r\n]*", re.IGNORECASE | re.MULTILINE)
_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_TO_TAG = re.compile(rb"^(?:To|t)[ \t]*:[^\r\n]*;tag=([^;\s>\r\n]+)", re.IGNORECASE | re.MULTILINE)
_FROM_TAG = re.compile(rb"^(?:From|f)[ \t]*:[^\r\n]*;tag=([^;\s>\r\n]+)", re.IGNORECASE | re.MULTILINE)
_CSEQ = re.compile(rb"^CSeq[ \t]*:[ \t]*(\d+)[ \t]+(\w+)", re.IGNORECASE | re.MULTILINE)


def fill_protos(template: bytes, rng: random.Random, host: bytes, port: int, tag: int) -> bytes:
    """Fill a PROTOS template's placeholders; ``<Content-Length>`` becomes
    the body's length (the case's mutation is elsewhere)."""
    values = {
        b"<To>": b"%s@127.0.0.1" % rng.choice(NUMBERS),
        b"<From>": b"protos@%s" % host,
        b"<From-Address>": host,
        b"<From-IP>": host,
        b"<Local-Port>": b"%d" % port,
        b"<Branch-ID>": b"%d" % tag,
        b"<Call-ID>": b"protos-%d" % tag,
        b"<CSeq>": b"1",
        b"<Teardown-Method>": rng.choice([b"CANCEL", b"BYE"]),
    }
    for key, value in values.items():
        template = template.replace(key, value)
    if b"<Content-Length>" in template:
        end = template.find(b"\r\n\r\n")
        body = len(template) - end - 4 if end >= 0 else 0
        template = template.replace(b"<Content-Length>", b"%d" % body)
    return template


class SipFuzzer:
    """One hostile message per :meth:`message`.

    :param seed: the random seed; the sequence depends on it alone (and on
        what :meth:`learn` was given).
    :param seeds: the corpus (:func:`fuzz.corpus.load_seeds`).
    :param host: the sender's address, for Via and Contact.
    :param port: the sender's port (UDP or TCP, as the message goes).
    :param target: the engine's ``host:port``, for Request-URIs.
    """

    def __init__(self, seed: int, seeds: list[Seed], host: str, port: int, target: str) -> None:
        self.rng = random.Random(seed)
        self.seeds = seeds
        self.host = host.encode()
        self.port = port
        self.target = target.encode()
        self.counter = 0
        #: (call_id, from_tag, to_tag, cseq) of dialogs the engine answered.
        self.dialogs: deque[tuple[bytes, bytes, bytes, int]] = deque(maxlen=256)
        #: Requests owed to those dialogs or INVITEs (ACK, CANCEL...), sent next.
        self.pending: deque[bytes] = deque(maxlen=1024)
        self.transport = b"UDP"

    # -- what the engine answered --------------------------------------------------

    def learn(self, data: bytes) -> None:
        """Read one datagram from the engine: a 2xx to an INVITE gives a
        dialog to ACK, and to use later for BYE, re-INVITE, INFO, MESSAGE."""
        if not data.startswith(b"SIP/2.0 2"):
            return
        cseq = _CSEQ.search(data)
        call_id = _CALL_ID.search(data)
        to_tag = _TO_TAG.search(data)
        from_tag = _FROM_TAG.search(data)
        if not (cseq and call_id and to_tag and from_tag) or cseq.group(2) != b"INVITE":
            return
        dialog = (call_id.group(1).strip(), from_tag.group(1), to_tag.group(1), int(cseq.group(1)))
        if dialog not in self.dialogs:
            self.dialogs.append(dialog)
            self.pending.append(self._request(b"ACK", dialog=dialog, cseq=dialog[3]))

    # -- generation ----------------------------------------------------------------

    def message(self, transport: str = "UDP") -> bytes:
        """The next message, for ``transport`` (``UDP`` or ``TCP``)."""
        self.transport = transport.encode()
        self.counter += 1
        rng = self.rng
        if self.pending and rng.random() < 0.5:
            msg = self.pending.popleft()
            return self.mutate(msg) if rng.random() < 0.1 else msg
        roll = rng.random()
        if roll < 0.55:
            msg = self._seed_message()
            count = rng.choice((1, 1, 1, 2, 2, 3))
        else:
            msg = self._valid_request()
            count = 0 if rng.random() < 0.4 else rng.choice((1, 1, 2))
        for _ in range(count):
            msg = self.mutate(msg)
        return msg

    def mutate(self, msg: bytes) -> bytes:
        """Apply one mutation chosen at random; half the time fix
        Content-Length afterwards so the mutation reaches the parser."""
        rng = self.rng
        name, op = rng.choice(MUTATIONS)
        out = op(self, msg)
        if name not in ("content_length", "truncate") and rng.random() < 0.5:
            out = fix_content_length(out)
        return out

    def _seed_message(self) -> bytes:
        rng = self.rng
        seed = rng.choice(self.seeds)
        data = seed.data
        if seed.name.startswith("protos/"):
            data = fill_protos(data, rng, self.host, self.port, self.counter)
        if rng.random() < 0.8:
            data = _VIA.sub(lambda m: b"Via: SIP/2.0/%s %s:%d;branch=z9hG4bK-s%d;rport"
                            % (self.transport, self.host, self.port, self.counter), data, count=1)
        return data

    def _valid_request(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if self.dialogs and roll < 0.35:
            dialog = rng.choice(self.dialogs)
            method = rng.choice([b"BYE", b"INVITE", b"INFO", b"MESSAGE", b"ACK", b"OPTIONS", b"UPDATE"])
            return self._request(method, dialog=dialog, cseq=dialog[3] + rng.randint(1, 5))
        if roll < 0.55:
            invite = self._request(b"INVITE", body=self.sdp())
            if rng.random() < 0.4:  # CANCEL it (same branch, same CSeq number)
                self.pending.append(_cancel_of(invite))
            return invite
        if roll < 0.7:
            return self._request(b"REGISTER", auth=rng.random() < 0.7)
        if roll < 0.8:  # in a random (unknown) dialog
            dialog = (b"nodialog-%d" % rng.getrandbits(32), b"f%d" % rng.getrandbits(16),
                      b"t%d" % rng.getrandbits(16), rng.randint(1, 10))
            return self._request(rng.choice([b"BYE", b"ACK", b"INVITE", b"INFO", b"CANCEL"]), dialog=dialog,
                                 body=self.sdp() if rng.random() < 0.3 else b"")
        method = rng.choice([b"OPTIONS", b"MESSAGE", b"INFO", b"SUBSCRIBE", b"NOTIFY", b"PUBLISH"])
        body = b""
        if method == b"MESSAGE":
            body = rng.choice([b"hello", b"x" * rng.randint(0, 2000), bytes(rng.getrandbits(8) for _ in range(40))])
        elif method == b"INFO":
            body = b"Signal=%s\r\nDuration=%s\r\n" % (rng.choice([b"1", b"#", b"Z", b"", b"12345"]), rng.choice(INTS))
        return self._request(method, body=body)

    def _request(self, method: bytes, *, dialog: tuple[bytes, bytes, bytes, int] | None = None,
                 cseq: int | None = None, body: bytes = b"", auth: bool = False) -> bytes:
        rng = self.rng
        n = self.counter
        number = rng.choice(NUMBERS)
        if dialog:
            call_id, from_tag, to_tag, _ = dialog
            to = b"<sip:%s@%s>;tag=%s" % (number, self.target, to_tag)
        else:
            call_id, from_tag = b"fz-%d-%d" % (n, rng.getrandbits(32)), b"ft%d" % n
            to = b"<sip:%s@%s>" % (number, self.target)
        lines = [
            b"%s sip:%s@%s SIP/2.0" % (method, number, self.target),
            b"Via: SIP/2.0/%s %s:%d;branch=z9hG4bK-v%d-%d;rport" % (self.transport, self.host, self.port, n,
                                                                    rng.getrandbits(24)),
            b"Max-Forwards: 70",
            b"From: \"fuzz\" <sip:fuzz@%s>;tag=%s" % (self.host, from_tag),
            b"To: " + to,
            b"Call-ID: " + call_id,
            b"CSeq: %d %s" % (cseq if cseq is not None else rng.randint(1, 1000), method),
            b"Contact: <sip:fuzz@%s:%d;transport=%s>" % (self.host, self.port, self.transport.lower()),
            b"User-Agent: callbridge-fuzz",
        ]
        if auth:
            lines.append(b"Authorization: " + self._authorization())
        if body:
            ctype = b"application/sdp" if body.startswith(b"v=") else rng.choice(
                [b"text/plain", b"application/dtmf-relay", b"application/dtmf", b"x/y", b"multipart/mixed"])
            lines.append(b"Content-Type: " + ctype)
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _authorization(self) -> bytes:
        rng = self.rng
        fields = [
            b'username="%s"' % rng.choice([b"alice", b"admin", b"", b"a" * 600, b"x\x00y", b'"']),
            b'realm="%s"' % rng.choice([b"callbridge", b"", b"evil"]),
            b'nonce="%s"' % rng.choice([b"%x" % rng.getrandbits(128), b"", b"==", b"a" * 3000]),
            b'uri="sip:%s"' % self.target,
            b'response="%s"' % b"%032x" % rng.getrandbits(128),
            b"algorithm=%s" % rng.choice([b"MD5", b"SHA-256", b"MD5-sess", b"ROT13", b""]),
            b"qop=%s" % rng.choice([b"auth", b"auth-int", b"", b"x"]),
            b"nc=%s" % rng.choice([b"00000001", b"zz", b"1" * 40]),
            b'cnonce="%d"' % rng.getrandbits(32),
        ]
        rng.shuffle(fields)
        del fields[rng.randint(0, len(fields)):]
        scheme = rng.choice([b"Digest ", b"Basic ", b"digest ", b"", b"Digest  \t"])
        return scheme + b", ".join(fields)

    def sdp(self) -> bytes:
        """An SDP offer, valid more often than not."""
        rng = self.rng
        port = rng.choice([b"%d" % rng.randint(1024, 65535), b"0", b"65536", b"-1", b"99999999999", b"4000/2"])
        lines = [b"v=0", b"o=- %d 1 IN IP4 %s" % (rng.getrandbits(32), self.host), b"s=-",
                 b"c=IN IP4 %s" % rng.choice([self.host, b"0.0.0.0", b"127.0.0.1", b"::1", b"300.1.1.1", b""]),
                 b"t=0 0",
                 b"m=audio %s RTP/AVP %s" % (port, rng.choice([b"0 8 101", b"0", b"8", b"101", b"96", b"", b"255"])),
                 b"a=rtpmap:101 telephone-event/8000", b"a=%s" % rng.choice([b"sendrecv", b"sendonly", b"inactive"])]
        return b"\r\n".join(lines) + b"\r\n"

    # -- helpers for the mutations -----------------------------------------------------

    def pick(self, options: list[bytes]) -> bytes:
        return self.rng.choice(options)

    def long_token(self) -> bytes:
        return self.rng.choice([b"a", b"9", b"%41", b";x", b"\xc3\xa9", b"z9hG4bK"]) * self.rng.choice(
            [256, 1024, 4096, 16384, 70000])


def fix_content_length(msg: bytes) -> bytes:
    """Set Content-Length (long or compact form) to the body's length."""
    end = msg.find(b"\r\n\r\n")
    if end < 0:
        return msg
    body = len(msg) - end - 4
    head = re.sub(rb"(?im)^(Content-Length|l)[ \t]*:[^\r\n]*", lambda m: m.group(1) + b": %d" % body,
                  msg[:end])
    return head + msg[end:]


def _cancel_of(invite: bytes) -> bytes:
    head = invite.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [line for line in head[1:] if line.split(b":", 1)[0] in (b"Via", b"From", b"To", b"Call-ID", b"Max-Forwards")]
    cseq = next(line for line in head if line.startswith(b"CSeq:")).split()[1]
    first = b"CANCEL " + head[0].split(b" ")[1] + b" SIP/2.0"
    return b"\r\n".join([first, *keep, b"CSeq: %s CANCEL" % cseq, b"Content-Length: 0"]) + b"\r\n\r\n"


def _lines(msg: bytes) -> tuple[list[bytes], bytes]:
    """Header lines (the start line first) and the body."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- the mutations: (fuzzer, message) -> message ------------------------------------------


def m_byte_flip(f: SipFuzzer, msg: bytes) -> bytes:
    data = bytearray(msg)
    for _ in range(f.rng.randint(1, 8)):
        if data:
            data[f.rng.randrange(len(data))] = f.rng.getrandbits(8)
    return bytes(data)


def m_truncate(f: SipFuzzer, msg: bytes) -> bytes:
    return msg[: f.rng.randrange(len(msg) + 1)]


def m_dup_header(f: SipFuzzer, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    if len(lines) < 2:
        return msg
    i = f.rng.randrange(1, len(lines))
    lines[i:i] = [lines[i]] * f.rng.choice([1, 2, 10, 100, 1000])
    return _join(lines, body)


def m_del_header(f: SipFuzzer, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    if len(lines) < 2:
        return msg
    del lines[f.rng.randrange(1, len(lines))]
    return _join(lines, body)


def m_content_length(f: SipFuzzer, msg: bytes) -> bytes:
    value = f.rng.choice(INTS + [b"%d" % f.rng.randint(0, 100000), b"10, 20"])
    lines, body = _lines(msg)
    lines = [line for line in lines if not re.match(rb"(?i)(content-length|l)\s*:", line)]
    name = f.rng.choice([b"Content-Length", b"l", b"content-length"])
    lines.insert(f.rng.randrange(1, len(lines) + 1) if len(lines) > 1 else 1, name + b": " + value)
    return _join(lines, body)


def m_crlf(f: SipFuzzer, msg: bytes) -> bytes:
    choice = f.rng.randrange(6)
    if choice == 0:
        return msg.replace(b"\r\n", b"\n")
    if choice == 1:
        return msg.replace(b"\r\n", b"\r")
    if choice == 2:
        return b"\r\n" * f.rng.randint(1, 50) + msg
    if choice == 3:
        return msg.replace(b"\r\n\r\n", b"\r\n", 1)
    if choice == 4:
        return msg.replace(b"\r\n", b"\r\n\r\n", 1)
    return msg + b"\r\n" * f.rng.randint(1, 10)


def m_long_token(f: SipFuzzer, msg: bytes) -> bytes:
    pos = f.rng.randrange(len(msg) + 1)
    return msg[:pos] + f.long_token() + msg[pos:]


def m_method(f: SipFuzzer, msg: bytes) -> bytes:
    method = f.rng.choice(METHODS + [b"invite", b"INV ITE", b"", b"\xc3\xa9", b"X" * 300, b"SIP/2.0"])
    first, sep, rest = msg.partition(b" ")
    return method + sep + rest


def m_scheme(f: SipFuzzer, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    parts = lines[0].split(b" ")
    if len(parts) >= 2:
        uri = parts[1]
        scheme, colon, rest = uri.partition(b":")
        parts[1] = f.pick(SCHEMES) + b":" + (rest if colon else uri)
        lines[0] = b" ".join(parts)
    return _join(lines, body)


def m_via(f: SipFuzzer, msg: bytes) -> bytes:
    rng = f.rng
    variants = [
        b"Via: SIP/2.0/UDP %s:%d" % (f.host, f.port),  # no branch
        b"Via: SIP/2.0/UDP %s:%d;branch=" % (f.host, f.port),
        b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s" % (f.host, f.port, f.long_token()),
        b"Via: SIP/2.0/%s %s:%s;branch=z9hG4bKx" % (rng.choice([b"XYZ", b"TLS", b"WS", b"", b"UDP/x"]), f.host,
                                                      rng.choice(INTS)),
        b"Via: SIP/2.0/UDP ;branch=z9hG4bKx",
        b"Via: SIP/3.0/UDP %s;branch=z9hG4bK1" % f.host,
        b"Via: SIP/2.0/UDP [::1:%d;branch=z9hG4bK1" % f.port,
        b"Via: SIP/2.0/UDP %s;received=%s;rport=%s;branch=z9hG4bK2" % (f.host, rng.choice([b"", b"1.2.3", b"::"]),
                                                                      rng.choice(INTS)),
        b"Via: " + b"SIP/2.0/UDP h%d;branch=z9hG4bK%d," % (1, 1) * rng.choice([2, 50, 500]),
    ]
    lines, body = _lines(msg)
    new = rng.choice(variants)
    idx = [i for i, line in enumerate(lines) if re.match(rb"(?i)(via|v)\s*:", line)]
    if idx and rng.random() < 0.8:
        lines[rng.choice(idx)] = new
    else:
        lines.insert(1, new)
    return _join(lines, body)


def m_cseq(f: SipFuzzer, msg: bytes) -> bytes:
    value = b"%s %s" % (f.rng.choice(INTS), f.rng.choice(METHODS + [b"", b"FOO"]))
    if f.rng.random() < 0.2:
        value = f.rng.choice([b"", b"INVITE", b"1", b"1 INVITE extra", b"\x00"])
    return re.sub(rb"(?im)^CSeq\s*:[^\r\n]*", lambda m: b"CSeq: " + value, msg, count=1)


def m_call_id(f: SipFuzzer, msg: bytes) -> bytes:
    value = f.rng.choice([b"", b" ", f.long_token(), "\u4e2d\u6587@x".encode(), b"a\x00b", b"@", b"a b c"])
    return re.sub(rb"(?im)^(Call-ID|i)\s*:[^\r\n]*", lambda m: m.group(1) + b": " + value, msg, count=1)


def m_sdp(f: SipFuzzer, msg: bytes) -> bytes:
    rng = f.rng
    lines, body = _lines(msg)
    sdp = body if body.startswith(b"v=") else f.sdp()
    slines = sdp.split(b"\r\n")
    choice = rng.randrange(7)
    if choice == 0:
        slines = [b"c=" + rng.choice([b"IN IP4", b"IN IP6 300.0.0.1", b"IN IP4 1.2.3.4/", b"XX", b"IN IP4 " + f.long_token()])
                  if s.startswith(b"c=") else s for s in slines]
    elif choice == 1:
        slines = [b"m=" + rng.choice([b"audio", b"", b"video 1 RTP/AVP", b"audio 1 RTP/AVP " + b"0 " * 500,
                                      b"audio %s RTP/AVP 0" % rng.choice(INTS), b"image 1 udptl t38",
                                      b"audio 9 UDP/TLS/RTP/SAVPF 111"])
                  if s.startswith(b"m=") else s for s in slines]
    elif choice == 2:
        slines += [b"m=audio %d RTP/AVP 0" % rng.randint(0, 70000) for _ in range(rng.choice([2, 20, 200, 2000]))]
    elif choice == 3:
        slines = [s for s in slines if not s.startswith(rng.choice([b"v=", b"c=", b"m=", b"o=", b"t="]))]
    elif choice == 4:
        slines.append(b"a=" + rng.choice([b"rtpmap:", b"rtpmap:101 telephone-event/0", b"fmtp:101 0-" + b"9" * 40,
                                          b"rtpmap:999999999999 x/1", b"ptime:-1", b"ice-ufrag:" + f.long_token(),
                                          b"candidate:1 1 udp 1 300.1.1.1 99999 typ host", b"crypto:"]))
    elif choice == 5:
        slines = [s.replace(b"\r", b"") + rng.choice([b"\n", b"\x00", b" "]) for s in slines]
    else:
        slines.insert(rng.randrange(len(slines) + 1), rng.choice(WEIRD) * rng.randint(1, 100))
    body = b"\r\n".join(slines)
    if not any(re.match(rb"(?i)(content-type|c)\s*:", line) for line in lines):
        lines.append(b"Content-Type: application/sdp")
    return fix_content_length(_join(lines, body))


def m_compact(f: SipFuzzer, msg: bytes) -> bytes:
    def repl(m: re.Match[bytes]) -> bytes:
        name = m.group(1)
        if f.rng.random() < 0.7:
            name = COMPACT.get(name, name)
        return m.group(0)[: m.start(1) - m.start(0)] + name + f.rng.choice([b":", b" :", b"\t:", b"  :"])
    return _HEADER_LINE.sub(repl, msg)


def m_weird(f: SipFuzzer, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    i = f.rng.randrange(len(lines))
    line = lines[i]
    pos = f.rng.randrange(len(line) + 1)
    lines[i] = line[:pos] + f.rng.choice(WEIRD) * f.rng.randint(1, 4) + line[pos:]
    return _join(lines, body)


def m_fold(f: SipFuzzer, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    if len(lines) < 2:
        return msg
    i = f.rng.randrange(1, len(lines))
    line = lines[i]
    pos = f.rng.randrange(len(line) + 1)
    lines[i] = line[:pos] + f.rng.choice([b"\r\n ", b"\r\n\t", b"\r\n", b"\r\n \r\n "]) + line[pos:]
    return _join(lines, body)


def m_header_value(f: SipFuzzer, msg: bytes) -> bytes:
    """Replace a random known header's value with something hostile."""
    name = f.rng.choice([b"To", b"From", b"Contact", b"Max-Forwards", b"Expires", b"Route", b"Record-Route",
                         b"Content-Type", b"Authorization", b"Event", b"Require", b"Supported", b"Min-SE",
                         b"Session-Expires", b"Replaces", b"Refer-To", b"RSeq", b"RAck"])
    value = f.rng.choice(INTS + WEIRD + [f.long_token(), b"<sip:a@b", b"<>", b"sip:", b'"unterminated <sip:x@y>',
                                         b"<sip:x@y>;tag=" + f.long_token(), b"*", b"<tel:+1;phone-context=" + b"x" * 600 + b">"])
    lines, body = _lines(msg)
    lines.insert(f.rng.randrange(1, len(lines) + 1) if len(lines) > 1 else 1, name + b": " + value)
    return _join(lines, body)


def m_version(f: SipFuzzer, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    lines[0] = re.sub(rb"SIP/2\.0$", f.rng.choice([b"SIP/2.1", b"SIP/20", b"sip/2.0", b"HTTP/1.1", b"SIP/",
                                                   b"SIP/2.0 extra", b""]), lines[0])
    return _join(lines, body)


def m_response(f: SipFuzzer, msg: bytes) -> bytes:
    """Turn the message into a response (stray, or matching nothing)."""
    lines, body = _lines(msg)
    lines[0] = b"SIP/2.0 %s %s" % (f.rng.choice([b"200", b"100", b"180", b"487", b"999", b"0", b"-1", b"2000", b"abc"]),
                                   f.rng.choice([b"OK", b"", b"\x00", f.long_token()]))
    return _join(lines, body)


MUTATIONS: list[tuple[str, Callable[[SipFuzzer, bytes], bytes]]] = [
    ("byte_flip", m_byte_flip), ("truncate", m_truncate), ("dup_header", m_dup_header),
    ("del_header", m_del_header), ("content_length", m_content_length), ("crlf", m_crlf),
    ("long_token", m_long_token), ("method", m_method), ("scheme", m_scheme), ("via", m_via),
    ("cseq", m_cseq), ("call_id", m_call_id), ("sdp", m_sdp), ("compact", m_compact), ("weird", m_weird),
    ("fold", m_fold), ("header_value", m_header_value), ("version", m_version), ("response", m_response),
]
