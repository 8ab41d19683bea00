"""FleetPulse infra."""
