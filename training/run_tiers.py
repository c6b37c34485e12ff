"""Dataset tiers from a learning run, the way D4RL made its locomotion data (Fu et al. 2020):

* ``expert``: the run's best evaluated iterate, unperturbed (``LearningRun.expert_iterate``:
  ARS's last iterate oscillates, where D4RL's final SAC policy had settled).
* ``medium``: the first iterate of the run whose evaluation return reaches a third of the way
  from the random policy to the expert's (``sim/ars.medium_iterate``: the learning curve
  brackets it, the iterates in between are evaluated), unperturbed.
* ``medium-replay``: every rollout the run made up to that iterate (the perturbed policies ARS
  explored while it learned, made again from the run file: ``sim/ars.replay_iterations``); its
  episode count is the run's, not the caller's.
* ``medium-expert``: odd episodes expert, even episodes medium (50/50).
* ``random``: uniform-random actions (``training/datasets.py``).

Tasks with a bundled learning run (``sim/learning_runs/``: HalfCheetah, Walker2d, Hopper) take
their tiers from here; the others keep the perturbed scripted experts of ``datasets.py``.
``collect_tier`` is the one entry point. The result has ``datasets.collect``'s arrays, plus
``metadata`` (the learning curve, the chosen iterates, how many replayed rollouts came back
with another return than recorded), written into the file's metadata group.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mtm_runtime.sim.ars import iterate_rollouts, medium_iterate, replay_iterations
from mtm_runtime.sim.learning_run import LearningRun, has_run, load_run
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.datasets import TIERS, action_present_mask, collect, episode_reset_seed

RUN_TIERS = ("expert", "medium", "medium-replay", "medium-expert")


def chosen_iterates(run: LearningRun, task: Task) -> dict[str, int]:
    """The iterates behind the tiers: the expert and the medium one (from the frozen random return)."""
    return {"expert": run.expert_iterate(), "medium": medium_iterate(run, task.reference_returns["random"])[0]}


def collect_from_run(task: Task, run: LearningRun, tier: str, episodes: int, seed: int = 0, workers: int = 1
                     ) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """The episodes of ``tier`` and the metadata saying how they were made."""
    it = chosen_iterates(run, task)
    meta: dict[str, Any] = {"behaviour": "ARS learning run", "learning_run": run.attrs.get("command", ""),
                            "learning_curve": run.curve(), "iterates": it,
                            "learning_run_env_steps": int(run.attrs.get("env_steps", 0))}
    seeds = [episode_reset_seed(seed, i) for i in range(episodes)]
    if tier in ("expert", "medium"):
        eps = iterate_rollouts(run, it[tier], seeds, workers)
    elif tier == "medium-expert":
        by_tier = {t: iterate_rollouts(run, it[t], seeds[i::2], workers) for i, t in ((0, "medium"), (1, "expert"))}
        eps = [by_tier["medium" if i % 2 == 0 else "expert"][i // 2] for i in range(episodes)]
    elif tier == "medium-replay":
        eps, mismatches = replay_iterations(run, range(it["medium"]), workers)
        meta["replayed_iterations"] = it["medium"]
        meta["replay_return_mismatches"] = mismatches
    else:
        raise ValueError(f"tier {tier!r} does not come from a learning run; choose from {', '.join(RUN_TIERS)}")
    return eps, meta


def collect_tier(task: Task | str, tier: str, episodes: int, seed: int = 0, workers: int = 1,
                 action_fraction: float = 1.0, label_seed: int | None = None,
                 progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The dataset of ``tier`` for ``task``: from its learning run where it has one, else from
    the perturbed scripted expert (``datasets.collect``). Returns (arrays, extra metadata)."""
    task = get_task(task) if isinstance(task, str) else task
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose from {', '.join(TIERS)}")
    if not has_run(task.name) or tier not in RUN_TIERS:
        data = collect(task, tier, episodes, seed=seed, workers=workers, action_fraction=action_fraction,
                       progress=progress, label_seed=label_seed)
        return data, {"behaviour": "scripted expert with noise" if tier != "random" else "uniform random"}
    eps, meta = collect_from_run(task, load_run(task.name), tier, episodes, seed, workers)
    present = action_present_mask(seed if label_seed is None else label_seed, len(eps), action_fraction)
    for ep, keep in zip(eps, present):
        if not keep:
            ep["actions"] = np.full_like(ep["actions"], np.nan)
    data = {k: np.concatenate([ep[k] for ep in eps]) for k in eps[0]}
    data["infos/action_present"] = np.concatenate([np.full(len(ep["rewards"]), k) for ep, k in zip(eps, present)])
    data["infos/episode_id"] = np.concatenate([np.full(len(ep["rewards"]), i, np.int32) for i, ep in enumerate(eps)])
    return data, meta
