"""The data offline TD3+BC learns from (``training/offline_rl.py``, steps 1 and 2): a new reward
on old data, and the transitions inside episodes.

- **rewards**: the dataset's rewards are replaced by a task-specific function of
  ``(observation, action)`` from ``RELABELS`` (a new task on old data: the point of offline RL);
- **transitions** ``(o_t, a_t, r_t, o_{t+1}, done_t)`` inside episodes; the last step of a
  time-limited episode has no successor and is dropped; a terminated episode's last step has
  ``done = 1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mtm_runtime.sim.tasks import Task
from mtm_runtime.training.loaders import Episode


# ---- reward relabelling --------------------------------------------------------------------------
@dataclass(frozen=True)
class Relabel:
    """A new reward ``fn(obs [N, obs_dim], actions [N, A]) -> rewards [N]`` (float64) for ``task``,
    computed from the observation the action was chosen in (as gymnasium v5 does)."""

    task: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    description: str


def _reacher_exp_distance(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    # Reacher-v5 obs[8:10] = fingertip - target (x, y) in m; bounded, sharply peaked shaping
    d = np.linalg.norm(obs[:, 8:10], axis=-1)
    return np.exp(-d / 0.05) - 0.05 * np.sum(np.square(act), axis=-1)


def _reacher_sparse(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(obs[:, 8:10], axis=-1)
    return (d < 0.03).astype(np.float64) - 0.01 * np.sum(np.square(act), axis=-1)


def _idp_effort(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    # InvertedDoublePendulum-v5 obs[5:8] = joint velocities (slider, hinge, hinge2)
    return 1.0 - 0.5 * np.sum(np.square(act), axis=-1) - 0.01 * np.sum(np.square(obs[:, 5:8]), axis=-1)


RELABELS: dict[str, Relabel] = {
    "reacher_exp_distance": Relabel("reacher", _reacher_exp_distance,
                                    "exp(-|fingertip - target| / 5 cm) - 0.05 |a|^2"),
    "reacher_sparse": Relabel("reacher", _reacher_sparse, "1[|fingertip - target| < 3 cm] - 0.01 |a|^2"),
    "idp_effort": Relabel("inverted_double_pendulum", _idp_effort,
                          "1 (alive) - 0.5 a^2 (effort) - 0.01 |qvel|^2 (energy)"),
}
DEFAULT_RELABEL = {"reacher": "reacher_exp_distance", "inverted_double_pendulum": "idp_effort"}


def get_relabel(name: str, task: Task) -> Relabel:
    """Relabel by name ("" = the task's default); ValueError naming the choices."""
    name = name or DEFAULT_RELABEL.get(task.name, "")
    if name not in RELABELS:
        raise ValueError(f"no reward relabelling {name!r} for {task.name}; choose from "
                         f"{', '.join(k for k, v in RELABELS.items() if v.task == task.name) or '(none)'}")
    if RELABELS[name].task != task.name:
        raise ValueError(f"relabelling {name!r} is for task {RELABELS[name].task}, not {task.name}")
    return RELABELS[name]


# ---- transitions -----------------------------------------------------------------------------------
@dataclass
class Transitions:
    """Flat per-step tables (all episodes concatenated) and the transitions over them:
    ``obs[idx]``, ``actions[idx]``, ``rewards``, ``obs[next_idx]``, ``dones`` (float32 0/1)."""

    observations: np.ndarray   # [N, obs_dim] raw env observations
    actions: np.ndarray        # [N, A]
    idx: np.ndarray            # [K] int64 step of each transition
    next_idx: np.ndarray       # [K] int64 successor step (== idx where done)
    rewards: np.ndarray        # [K] float32 relabelled
    dones: np.ndarray          # [K] float32


def build_transitions(episodes: Sequence[Episode], task: Task, relabel: Relabel) -> Transitions:
    """See the module docstring. Episodes without actions are skipped."""
    obs, acts, idx, nxt, dones = [], [], [], [], []
    n = 0
    for ep in episodes:
        if not ep.labelled:
            continue
        o = task.join_observation(ep["states"], ep.get("goals"))
        L = len(o)
        obs.append(o)
        acts.append(ep["actions"])
        steps = np.arange(L - 1)
        idx.append(n + steps)
        nxt.append(n + steps + 1)
        dones.append(np.zeros(L - 1))
        if ep.terminated:
            idx.append(np.array([n + L - 1]))
            nxt.append(np.array([n + L - 1]))
            dones.append(np.ones(1))
        n += L
    observations = np.concatenate(obs).astype(np.float32)
    actions = np.concatenate(acts).astype(np.float32)
    i = np.concatenate(idx).astype(np.int64)
    r = relabel.fn(observations[i].astype(np.float64), actions[i].astype(np.float64)).astype(np.float32)
    return Transitions(observations, actions, i, np.concatenate(nxt).astype(np.int64), r,
                       np.concatenate(dones).astype(np.float32))
