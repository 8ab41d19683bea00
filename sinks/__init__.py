"""FleetPulse sinks: the aggregate topics into TimescaleDB / PostgreSQL, retention, read path."""

from sinks.maintenance import MaintenanceReport, maintain
from sinks.read import STEPS, ReadError, SeriesPoint, read_series
from sinks.service import Sink
from sinks.settings import SinkSettings

__all__ = [
    "STEPS",
    "MaintenanceReport",
    "ReadError",
    "SeriesPoint",
    "Sink",
    "SinkSettings",
    "maintain",
    "read_series",
]
