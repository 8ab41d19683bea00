"""FleetPulse sinks."""
