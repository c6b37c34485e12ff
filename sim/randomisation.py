"""Domain randomisation for sim-to-real work, applied as a gymnasium wrapper.

Each scale is either a fixed float or a ``(low, high)`` range sampled uniformly at every
``reset`` from the wrapper's own generator (seeded by the reset seed, so a seeded reset gives a
reproducible model). Scales multiply the *nominal* model values saved when the wrapper is built,
so they never compound across episodes.

* ``mass_scale``: every body mass and inertia.
* ``friction_scale``: every geom's sliding friction.
* ``actuator_gain_scale``: every actuator's gear (torque per unit of action).
* ``obs_noise_std``: Gaussian noise added to observations (observation units).
* ``action_latency_steps``: actions take effect this many control steps late (zeros before).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

Scale = float | tuple[float, float]


@dataclass(frozen=True)
class Randomisation:
    mass_scale: Scale = 1.0
    friction_scale: Scale = 1.0
    actuator_gain_scale: Scale = 1.0
    obs_noise_std: float = 0.0
    action_latency_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("mass_scale", "friction_scale", "actuator_gain_scale"):
            v = getattr(self, name)
            lo, hi = (v, v) if isinstance(v, (int, float)) else tuple(v)
            if not (0 < lo <= hi):
                raise ValueError(f"Randomisation.{name} must be > 0 (and low <= high), got {v!r}")
        if self.obs_noise_std < 0:
            raise ValueError(f"Randomisation.obs_noise_std must be >= 0, got {self.obs_noise_std}")
        if int(self.action_latency_steps) != self.action_latency_steps or self.action_latency_steps < 0:
            raise ValueError(f"Randomisation.action_latency_steps must be an integer >= 0, got {self.action_latency_steps}")

    @staticmethod
    def sample(scale: Scale, rng: np.random.Generator) -> float:
        if isinstance(scale, (int, float)):
            return float(scale)
        lo, hi = scale
        return float(rng.uniform(lo, hi))


class RandomisationWrapper(gymnasium.Wrapper):
    """Applies a :class:`Randomisation` to a MuJoCo gymnasium env (see module docstring)."""

    def __init__(self, env: gymnasium.Env, randomisation: Randomisation, seed: int | None = None) -> None:
        super().__init__(env)
        self.randomisation = randomisation
        mujoco_env: Any = env.unwrapped   # a MuJoCo env: its MjModel is untyped in gymnasium
        model = self._model = mujoco_env.model
        self._mass = model.body_mass.copy()
        self._inertia = model.body_inertia.copy()
        self._friction = model.geom_friction.copy()
        self._gear = model.actuator_gear.copy()
        self._rng = np.random.default_rng(seed)
        self._queue: deque[np.ndarray] = deque()
        self.current: dict[str, float] = {}

    def _apply(self) -> None:
        r, model = self.randomisation, self._model
        self.current = {
            "mass_scale": r.sample(r.mass_scale, self._rng),
            "friction_scale": r.sample(r.friction_scale, self._rng),
            "actuator_gain_scale": r.sample(r.actuator_gain_scale, self._rng),
        }
        model.body_mass[:] = self._mass * self.current["mass_scale"]
        model.body_inertia[:] = self._inertia * self.current["mass_scale"]
        model.geom_friction[:, 0] = self._friction[:, 0] * self.current["friction_scale"]
        model.actuator_gear[:, 0] = self._gear[:, 0] * self.current["actuator_gain_scale"]

    def _noisy(self, obs: np.ndarray) -> np.ndarray:
        std = self.randomisation.obs_noise_std
        if std == 0:
            return obs
        return (obs + self._rng.normal(0.0, std, size=np.shape(obs))).astype(np.asarray(obs).dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 0x5EED])
        self._apply()
        obs, info = self.env.reset(seed=seed, options=options)
        space: Any = self.env.action_space
        zero = np.zeros(space.shape, dtype=space.dtype)
        self._queue = deque([zero] * int(self.randomisation.action_latency_steps))
        info = dict(info, randomisation=dict(self.current))
        return self._noisy(obs), info

    def step(self, action):
        self._queue.append(np.asarray(action, dtype=self.env.action_space.dtype))
        obs, reward, terminated, truncated, info = self.env.step(self._queue.popleft())
        return self._noisy(obs), reward, terminated, truncated, info
