"""Dataset tiers from the scripted experts, written as HDF5 in the D4RL layout.

Tiers (per-episode behaviour = expert action + Gaussian noise, and with probability ``epsilon``
per step a uniform-random action instead):

* ``expert``: small noise (std 0.1 of the action half-range), no random steps.
* ``medium``: per-task noise/epsilon tuned so the tier scores about a third of the expert's
  normalised score (``MEDIUM_NOISE``; measured numbers in its comment).
* ``medium-replay``: an annealed schedule over the episodes, like the replay buffer of a learning
  agent: episode ``i`` of ``N`` interpolates from random (``epsilon = 1``) to the medium setting.
* ``medium-expert``: odd episodes expert, even episodes medium (50/50).
* ``random``: uniform-random actions.

File layout (one row per environment step; the keys and the ``metadata`` attributes written
here): ``training/hdf5_writer.py``.

Determinism: episode ``i`` depends only on ``(task, tier, seed, i, episodes)`` (its reset seed
and noise generator come from ``SeedSequence([seed, i])``); which episodes keep their actions
comes from ``SeedSequence([label_seed, 0xAC7])`` (``label_seed`` defaults to ``seed``). The
result is the same for any number of workers.
Loaders and the window sampler live in ``training/loaders.py``.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.hdf5_writer import write_d4rl_hdf5

GENERATOR_VERSION = "mtm_runtime.datasets/1"
TIERS = ("expert", "medium", "medium-replay", "medium-expert", "random")

#: Expert tier noise: std as a fraction of the action half-range.
EXPERT_NOISE_STD = 0.1
#: Medium tier (std fraction, epsilon) per task, tuned to ~33 normalised score (20 episodes,
#: seed 1): reacher 34, inverted_double_pendulum 33 (Gaussian only: any random step topples it),
#: hopper 38 (Gaussian only, against the ARS hopping expert; high variance: 18-92), pusher untuned.
MEDIUM_NOISE: dict[str, tuple[float, float]] = {
    "reacher": (0.2, 0.4),
    "inverted_double_pendulum": (0.215, 0.0),
    "hopper": (0.2, 0.0),
    "pusher": (0.3, 0.5),
}


@dataclass(frozen=True)
class Behaviour:
    """How one episode perturbs the expert: Gaussian std (fraction of half-range), epsilon."""

    noise_std: float
    epsilon: float


def episode_behaviour(task: Task, tier: str, index: int, episodes: int) -> Behaviour:
    """Behaviour of episode ``index`` of ``episodes`` in ``tier`` (pure function)."""
    med_std, med_eps = MEDIUM_NOISE[task.name]
    if tier == "expert":
        return Behaviour(EXPERT_NOISE_STD, 0.0)
    if tier == "medium":
        return Behaviour(med_std, med_eps)
    if tier == "random":
        return Behaviour(0.0, 1.0)
    if tier == "medium-replay":
        p = index / max(episodes - 1, 1)          # 0 -> 1 over the buffer
        return Behaviour(med_std, 1.0 - p * (1.0 - med_eps))
    if tier == "medium-expert":
        return episode_behaviour(task, "expert" if index % 2 else "medium", index, episodes)
    raise ValueError(f"unknown tier {tier!r}; choose from {', '.join(TIERS)}")


# ---- one episode (runs in a worker process) --------------------------------------------------
_WORKER_CACHE: dict[str, tuple] = {}


def _env_and_expert(task: Task):
    if task.name not in _WORKER_CACHE:
        env = task.make_env()
        _WORKER_CACHE[task.name] = (env, task.make_expert(env))
    return _WORKER_CACHE[task.name]


def collect_episode(task_name: str, tier: str, seed: int, index: int, episodes: int) -> dict[str, np.ndarray]:
    """Roll out episode ``index``; returns per-step arrays (see the module docstring)."""
    task = get_task(task_name)
    env, expert = _env_and_expert(task)
    ss = np.random.SeedSequence([seed, index])
    reset_seed = episode_reset_seed(seed, index)
    rng = np.random.default_rng(ss)
    beh = episode_behaviour(task, tier, index, episodes)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    half = (high - low) / 2
    obs, _ = env.reset(seed=reset_seed)
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    while True:
        if rng.random() < beh.epsilon:
            a = rng.uniform(low, high)
        else:
            a = np.asarray(expert(obs), dtype=np.float64) + rng.normal(0.0, 1.0, size=low.shape) * beh.noise_std * half
        a = np.clip(a, low, high)
        next_obs, r, terminated, truncated, _ = env.step(a.astype(np.float32))
        for k, v in zip(rows, (obs, a, r, terminated, truncated, next_obs)):
            rows[k].append(v)
        obs = next_obs
        if terminated or truncated:
            break
    out = {k: np.asarray(v, dtype=np.float32) for k, v in rows.items() if k not in ("terminals", "timeouts")}
    out["terminals"] = np.asarray(rows["terminals"], dtype=bool)
    out["timeouts"] = np.asarray(rows["timeouts"], dtype=bool)
    return out


def episode_reset_seed(seed: int, index: int) -> int:
    """The reset seed of episode ``index`` of every tier (``SeedSequence([seed, index])``'s first word)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _collect_star(args: tuple) -> dict[str, np.ndarray]:
    return collect_episode(*args)


def action_present_mask(seed: int, episodes: int, action_fraction: float) -> np.ndarray:
    """Which episodes keep their actions: exactly ``round(fraction * episodes)`` (>= 1 if fraction > 0)."""
    if not 0.0 <= action_fraction <= 1.0:
        raise ValueError(f"action_fraction must be in [0, 1], got {action_fraction}")
    keep = int(round(action_fraction * episodes))
    if action_fraction > 0:
        keep = max(keep, 1)
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xAC7])).permutation(episodes)
    mask = np.zeros(episodes, dtype=bool)
    mask[order[:keep]] = True
    return mask


