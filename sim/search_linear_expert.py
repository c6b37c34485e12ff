"""Find a linear locomotion expert by Augmented Random Search (ARS, Mania et al. 2018).

    python -m mtm_runtime.sim.search_linear_expert hopper --iterations 400 --out sim/hopper_expert.json

No hand-written controller makes Hopper hop, and there is no GPU here for SAC. ARS (the paper's
"V2-t" variant) finds a *linear* policy on whitened observations with nothing but rollouts:

    a = clip(M (o - mu) / sigma, low, high)                 M: [act_dim, obs_dim], starts at 0

Each iteration draws ``directions`` Gaussian perturbations delta_k, rolls out ``M +- noise delta_k``
(one episode each), keeps the ``top`` directions by max(r+, r-) and steps

    M += step / (top * std(r of the kept)) * sum_k (r+_k - r-_k) delta_k

where r is the episode return minus ``shift`` per step (removes Hopper's alive bonus, so the
search does not settle for standing still). mu and sigma are the running mean and std of every
observation seen so far (updated after each iteration, frozen in the output).

Deterministic for a given ``--seed`` and worker count 1..K (rollout seeds come from the
iteration's generator, workers only evaluate). The result is a JSON file (no pickle) read by
``mtm_runtime.sim.experts.LinearExpert``: ``{"M", "mu", "sigma", "task", "provenance"}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import sys
from typing import Any
import time
from pathlib import Path

import numpy as np

from mtm_runtime.sim.experts import LinearExpert
from mtm_runtime.sim.tasks import get_task

_ENV: dict[str, Any] = {}


def _rollout(job: tuple) -> tuple[float, int, np.ndarray, np.ndarray]:
    """(task, M, mu, sigma, reset seed, shift) -> (shifted return, steps, sum o, sum o^2)."""
    task_name, M, mu, sigma, seed, shift = job
    if task_name not in _ENV:
        _ENV[task_name] = get_task(task_name).make_env()
    env: Any = _ENV[task_name]
    policy = LinearExpert(M, mu, sigma, env.action_space.low, env.action_space.high)
    obs, _ = env.reset(seed=int(seed))
    total, steps = 0.0, 0
    s1, s2 = np.zeros_like(mu), np.zeros_like(mu)
    while True:
        s1 += obs
        s2 += obs * obs
        obs, r, terminated, truncated, _ = env.step(policy(obs))
        total += float(r) - shift
        steps += 1
        if terminated or truncated:
            return total, steps, s1, s2


def evaluate(task_name: str, M: np.ndarray, mu: np.ndarray, sigma: np.ndarray, seeds: list[int], pool) -> np.ndarray:
    """Unshifted returns of the linear policy on the given reset seeds (rollouts in ``pool``)."""
    return np.array([r[0] for r in pool.map(_rollout, [(task_name, M, mu, sigma, s, 0.0) for s in seeds])])


def search(task_name: str, iterations: int, directions: int = 8, top: int = 4, step: float = 0.02,
           noise: float = 0.03, shift: float = 1.0, seed: int = 0, workers: int = 2,
           log=print) -> dict:
    """Run ARS; returns the JSON document of the best policy seen (by its 4-episode evaluation,
    every 10 iterations and at the end)."""
    if iterations < 1 or not 1 <= top <= directions:
        raise ValueError(f"need iterations >= 1 and 1 <= top <= directions; got {iterations}, {top}, {directions}")
    task = get_task(task_name)
    obs_dim, act_dim = task.obs_dim, task.action_dim
    rng = np.random.default_rng(seed)
    M = np.zeros((act_dim, obs_dim))
    n, mean, m2 = 0, np.zeros(obs_dim), np.zeros(obs_dim)      # running statistics (Chan et al.)
    mu, sigma = np.zeros(obs_dim), np.ones(obs_dim)
    best: dict[str, Any] = {"score": -np.inf}
    t0, total_steps = time.time(), 0
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for it in range(iterations):
            deltas = rng.standard_normal((directions, act_dim, obs_dim))
            seeds = rng.integers(0, 2**31 - 1, size=directions)
            jobs = [(task_name, M + sgn * noise * d, mu, sigma, int(s), shift)
                    for d, s in zip(deltas, seeds) for sgn in (1.0, -1.0)]
            res = pool.map(_rollout, jobs)
            r = np.array([x[0] for x in res]).reshape(directions, 2)
            order = np.argsort(-r.max(axis=1))[:top]
            std = float(r[order].std()) or 1.0
            M = M + step / (top * std) * np.einsum("k,kij->ij", r[order, 0] - r[order, 1], deltas[order])
            # observation statistics from every rollout of this iteration
            for _, steps, s1, s2 in res:
                bn, bmean = steps, s1 / steps
                bvar = np.maximum(s2 / steps - bmean ** 2, 0.0)
                delta = bmean - mean
                tot = n + bn
                mean = mean + delta * bn / tot
                m2 = m2 + bvar * bn + delta ** 2 * n * bn / tot
                n = tot
                total_steps += steps
            mu, sigma = mean.copy(), np.sqrt(np.maximum(m2 / max(n - 1, 1), 1e-8))
            if it % 10 == 9 or it == iterations - 1:
                ret = evaluate(task_name, M, mu, sigma, [int(s) for s in rng.integers(0, 2**31 - 1, size=4)], pool)
                log(f"iter {it + 1:4d}  steps {total_steps:9d}  eval return {ret.mean():8.1f} +- {ret.std():6.1f}  "
                    f"({time.time() - t0:6.0f} s)")
                if ret.mean() > float(best["score"]):
                    best = {"score": float(ret.mean()), "M": M.copy(), "mu": mu.copy(), "sigma": sigma.copy(),
                            "iteration": it + 1}
    return {"task": task_name, "M": best["M"].tolist(), "mu": best["mu"].tolist(), "sigma": best["sigma"].tolist(),
            "provenance": {"method": "ARS V2-t (Mania et al. 2018)", "iterations": iterations,
                           "best_iteration": best["iteration"], "search_eval_return": best["score"],
                           "directions": directions, "top": top, "step": step, "noise": noise, "shift": shift,
                           "seed": seed, "env_steps": total_steps,
                           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "command": " ".join(["python -m mtm_runtime.sim.search_linear_expert"] + sys.argv[1:])}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.sim.search_linear_expert", description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--directions", type=int, default=8)
    p.add_argument("--top", type=int, default=4)
    p.add_argument("--step", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.03)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    result = search(a.task, a.iterations, a.directions, a.top, a.step, a.noise, a.shift, a.seed, a.workers,
                    log=lambda s: print(s, flush=True))
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}: best eval return {result['provenance']['search_eval_return']:.1f} "
          f"at iteration {result['provenance']['best_iteration']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
