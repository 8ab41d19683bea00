"""Server passwords encrypted with AES-256-GCM, under keys that can rotate.

Stored form: `v<version>:` + base64(nonce ‖ ciphertext ‖ tag). Every encryption draws a fresh
96-bit nonce; the server's id is the associated data, so a ciphertext copied to another row
does not decrypt. The version prefix names the key, so old rows keep decrypting after a new key
is added, until `fleetpulse registry rotate-key` re-encrypts them. Keys come from
`FLEETPULSE_REGISTRY_KEYS` or a key file, never from the database.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from registry.errors import DecryptionError, KeyringError
from registry.settings import RegistrySettings

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class Keyring:
    """AES-256 keys by version; the highest version encrypts."""

    keys: dict[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("no encryption key configured")
        for version, key in self.keys.items():
            if version < 1:
                raise KeyringError(f"key version {version}: versions start at 1")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key version {version}: must be {KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"Keyring(versions={sorted(self.keys)})"

    @property
    def current(self) -> int:
        return max(self.keys)

    def encrypt(self, plaintext: str, row_id: str) -> str:
        version = self.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[version]).encrypt(nonce, plaintext.encode(), row_id.encode())
        return f"v{version}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, row_id: str) -> str:
        version, blob = self._parse(stored)
        key = self.keys.get(version)
        if key is None:
            raise DecryptionError(f"no key of version {version} in the keyring")
        try:
            plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], row_id.encode())
        except InvalidTag:
            raise DecryptionError(
                "stored password does not decrypt (wrong key, wrong row or altered)"
            ) from None
        return plain.decode()

    @staticmethod
    def version_of(stored: str) -> int:
        return Keyring._parse(stored)[0]

    @staticmethod
    def _parse(stored: str) -> tuple[int, bytes]:
        prefix, sep, body = stored.partition(":")
        if not sep or not prefix.startswith("v") or not prefix[1:].isdigit():
            raise DecryptionError("stored password has no key-version prefix")
        try:
            blob = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptionError("stored password is not valid base64") from None
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("stored password is too short")
        return int(prefix[1:]), blob

    def with_new_key(self) -> Keyring:
        """This keyring plus a fresh random key one version above the current one."""
        return Keyring({**self.keys, self.current + 1: AESGCM.generate_key(bit_length=256)})

    def dumps(self) -> str:
        """The key file's text: one `version:base64key` line per key."""
        return "".join(
            f"{v}:{base64.b64encode(k).decode()}\n" for v, k in sorted(self.keys.items())
        )


def parse_keys(text: str) -> Keyring:
    """`1:<base64>,2:<base64>` (commas or new lines); errors name the entry, never the key."""
    keys: dict[int, bytes] = {}
    entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
    for n, entry in enumerate(entries, 1):
        version, sep, b64 = entry.partition(":")
        if not sep or not version.strip().isdigit():
            raise KeyringError(f"key entry {n}: expected version:base64key")
        try:
            key = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"key entry {n} (version {version.strip()}): not base64") from None
        if int(version) in keys:
            raise KeyringError(f"key version {int(version)} appears twice")
        keys[int(version)] = key
    return Keyring(keys)


def write_key_file(path: Path, keyring: Keyring) -> None:
    """Write the key file readable by its owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keyring.dumps())
    os.replace(tmp, path)


def load_keyring(settings: RegistrySettings, *, create: bool = False) -> Keyring:
    """The keys from `FLEETPULSE_REGISTRY_KEYS`, else the key file.

    With `create`, a missing key file is generated with one random key (mode 0600).
    """
    if settings.registry_keys is not None:
        return parse_keys(settings.registry_keys.get_secret_value())
    path = settings.key_path
    if path.exists():
        return parse_keys(path.read_text())
    if not create:
        raise KeyringError(
            f"no encryption keys: set FLEETPULSE_REGISTRY_KEYS or create {path} "
            "(`fleetpulse registry create-admin` generates it)"
        )
    keyring = Keyring({1: AESGCM.generate_key(bit_length=256)})
    write_key_file(path, keyring)
    log.warning("generated a new encryption key (version 1) in %s; back it up", path)
    return keyring
