"""The backend interface: one small contract for torch, CUDA graphs, ONNX Runtime, TensorRT.

A backend runs the exported MTM function ``(x [B, T, D], mask [B, T, M]) -> y [B, T, D]`` (all
float32, normalised units, static B) and nothing else: normalisation, buffers, modes and limits
live in ``Policy``. Invariants every backend keeps:

* ``run`` accepts C-contiguous float32 arrays of exactly ``input_shapes`` and returns a float32
  array of ``output_shape``. The returned array may be a buffer the backend reuses on the next
  call: copy what you keep.
* ``warmup`` has run before the first real call (constructors call it), so the first control
  step is not the slow one.
* Nothing in ``run`` allocates new numpy arrays in steady state where the backend allows it
  (torch CPU: preallocated output, ONNX Runtime: IO binding, TensorRT: pinned buffers).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from mtm_runtime.fingerprint import FP32_TOLERANCE
from mtm_runtime.spec import TrajectorySpec


class BackendError(RuntimeError):
    """A backend could not be created or failed to run; the message says which and why."""


class Backend(ABC):
    #: registry name, e.g. "torch", "onnxruntime"
    name: str = "?"
    #: how far this backend's outputs may be from the fp32 PyTorch model's (max abs, normalised
    #: units): the bound its behavioural fingerprint check uses (``mtm_runtime.fingerprint``)
    output_tolerance: float = FP32_TOLERANCE

    def __init__(self, spec: TrajectorySpec, batch_size: int = 1) -> None:
        self.spec = spec
        self.batch_size = int(batch_size)
        self.input_shapes = {"x": (self.batch_size, spec.horizon, spec.packed_width),
                             "mask": (self.batch_size, spec.horizon, spec.num_modalities)}
        self.output_shape = (self.batch_size, spec.horizon, spec.packed_width)

    @abstractmethod
    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Forward pass; see the module docstring for the contract."""

    def warmup(self, n: int = 10) -> None:
        """Run ``n`` forward passes on zeros with an all-visible mask."""
        x = np.zeros(self.input_shapes["x"], np.float32)
        m = np.ones(self.input_shapes["mask"], np.float32)
        for _ in range(n):
            self.run(x, m)

    def describe(self) -> dict[str, object]:
        """What ran: name, device, providers ... (for diagnostics and benchmark JSON)."""
        return {"backend": self.name, "batch_size": self.batch_size}

    def close(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing to release
        """Release device resources (idempotent)."""
