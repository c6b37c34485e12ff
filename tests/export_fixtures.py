"""Tiny checkpoints shared by the export / backend / profile tests (fast to export and run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtm_runtime.checkpoint import save_checkpoint
from mtm_runtime.model import MTMConfig, build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec

TINY = MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2, dropout=0.0)
#: states + actions + returns + goals: every inference mode is available
SPEC = TrajectorySpec.create(3, states=5, actions=2, returns=1, goals=2)


def make_checkpoint(directory: Path, spec: TrajectorySpec = SPEC, cfg: MTMConfig = TINY, seed: int = 0) -> Path:
    """A random-weight checkpoint with a non-trivial normaliser and action limits."""
    import torch

    torch.manual_seed(seed)
    net = build_model(spec, cfg)
    rng = np.random.default_rng(seed)
    norm = Normaliser(spec, mean={"states": rng.standard_normal(spec.width("states"))},
                      std={"states": 1.0 + rng.random(spec.width("states"))})
    limits = ActionLimits.symmetric(2.0, spec.width("actions"))
    return save_checkpoint(directory, net, norm, limits, provenance={"task": "unit-test", "seed": seed})
