"""The host agent: samples this host with psutil at 1 Hz."""

from producers.agent.agent import Agent, run_agent, sample_once
from producers.agent.host import HostSampler

__all__ = ["Agent", "HostSampler", "run_agent", "sample_once"]
