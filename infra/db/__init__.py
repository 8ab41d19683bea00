"""Database migrations for FleetPulse (`fleetpulse db migrate`)."""

from infra.db.migrate import (
    Migration,
    MigrationError,
    MigrationReport,
    load_migrations,
    migrate,
    missing_tables,
)

__all__ = [
    "Migration",
    "MigrationError",
    "MigrationReport",
    "load_migrations",
    "migrate",
    "missing_tables",
]
