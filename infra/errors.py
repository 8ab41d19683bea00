"""The command line's expected failures: one line on stderr, exit status 1, no traceback."""


class FleetPulseError(RuntimeError):
    """Base of the errors the `fleetpulse` command reports as one line."""
