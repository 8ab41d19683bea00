"""What every FleetPulse service shares beneath its own logic: settings bases, Kafka clients,
retries, the service lifecycle, the error root, telemetry. Imports nothing else of ours but
the contract (`schemas/`)."""
