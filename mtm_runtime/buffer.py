"""TrajectoryBuffer: the last T steps of every modality, preallocated, right-aligned.

Storage is a ring of T rows in the packed layout (normalised units) plus a ring of availability
flags ``[T, M]`` (1 where that modality was written at that step). ``window()`` lays the ring out
oldest -> newest into preallocated arrays ``x [1, T, D]`` and ``available [1, T, M]`` with the
newest step at ``t = T-1``. Positions before the episode's first step are unavailable, so a short
history is simply hidden (DESIGN.md core idea 3) — no zero padding the model never saw.

Invariants: no numpy allocation in ``begin_step``/``write``/``window`` (all copies go into
preallocated arrays); push is O(1) (one row); ``window`` is O(T*D).
"""
from __future__ import annotations

import numpy as np

from mtm_runtime.normalise import Normaliser
from mtm_runtime.spec import TrajectorySpec


class TrajectoryBuffer:
    def __init__(self, spec: TrajectorySpec, normaliser: Normaliser) -> None:
        self.spec, self.normaliser = spec, normaliser
        T, D, M = spec.horizon, spec.packed_width, spec.num_modalities
        self._ring = np.zeros((T, D), np.float32)
        self._ring_avail = np.zeros((T, M), np.float32)
        self._x = np.zeros((1, T, D), np.float32)
        self._avail = np.zeros((1, T, M), np.float32)
        self._slices = {n: spec.slice(n) for n in spec.names}
        self._cols = {n: spec.index(n) for n in spec.names}
        self._head = 0          # ring row of the current (newest) step
        self.steps = 0          # steps pushed since reset()

    def reset(self) -> None:
        """Start a new episode: no history."""
        self._ring_avail.fill(0.0)
        self._ring.fill(0.0)
        self._head = 0
        self.steps = 0

    @property
    def history_len(self) -> int:
        """Steps in the window that hold data (<= T)."""
        return min(self.steps, self.spec.horizon)

    def begin_step(self) -> None:
        """Advance to a new time step; every modality of it starts unavailable."""
        if self.steps:
            self._head = (self._head + 1) % self.spec.horizon
        self._ring_avail[self._head].fill(0.0)
        self._ring[self._head].fill(0.0)
        self.steps += 1

    def write(self, name: str, value: np.ndarray, normalised: bool = False) -> None:
        """Write modality ``name`` of the current step (raw units unless ``normalised``)."""
        if self.steps == 0:
            raise RuntimeError("TrajectoryBuffer.write before begin_step()")
        row = self._ring[self._head, self._slices[name]]
        if normalised:
            np.copyto(row, value)
        else:
            np.subtract(value, self.normaliser.mean[name], out=row)
            np.divide(row, self.normaliser.std[name], out=row)
        self._ring_avail[self._head, self._cols[name]] = 1.0

    def read(self, name: str, age: int = 0) -> np.ndarray:
        """Normalised value of ``name`` ``age`` steps ago (a view; 0 = current step)."""
        return self._ring[(self._head - age) % self.spec.horizon, self._slices[name]]

    @property
    def available(self) -> np.ndarray:
        """``[1, T, M]`` availability of the last ``window()`` (the array it returned)."""
        return self._avail

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x [1, T, D], available [1, T, M])``, oldest -> newest, newest at T-1. The arrays
        are reused by the next call."""
        T = self.spec.horizon
        k = (self._head + 1) % T  # ring row of the oldest step in the window
        n = T - k
        self._x[0, :n] = self._ring[k:]
        self._x[0, n:] = self._ring[:k]
        self._avail[0, :n] = self._ring_avail[k:]
        self._avail[0, n:] = self._ring_avail[:k]
        return self._x, self._avail
