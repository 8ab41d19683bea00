"""FleetPulse streams."""
