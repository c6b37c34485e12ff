"""A toy sinusoid trajectory set: the quick-start data (no simulator needed).

A point moves on the unit circle: ``state_t = [cos θ_t, sin θ_t]`` and the action is the angle
step, ``θ_{t+1} = θ_t + a_t`` with ``a_t = ω + noise``; ω is drawn per trajectory in
[0.1, 0.5] rad/step. So behaviour cloning must infer ω from the state history, forward dynamics
must rotate the last state by the last action, and inverse dynamics must read the angle between
consecutive states.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec, pack

#: The toy's actuator: an angle step of at most 1 rad per step either way (the data's steps are
#: 0.1-0.5 rad); a checkpoint of the toy carries these, so ``Policy.load`` runs it.
SINUSOID_ACTION_LIMITS = ActionLimits.symmetric(1.0, 1)


def sinusoid_spec(horizon: int = 4) -> TrajectorySpec:
    return TrajectorySpec.create(horizon, states=2, actions=1)


def sinusoid_windows(n: int, horizon: int, seed: int, noise: float = 0.01) -> np.ndarray:
    """``n`` raw (unnormalised) windows in the packed layout ``[n, T, 3]``."""
    rng = np.random.default_rng(seed)
    omega = rng.uniform(0.1, 0.5, size=(n, 1))
    actions = omega + noise * rng.standard_normal((n, horizon))
    theta = rng.uniform(-np.pi, np.pi, size=(n, 1)) + np.concatenate(
        [np.zeros((n, 1)), np.cumsum(actions[:, :-1], axis=1)], axis=1)
    states = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    spec = sinusoid_spec(horizon)
    return pack(spec, {"states": states, "actions": actions[..., None]})


@dataclass
class ArraySampler:
    """Samples rows of a fixed array of windows (all modalities present)."""

    spec: TrajectorySpec
    x: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(0, len(self.x), size=batch_size)
        return self.x[idx], np.ones((batch_size, self.spec.horizon, self.spec.num_modalities), np.float32)
