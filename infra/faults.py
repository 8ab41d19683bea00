"""The faults `fleetpulse drill` injects (`infra/drill.py`), in a module of their own: the
command line lists them without importing the drill and its clients."""

from __future__ import annotations

#: The faults a drill can inject, in the order `all` runs them.
FAULTS = (
    "stream",
    "sink",
    "registry",
    "broker-leader",
    "broker-controller",
    "postgres",
    "agent",
)
