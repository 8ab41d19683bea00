"""pgBackRest for the local cluster: its configuration, its commands, its state.

`fleetpulse stack up` sets it up: a stanza for the cluster, whose `archive_command` pushes
WAL into the repository (`FLEETPULSE_BACKUP_REPO_PATH`, default `<home>/backups/pgbackrest`),
encrypted with aes-256-cbc under a key generated once into `<home>/secrets/`. pgBackRest runs
as the cluster's own user, like PostgreSQL; its configuration, which carries the key, belongs
to that user (mode 0600) and is written again from the settings before every command, like
the cluster's `fleetpulse.conf` (edits are lost).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import StackSettings
from infra.stack.postgres import STANZA, PostgresCluster
from infra.stack.process import StackError, secret_file

EXECUTABLE = "pgbackrest"


class BackupError(StackError):
    """pgBackRest refused or failed; the message carries pgBackRest's own."""


@dataclass(frozen=True)
class Result:
    """A pgBackRest command's exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        """pgBackRest's error lines (`ERROR: [code]: …`), else its last output line."""
        lines = [ln.strip() for ln in (self.stderr + "\n" + self.stdout).splitlines()]
        errors = [ln.split("ERROR: ", 1)[1] for ln in lines if "ERROR: " in ln]
        if errors:
            return "; ".join(errors)
        rest = [ln for ln in lines if ln]
        return rest[-1] if rest else f"exit status {self.returncode}"


class PgBackRest:
    """The local cluster's pgBackRest: configuration, stanza, commands, `info`."""

    def __init__(self, settings: StackSettings, cluster: PostgresCluster | None = None) -> None:
        self.settings = settings
        self.cluster = cluster or PostgresCluster(settings)
        self.dir = self.cluster.pgbackrest
        self.config = self.cluster.pgbackrest_config
        self.repo = settings.backup_repo
        self.key_path = settings.home_dir / "secrets" / "pgbackrest_key"
        #: The key as pgBackRest reads it: a configuration file of its own under secrets/,
        #: owned by the cluster's user (so the main configuration holds no secret).
        self.secret_dir = settings.home_dir / "secrets" / "pgbackrest"

    # -- configuration ---------------------------------------------------------------------
    def write_config(self) -> None:
        """(Re)write the configuration from the settings; make the folders it names."""
        s, c = self.settings, self.cluster
        for d in (self.dir, self.dir / "log", self.dir / "lock", self.repo):
            d.mkdir(parents=True, exist_ok=True)
            c.chown(d, 0o700)
        c.ensure_traversable(self.repo)
        key = secret_file(self.key_path, 48)
        # The cluster's user reaches secrets/pgbackrest/ only: secrets/ lets it pass, not list.
        secrets = self.key_path.parent
        secrets.chmod(0o711)
        self.secret_dir.mkdir(exist_ok=True)
        c.chown(self.secret_dir, 0o700)
        cipher = self.secret_dir / "cipher.conf"
        cipher.write_text(f"[global]\nrepo1-cipher-pass={key}\n")
        c.chown(cipher, 0o600)
        options = {
            "repo1-path": str(self.repo),
            "repo1-cipher-type": "aes-256-cbc",
            "repo1-retention-full": str(s.backup_retention_full),
            "repo1-retention-full-type": "count",
            "compress-type": s.backup_compress,
            "start-fast": "y",
            "process-max": "2",
            "log-path": str(self.dir / "log"),
            "lock-path": str(self.dir / "lock"),
            "log-level-console": "warn",
            "log-level-stderr": "off",
            "log-level-file": "info",
            **s.backup_options,
        }
        stanza = {
            "pg1-path": str(c.data),
            "pg1-port": str(s.pg_port),
            "pg1-socket-path": str(c.socket_dir),
            "pg1-user": "postgres",
        }
        text = "# Written by fleetpulse from FLEETPULSE_* settings; edits are lost.\n[global]\n"
        text += "".join(f"{k}={v}\n" for k, v in options.items())
        text += f"\n[{STANZA}]\n" + "".join(f"{k}={v}\n" for k, v in stanza.items())
        self.config.write_text(text)
        c.chown(self.config, 0o600)

    def config_options(self) -> list[str]:
        """Where every pgBackRest command finds its configuration and the key."""
        return [f"--config={self.config}", f"--config-include-path={self.secret_dir}"]

    # -- commands --------------------------------------------------------------------------
    def run(self, command: str, *options: str, timeout: float | None = None) -> Result:
        """One pgBackRest command, as the cluster's user; its status and output."""
        argv = self.cluster.as_owner(
            EXECUTABLE, *self.config_options(), f"--stanza={STANZA}", *options, command
        )
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise BackupError(
                "pgbackrest not found; install Debian's pgbackrest package "
                "(`infra/scripts/system-deps.sh` does)"
            ) from None
        except subprocess.TimeoutExpired:
            raise BackupError(
                f"pgbackrest {command} did not finish within {timeout:.0f} s"
            ) from None
        return Result(done.returncode, done.stdout, done.stderr)

    def checked(self, command: str, *options: str, timeout: float | None = None) -> str:
        """`run`, raising `BackupError` with pgBackRest's message when it fails."""
        result = self.run(command, *options, timeout=timeout)
        if result.returncode != 0:
            raise BackupError(f"pgbackrest {command}: {result.message}")
        return result.stdout

    def ensure(self) -> None:
        """The stanza exists and `pgbackrest check` passes (WAL reaches the repository).
        Safe to run again: an existing stanza that matches the cluster is left as it is."""
        self.write_config()
        self.checked("stanza-create", timeout=120)
        self.checked("check", timeout=120)

    def stanza_exists(self) -> bool:
        """Whether the repository has the stanza (and this home its configuration)."""
        return self.config.exists() and (self.repo / "backup" / STANZA / "backup.info").exists()

    def info(self) -> dict[str, Any]:
        """The stanza's entry of `pgbackrest info --output=json` (backups, archive)."""
        out = self.checked("info", "--output=json", timeout=60)
        try:
            stanzas = json.loads(out)
        except json.JSONDecodeError as exc:
            raise BackupError(f"pgbackrest info printed no JSON ({exc})") from None
        for entry in stanzas:
            if entry.get("name") == STANZA:
                status = entry.get("status", {})
                if status.get("code", 0) not in (0, 2):  # 2: no backup yet
                    raise BackupError(f"pgbackrest info: {status.get('message', 'error')}")
                return dict(entry)
        raise BackupError(f"pgbackrest knows no stanza {STANZA!r}; run `fleetpulse stack up`")

    def repo_size(self) -> int:
        """Bytes the repository holds on disk (backups and WAL)."""
        return sum(p.stat().st_size for p in Path(self.repo).rglob("*") if p.is_file())