def collect(task: Task | str, tier: str, episodes: int, seed: int = 0, workers: int = 1,
            action_fraction: float = 1.0, progress: bool = False,
            label_seed: int | None = None) -> dict[str, np.ndarray]:
    """Collect ``episodes`` episodes; returns the concatenated D4RL arrays (plus ``infos/...``).

    ``label_seed`` (default ``seed``) picks which episodes keep their actions: the same rollouts
    with another draw of the labelled episodes."""
    task = get_task(task) if isinstance(task, str) else task
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose from {', '.join(TIERS)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    jobs = [(task.name, tier, seed, i, episodes) for i in range(episodes)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=episodes, desc=f"collect {task.name} {tier}", unit="ep")
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_collect_star(job))
            bar is not None and bar.update(1)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for ep in pool.imap(_collect_star, jobs, chunksize=1):  # ordered: same result for any K
                results.append(ep)
                bar is not None and bar.update(1)
    if bar is not None:
        bar.close()
    present = action_present_mask(seed if label_seed is None else label_seed, episodes, action_fraction)
    for ep, keep in zip(results, present):
        if not keep:
            ep["actions"][:] = np.nan
    data = {k: np.concatenate([ep[k] for ep in results]) for k in results[0]}
    data["infos/action_present"] = np.concatenate([np.full(len(ep["rewards"]), k) for ep, k in zip(results, present)])
    data["infos/episode_id"] = np.concatenate([np.full(len(ep["rewards"]), i, dtype=np.int32) for i, ep in enumerate(results)])
    if task.has_goal:
        data["infos/goal"] = task.split_observation(data["observations"])["goals"].astype(np.float32)
    return data


def write_hdf5(path: str | Path, data: dict[str, np.ndarray], task: Task, tier: str, seed: int,
               action_fraction: float = 1.0, label_seed: int | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``data`` (from :func:`collect`) with its ``metadata`` group (written whole or not at
    all); ``extra``: more metadata (how a learning run's tier was made: ``run_tiers.collect_tier``),
    numbers and strings as they are, anything else as JSON."""
    more = {k: v if isinstance(v, (int, float, str)) else json.dumps(v) for k, v in (extra or {}).items()}
    return write_d4rl_hdf5(path, data, {**more,
        "task": task.name, "env_id": task.env_id, "seed": int(seed), "tier": tier,
        "episodes": int(data["infos/episode_id"].max() + 1), "action_fraction": float(action_fraction),
        "label_seed": int(seed if label_seed is None else label_seed),
        "reference_returns": json.dumps(task.reference_returns),
        "modality_widths": json.dumps(task.modality_widths()),
        "generator_version": GENERATOR_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


def episode_returns(data: dict[str, np.ndarray]) -> np.ndarray:
    """Undiscounted return of each episode in concatenated ``data``."""
    ids = data["infos/episode_id"]
    return np.bincount(ids, weights=data["rewards"].astype(np.float64))
