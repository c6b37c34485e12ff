"""Latency and loop statistics for control loops (no ROS import).

* ``LatencyRing``: the newest ``capacity`` samples (seconds) in a preallocated float64 ring.
  ``add()`` writes one slot and allocates nothing; ``summary()`` (called at report rate, e.g.
  1 Hz) sorts a preallocated scratch copy and reads nearest-rank percentiles.
* ``RateMeter``: achieved loop rate (Hz) from the timestamps of the last ``capacity`` ticks.
* ``LoopStats``: the counters a control loop reports, plus the rings above.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles over the samples in the window, in seconds (NaN when empty)."""

    count: int
    p50: float
    p99: float
    max: float

    def as_ms(self) -> dict[str, float]:
        return {"p50_ms": self.p50 * 1e3, "p99_ms": self.p99 * 1e3, "max_ms": self.max * 1e3}


class LatencyRing:
    """Fixed-size ring of latency samples (s). Invariant: memory is allocated once, in __init__."""

    def __init__(self, capacity: int = 2048) -> None:
        import numpy as np

        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float64)
        self._scratch = np.zeros(self.capacity, dtype=np.float64)
        self._next = 0
        self._count = 0  # samples ever added (the window holds min(count, capacity))

    def add(self, seconds: float) -> None:
        """Record one sample (seconds). O(1), no allocation."""
        self._buf[self._next] = seconds
        self._next = (self._next + 1) % self.capacity
        self._count += 1

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    @property
    def total(self) -> int:
        """Samples ever added (not only those still in the window)."""
        return self._count

    def clear(self) -> None:
        self._next = 0
        self._count = 0

    def summary(self) -> LatencySummary:
        n = len(self)
        if n == 0:
            nan = math.nan
            return LatencySummary(0, nan, nan, nan)
        s = self._scratch[:n]
        s[:] = self._buf[:n]
        s.sort()

        def rank(q: float) -> float:  # nearest-rank percentile
            return float(s[min(n - 1, max(0, math.ceil(q * n) - 1))])

        return LatencySummary(n, rank(0.50), rank(0.99), float(s[n - 1]))


class RateMeter:
    """Achieved rate (Hz) over the last ``capacity`` ticks, from a monotonic clock."""

    def __init__(self, capacity: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        import numpy as np

        self.capacity = int(capacity)
        self._t = np.zeros(self.capacity, dtype=np.float64)
        self._next = 0
        self._count = 0
        self._clock = clock

    def tick(self, now: float | None = None) -> None:
        self._t[self._next] = self._clock() if now is None else now
        self._next = (self._next + 1) % self.capacity
        self._count += 1

    def clear(self) -> None:
        self._next = 0
        self._count = 0

    def rate_hz(self, now: float | None = None, stale_after_s: float = 2.0) -> float:
        """Ticks per second over the window; 0.0 if fewer than 2 ticks or none for ``stale_after_s``."""
        n = min(self._count, self.capacity)
        if n < 2:
            return 0.0
        newest = self._t[(self._next - 1) % self.capacity]
        oldest = self._t[self._next % self.capacity] if self._count >= self.capacity else self._t[0]
        now = self._clock() if now is None else now
        if now - newest > stale_after_s or newest <= oldest:
            return 0.0
        return (n - 1) / (newest - oldest)


@dataclass
class LoopStats:
    """Counters and latency windows of one control loop (all times in seconds)."""

    states_in: int = 0          # states that reached the loop while active (valid or not)
    ticks: int = 0              # steps that produced a command from the policy
    published: int = 0          # commands published (policy or fault)
    overruns: int = 0           # act() took longer than the control period
    stale_ticks: int = 0        # ticks answered with the fault action because input was stale
    rejected_inputs: int = 0    # states refused by validation (NaN/Inf/size)
    act_errors: int = 0         # act() raised
    faults: int = 0             # fault actions published (any reason)
    episode_resets: int = 0     # policy history resets (service, long gap)
    saturated_steps: int = 0    # commands pinned at a limit for longer than saturation_s
    stale_chunks: int = 0       # chunked loop: ticks no fresh chunk covered (model thread stalled)
    model_mismatches: int = 0   # world-model monitor: alarms (residual over threshold)
    last_fault_reason: str = ""
    act_latency: LatencyRing = field(default_factory=LatencyRing)
    e2e_latency: LatencyRing = field(default_factory=LatencyRing)
    beyond_act_latency: LatencyRing = field(default_factory=LatencyRing)  # e2e minus act of the same step
    rate: RateMeter = field(default_factory=RateMeter)

    def fault(self, reason: str) -> None:
        self.faults += 1
        self.last_fault_reason = reason

    def report(self) -> dict[str, object]:
        """What diagnostics show: achieved rate, act/e2e latency percentiles (ms), the counters."""
        vals: dict[str, object] = {"rate_hz": self.rate.rate_hz()}
        for prefix, ring in (("act", self.act_latency), ("e2e", self.e2e_latency), ("beyond_act", self.beyond_act_latency)):
            vals.update({f"{prefix}_{k}": v for k, v in ring.summary().as_ms().items()})
        vals.update(self.counters())
        return vals

    def counters(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("states_in", "ticks", "published", "overruns", "stale_ticks",
                                              "rejected_inputs", "act_errors", "faults", "episode_resets",
                                              "saturated_steps", "stale_chunks", "model_mismatches")}
