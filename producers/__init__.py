"""FleetPulse producers."""
