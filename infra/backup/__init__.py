"""Backups of the local cluster: pgBackRest's base backups and WAL archive (point-in-time
restore), daily `pg_dump` files, and the schedule that takes both (`fleetpulse backup`)."""
