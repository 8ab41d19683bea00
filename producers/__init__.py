"""FleetPulse producers: the producer library, the host agent and the fleet simulator.

The public API for new producers is `MetricProducer` with `ProducerSettings`.
"""

from producers.client import InvalidEvent, MetricProducer, ProducerStats
from producers.settings import AgentSettings, ProducerSettings, SimulatorSettings

__all__ = [
    "AgentSettings",
    "InvalidEvent",
    "MetricProducer",
    "ProducerSettings",
    "ProducerStats",
    "SimulatorSettings",
]
