"""Settings of the backup commands and `fleetpulse backup schedule`."""

from __future__ import annotations

from datetime import time
from pathlib import Path

from pydantic import Field

from infra.settings import StackSettings
from runtime.settings import ServiceSettings


class BackupSettings(StackSettings, ServiceSettings):
    """Backups of the local cluster: pgBackRest's (the stack's settings) and the daily dumps."""

    backup_dump_path: Path | None = Field(
        default=None,
        description="Folder of the daily `pg_dump -Fc` files; default `<home>/backups/dumps`.",
    )
    backup_dumps_keep: int = Field(default=7, ge=1, description="Daily dumps kept (the newest).")
    backup_daily_at: time = Field(
        default=time(1, 0),
        description="UTC time of day of the scheduled full backup and dump (HH:MM).",
    )
    backup_diff_every: float = Field(
        default=6.0,
        ge=0,
        description="Hours between the scheduled differential backups; 0 = none.",
    )
    backup_timeout: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="Seconds one backup, dump or restore may take before it is abandoned.",
    )
    metrics_port: int = Field(
        default=9475,
        ge=0,
        le=65535,
        description="Port of /metrics and /health; 0 = off.",
    )

    @property
    def dumps(self) -> Path:
        """The dumps' folder."""
        return self.backup_dump_path or self.home_dir / "backups" / "dumps"
