"""The registry's expected failures (the command line prints them as one line)."""

from runtime.errors import FleetPulseError


class RegistryError(FleetPulseError):
    """Base of the registry's expected failures; the message never holds a secret."""


class KeyringError(RegistryError):
    """The encryption keys are missing or malformed (the message names no key material)."""


class DecryptionError(RegistryError):
    """A stored password cannot be decrypted: wrong key, wrong row, or tampered ciphertext."""
