"""``mtm collect TASK --tier TIER -o FILE.hdf5``: roll out a task's behaviour policies into a D4RL-style file.

Deterministic given ``--seed`` (the same file contents for any ``--workers``). Locomotion tasks
(halfcheetah, walker2d, hopper) take their tiers from their ARS learning run
(``training/run_tiers.py``); the others from the perturbed scripted expert (``training/datasets.py``,
which also documents the file layout).
"""
from __future__ import annotations

import argparse
import sys
import time

from mtm_runtime.arg_types import at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtm_runtime.training.datasets import TIERS

    parser.add_argument("task", help="task name or env id (reacher, inverted_double_pendulum, halfcheetah, walker2d, "
                                     "hopper, pusher)")
    parser.add_argument("--tier", required=True, choices=TIERS)
    parser.add_argument("--episodes", type=at_least(1), default=100,
                        help="episodes (a learning run's medium-replay tier has the run's own count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--action-fraction", type=float, default=1.0,
                        help="fraction of episodes that keep their actions (others: NaN + infos/action_present=False)")
    parser.add_argument("--label-seed", type=int, default=None,
                        help="seed of the draw of labelled episodes (default --seed): same rollouts, other labels")
    parser.add_argument("--workers", type=at_least(1), default=1, help="worker processes (same result for any count)")
    parser.add_argument("-o", "--output", required=True, help="output .hdf5 path")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.datasets import episode_returns, write_hdf5
    from mtm_runtime.training.run_tiers import collect_tier

    try:
        task = get_task(args.task)
    except KeyError as e:
        print(f"mtm collect: {e.args[0]}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    data, meta = collect_tier(task, args.tier, args.episodes, seed=args.seed, workers=args.workers,
                              action_fraction=args.action_fraction, progress=not args.quiet, label_seed=args.label_seed)
    path = write_hdf5(args.output, data, task, args.tier, args.seed, args.action_fraction, args.label_seed, extra=meta)
    dt = time.perf_counter() - t0
    returns = episode_returns(data)
    try:
        score = f"{np.mean([task.normalised_score(r) for r in returns]):.1f}"
    except RuntimeError:
        score = "n/a (no reference returns)"
    steps = len(data["rewards"])
    print(f"wrote {path}: {int(data['infos/episode_id'][-1]) + 1} episodes, {steps} steps in {dt:.1f} s ({steps / dt:.0f} steps/s); "
          f"return {np.mean(returns):.2f} +- {np.std(returns):.2f}, normalised score {score}")
    return 0
