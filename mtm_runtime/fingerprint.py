"""Behavioural fingerprint: what the model outputs on fixed, seeded inputs under every mask mode.

Recorded when an artefact is written (``save_checkpoint``, ``export_onnx``; an engine sidecar
carries its ONNX file's) as the ``fingerprint`` metadata field, which the integrity digest
covers::

    {"seed": 24, "inputs_per_mode": 2, "modes": ["bc", "rcbc", ...], "rows": 4,
     "y": [[...], ...]}     # one list per (mode, input): y[0, -rows:, :] flattened, 8 digits

and checked at load by running the same inputs through the *loaded backend*
(``check_fingerprint``): a file whose outputs differ by more than the backend's tolerance is
refused. This catches a graph that is not the model its metadata claims, even when whoever made
it recomputed the digest (only a signature stops someone who also recomputes the fingerprint).

Inputs: ``x`` standard normal from ``numpy.random.default_rng(seed)`` (PCG64: the same numbers
on every platform), drawn mode by mode in the recorded order; the mask is the mode's
``masks.mode_mask``. Tolerances (max abs difference, normalised units): fp32 backends
``FP32_TOLERANCE``; int8 ONNX Runtime ``onnx_int8.INT8_TOLERANCE``; TensorRT fp16
``engine_sidecar.FP16_TOLERANCE`` (set on the backend as ``output_tolerance``).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import numpy as np
import torch

from mtm_runtime import masks as mk
from mtm_runtime.integrity import CheckpointError
from mtm_runtime.spec import TrajectorySpec

FIELD = "fingerprint"
SEED = 24
INPUTS_PER_MODE = 2
MAX_ROWS = 4  # the newest time steps stored per case (all of them for T <= 4)
DIGITS = 8
FP32_TOLERANCE = 1e-4

#: x [B, T, D], mask [B, T, M] -> y [B, T, D]
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def torch_runner(model: torch.nn.Module) -> Runner:
    """A Runner over an MTM module (static path, inference mode)."""
    def run(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    return run


def cases(spec: TrajectorySpec, modes: tuple[str, ...], seed: int = SEED,
          inputs_per_mode: int = INPUTS_PER_MODE) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, x [1, T, D], mask [1, T, M]) for each mode and input, in recording order."""
    rng = np.random.default_rng(seed)
    out = []
    for mode in modes:
        m = np.ascontiguousarray(mk.mode_mask(spec, mode)[None], dtype=np.float32)
        for i in range(inputs_per_mode):
            x = rng.standard_normal((1, spec.horizon, spec.packed_width)).astype(np.float32)
            out.append((f"{mode}:{i}", x, m))
    return out


def _batched(a: np.ndarray, batch_size: int) -> np.ndarray:
    return np.broadcast_to(a, (batch_size, *a.shape[1:])).copy()


def record_fingerprint(run: Runner, spec: TrajectorySpec, batch_size: int = 1) -> dict[str, Any]:
    """Run the fingerprint inputs through ``run`` and return the ``fingerprint`` field."""
    modes = mk.available_modes(spec)
    rows = min(MAX_ROWS, spec.horizon)
    ys = []
    for _label, x, m in cases(spec, modes):
        y = np.asarray(run(_batched(x, batch_size), _batched(m, batch_size)))[0, -rows:]
        ys.append([float(f"{v:.{DIGITS}g}") for v in y.reshape(-1).tolist()])
    return {"seed": SEED, "inputs_per_mode": INPUTS_PER_MODE, "modes": list(modes), "rows": rows, "y": ys}


def _int_in(fp: Mapping[str, Any], key: str, lo: int, hi: int, path: Any) -> int:
    v = fp.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CheckpointError(path, f"{FIELD}.{key}", f"must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def parse_fingerprint(fp: Any, spec: TrajectorySpec, path: str | os.PathLike) -> dict[str, Any]:
    """Validate the field's structure against the spec (CheckpointError naming the sub-field)."""
    if not isinstance(fp, Mapping):
        raise CheckpointError(path, FIELD, "must be an object")
    seed = _int_in(fp, "seed", 0, 2 ** 32 - 1, path)
    per = _int_in(fp, "inputs_per_mode", 1, 16, path)
    rows = _int_in(fp, "rows", 1, spec.horizon, path)
    modes = fp.get("modes")
    known = mk.available_modes(spec)
    if not isinstance(modes, list) or not modes or any(m not in known for m in modes):
        raise CheckpointError(path, f"{FIELD}.modes", f"must be a non-empty list of {list(known)}, got {modes!r}")
    ys = fp.get("y")
    width = rows * spec.packed_width
    if not isinstance(ys, list) or len(ys) != len(modes) * per:
        raise CheckpointError(path, f"{FIELD}.y", f"must hold {len(modes) * per} cases")
    for i, y in enumerate(ys):
        if (not isinstance(y, list) or len(y) != width
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in y)):
            raise CheckpointError(path, f"{FIELD}.y[{i}]", f"must be {width} finite numbers")
    return {"seed": seed, "inputs_per_mode": per, "rows": rows, "modes": tuple(modes), "y": ys}


def check_fingerprint(run: Runner, spec: TrajectorySpec, fp: Any, tolerance: float, path: str | os.PathLike,
                      batch_size: int = 1) -> float:
    """Run the recorded inputs through ``run``; CheckpointError naming ``path`` if any output
    (every batch row) differs from the recorded one by more than ``tolerance``. Returns the
    worst max abs difference."""
    f = parse_fingerprint(fp, spec, path)
    rows = f["rows"]
    worst = 0.0
    for (label, x, m), want in zip(cases(spec, f["modes"], f["seed"], f["inputs_per_mode"]), f["y"]):
        y = np.asarray(run(_batched(x, batch_size), _batched(m, batch_size)))[:, -rows:]
        got = y.reshape(batch_size, -1).astype(np.float64)
        diff = float(np.max(np.abs(got - np.asarray(want, np.float64)))) if np.all(np.isfinite(got)) else math.inf
        if not diff <= tolerance:
            raise CheckpointError(path, FIELD, f"outputs differ from the recorded ones on {label}: max abs diff "
                                  f"{diff:.3g} > {tolerance:g} (normalised units): the graph is not the model its "
                                  "metadata describes")
        worst = max(worst, diff)
    return worst


__all__ = ["FIELD", "SEED", "FP32_TOLERANCE", "Runner", "torch_runner", "cases", "record_fingerprint",
           "parse_fingerprint", "check_fingerprint"]
