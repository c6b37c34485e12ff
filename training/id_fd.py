"""Held-out inverse / forward dynamics errors: the fixed validation windows and the metric, the
same for the MTM (``evaluate.mtm_id_fd``) and the MLP baselines (``baselines.baseline_id_fd``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from mtm_runtime import masks as M
from mtm_runtime.training.pipeline import NormalisedSampler


def validation_windows(episodes: Sequence[Any], spec: Any, norm: Any, n: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` fixed windows from full-length (>= T steps), action-labelled episodes."""
    T = spec.horizon
    eps = [ep for ep in episodes if ep.length >= T and ep.labelled]
    if not eps:
        raise ValueError("no validation episode with actions and at least T steps")
    return NormalisedSampler(eps, spec, norm).sample(n, np.random.default_rng([seed, 0xE7A1]))


def id_fd_errors(predict: Callable[[np.ndarray, np.ndarray], np.ndarray], spec: Any, x: np.ndarray) -> dict[str, float]:
    """ID / FD normalised errors (module docstring) of ``predict(x, mask) -> pred`` on windows
    ``x [B, T, D]`` (normalised, fully present)."""
    T, B = spec.horizon, len(x)
    a_sl, s_sl = spec.slice("actions"), spec.slice("states")
    out = {}
    pred = predict(x, np.broadcast_to(M.id_mask(spec), (B, T, spec.num_modalities)).copy())
    num = ((pred[:, :T - 1, a_sl] - x[:, :T - 1, a_sl]) ** 2).mean(-1)             # [B, T-1]
    den = ((x[:, 1:T - 1, a_sl] - x[:, 0:T - 2, a_sl]) ** 2).mean(-1)               # change a_t - a_{t-1}
    out["id_mse"] = float(num.mean())
    out["id_error"] = float(num.mean() / max(den.mean(), 1e-12))
    pred = predict(x, np.broadcast_to(M.fd_mask(spec), (B, T, spec.num_modalities)).copy())
    num = ((pred[:, T - 1, s_sl] - x[:, T - 1, s_sl]) ** 2).mean(-1)
    den = ((x[:, T - 1, s_sl] - x[:, T - 2, s_sl]) ** 2).mean(-1)
    out["fd_mse"] = float(num.mean())
    out["fd_error"] = float(num.mean() / max(den.mean(), 1e-12))
    seen = ((pred[:, T - 2, s_sl] - x[:, T - 2, s_sl]) ** 2).mean(-1)
    out["visible_state_error"] = float(seen.mean() / max(den.mean(), 1e-12))
    return out
