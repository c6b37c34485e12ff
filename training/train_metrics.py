"""What a training run measures and draws (``training/train.py``).

- ``validation_windows``: the fixed validation set, windows of the held-out episodes with AUTO
  masks, drawn once from a generator seeded with the run's seed;
- ``validate``: its AUTO-mask loss and the hidden-token error of every mode mask;
- ``evaluate_modes``: the policy in the simulator (``evaluate_checkpoint_object``), one score per
  mode, for ``--eval-every``;
- ``read_scalars`` / ``write_scalars``: ``scalars.csv``, one row per step (a resumed run keeps the
  rows up to its start); ``plot_curves``: ``curves.png``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mtm_runtime import masks as M
from mtm_runtime.loss import mtm_loss
from mtm_runtime.model import MTM
from mtm_runtime.normalise import Normaliser
from mtm_runtime.safety import ActionLimits
from mtm_runtime.sim.tasks import Task
from mtm_runtime.spec import ACTIONS, TrajectorySpec
from mtm_runtime.training.evaluate import evaluate_checkpoint_object
from mtm_runtime.training.loaders import Episode
from mtm_runtime.training.pipeline import NormalisedSampler

#: (x, present, mask) of the fixed validation windows
ValWindows = tuple[np.ndarray, np.ndarray, np.ndarray]


def validation_windows(val_eps: Sequence[Episode], spec: TrajectorySpec, norm: Normaliser, n: int,
                       seed: int) -> ValWindows | None:
    """``n`` windows of the validation episodes with AUTO masks ANDed with availability (None
    without validation episodes); the same for every rank and every resume of the run."""
    if not val_eps:
        return None
    vrng = np.random.default_rng([seed, 0x5A1])
    vx, vp = NormalisedSampler(val_eps, spec, norm).sample(n, vrng)
    vm = M.apply_availability(M.sample_training_masks(spec, len(vx), vrng, ("auto",)), vp, vrng)
    return (vx, vp, vm)


@torch.no_grad()
def validate(mtm: MTM, spec: TrajectorySpec, val: ValWindows | None, device: torch.device) -> dict[str, float]:
    """Validation: AUTO-mask loss on the fixed windows and hidden-token MSE of each mode mask
    (normalised units; bc/rcbc/goal score the action at T-1, id all actions, fd the state at T-1)."""
    if val is None:
        return {}
    x, present, mask = val
    mtm.eval()
    xt, pt, mt = (torch.from_numpy(a).to(device) for a in (x, present, mask))
    loss, _ = mtm_loss(spec, mtm(xt, mt), xt, mt, pt)
    out = {"val_loss": float(loss)}
    for mode in M.available_modes(spec):
        m = torch.from_numpy(M.mode_mask(spec, mode)).to(device).expand_as(mt)
        m = torch.minimum(m, pt)
        pred = mtm(xt, m)
        col = spec.index(ACTIONS) if mode != "fd" else spec.index("states")
        sl = spec.slice(spec.names[col])
        err = (pred[..., sl] - xt[..., sl]).pow(2).mean(-1)                  # [B, T]
        w = (1.0 - m[..., col]) * pt[..., col]
        out[f"val_{mode}_mse"] = float((err * w).sum() / w.sum().clamp_min(1.0))
    return out


def evaluate_modes(mtm: MTM, norm: Normaliser, limits: ActionLimits | None, task: Task, modes: Sequence[str],
                   episodes: int) -> dict[str, float]:
    """Rollouts of the model being trained: ``eval_<mode>_score`` (or ``_return`` for a task with
    no reference returns) and ``eval_<mode>_success`` where the task has a success signal."""
    row: dict[str, float] = {}
    for mode in modes:
        res = evaluate_checkpoint_object(mtm, norm, limits, task, mode, episodes=episodes, seeds=(10_000,))
        row[f"eval_{mode}_score" if res["score_mean"] is not None else f"eval_{mode}_return"] = (
            res["score_mean"] if res["score_mean"] is not None else res["return_mean"])
        if res.get("success_mean") is not None:
            row[f"eval_{mode}_success"] = res["success_mean"]
    return row


def read_scalars(path: Path, start: int) -> list[dict[str, float]]:
    """The rows of an earlier ``scalars.csv`` up to step ``start`` (a resumed run's history)."""
    if not path.exists():
        return []
    with open(path) as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= start]


def write_scalars(rows: list[dict[str, float]], path: Path) -> None:
    """One row per step; columns ``step`` then every other key (a row without one leaves it empty)."""
    keys = ["step"] + sorted({k for r in rows for k in r} - {"step"})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot_curves(rows: list[dict[str, float]], path: Path) -> None:
    """Train/val loss, learning rate and throughput (and eval scores if any) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r})
    score_keys = [k for k in keys if k.startswith("eval_") and k.endswith("_score")]
    fig, axes = plt.subplots(1, 3 + bool(score_keys), figsize=(4.5 * (3 + bool(score_keys)), 3.5))
    series = lambda k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])  # noqa: E731
    for k in ["loss", "val_loss"] + [k for k in keys if k.startswith("val_") and k.endswith("_mse")]:
        axes[0].plot(*series(k), label=k)
    axes[0].set_yscale("log"), axes[0].set_title("loss (normalised MSE)"), axes[0].legend(fontsize=7)
    axes[1].plot(*series("lr")), axes[1].set_title("learning rate")
    axes[2].plot(*series("samples_per_s")), axes[2].set_title("samples/s")
    for k in score_keys:
        axes[3].plot(*series(k), marker="o", label=k)
    if score_keys:
        axes[3].set_title("normalised score"), axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
