"""The certificate the registry serves HTTPS with, loaded before uvicorn listens and loaded
again, in place, when its files change on disk.

`ServingCertificate` owns the `ssl.SSLContext` that uvicorn's listening socket wraps every new
connection with. `refresh()` (the server calls it once a second) compares the inode, size and
modification time of the certificate and the key with those it loaded last. When one changed it
loads the pair into a scratch context first and, only when that works, into the live one: a
rotation caught half-way (the new key beside the old certificate) or a broken file leaves the
previous certificate serving, and the next change is tried again. New connections get the new
certificate; open ones keep the one they shook hands with.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from cryptography import x509

from registry.errors import TlsError

log = logging.getLogger(__name__)

#: (inode, size, mtime in ns) of the certificate and of the key.
Stamp = tuple[tuple[int, int, int], ...]


def _stamp(*paths: Path) -> Stamp | None:
    """The files' identity now; None while one is missing."""
    try:
        stats = [os.stat(p) for p in paths]
    except FileNotFoundError:
        return None
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _encrypted_key() -> bytes:
    # Called by OpenSSL only for an encrypted key. Without a callback OpenSSL would ask on the
    # terminal, from inside the event loop.
    raise TlsError("the key is encrypted; the registry takes an unencrypted key (mode 0600)")


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        if exc.reason is None:  # OpenSSL's "PEM lib": no PEM certificate or key in the file
            return "not a PEM certificate and key"
        return exc.reason.lower().replace("_", " ")  # KEY_VALUES_MISMATCH: key values mismatch
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


class ServingCertificate:
    """The certificate and key at `cert` / `key`, in `context`; `TlsError` when they are
    missing or do not load."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        missing = [str(p) for p in (cert, key) if not p.exists()]
        if missing:
            raise TlsError(
                f"no TLS certificate for the registry ({', '.join(missing)} missing): run "
                "`fleetpulse stack up`, which issues it from the stack's CA, or set "
                "FLEETPULSE_REGISTRY_TLS_CERT and FLEETPULSE_REGISTRY_TLS_KEY"
            )
        # Taken before the files are read: a change while they are read shows at the next
        # refresh, which loads them again.
        stamp = _stamp(cert, key)
        self.context = _context()
        try:
            self._load(self.context)
        except (ssl.SSLError, OSError, TlsError) as exc:
            raise TlsError(
                f"cannot serve HTTPS with the certificate {cert} and the key {key}: {_reason(exc)}"
            ) from None
        self._loaded = stamp
        self._failed: Stamp | None = None

    def _load(self, ctx: ssl.SSLContext) -> None:
        ctx.load_cert_chain(self.cert, self.key, _encrypted_key)

    def describe(self) -> str:
        """The certificate on disk, its serial and expiry (for log lines)."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        except (OSError, ValueError):
            return f"{self.cert} (unreadable)"
        return (
            f"{self.cert} (serial {cert.serial_number:x}, "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d})"
        )

    def refresh(self) -> bool:
        """Load the files again when they changed since the last load; True when the new pair
        now serves. A pair that does not load is logged once and changes nothing."""
        stamp = _stamp(self.cert, self.key)
        if stamp is None or stamp in (self._loaded, self._failed):
            return False
        try:
            self._load(_context())  # a pair that does not load never reaches the live context
            self._load(self.context)
        except (ssl.SSLError, OSError, TlsError) as exc:
            self._failed = stamp
            log.warning(
                "the TLS certificate %s or its key %s changed but does not load (%s); the "
                "previous certificate keeps serving",
                self.cert,
                self.key,
                _reason(exc),
            )
            return False
        self._loaded, self._failed = stamp, None
        log.info("reloaded the TLS certificate %s", self.describe())
        return True
