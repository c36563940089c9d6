"""Tests for :mod:`engine.entropy`: the pooled source of call identifiers."""

from __future__ import annotations

import os
import re

import pytest

from engine import entropy


def test_shapes_match_the_secrets_functions() -> None:
    """Check each function gives what its :mod:`secrets` twin gives: lengths,
    alphabets and ranges."""
    assert len(entropy.token_bytes(7)) == 7
    assert re.fullmatch(r"[0-9a-f]{24}", entropy.token_hex(12))
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", entropy.token_urlsafe(16))
    assert all(0 <= entropy.randbits(5) < 32 for _ in range(500))
    assert all(0 <= entropy.randbelow(10) < 10 for _ in range(500))
    assert len(entropy.token_bytes(10_000)) == 10_000  # larger than the pool: read directly
    with pytest.raises(ValueError):
        entropy.randbelow(0)
    with pytest.raises(ValueError):
        entropy.randbits(0)


def test_bytes_are_handed_out_once() -> None:
    """Check no value repeats across many pool refills (every byte is used
    once) and that values spread over their range (no constant bits)."""
    tags = [entropy.token_hex(8) for _ in range(20_000)]  # 160 KB: 40 refills
    assert len(set(tags)) == len(tags)
    counts = [0] * 10
    for _ in range(20_000):
        counts[entropy.randbelow(10)] += 1
    assert min(counts) > 1_700 and max(counts) < 2_300  # about 2,000 each
    ored = 0
    for _ in range(64):
        ored |= entropy.randbits(32)
    assert ored == 0xFFFFFFFF


def test_a_forked_child_does_not_repeat_its_parent() -> None:
    """Check a child process draws fresh bytes, not the rest of the
    parent's pool (which would give both the same tags)."""
    entropy.token_hex(8)  # the pool holds unread bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, entropy.token_hex(16).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert entropy.token_hex(16) != child


def test_threads_drawing_at_once_never_get_the_same_bytes() -> None:
    """Check concurrent readers (no lock: the pool's reads are atomic) each
    get bytes nobody else got, across many refills."""
    import threading

    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        for _ in range(5_000):
            out.append(entropy.token_hex(7))  # 7 does not divide the pool: refills cut values

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [tag for out in drawn for tag in out]
    assert len(every) == 40_000 and all(len(tag) == 14 for tag in every)
    assert len(set(every)) == len(every)
