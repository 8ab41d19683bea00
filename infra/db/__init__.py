"""Database migrations for FleetPulse (`fleetpulse db migrate`)."""

from infra.db.migrate import (
    DatabaseUnavailable,
    Migration,
    MigrationError,
    MigrationReport,
    connect,
    load_migrations,
    migrate,
)

__all__ = [
    "DatabaseUnavailable",
    "Migration",
    "MigrationError",
    "MigrationReport",
    "connect",
    "load_migrations",
    "migrate",
]
