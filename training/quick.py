"""A few-second Reacher checkpoint for the demo and tests when no bundled model is present.

``quick_checkpoint(out)``: collect expert-tier Reacher episodes, fit the normaliser, train the
``embedded`` preset for a few hundred steps with ``mtm_runtime.trainer`` and save a checkpoint
directory (``model.safetensors`` + ``mtm.json``). Good enough to move the arm toward the target;
the bundled ``models/reacher_embedded`` (trained for thousands of steps) is the real one.
``train_on_episodes`` is the shared part (also the smoke test of imported recordings).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mtm_runtime.checkpoint import save_checkpoint
from mtm_runtime.model import PRESET_HORIZON, build_model
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec
from mtm_runtime.trainer import TrainConfig, Trainer
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.loaders import Episode
from mtm_runtime.training.pipeline import NormalisedSampler, fit_normaliser


class _Sampler:
    """Adapts ``NormalisedSampler.sample(batch, rng)`` to the trainer's ``sample(batch)``."""

    def __init__(self, inner: NormalisedSampler, seed: int) -> None:
        self.inner, self.rng = inner, np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.sample(batch_size, self.rng)


def train_on_episodes(task: Task, episodes: Sequence[Episode], out: Path | None, steps: int = 300,
                      batch_size: int = 64, preset: str = "embedded", seed: int = 0,
                      provenance: dict | None = None) -> tuple[Path | None, list[dict[str, float]]]:
    """Train ``preset`` on ``episodes`` for ``steps``; save to ``out`` if given. Returns (path, loss history)."""
    torch.manual_seed(seed)
    spec = TrajectorySpec.create(PRESET_HORIZON[preset], **task.modality_widths())
    norm = fit_normaliser(spec, episodes)
    model = build_model(spec, preset)
    trainer = Trainer(model, TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, warmup_steps=min(50, steps),
                                         mask_kinds=("auto", "random", "id"), seed=seed))
    hist = trainer.fit(_Sampler(NormalisedSampler(episodes, spec, norm), seed))
    path = None
    if out is not None:
        path = save_checkpoint(out, model.eval(), norm, ActionLimits.symmetric(1.0, task.action_dim),
                               provenance=dict(provenance or {}, task=task.name, steps=steps, preset=preset))
    return path, hist


def quick_checkpoint(out: Path, episodes: int = 40, steps: int = 200, seed: int = 0) -> Path:
    """Expert-tier Reacher data -> a briefly trained ``embedded`` checkpoint in ``out``."""
    from mtm_runtime.training.datasets import collect
    from mtm_runtime.training.loaders import split_d4rl

    task = get_task("reacher")
    data = collect(task, "expert", episodes, seed=seed)
    eps = split_d4rl(task, data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured on the shared 2-core VM: 2 threads were ~7x slower under load
    try:
        path, _ = train_on_episodes(task, eps, out, steps=steps, seed=seed,
                                    provenance={"source": "mtm_runtime.training.quick (mtm demo fallback)", "episodes": episodes})
    finally:
        torch.set_num_threads(threads)
    assert path is not None
    return path
