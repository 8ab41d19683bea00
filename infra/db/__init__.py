"""Database migrations for FleetPulse (`fleetpulse db migrate`)."""

from infra.db.migrate import (
    DatabaseUnavailable,
    Migration,
    MigrationError,
    MigrationReport,
    connect,
    load_migrations,
    migrate,
    missing_tables,
)

__all__ = [
    "DatabaseUnavailable",
    "Migration",
    "MigrationError",
    "MigrationReport",
    "connect",
    "load_migrations",
    "migrate",
    "missing_tables",
]
