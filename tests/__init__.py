"""FleetPulse tests."""
