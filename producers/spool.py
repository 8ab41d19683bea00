"""The producer library's on-disk spool: events accepted but not yet acknowledged by Kafka,
kept in files so that they survive the producer's own crash or restart.

The folder holds:

    lock                        held (flock) by the one process using the folder
    <segment, 20 digits>.seg    records, appended in batches; each batch is fsync'd
    acked                       where the first record not known to be acknowledged starts:
                                `{"segment": n, "offset": bytes}`, replaced atomically

A record is framed as a 4-byte big-endian length of its body, the body's CRC-32 (4 bytes),
then the body: a 2-byte key length, the key, the value. A record cut short by a crash in the
middle of a write, or damaged afterwards, fails its length or checksum: the rest of that
segment is skipped with a warning, every record before it is kept.

The protocol, in order:
1. `add()` reserves a record's bytes against `max_bytes` (None when the spool is full: the
   new event is refused, what is spooled stays).
2. `append()` writes a batch of added records to the active segment and fsyncs it: from then
   on the records survive a crash. A new segment file is fsync'd into its folder too.
3. `ack()` marks records Kafka has acknowledged.
4. `commit()` moves the `acked` pointer past the acknowledged records at the head (in spool
   order; one not yet acknowledged holds back the pointer) and deletes the segments behind
   it. A crash before a commit re-sends the records acknowledged since the previous one.
5. A new `Spool` on the folder reads every record from the pointer on, in order
   (`recovered`); new records go to a new segment.

Only one thread uses a `Spool` at a time for steps 2, 4 and 5 (the client's spool task);
`add()` and `ack()` may be called meanwhile from the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from runtime.errors import FleetPulseError

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")  # body length, CRC-32 of the body
_KEY_LEN = struct.Struct(">H")
#: Bytes a record takes besides its key and value.
OVERHEAD = _HEADER.size + _KEY_LEN.size
_SUFFIX = ".seg"
_POINTER = "acked"
_MAX_SEGMENT = 8 * 1024 * 1024
#: Seconds between commits of the acked pointer while records are being acknowledged: what a
#: crash may re-send.
COMMIT_INTERVAL = 1.0


class SpoolError(FleetPulseError):
    """The spool folder cannot be used (not writable, in use), or a write to it failed."""


class SpoolRecord:
    """One event in the spool: its key and value, and where it is on disk once appended."""

    __slots__ = ("acked", "key", "offset", "segment", "value")

    def __init__(self, key: bytes, value: bytes) -> None:
        self.key = key
        self.value = value
        self.segment = -1  # -1: not on disk
        self.offset = 0
        self.acked = False

    @property
    def size(self) -> int:
        return OVERHEAD + len(self.key) + len(self.value)


def frame(rec: SpoolRecord) -> bytes:
    body = _KEY_LEN.pack(len(rec.key)) + rec.key + rec.value
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class Spool:
    """The spool in folder `path`, bounded to `max_bytes` on disk (reservations included).

    Opening it creates the folder if needed, locks it against a second process, and reads
    the records left by the previous one into `recovered`. Raises `SpoolError` if the folder
    cannot be used."""

    def __init__(self, path: Path, max_bytes: int, *, segment_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: A segment that reached this size gets no more batches (it is deleted once its
        #: records are acknowledged): an eighth of the bound (at most 8 MiB), so about that
        #: much, plus the batch that passed it, is held by acknowledged records waiting for
        #: their segment to go. A batch is never split.
        self.segment_bytes = segment_bytes or max(4096, min(_MAX_SEGMENT, max_bytes // 8))
        #: Records read back at opening, in order; the client sends them before new ones.
        self.recovered: list[SpoolRecord] = []
        #: Places where a record was torn or damaged (the rest of its segment was skipped).
        self.corrupt = 0
        self._lock = threading.Lock()
        self._bytes = 0  # on disk, plus reservations not yet written
        #: Records on disk, in spool order, from the oldest not yet committed.
        self._held: deque[SpoolRecord] = deque()
        self._sizes: dict[int, int] = {}  # segment -> bytes on disk
        self._fd: int | None = None
        self._active = 0
        self._pointer = (0, 0)
        self._lock_fd = self._open_folder()
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- the event loop's side ------------------------------------------------------------
    def add(self, key: bytes, value: bytes) -> SpoolRecord | None:
        """A record for `key`/`value` with its bytes reserved; None if they do not fit."""
        rec = SpoolRecord(key, value)
        size = rec.size
        with self._lock:
            if self._bytes + size > self.max_bytes:
                return None
            self._bytes += size
        return rec

    def release(self, records: Iterable[SpoolRecord]) -> None:
        """Give back the reservations of records that will not be appended."""
        self._free(sum(r.size for r in records))

    @staticmethod
    def ack(records: Iterable[SpoolRecord]) -> None:
        """Mark records acknowledged by Kafka (they go at the next `commit()`)."""
        for rec in records:
            rec.acked = True

    @property
    def used_bytes(self) -> int:
        """Bytes of the spool's files, and of records added but not yet appended."""
        return self._bytes

    @property
    def held(self) -> int:
        """Records on disk not yet committed (some may be acknowledged already)."""
        return len(self._held)

    @property
    def uncommitted(self) -> bool:
        """Whether a `commit()` would move the pointer."""
        try:
            return self._held[0].acked
        except IndexError:
            return False

    # -- the spool task's side ------------------------------------------------------------
    def append(self, records: list[SpoolRecord]) -> None:
        """Write `records` (added, in order) at the end of the spool and fsync them.

        Raises `SpoolError` if the write fails; the records are then not in the spool and
        their reservations are released."""
        if not records:
            return
        try:
            if self._fd is None or self._sizes[self._active] >= self.segment_bytes:
                self._new_segment()
            assert self._fd is not None
            segment = self._active
            offset, parts = self._sizes[segment], []
            for rec in records:
                rec.segment, rec.offset = segment, offset
                data = frame(rec)
                parts.append(data)
                offset += len(data)
            _write_all(self._fd, b"".join(parts))
            os.fsync(self._fd)
        except OSError as exc:
            for rec in records:
                rec.segment = -1
            self.release(records)
            self._abandon_segment(self._sizes.get(self._active))
            raise SpoolError(f"cannot write to the spool in {self.path}: {exc}") from exc
        self._sizes[segment] = offset
        self._held.extend(records)

    def commit(self) -> None:
        """Move the pointer past the acknowledged records at the head; delete the segments
        behind it."""
        held = self._held
        while held and held[0].acked:
            held.popleft()
        pointer = (held[0].segment, held[0].offset) if held else self._end()
        if pointer == self._pointer:
            return
        self._write_pointer(pointer)
        for segment in sorted(s for s in self._sizes if s < pointer[0]):
            self._delete(segment)

    def close(self) -> None:
        """Commit, close the files and unlock the folder. With nothing left to deliver every
        segment goes; otherwise the records stay for the next opening."""
        try:
            self.commit()
            if not self._held and self._sizes:
                self._close_active()
                self._active += 1
                self._write_pointer((self._active, 0))
                for segment in sorted(self._sizes):
                    self._delete(segment)
        except OSError as exc:
            log.warning("spool %s: could not tidy up on close: %s", self.path, exc)
        finally:
            self._close_active()
            os.close(self._lock_fd)

    # -- internals ------------------------------------------------------------------------
    def _free(self, n: int) -> None:
        with self._lock:
            self._bytes -= n

    def _end(self) -> tuple[int, int]:
        return (self._active, self._sizes.get(self._active, 0))

    def _open_folder(self) -> int:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool folder {self.path}: {exc}") from None
        if not self.path.is_dir():
            raise SpoolError(f"the spool folder {self.path} is not a folder")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise SpoolError(f"the spool folder {self.path} is not writable")
        try:
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use the spool folder {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(
                f"the spool folder {self.path} is in use by another process "
                "(each producer needs a folder of its own)"
            ) from None
        return fd

    def _recover(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{_POINTER}.tmp").unlink()
        segments = sorted(int(p.stem) for p in self.path.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._pointer = pointer = self._read_pointer()
        for segment in segments:
            if segment < pointer[0]:
                self._unlink(segment)
                continue
            data = self._segment_path(segment).read_bytes()
            self._sizes[segment] = len(data)
            start = pointer[1] if segment == pointer[0] else 0
            if start > len(data):
                log.warning(
                    "spool %s: the acked pointer is past the end of segment %d; replaying it whole",
                    self.path,
                    segment,
                )
                start = 0
            self.recovered.extend(self._scan(segment, data, start))
        self._held.extend(self.recovered)
        self._bytes = sum(self._sizes.values())
        self._active = max([pointer[0], *(s + 1 for s in self._sizes)])
        if self.recovered:
            log.info(
                "spool %s: %d events left by the previous run will be sent first",
                self.path,
                len(self.recovered),
            )

    def _scan(self, segment: int, data: bytes, pos: int) -> list[SpoolRecord]:
        out: list[SpoolRecord] = []
        end = len(data)
        while pos < end:
            problem = None
            if end - pos < _HEADER.size:
                problem = "a torn record header"
            else:
                length, crc = _HEADER.unpack_from(data, pos)
                body_at = pos + _HEADER.size
                if length < _KEY_LEN.size or body_at + length > end:
                    problem = "a torn or damaged record"
                else:
                    body = data[body_at : body_at + length]
                    (key_len,) = _KEY_LEN.unpack_from(body)
                    if zlib.crc32(body) != crc or key_len > length - _KEY_LEN.size:
                        problem = "a damaged record (checksum mismatch)"
            if problem is not None:
                self.corrupt += 1
                log.warning(
                    "spool %s: segment %d has %s at byte %d; skipping its last %d bytes "
                    "(the %d records before it are kept)",
                    self.path,
                    segment,
                    problem,
                    pos,
                    end - pos,
                    len(out),
                )
                break
            rec = SpoolRecord(body[2 : 2 + key_len], body[2 + key_len :])
            rec.segment, rec.offset = segment, pos
            out.append(rec)
            pos = body_at + length
        return out

    def _read_pointer(self) -> tuple[int, int]:
        path = self.path / _POINTER
        try:
            raw = json.loads(path.read_bytes())
            pointer = (int(raw["segment"]), int(raw["offset"]))
            if pointer[0] < 0 or pointer[1] < 0:
                raise ValueError("negative position")
            return pointer
        except FileNotFoundError:
            return (0, 0)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "spool %s: unreadable acked pointer (%s); replaying every segment",
                self.path,
                exc,
            )
            return (0, 0)

    def _write_pointer(self, pointer: tuple[int, int]) -> None:
        tmp = self.path / f"{_POINTER}.tmp"
        data = json.dumps({"segment": pointer[0], "offset": pointer[1]}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / _POINTER)
        self._sync_folder()
        self._pointer = pointer

    def _new_segment(self) -> None:
        self._close_active()
        if self._active in self._sizes:
            self._active += 1
        path = self._segment_path(self._active)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._sizes[self._active] = 0
        self._sync_folder()

    def _abandon_segment(self, good_size: int | None) -> None:
        """After a failed write: cut what it left, and write no more to that segment."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if good_size is not None:
                os.ftruncate(self._fd, good_size)
        self._close_active()

    def _close_active(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):  # (everything written was fsync'd)
                os.close(fd)

    def _delete(self, segment: int) -> None:
        if segment == self._active:
            self._close_active()
        self._unlink(segment)
        self._free(self._sizes.pop(segment, 0))

    def _unlink(self, segment: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(segment).unlink()

    def _segment_path(self, segment: int) -> Path:
        return self.path / f"{segment:020d}{_SUFFIX}"

    def _sync_folder(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
