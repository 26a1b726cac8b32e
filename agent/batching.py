"""When to publish, per class: the batching policy (pure, fake-clock tested).

Critical events never wait: any queued critical event is due at once. Other
classes wait for a full batch (`batch_max_events` or `batch_max_bytes`) but no
longer than `linger_ms` after the oldest of them became publishable, so a
trickle still flows with bounded delay while a flood travels in few, large
messages (one send per ~256 events is what lets the agent keep up with 500k
events/s; one send per event cost ~4x in an early measurement).
"""

from __future__ import annotations

import dataclasses

from agent.classes import EventClass


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    max_events: int = 256
    max_bytes: int = 64 * 1024
    linger_s: float = 0.005

    def wait_s(self, cls: int, events: int, nbytes: int, waited_s: float) -> float | None:
        """Seconds until the class is due: 0.0 = publish now, None = nothing queued."""
        if events <= 0:
            return None
        if cls == EventClass.CRITICAL or events >= self.max_events or nbytes >= self.max_bytes:
            return 0.0
        return max(0.0, self.linger_s - waited_s)

    def due(self, cls: int, events: int, nbytes: int, waited_s: float) -> bool:
        return self.wait_s(cls, events, nbytes, waited_s) == 0.0
