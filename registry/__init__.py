"""FleetPulse registry."""
