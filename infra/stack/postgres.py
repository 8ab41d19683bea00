"""The local PostgreSQL 15 cluster: initdb'd under `<home>/postgres/`, TLS on, WAL archived
by pgBackRest (`infra/stack/pgbackrest.py`).

PostgreSQL refuses to run as root, so when the stack is started by root the cluster belongs
to an unprivileged system user (`FLEETPULSE_PG_OS_USER`, default `postgres`) and every server
command runs through `runuser`.

The database has one login role per service (README, *Database roles*): the owner, who runs
the migrations, and the sink's, the registry's and the read-only role. `stack up` creates them
with generated passwords in `<home>/secrets/pg/<role>` (0600), as the superuser over the
private socket; `rotate_password` gives one a new password. A password reaches PostgreSQL only
as its SCRAM verifier, so not even the server's log of a failed statement can hold it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import stat
from pathlib import Path

import asyncpg
import psutil

from infra.settings import StackSettings
from infra.stack.process import (
    ComponentStatus,
    StackError,
    find_process,
    port_open,
    read_pid,
    run_checked,
    secret_file,
    stop_process,
    wait_until,
)
from infra.stack.tls import ensure_certificates, issue
from runtime.settings import SERVICE_ROLES, role_password_path

_DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
_MARKER = "postgres"
#: The local cluster's pgBackRest stanza (`infra/stack/pgbackrest.py`).
STANZA = "fleetpulse"


class PostgresCluster:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.dir = settings.home_dir / "postgres"
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        #: pgBackRest's configuration (with the repository's key), log and lock folders.
        self.pgbackrest = self.dir / "pgbackrest"
        self.pgbackrest_config = self.pgbackrest / "pgbackrest.conf"
        self.server_tls = self.dir / "tls"
        self.log = self.dir / "log" / "postgres.log"
        self.bin = Path(settings.pg_bin_dir) if settings.pg_bin_dir else _DEBIAN_BIN

    # -- who runs it -----------------------------------------------------------------------
    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _owner(self) -> pwd.struct_passwd:
        if not self._as_root:
            return pwd.getpwuid(os.geteuid())
        try:
            return pwd.getpwnam(self.settings.pg_os_user)
        except KeyError:
            raise StackError(
                f"system user {self.settings.pg_os_user!r} does not exist; PostgreSQL cannot run "
                "as root (install Debian's postgresql-15 package, which creates it, or set "
                "FLEETPULSE_PG_OS_USER)"
            ) from None

    def _cmd(self, tool: str, *args: str) -> list[str]:
        exe = self.bin / tool
        if not exe.exists():
            raise StackError(
                f"{exe} not found; install Debian's postgresql-15 package "
                "or set FLEETPULSE_PG_BIN_DIR"
            )
        return self.as_owner(str(exe), *args)

    def as_owner(self, *argv: str) -> list[str]:
        """`argv` run as the cluster's user (through `runuser` when this is root)."""
        if self._as_root:
            return ["runuser", "-u", self.settings.pg_os_user, "--", *argv]
        return list(argv)

    def chown(self, path: Path, mode: int) -> None:
        """Give `path` to the cluster's user, with `mode`."""
        owner = self._owner()
        os.chown(path, owner.pw_uid, owner.pw_gid)
        path.chmod(mode)

    def ensure_traversable(self, path: Path | None = None) -> None:
        """Let the cluster's user reach its folder (or `path`): add o+x to ancestors that
        lack it.

        A checkout under `mktemp -d` (mode 0700, owned by root) is the usual case.
        """
        if not self._as_root:
            return
        target = path or self.dir
        target.mkdir(parents=True, exist_ok=True)
        for parent in reversed(target.parents):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    # -- secrets and config ----------------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        """The login roles the stack keeps: the owner (`pg_user`), then the services'."""
        return (self.settings.pg_user, *SERVICE_ROLES)

    def password_file(self, role: str) -> Path:
        """Where the password of `role` is kept (the owner's: `pg_password_file` if set)."""
        if role == self.settings.pg_user:
            return self.settings.password_path
        return role_password_path(self.settings.home_dir, role)

    def adopt_legacy_password(self) -> None:
        """Move the owner's password from where earlier releases kept it,
        `<home>/secrets/pg_password`, to `<home>/secrets/pg/<owner>` (once; a password
        already there wins)."""
        legacy = self.settings.home_dir / "secrets" / "pg_password"
        target = self.settings.password_path
        if self.settings.pg_password_file is not None or target.exists() or not legacy.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o700)
        os.rename(legacy, target)

    def _init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.ensure_traversable()
        for d in (
            self.dir,
            self.socket_dir,
            self.server_tls,
            self.log.parent,
        ):
            d.mkdir(parents=True, exist_ok=True)
            self.chown(d, 0o700)
        run_checked(
            self._cmd(
                "initdb",
                "-D",
                str(self.data),
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums",
            ),
            what="initdb",
        )

    def _write_config(self) -> bool:
        """Write the cluster's configuration from the settings; True if `fleetpulse.conf`
        changed."""
        s = self.settings
        tls = self.install_tls(self.server_tls)
        # Each segment into the pgBackRest repository, which refuses a second, different copy.
        archive_cmd = (
            f"pgbackrest --config={self.pgbackrest_config} "
            f"--config-include-path={self.settings.home_dir / 'secrets' / 'pgbackrest'} "
            f"--stanza={STANZA} archive-push %p"
        )
        conf = {
            "listen_addresses": f"'{s.pg_host}'",
            "port": str(s.pg_port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            "shared_buffers": "'256MB'",
            "password_encryption": "'scram-sha-256'",
            "ssl": "on",
            **tls,
            "ssl_min_protocol_version": "'TLSv1.2'",
            # Seed: continuous WAL archiving with a 5-minute recovery point objective.
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"'{archive_cmd}'",
            "archive_timeout": str(s.wal_archive_timeout),
            "log_timezone": "'UTC'",
            "timezone": "'UTC'",
        }
        text = "# Written by `fleetpulse stack up` from FLEETPULSE_* settings; edits are lost.\n"
        text += "".join(f"{k} = {v}\n" for k, v in conf.items())
        ours = self.data / "fleetpulse.conf"
        changed = not ours.exists() or ours.read_text() != text
        self._write_owned(ours, text)
        main_conf = self.data / "postgresql.conf"
        include = "include_if_exists = 'fleetpulse.conf'\n"
        if include not in main_conf.read_text():
            with main_conf.open("a") as f:
                f.write("\n" + include)
        hba = (
            "# Written by `fleetpulse stack up`; edits are lost.\n"
            "# The socket folder is mode 0700: only the cluster's user (and root) reach it.\n"
            "local   all  postgres                 trust\n"
            "local   all  all                      scram-sha-256\n"
            "hostssl all  all       127.0.0.1/32   scram-sha-256\n"
            "hostssl all  all       ::1/128        scram-sha-256\n"
            "hostnossl all all      all            reject\n"
        )
        self._write_owned(self.data / "pg_hba.conf", hba)
        return changed

    def install_tls(self, folder: Path) -> dict[str, str]:
        """The server's certificate, key and CA (generated under `<home>/tls/` once) copied
        into `folder` for the server's user (its key must be theirs, mode 0600); the
        settings that name them."""
        tls = ensure_certificates(self.settings.home_dir / "tls")
        folder.mkdir(parents=True, exist_ok=True)
        self.chown(folder, 0o700)
        for src in (tls.server_cert, tls.server_key, tls.ca_cert):
            dst = folder / src.name
            shutil.copyfile(src, dst)
            self.chown(dst, 0o600)
        return {
            "ssl_cert_file": f"'{folder / tls.server_cert.name}'",
            "ssl_key_file": f"'{folder / tls.server_key.name}'",
            "ssl_ca_file": f"'{folder / tls.ca_cert.name}'",
        }

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        self.chown(path, 0o600)

    # -- lifecycle -------------------------------------------------------------------------
    def process(self) -> psutil.Process | None:
        return find_process(read_pid(self.data / "postmaster.pid"), _MARKER)

    def healthy(self) -> bool:
        """True when the application role can log in over TLS and run a query."""
        if not port_open(self.settings.pg_host, self.settings.pg_port):
            return False
        return asyncio.run(_query_ok(self.settings))

    def start(self) -> bool:
        """Initialise on first use, start unless running, make the login roles (every time:
        a running cluster of an earlier release gets them too), wait until healthy."""
        self.adopt_legacy_password()
        if self.process() is not None:
            if self._write_config():
                # A cluster started by an earlier release (its archive_command, …): the
                # settings that need no restart apply at once.
                run_checked(self._cmd("pg_ctl", "-D", str(self.data), "reload"), what="reload")
            asyncio.run(self._bootstrap_roles())
            wait_until(
                self.healthy,
                timeout=self.settings.pg_start_timeout,
                what="PostgreSQL",
                log=self.log,
            )
            return False
        s = self.settings
        if port_open(s.pg_host, s.pg_port):
            raise StackError(
                f"port {s.pg_host}:{s.pg_port} is taken by a process this stack did not start; "
                "stop it or choose another port (FLEETPULSE_PG_PORT)"
            )
        self._init()
        self._write_config()
        run_checked(
            self._cmd(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(s.pg_start_timeout)),
                "start",
            ),
            what="starting PostgreSQL",
        )
        asyncio.run(self._bootstrap_roles())
        wait_until(self.healthy, timeout=s.pg_start_timeout, what="PostgreSQL", log=self.log)
        return True

    async def superuser_connect(self, database: str = "postgres") -> asyncpg.Connection:
        """The cluster's superuser over its private socket (root or the cluster's user only)."""
        return await asyncpg.connect(
            host=str(self.socket_dir),
            port=self.settings.pg_port,
            user="postgres",
            database=database,
        )

    async def _bootstrap_roles(self) -> None:
        """Create or update the login roles and create the database (idempotent), as the
        local superuser; then grant each role its privileges in a migrated database."""
        s = self.settings
        conn = await self.superuser_connect()
        try:
            for role in self.roles:
                await _set_password(conn, role, secret_file(self.password_file(role)))
            if not await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", s.pg_database
            ):
                db = await conn.fetchval("SELECT quote_ident($1)", s.pg_database)
                owner = await conn.fetchval("SELECT quote_ident($1)", s.pg_user)
                await conn.execute(f"CREATE DATABASE {db} OWNER {owner}")
        finally:
            await conn.close()
        # Roles made after the migrations ran get their grants (migration 0005's function).
        conn = await self.superuser_connect(s.pg_database)
        try:
            if await conn.fetchval("SELECT to_regprocedure('fleetpulse_grant_roles()')"):
                await conn.execute("SELECT fleetpulse_grant_roles()")
        finally:
            await conn.close()

    async def rotate_password(self, role: str) -> Path:
        """Give `role` a new generated password; returns its file.

        The new password is written beside the role's file first (0600), set with ALTER ROLE
        as the superuser, then moved over the file in one rename: connections opened after
        that read it (the services read the file at each new connection); open ones go on.
        Neither the password nor its verifier is logged or put in an error.
        """
        if role not in self.roles:
            raise StackError(
                f"{role!r} is not one of the stack's database roles ({', '.join(self.roles)})"
            )
        path = self.password_file(role)
        if not path.exists():
            raise StackError(f"{role} has no password file yet ({path}): run `fleetpulse stack up`")
        pending = path.with_name(f".{path.name}.new")
        pending.unlink(missing_ok=True)
        password = secrets.token_urlsafe(24)
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
            f.flush()
            os.fsync(f.fileno())
        try:
            conn = await self.superuser_connect()
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                    raise StackError(f"role {role} does not exist: run `fleetpulse stack up`")
                await _set_password(conn, role, password)
            finally:
                await conn.close()
        except BaseException:
            pending.unlink(missing_ok=True)
            raise
        os.replace(pending, path)
        return path

    def rotate_certificate(self) -> bool:
        """Issue the server a new certificate from the CA; a running server reloads it (new
        connections get it, open ones keep theirs). True if it was running."""
        issue(self.settings.home_dir / "tls", "server", force=True)
        self._write_config()
        if self.process() is None:
            return False
        run_checked(self._cmd("pg_ctl", "-D", str(self.data), "reload"), what="reload")
        return True

    def stop(self) -> bool:
        """Stop the postmaster by PID with a fast shutdown (SIGINT). True if it was running."""
        proc = self.process()
        if proc is None:
            return False
        stop_process(proc, sig=signal.SIGINT, timeout=60)
        return True

    def status(self) -> ComponentStatus:
        proc = self.process()
        address = f"{self.settings.pg_host}:{self.settings.pg_port}"
        if proc is None:
            initialised = (self.data / "PG_VERSION").exists()
            detail = f"data in {self.data}" if initialised else "not initialised yet"
            return ComponentStatus("postgres", False, None, address, detail)
        detail = "healthy (TLS)" if self.healthy() else "starting or unhealthy"
        return ComponentStatus(
            "postgres", True, proc.pid, address, f"{detail}, data in {self.data}"
        )


