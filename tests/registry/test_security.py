"""Argon2id password hashing, equal cost for unknown users, session tokens."""

from __future__ import annotations

import hashlib
import statistics
import time

from argon2 import PasswordHasher

from registry.security import DEFAULT_HASHER, Passwords, new_token, token_hash


async def test_hash_and_verify() -> None:
    pw = Passwords()
    h = await pw.hash("correct horse")
    assert h.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert await pw.verify(h, "correct horse")
    assert not await pw.verify(h, "wrong horse")
    assert not await pw.verify("not-a-hash", "correct horse")
    assert not pw.needs_rehash(h)


async def test_an_unknown_user_costs_as_much_as_a_wrong_password() -> None:
    pw = Passwords()
    h = await pw.hash("secret-1")

    async def timed(stored: str | None) -> float:
        t = time.perf_counter()
        assert not await pw.verify(stored, "guess")
        return time.perf_counter() - t

    known = statistics.median([await timed(h) for _ in range(5)])
    unknown = statistics.median([await timed(None) for _ in range(5)])
    assert 0.5 < unknown / known < 2.0, (known, unknown)
    assert not await pw.verify(None, "")


def test_weaker_parameters_need_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("x")
    assert Passwords(DEFAULT_HASHER).needs_rehash(weak)
    assert Passwords(DEFAULT_HASHER).needs_rehash("garbage")


def test_tokens_are_random_and_stored_as_sha256() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 43
    assert token_hash(a) == hashlib.sha256(a.encode()).digest() and len(token_hash(a)) == 32
