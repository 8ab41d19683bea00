"""AES-256-GCM server passwords: fresh nonces, row binding, tamper detection, rotation, and
keys that never show in a message."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from registry.crypto import NONCE_BYTES, Keyring, load_keyring, parse_keys, write_key_file
from registry.errors import DecryptionError, KeyringError
from registry.settings import RegistrySettings

ROW = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"
OTHER_ROW = "0b5a3f1e-2c4d-4e6f-8a9b-1c2d3e4f5a6b"
K1, K2 = os.urandom(32), os.urandom(32)


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    ring = Keyring({1: K1})
    a, b = ring.encrypt("hunter2", ROW), ring.encrypt("hunter2", ROW)
    assert a != b and a.startswith("v1:") and "hunter2" not in a
    nonces = {base64.b64decode(x[3:])[:NONCE_BYTES] for x in (a, b)}
    assert len(nonces) == 2
    assert ring.decrypt(a, ROW) == ring.decrypt(b, ROW) == "hunter2"


def test_a_ciphertext_moved_to_another_row_is_rejected() -> None:
    ring = Keyring({1: K1})
    with pytest.raises(DecryptionError, match="wrong row"):
        ring.decrypt(ring.encrypt("pw", ROW), OTHER_ROW)


@pytest.mark.parametrize("position", [0, NONCE_BYTES, -1])
def test_tampered_ciphertext_is_rejected(position: int) -> None:
    ring = Keyring({1: K1})
    blob = bytearray(base64.b64decode(ring.encrypt("pw", ROW)[3:]))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        ring.decrypt("v1:" + base64.b64encode(bytes(blob)).decode(), ROW)


def test_wrong_key_and_unknown_version_are_rejected() -> None:
    stored = Keyring({1: K1}).encrypt("pw", ROW)
    with pytest.raises(DecryptionError, match="altered"):
        Keyring({1: K2}).decrypt(stored, ROW)
    with pytest.raises(DecryptionError, match="no key of version 1"):
        Keyring({2: K2}).decrypt(stored, ROW)
    for junk in ("plain", "v1:!!!", "vx:AAAA", "v1:" + base64.b64encode(b"short").decode()):
        with pytest.raises(DecryptionError):
            Keyring({1: K1}).decrypt(junk, ROW)


def test_rotation_encrypts_with_the_newest_and_still_reads_the_old() -> None:
    old = Keyring({1: K1})
    stored = old.encrypt("pw", ROW)
    new = old.with_new_key()
    assert new.current == 2 and new.keys[1] == K1 and len(new.keys[2]) == 32
    assert new.decrypt(stored, ROW) == "pw"
    again = new.encrypt(new.decrypt(stored, ROW), ROW)
    assert Keyring.version_of(again) == 2
    with pytest.raises(DecryptionError):
        old.decrypt(again, ROW)


def test_keys_parse_and_never_appear_in_messages() -> None:
    text = f"1:{base64.b64encode(K1).decode()}, 2:{base64.b64encode(K2).decode()}"
    ring = parse_keys(text)
    assert ring.current == 2 and ring.keys == {1: K1, 2: K2}
    assert base64.b64encode(K1).decode() not in repr(ring) and "versions=[1, 2]" in repr(ring)
    secret = base64.b64encode(os.urandom(16)).decode()
    bad = [f"1:{secret}", f"x:{secret}", f"1:{secret}!", f"1:{secret},1:{secret}", ""]
    for entry in bad:
        with pytest.raises(KeyringError) as err:
            parse_keys(entry)
        assert secret not in str(err.value)


def test_key_file_is_generated_private_and_reloaded(tmp_path: Path) -> None:
    settings = RegistrySettings(registry_key_file=tmp_path / "secrets" / "keys")
    with pytest.raises(KeyringError, match="no encryption keys"):
        load_keyring(settings)
    ring = load_keyring(settings, create=True)
    path = tmp_path / "secrets" / "keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(settings).keys == ring.keys
    write_key_file(path, ring.with_new_key())
    assert load_keyring(settings).current == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_from_the_environment_win(tmp_path: Path) -> None:
    settings = RegistrySettings(
        registry_keys=SecretStr(f"3:{base64.b64encode(K2).decode()}"),
        registry_key_file=tmp_path / "keys",
    )
    assert load_keyring(settings, create=True).keys == {3: K2}
    assert not (tmp_path / "keys").exists()
    assert base64.b64encode(K2).decode() not in repr(settings)
