"""Normaliser: per-dimension z-score with a std floor, fitted from data, stored in checkpoints.

``normalised = (x - mean) / std`` with ``std >= std_floor`` per dimension.
Returns-to-go and rewards are *scale-only* (mean 0, one scalar scale per modality), so the
runtime's return-to-go arithmetic (target minus rewards received) stays linear:
``rtg_norm = rtg / scale``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mtm_runtime.spec import RETURNS, REWARDS, SpecError, TrajectorySpec

SCALE_ONLY = (RETURNS, REWARDS)


@dataclass
class Normaliser:
    """Per-modality ``mean`` and ``std`` (float32, shape [width]); invariant: std >= floor > 0."""

    spec: TrajectorySpec
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    std: dict[str, np.ndarray] = field(default_factory=dict)
    std_floor: float = 1e-2

    def __post_init__(self) -> None:
        for n in self.spec.names:
            w = self.spec.width(n)
            mean = np.asarray(self.mean.get(n, np.zeros(w)), dtype=np.float32).reshape(-1)
            std = np.asarray(self.std.get(n, np.ones(w)), dtype=np.float32).reshape(-1)
            if mean.shape != (w,) or std.shape != (w,):
                raise SpecError(f"normaliser.{n}: mean/std must have width {w}")
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
                raise SpecError(f"normaliser.{n}: mean/std must be finite with std > 0")
            self.mean[n], self.std[n] = mean, std
        unknown = (set(self.mean) | set(self.std)) - set(self.spec.names)
        if unknown:
            raise SpecError(f"normaliser has statistics for unknown modalities {sorted(unknown)}")
        self._mean_packed = np.concatenate([self.mean[n] for n in self.spec.names])
        self._std_packed = np.concatenate([self.std[n] for n in self.spec.names])

    @classmethod
    def identity(cls, spec: TrajectorySpec) -> "Normaliser":
        return cls(spec)

    @classmethod
    def fit_packed(cls, spec: TrajectorySpec, x: np.ndarray, std_floor: float = 1e-2) -> "Normaliser":
        """Fit from packed windows or steps ``x [..., D]`` (every modality's columns of the spec)."""
        flat = np.asarray(x).reshape(-1, spec.packed_width)
        return cls.fit(spec, {n: flat[:, spec.slice(n)] for n in spec.names}, std_floor)

    @classmethod
    def fit(cls, spec: TrajectorySpec, data: Mapping[str, np.ndarray], std_floor: float = 1e-2) -> "Normaliser":
        """Fit from ``{name: [N, width]}`` arrays (NaN rows, e.g. missing actions, are ignored).
        Modalities without data keep mean 0, std 1."""
        mean: dict[str, np.ndarray] = {}
        std: dict[str, np.ndarray] = {}
        for n in spec.names:
            if n not in data:
                continue
            a = np.asarray(data[n], dtype=np.float64).reshape(-1, spec.width(n))
            a = a[np.all(np.isfinite(a), axis=1)]
            if len(a) == 0:
                continue
            if n in SCALE_ONLY:
                scale = max(float(np.sqrt(np.mean(a ** 2))), std_floor)
                mean[n], std[n] = np.zeros(spec.width(n)), np.full(spec.width(n), scale)
            else:
                mean[n], std[n] = a.mean(axis=0), np.maximum(a.std(axis=0), std_floor)
        return cls(spec, mean, std, std_floor)

    # ---- per modality ----------------------------------------------------------------------
    def normalise(self, name: str, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean[name]) / self.std[name]).astype(np.float32)

    def denormalise(self, name: str, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float32) * self.std[name] + self.mean[name]).astype(np.float32)

    # ---- packed layout [..., D] -------------------------------------------------------------
    def normalise_packed(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self._mean_packed) / self._std_packed).astype(np.float32)

    def denormalise_packed(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float32) * self._std_packed + self._mean_packed).astype(np.float32)

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"std_floor": self.std_floor,
                "mean": {n: self.mean[n].tolist() for n in self.spec.names},
                "std": {n: self.std[n].tolist() for n in self.spec.names}}

    @classmethod
    def from_dict(cls, spec: TrajectorySpec, d: Mapping[str, Any], where: str = "normaliser") -> "Normaliser":
        for key in ("mean", "std"):
            if key not in d or not isinstance(d[key], Mapping):
                raise SpecError(f"{where}.{key} is missing or not an object")
            for n in spec.names:
                if n not in d[key]:
                    raise SpecError(f"{where}.{key}.{n} is missing")
        try:
            return cls(spec, {n: np.asarray(d["mean"][n], np.float32) for n in spec.names},
                       {n: np.asarray(d["std"][n], np.float32) for n in spec.names},
                       float(d.get("std_floor", 1e-2)))
        except (TypeError, ValueError) as e:
            raise SpecError(f"{where}: {e}") from None
