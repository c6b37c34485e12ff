"""Task registry: the MuJoCo tasks the runtime trains and evaluates on.

``TASKS`` is an explicit dict (nothing registers itself on import). ``get_task`` accepts a task
name ("reacher") or a gymnasium id ("Reacher-v5").

Modalities per task (``Task.modality_widths``, in the order the model should use):
``states`` is what the policy sees each step: for goal tasks (Reacher) the observation without
the goal part (the goal is its own ``goals`` modality); elsewhere the full observation.
``returns`` is the undiscounted return-to-go (1 float); ``rtg_horizon`` is the per-task horizon
(the episode length) the normaliser may use to scale it.

Reference returns (uniform-random policy and noise-free scripted expert) are frozen numbers
measured by ``sim/measure_reference_returns.py`` and read from ``sim/reference_returns.json``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # gymnasium and MuJoCo load only where an environment is made
    import gymnasium

    from mtm_runtime.sim.randomisation import Randomisation

__all__ = ["Task", "TASKS", "get_task", "REFERENCE_RETURNS_PATH", "load_reference_returns"]

REFERENCE_RETURNS_PATH = Path(__file__).with_name("reference_returns.json")
#: Reacher success: fingertip within this distance of the target at episode end (m).
REACHER_SUCCESS_RADIUS = 0.02


def load_reference_returns() -> dict[str, dict]:
    """The whole frozen table (task -> random/expert/zero returns, lengths, success rates); {} if absent."""
    if not REFERENCE_RETURNS_PATH.exists():
        return {}
    return json.loads(REFERENCE_RETURNS_PATH.read_text())


@dataclass(frozen=True)
class Task:
    """One MuJoCo task: environment factory, modality layout, expert and scoring."""

    name: str
    env_id: str
    episode_steps: int
    rtg_horizon: int
    has_goal: bool
    reference_returns: dict = field(hash=False, compare=False)
    joint_names: tuple[str, ...] = ()
    obs_dim: int = 0
    action_dim: int = 0
    goal_slice: tuple[int, int] | None = None   # [start, stop) of the goal in the observation

    # ---- environments ---------------------------------------------------------------------
    def make_env(self, seed: int | None = None, randomisation: Randomisation | None = None,
                 episode_steps: int | None = None) -> gymnasium.Env:
        """A fresh env (with the TimeLimit of ``episode_steps``, the task's own unless given); randomised if asked.

        ``seed`` seeds the action space and the randomisation generator; still pass a seed to
        ``reset`` to fix the initial state.
        """
        steps = self.episode_steps if not episode_steps else int(episode_steps)
        if steps < 1:
            raise ValueError(f"{self.name}: episode_steps must be >= 1, got {steps}")
        import gymnasium

        from mtm_runtime.sim.randomisation import RandomisationWrapper

        env = gymnasium.make(self.env_id, max_episode_steps=steps)
        if randomisation is not None:
            env = RandomisationWrapper(env, randomisation, seed=seed)
        if seed is not None:
            env.action_space.seed(seed)
        return env

    # ---- modalities ------------------------------------------------------------------------
    def modality_widths(self) -> dict[str, int]:
        """Widths in model order: states, actions, returns (and goals for goal tasks)."""
        widths = {"states": self.state_dim, "actions": self.action_dim, "returns": 1}
        if self.has_goal:
            widths["goals"] = self.goal_dim
        return widths

    @property
    def goal_dim(self) -> int:
        return 0 if self.goal_slice is None else self.goal_slice[1] - self.goal_slice[0]

    @property
    def state_dim(self) -> int:
        return self.obs_dim - self.goal_dim

    def split_observation(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """``obs [..., obs_dim]`` -> ``{"states": [..., state_dim], "goals": [..., goal_dim]}``."""
        obs = np.asarray(obs)
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"{self.name}: observation has width {obs.shape[-1]}, expected {self.obs_dim}")
        if self.goal_slice is None:
            return {"states": obs}
        a, b = self.goal_slice
        return {"states": np.concatenate([obs[..., :a], obs[..., b:]], axis=-1), "goals": obs[..., a:b]}

    def join_observation(self, states: np.ndarray, goals: np.ndarray | None = None) -> np.ndarray:
        """Inverse of :meth:`split_observation`."""
        if self.goal_slice is None:
            return np.asarray(states)
        a, _ = self.goal_slice
        return np.concatenate([states[..., :a], goals, states[..., a:]], axis=-1)

    # ---- expert and scoring ---------------------------------------------------------------
    def make_expert(self, env: gymnasium.Env) -> Callable[[np.ndarray], np.ndarray]:
        """Noise-free scripted expert, ``obs [obs_dim] -> action [action_dim]`` (see sim/experts.py)."""
        from mtm_runtime.sim import experts  # MuJoCo: only with an environment

        return experts.make_expert(env)

    def normalised_score(self, episode_return: float) -> float:
        """D4RL-style: ``100 * (R - R_random) / (R_expert - R_random)``; RuntimeError if unmeasured."""
        lo, hi = self.reference_returns.get("random"), self.reference_returns.get("expert")
        if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            raise RuntimeError(f"{self.name}: no reference returns in {REFERENCE_RETURNS_PATH}; "
                               "run `python -m mtm_runtime.sim.measure_reference_returns`")
        return 100.0 * (episode_return - lo) / (hi - lo)

    def success(self, env: gymnasium.Env, info: dict | None = None) -> bool | None:
        """Reacher: fingertip within 2 cm of the target (call at episode end). None elsewhere."""
        if self.name != "reacher":
            return None
        data = env.unwrapped.data
        d = data.body("fingertip").xpos[:2] - data.body("target").xpos[:2]
        return bool(np.linalg.norm(d) < REACHER_SUCCESS_RADIUS)


def actuated_joint_names(env: gymnasium.Env) -> tuple[str, ...]:
    """Names of the joints driven by the env's actuators, in actuator order."""
    import mujoco

    m = env.unwrapped.model
    return tuple(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(m.actuator_trnid[i, 0])) for i in range(m.nu))


