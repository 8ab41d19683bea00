"""The registry's expected failures.

The command line prints them as one line; the API answers each refusal below with one status,
chosen in one place (`registry.app`). A message never holds a secret, nor a value a caller sent
that could be one: it names the field and what is wrong.
"""

from runtime.errors import FleetPulseError


class RegistryError(FleetPulseError):
    """Base of the registry's expected failures; the message never holds a secret."""


class KeyringError(RegistryError):
    """The encryption keys are missing or malformed (the message names no key material)."""


class TlsError(RegistryError):
    """The certificate or key to serve HTTPS with is missing or does not load (the message names
    the files, never what is in them)."""


class DecryptionError(RegistryError):
    """A stored password cannot be decrypted: wrong key, wrong row, or tampered ciphertext."""


# -- refusals of an account or inventory operation ------------------------------------------------
class Invalid(RegistryError):
    """A value the rules refuse, e.g. `null` for a field that must have one (`field: why`)."""


class NotFound(RegistryError):
    """The user or server the operation names does not exist."""


class Conflict(RegistryError):
    """The operation contradicts what is stored: a duplicate e-mail, hostname or id, or an
    admin about to lock themselves out."""


class Forbidden(RegistryError):
    """The caller's role lacks the permission the operation needs."""


class Unauthenticated(RegistryError):
    """No valid session, or a login with a wrong e-mail or password or a deactivated account."""


class WrongPassword(RegistryError):
    """The current password given to change it is not the account's."""


class LockedOut(RegistryError):
    """Too many failed logins for an e-mail; `retry_after` is the whole seconds left."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
