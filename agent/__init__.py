"""edge-agent: meter events in over ZeroMQ, out to the head-end by priority.

Nothing is dropped silently: every event is delivered, parked on disk, or (only
when memory and disk are both exhausted) evicted lowest class first and counted.
"""

__version__ = "0.1.0"
