"""The host agent: samples this host with psutil at 1 Hz."""

from producers.agent.agent import Agent, sample_once
from producers.agent.host import HostSampler

__all__ = ["Agent", "HostSampler", "sample_once"]
