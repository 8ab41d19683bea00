"""`fleetpulse topics create`: makes the topics named in `schemas/topics.py`."""

from __future__ import annotations

from runtime.topics import TopicResult, create_topics

__all__ = ["TopicResult", "create_topics"]