def _task(name: str, env_id: str, episode_steps: int, obs_dim: int, action_dim: int,
          joint_names: tuple[str, ...], goal_slice: tuple[int, int] | None = None) -> Task:
    refs = load_reference_returns().get(name, {})
    return Task(name=name, env_id=env_id, episode_steps=episode_steps, rtg_horizon=episode_steps,
                has_goal=goal_slice is not None,
                reference_returns={k: float(refs[k]) if k in refs else math.nan for k in ("random", "expert", "zero")},
                joint_names=joint_names, obs_dim=obs_dim, action_dim=action_dim, goal_slice=goal_slice)


# Dimensions and joint names are frozen here (checked against MuJoCo by tests/test_sim_tasks.py)
# so importing this module does not build any environment.
TASKS: dict[str, Task] = {
    "reacher": _task("reacher", "Reacher-v5", 50, 10, 2, ("joint0", "joint1"), goal_slice=(4, 6)),
    "inverted_double_pendulum": _task("inverted_double_pendulum", "InvertedDoublePendulum-v5", 1000, 9, 1,
                                      ("slider",)),
    "hopper": _task("hopper", "Hopper-v5", 1000, 11, 3, ("thigh_joint", "leg_joint", "foot_joint")),
    "pusher": _task("pusher", "Pusher-v5", 100, 23, 7,
                    ("r_shoulder_pan_joint", "r_shoulder_lift_joint", "r_upper_arm_roll_joint",
                     "r_elbow_flex_joint", "r_forearm_roll_joint", "r_wrist_flex_joint",
                     "r_wrist_roll_joint")),
}
_BY_ENV_ID = {t.env_id: t for t in TASKS.values()}


def get_task(name: str) -> Task:
    """Task by name ("reacher") or env id ("Reacher-v5"); KeyError listing the valid names."""
    if name in TASKS:
        return TASKS[name]
    if name in _BY_ENV_ID:
        return _BY_ENV_ID[name]
    valid = ", ".join(list(TASKS) + list(_BY_ENV_ID))
    raise KeyError(f"unknown task {name!r}; valid names: {valid}")