async def rotate_password(settings: StackSettings, role: str) -> Path:
    """Give the stack's database role `role` a new generated password (see
    `PostgresCluster.rotate_password`); returns the file that holds it."""
    return await PostgresCluster(settings).rotate_password(role)


#: Iterations of PostgreSQL's own SCRAM-SHA-256 verifiers (`scram_iterations`' default).
_SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), as
    `ALTER ROLE … PASSWORD` accepts it: the server never sees the password itself.

    The generated passwords are ASCII, which SASLprep leaves as it is."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def _set_password(conn: asyncpg.Connection, role: str, password: str) -> None:
    """Create `role` (a login role without any other attribute) or set its password, as the
    superuser on `conn`."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    # Role names and passwords cannot be bind parameters in DDL; quote them instead.
    name = await conn.fetchval("SELECT quote_ident($1)", role)
    verifier = await conn.fetchval("SELECT quote_literal($1)", scram_verifier(password))
    if exists:
        await conn.execute(f"ALTER ROLE {name} LOGIN PASSWORD {verifier}")
    else:
        await conn.execute(
            f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
            f"NOBYPASSRLS PASSWORD {verifier}"
        )


async def _query_ok(settings: StackSettings) -> bool:
    try:
        conn = await asyncpg.connect(**settings.connect_kwargs())
    except Exception:
        return False
    try:
        return bool(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()
