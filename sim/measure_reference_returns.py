"""Measure and freeze the reference returns of every task into ``sim/reference_returns.json``.

    python -m mtm_runtime.sim.measure_reference_returns [--episodes 20] [--tasks reacher hopper ...]

random = uniform-random actions (action space seeded per episode); expert = the noise-free
scripted expert of ``sim/experts.py``; zero = the do-nothing floor (zeros clipped into the action
space, the ``zeros`` fault action), stored for context only: the normalised score stays
0 = random, 100 = expert. On Reacher the floor scores ~90, because the random policy's return is
mostly its control cost, so there a score near 100 says little and the success rate is the
informative number. Episode ``i`` resets with seed ``SEED_BASE + i``. Run once; the numbers are
then read (never recomputed) by ``mtm_runtime.sim.tasks``.
"""
from __future__ import annotations

import argparse
import datetime
import json

import numpy as np

from mtm_runtime.safety import ActionLimits, FaultAction
from mtm_runtime.sim.tasks import REFERENCE_RETURNS_PATH, TASKS, Task

SEED_BASE = 10_000


def rollout(task: Task, policy: str, seed: int) -> tuple[float, bool | None, int]:
    """One episode; returns (return, success or None, length)."""
    env = task.make_env(seed=seed)
    obs, _ = env.reset(seed=seed)
    if policy == "expert":
        act = task.make_expert(env)
    elif policy == "zero":
        still = FaultAction("zeros", ActionLimits(env.action_space.low, env.action_space.high)).action()
        act = lambda _o: still  # noqa: E731
    else:
        act = lambda _o: env.action_space.sample()  # noqa: E731
    total, steps, info = 0.0, 0, {}
    while True:
        obs, r, terminated, truncated, info = env.step(act(obs))
        total, steps = total + float(r), steps + 1
        if terminated or truncated:
            break
    ok = task.success(env, info)
    env.close()
    return total, ok, steps


def measure(task: Task, episodes: int) -> dict:
    out: dict = {"episodes": episodes, "seeds": [SEED_BASE, SEED_BASE + episodes - 1]}
    for policy in ("random", "expert", "zero"):
        runs = [rollout(task, policy, SEED_BASE + i) for i in range(episodes)]
        rets = np.array([r[0] for r in runs])
        out[policy] = round(float(rets.mean()), 4)
        out[f"{policy}_std"] = round(float(rets.std()), 4)
        out[f"{policy}_mean_length"] = float(np.mean([r[2] for r in runs]))
        if runs[0][1] is not None:
            out[f"{policy}_success_rate"] = float(np.mean([r[1] for r in runs]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--tasks", nargs="*", default=None,
                   help="tasks to (re)measure; default: those already frozen (a new task is named explicitly, "
                        "so pusher, whose expert is unfinished, is never frozen by accident)")
    args = p.parse_args(argv)
    table = json.loads(REFERENCE_RETURNS_PATH.read_text()) if REFERENCE_RETURNS_PATH.exists() else {}
    for name in args.tasks if args.tasks is not None else [t for t in TASKS if t in table]:
        entry = measure(TASKS[name], args.episodes)
        entry["measured"] = datetime.date.today().isoformat()
        table[name] = entry
        print(name, json.dumps(entry))
    REFERENCE_RETURNS_PATH.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE_RETURNS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
