"""User passwords (Argon2id, RFC 9106 parameters) and opaque session tokens.

Hashing runs in a worker thread (argon2 releases the GIL), so a login never blocks the event
loop. A login for an unknown e-mail verifies against a dummy hash made with the same
parameters, so it costs the same time as a wrong password.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY

#: RFC 9106's second recommended option (Argon2id, t=3, 64 MiB, p=4): the first needs 2 GiB.
DEFAULT_HASHER = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


class Passwords:
    """Hash and verify user passwords with one set of Argon2id parameters."""

    def __init__(self, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
        self.hasher = hasher
        self._dummy = hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches; `None` (no such user) costs a full verification too."""
        return await asyncio.to_thread(self._verify, stored_hash, password)

    def _verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash or self._dummy, password) and (
                stored_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True


def new_token() -> str:
    """A random opaque bearer token (256 bits)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """What the database keeps of a token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()
