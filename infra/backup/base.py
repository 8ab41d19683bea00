"""Base backups with pgBackRest: take one, list what the repository holds, restore to a time.

A restore never touches the running cluster: it goes into a new folder, as a new cluster on a
port of its own, started and left running for inspection. Restored to a time, it pauses
there, read-only (`--promote` ends recovery and makes it writable); restored to `latest`, it
runs as a standby that has replayed every archived WAL segment, read-only (`--promote`: it
ends recovery at the end of the archive instead).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg

from infra.backup.settings import BackupSettings
from infra.stack.pgbackrest import BackupError, PgBackRest
from infra.stack.postgres import PostgresCluster
from infra.stack.process import find_process, port_open, read_pid, stop_process

BackupType = Literal["full", "diff", "incr"]


#: PostgreSQL's line for each WAL segment its restore_command brought back.
_RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')


def next_segment(name: str) -> str:
    """The WAL segment after `name` (16 MiB segments: 256 per log id)."""
    timeline, log_id, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16) + 1
    if seg > 0xFF:
        log_id, seg = log_id + 1, 0
    return f"{timeline:08X}{log_id:08X}{seg:08X}"


def _at(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


@dataclass(frozen=True)
class Backup:
    """One base backup in the repository."""

    label: str
    type: str
    started: str
    stopped: str
    #: Bytes of the cluster it copied, and what it takes in the repository (compressed).
    size: int
    repo_size: int
    wal_start: str
    wal_stop: str

    @property
    def reachable_from(self) -> datetime:
        """The earliest restore target this backup serves: pgBackRest keeps its stop time to
        the second and picks a backup whose stop second is before the target."""
        return datetime.fromisoformat(self.stopped) + timedelta(seconds=1)

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Backup:
        return cls(
            label=entry["label"],
            type=entry["type"],
            started=_at(entry["timestamp"]["start"]) or "",
            stopped=_at(entry["timestamp"]["stop"]) or "",
            size=entry["info"]["size"],
            repo_size=entry["info"]["repository"]["delta"],
            wal_start=entry["archive"]["start"],
            wal_stop=entry["archive"]["stop"],
        )

    def line(self) -> str:
        return (
            f"{self.type} backup {self.label}: {self.size / 1e6:,.1f} MB of the cluster, "
            f"{self.repo_size / 1e6:,.1f} MB in the repository, {self.started} to {self.stopped}"
        )


@dataclass(frozen=True)
class Repository:
    """What the repository holds and how far a restore can reach."""

    backups: list[Backup]
    wal_min: str | None
    wal_max: str | None
    #: The earliest point a restore can reach (the end of the oldest backup) and the latest
    #: (the last archived WAL segment's time, as the running cluster reports it).
    earliest: str | None
    latest: str | None
    #: Bytes on disk (None: not measured).
    size: int | None

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def take(settings: BackupSettings, kind: BackupType) -> tuple[Backup, float]:
    """A base backup of `kind`; pgBackRest expires what the retention no longer keeps (and
    the WAL only those needed). Returns it and the seconds it took."""
    pg = PgBackRest(settings)
    pg.write_config()
    started = time.monotonic()
    pg.checked("backup", f"--type={kind}", timeout=settings.backup_timeout)
    elapsed = time.monotonic() - started
    newest = pg.info().get("backup", [])
    if not newest:
        raise BackupError("pgbackrest backup succeeded but the repository lists no backup")
    return Backup.of(newest[-1]), elapsed


def expire(settings: BackupSettings) -> None:
    """Apply the retention now (pgBackRest also does after every backup)."""
    pg = PgBackRest(settings)
    pg.write_config()
    pg.checked("expire", timeout=settings.backup_timeout)


def repository(settings: BackupSettings, *, size: bool = True) -> Repository:
    """What the repository holds (`size`: also its bytes on disk, a walk of every file)."""
    pg = PgBackRest(settings)
    pg.write_config()
    info = pg.info()
    backups = [Backup.of(b) for b in info.get("backup", [])]
    archives = [a for a in info.get("archive", []) if a.get("min")]
    earliest = backups[0].reachable_from.isoformat() if backups else None
    return Repository(
        backups=backups,
        wal_min=min(a["min"] for a in archives) if archives else None,
        wal_max=max(a["max"] for a in archives) if archives else None,
        earliest=earliest,
        latest=asyncio.run(_last_archived(settings)) if backups else None,
        size=pg.repo_size() if size else None,
    )


async def _last_archived(settings: BackupSettings) -> str | None:
    """When the running cluster last archived a segment (None when it is not running)."""
    cluster = PostgresCluster(settings)
    if cluster.process() is None:
        return None
    conn = await cluster.superuser_connect()
    try:
        at = await conn.fetchval("SELECT last_archived_time FROM pg_stat_archiver")
    finally:
        await conn.close()
    return at.isoformat() if at else None


# -- restore -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Restored:
    """A cluster restored beside the running one, started and left for inspection."""

    into: str
    port: int
    target: str
    backup: str
    #: The commit time of the last transaction recovery replayed (None: none since the backup).
    last_transaction: str | None
    writable: bool
    seconds: float

    def line(self) -> str:
        if self.writable:
            mode = "writable"
        elif self.target == "latest":
            mode = "a read-only standby at the archive's end (--promote to write)"
        else:
            mode = "read-only, paused at the target (--promote to write)"
        return (
            f"restored {self.target} from backup {self.backup} into {self.into} in "
            f"{self.seconds:.1f} s: running on port {self.port}, {mode}; last transaction "
            f"recovered {self.last_transaction or 'none after the backup'}"
        )


def parse_target(text: str) -> datetime | None:
    """`latest` (None) or an ISO 8601 time; a time without a zone is UTC."""
    if text == "latest":
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise BackupError(
            f"--to {text!r} is neither `latest` nor an ISO 8601 time (e.g. 2026-12-01T17:30:00Z)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class _Restore:
    """One restore: checks, pgBackRest's restore, the new cluster started and watched."""

    def __init__(
        self,
        settings: BackupSettings,
        target: datetime | None,
        into: Path,
        port: int,
        progress: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.pg = PgBackRest(settings)
        self.cluster = self.pg.cluster
        self.target = target
        self.into = into.resolve()
        self.port = port
        self.log = self.into / "log" / "postgres.log"

    def check(self) -> Backup:
        """Refuse what cannot work before anything is written; the backup it starts from."""
        s = self.settings
        if self.into.exists() and (not self.into.is_dir() or any(self.into.iterdir())):
            raise BackupError(f"{self.into} is not an empty folder: restore into a new one")
        if port_open(s.pg_host, self.port) or port_open("127.0.0.1", self.port):
            raise BackupError(f"port {self.port} is taken: choose another with --port")
        self.pg.write_config()
        backups = [Backup.of(b) for b in self.pg.info().get("backup", [])]
        if not backups:
            raise BackupError("the repository holds no backup yet: `fleetpulse backup run`")
        if self.target is None:
            return backups[-1]
        earliest = backups[0].reachable_from
        if self.target < earliest:
            raise BackupError(
                f"{self.target.isoformat()} is before the earliest point a restore can reach, "
                f"{earliest.isoformat()} (the end of the oldest backup, {backups[0].label})"
            )
        return [b for b in backups if b.reachable_from <= self.target][-1]

    def options(self, promote: bool) -> list[str]:
        opts = [f"--pg1-path={self.into}", "--archive-mode=off"]
        if self.target is None:
            return [*opts, "--type=default" if promote else "--type=standby"]
        return [
            *opts,
            "--type=time",
            f"--target={self.target.isoformat(sep=' ')}",
            f"--target-action={'promote' if promote else 'pause'}",
        ]

    def run(self, promote: bool) -> Restored:
        backup = self.check()
        started = time.monotonic()
        created = not self.into.exists()
        self.into.mkdir(parents=True, exist_ok=True)
        self.cluster.chown(self.into, 0o700)
        self.cluster.ensure_traversable(self.into)
        try:
            say = self.progress
            say("archiving the running cluster's current WAL segment")
            asyncio.run(_archive_current_wal(self.cluster))
            say(f"restoring backup {backup.label} into {self.into}")
            self.pg.checked("restore", *self.options(promote), timeout=self.settings.backup_timeout)
            self._configure()
            say(f"starting it on port {self.port}; replaying the archived WAL")
            self._start()
            last, writable = asyncio.run(self._recovered(promote))
        except BaseException:
            self.undo(created)
            raise
        return Restored(
            into=str(self.into),
            port=self.port,
            target="latest" if self.target is None else self.target.isoformat(),
            backup=backup.label,
            last_transaction=last,
            writable=writable,
            seconds=time.monotonic() - started,
        )

    def _configure(self) -> None:
        """The restored copy of `fleetpulse.conf` names the running cluster's port, socket and
        TLS files: this one gets its own (a copy of the TLS files in DIR/tls, so it starts
        when the lost cluster's folder is gone too); the rest stays."""
        conf = self.into / "fleetpulse.conf"
        tls = self.cluster.install_tls(self.into / "tls")
        own = {
            "port": str(self.port),
            "unix_socket_directories": f"'{self.into}'",
            **tls,
            "archive_mode": "off",
            "hot_standby": "on",
        }
        lines = [
            ln
            for ln in conf.read_text().splitlines()
            if ln.split(" ", 1)[0] not in own and not ln.startswith("archive_")
        ]
        lines += [f"{k} = {v}" for k, v in own.items()]
        conf.write_text("\n".join(lines) + "\n")
        self.cluster.chown(conf, 0o600)
        self.log.parent.mkdir(exist_ok=True)
        self.cluster.chown(self.log.parent, 0o700)

    def _start(self) -> None:
        """Start it and wait until it accepts connections (it has replayed to a consistent
        point); raise with PostgreSQL's reason when it cannot."""
        timeout = str(int(self.settings.backup_timeout))
        argv = self.cluster.as_owner(
            str(self.cluster.bin / "pg_ctl"),
            *("-D", str(self.into), "-l", str(self.log), "-w", "-t", timeout, "start"),
        )
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise self._failure()

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=str(self.into), port=self.port, user="postgres", database="postgres"
        )

    def _failure(self) -> BackupError:
        """Why the restored cluster stopped: PostgreSQL's FATAL lines and pgBackRest's."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        fatal = [ln.split("FATAL:", 1)[1].strip() for ln in text.splitlines() if "FATAL:" in ln]
        missing = self._missing_wal()
        parts = [*fatal[-2:]]
        if missing:
            parts.append(missing)
        reason = "; ".join(parts) or f"it stopped; see {self.log}"
        return BackupError(f"the restored cluster did not recover: {reason}")

    def _missing_wal(self) -> str | None:
        """The WAL segment recovery wanted next and the repository does not have, with
        pgBackRest's own words about it (None when the next one is there)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        restored = _RESTORED.findall(text)
        if not restored:
            return None
        wanted = next_segment(restored[-1])
        probe = self.into / f".probe-{wanted}"
        result = self.pg.run("archive-get", "--log-level-console=info", wanted, str(probe))
        probe.unlink(missing_ok=True)
        if result.returncode == 0:
            return None
        said = [ln.split("INFO: ", 1)[1] for ln in result.stdout.splitlines() if wanted in ln]
        words = said[-1] if said else result.message
        return f"WAL segment {wanted} is missing from the repository (pgBackRest: {words})"

    def _wait_exit(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _running(self) -> bool:
        return find_process(read_pid(self.into / "postmaster.pid"), "postgres") is not None

    async def _recovered(self, promote: bool) -> tuple[str | None, bool]:
        """Wait until recovery has gone as far as it will; (last transaction, writable)."""
        deadline = time.monotonic() + self.settings.backup_timeout
        try:
            conn = await self._connect()
        except (OSError, asyncpg.PostgresError):
            raise self._failure() from None
        try:
            return await self._wait_recovery(conn, promote, deadline)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # It stopped while recovering (e.g. the target is past the WAL it could get).
            await asyncio.to_thread(self._wait_exit)
            raise self._failure() from None
        finally:
            conn.terminate()

    async def _wait_recovery(
        self, conn: asyncpg.Connection, promote: bool, deadline: float
    ) -> tuple[str | None, bool]:
        stable_since, last_lsn = time.monotonic(), None
        while time.monotonic() < deadline:
            if not self._running():
                raise self._failure()
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
            if not in_recovery:
                break
            if self.target is not None:
                state = await conn.fetchval("SELECT pg_get_wal_replay_pause_state()")
                if state == "paused" and not promote:
                    break
            else:
                # A standby: done once replay has stood still at the archive's end.
                lsn = await conn.fetchval("SELECT pg_last_wal_replay_lsn()")
                if lsn != last_lsn:
                    stable_since, last_lsn = time.monotonic(), lsn
                elif time.monotonic() - stable_since > 3 and not promote:
                    break
            await asyncio.sleep(0.3)
        else:
            raise BackupError("the restored cluster did not finish recovery in time")
        last = await conn.fetchval("SELECT pg_last_xact_replay_timestamp()")
        writable = not await conn.fetchval("SELECT pg_is_in_recovery()")
        return (last.isoformat() if last else None), writable

    def undo(self, created: bool) -> None:
        """Leave nothing behind: stop the new cluster, empty (or remove) its folder."""
        proc = find_process(read_pid(self.into / "postmaster.pid"), "postgres")
        if proc is not None:
            stop_process(proc, sig=signal.SIGINT, timeout=30)
        if created:
            shutil.rmtree(self.into, ignore_errors=True)
        else:
            for child in self.into.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


async def _archive_current_wal(cluster: PostgresCluster) -> None:
    """When the running cluster is up, close its current WAL segment and wait until it is
    archived, so a restore reaches the last commits (not the last `archive_timeout`)."""
    if cluster.process() is None:
        return
    try:
        conn = await cluster.superuser_connect()
    except (OSError, asyncpg.PostgresError):
        return
    try:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
            if done is not None and done >= segment:
                return
            await asyncio.sleep(0.2)
        raise BackupError(
            f"the running cluster did not archive WAL segment {segment} within 60 s; "
            "see `pgbackrest check` (`fleetpulse backup list` shows the archive)"
        )
    finally:
        await conn.close()


def restore(
    settings: BackupSettings,
    target: str,
    into: Path,
    port: int,
    *,
    promote: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> Restored:
    """Restore the repository to `target` (`latest` or a time) into a new cluster in `into`
    on `port`, start it and leave it running; `progress` hears each stage. On failure
    nothing is left behind."""
    return _Restore(settings, parse_target(target), into, port, progress).run(promote)


def stop_restored(into: Path) -> bool:
    """Stop a restored cluster (fast shutdown). True if it was running."""
    proc = find_process(read_pid(into / "postmaster.pid"), "postgres")
    if proc is None:
        return False
    stop_process(proc, sig=signal.SIGINT, timeout=60)
    return True
