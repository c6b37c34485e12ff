"""Augmented Random Search (ARS V2-t, Mania et al. 2018) on a locomotion task, recorded as a
learning run (``sim/learning_run.py``): the behaviour policies of the D4RL-style tiers.

    python -m mtm_runtime.sim.ars hopper --iterations 400 --out sim/learning_runs/hopper_ars.h5

No hand-written controller makes Hopper hop, and there is no GPU here for SAC. ARS finds a
*linear* policy on whitened observations with nothing but rollouts, in minutes on two cores:

    a = clip(M (o - mu) / sigma, low, high)                 M: [act_dim, obs_dim], starts at 0

Each iteration draws ``directions`` Gaussian perturbations delta_k, rolls out ``M +- noise delta_k``
(one episode each), keeps the ``top`` directions by max(r+, r-) and steps

    M += step / (top * std(r of the kept)) * sum_k (r+_k - r-_k) delta_k

where r is the episode return minus ``shift`` per step (removes an alive bonus, so the search
does not settle for standing still). mu and sigma are the running mean and std of every
observation seen so far (updated after each iteration). Every ``eval_every`` updates the iterate
is evaluated without perturbation: that learning curve picks the expert (the best evaluated
iterate) and the medium iterate (``LearningRun``).

Deterministic for a given ``--seed`` and any worker count (the draws come from the seed and the
iteration; workers only roll out; results are gathered in order).
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from mtm_runtime.sim.experts import LinearExpert
from mtm_runtime.sim.learning_run import ARSConfig, LearningRun, eval_seeds, iteration_draws, run_path
from mtm_runtime.sim.tasks import get_task

#: Per-task settings, scaled down from the paper's (HalfCheetah N=32 b=4, Walker2d N=40 b=30,
#: Hopper N=8 b=4) to two CPU cores. Walker2d: with N=16 b=8 the search learned to fall at once
#: (return 1.4 after 400 iterations: with the alive bonus shifted out, ending early saves control
#: cost), and with shift 0 it learned to stand (return 1037, 0.3 m in 1000 steps); N=32 b=16
#: walks (3936 at iterate 180, 6.7M env steps).
CONFIGS: dict[str, ARSConfig] = {
    "hopper": ARSConfig(directions=8, top=4, step=0.02, noise=0.03, shift=1.0),
    "walker2d": ARSConfig(directions=32, top=16, step=0.03, noise=0.025, shift=1.0, eval_every=10),
    "halfcheetah": ARSConfig(directions=16, top=4, step=0.02, noise=0.03, shift=0.0),
}

#: One rollout: (task, M, mu, sigma, reset seed, shift, record)
Job = tuple[str, np.ndarray, np.ndarray, np.ndarray, int, float, bool]

_ENV: dict[str, Any] = {}


def rollout(job: Job) -> dict[str, Any]:
    """One episode of a linear policy. Returns its unshifted return, shifted return, length and
    the sums of o and o^2 (for the whitening); with ``record`` also the per-step arrays in the
    D4RL layout (``observations``, ``actions`` as executed, ``rewards``, ``terminals``,
    ``timeouts``, ``next_observations``)."""
    task_name, M, mu, sigma, seed, shift, record = job
    if task_name not in _ENV:
        _ENV[task_name] = get_task(task_name).make_env()
    env: Any = _ENV[task_name]
    policy = LinearExpert(M, mu, sigma, env.action_space.low, env.action_space.high)
    obs, _ = env.reset(seed=int(seed))
    total, steps = 0.0, 0
    s1, s2 = np.zeros(len(mu)), np.zeros(len(mu))
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts",
                                             "next_observations")}
    while True:
        o = np.asarray(obs, np.float64)
        s1 += o
        s2 += o * o
        a = policy(obs)
        next_obs, r, terminated, truncated, _ = env.step(a)
        total += float(r)
        steps += 1
        if record:
            for k, v in zip(rows, (obs, a, r, terminated, truncated, next_obs)):
                rows[k].append(v)
        obs = next_obs
        if terminated or truncated:
            break
    out: dict[str, Any] = {"return": total, "shifted": total - shift * steps, "steps": steps, "s1": s1, "s2": s2}
    if record:
        out["episode"] = {k: np.asarray(v, dtype=bool if k in ("terminals", "timeouts") else np.float32)
                          for k, v in rows.items()}
    return out


def iteration_jobs(run_task: str, seed: int, i: int, cfg: ARSConfig, M: np.ndarray, mu: np.ndarray,
                   sigma: np.ndarray, record: bool = False) -> tuple[np.ndarray, list[Job]]:
    """Iteration ``i``'s perturbations and its 2N rollouts (order: direction k, then + before -)."""
    deltas, seeds = iteration_draws(seed, i, cfg.directions, M.shape[0], M.shape[1])
    return deltas, [(run_task, M + sgn * cfg.noise * d, mu, sigma, int(s), cfg.shift, record)
                    for d, s in zip(deltas, seeds) for sgn in (1.0, -1.0)]


def search(task_name: str, iterations: int, cfg: ARSConfig | None = None, seed: int = 0, workers: int = 2,
           log: Callable[[str], None] = print) -> LearningRun:
    """Run ARS for ``iterations`` updates; every iterate and every rollout's return are kept."""
    cfg = cfg or CONFIGS.get(task_name, ARSConfig())
    cfg.check()
    if iterations < 1:
        raise ValueError(f"need iterations >= 1, got {iterations}")
    task = get_task(task_name)
    obs_dim, act_dim = task.obs_dim, task.action_dim
    M = np.zeros((act_dim, obs_dim))
    n, mean, m2 = 0, np.zeros(obs_dim), np.zeros(obs_dim)      # running statistics (Chan et al.)
    mu, sigma = np.zeros(obs_dim), np.ones(obs_dim)
    Ms, mus, sigmas = [M.copy()], [mu.copy()], [sigma.copy()]
    returns = np.zeros((iterations, cfg.directions, 2))
    lengths = np.zeros((iterations, cfg.directions, 2), np.int32)
    evals: list[tuple[int, list[float]]] = []
    t0, total_steps = time.time(), 0
    with mp.get_context("spawn").Pool(workers) as pool:
        for it in range(iterations):
            deltas, jobs = iteration_jobs(task_name, seed, it, cfg, M, mu, sigma)
            res = pool.map(rollout, jobs)
            r = np.array([x["shifted"] for x in res]).reshape(cfg.directions, 2)
            returns[it] = np.array([x["return"] for x in res]).reshape(cfg.directions, 2)
            lengths[it] = np.array([x["steps"] for x in res]).reshape(cfg.directions, 2)
            order = np.argsort(-r.max(axis=1), kind="stable")[:cfg.top]
            std = float(r[order].std()) or 1.0
            M = M + cfg.step / (cfg.top * std) * np.einsum("k,kij->ij", r[order, 0] - r[order, 1], deltas[order])
            for x in res:                              # whitening from every rollout of this iteration
                bn, bmean = x["steps"], x["s1"] / x["steps"]
                bvar = np.maximum(x["s2"] / x["steps"] - bmean ** 2, 0.0)
                delta = bmean - mean
                tot = n + bn
                mean = mean + delta * bn / tot
                m2 = m2 + bvar * bn + delta ** 2 * n * bn / tot
                n = tot
                total_steps += bn
            mu, sigma = mean.copy(), np.sqrt(np.maximum(m2 / max(n - 1, 1), 1e-8))
            Ms.append(M.copy())
            mus.append(mu.copy())
            sigmas.append(sigma.copy())
            done = it + 1
            if done % cfg.eval_every == 0 or done == iterations:
                seeds = eval_seeds(seed, done, cfg.eval_episodes)
                ev = [x["return"] for x in pool.map(rollout, [(task_name, M, mu, sigma, s, 0.0, False) for s in seeds])]
                evals.append((done, ev))
                log(f"iterate {done:4d}  env steps {total_steps:9d}  eval return {np.mean(ev):8.1f} +- {np.std(ev):6.1f}  "
                    f"({time.time() - t0:6.0f} s)")
    return LearningRun(task=task_name, env_id=task.env_id, seed=seed, config=cfg, M=np.array(Ms), mu=np.array(mus),
                       sigma=np.array(sigmas), returns=returns, lengths=lengths,
                       eval_iterations=np.array([e[0] for e in evals], np.int32),
                       eval_returns=np.array([e[1] for e in evals]),
                       attrs={"env_steps": int(total_steps), "wall_s": round(time.time() - t0, 1),
                              "method": "ARS V2-t (Mania et al. 2018)",
                              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(["python -m mtm_runtime.sim.ars", task_name, f"--iterations {iterations}",
                                                   f"--seed {seed}"])})


def replay_iterations(run: LearningRun, iterations: Sequence[int], workers: int = 1) -> tuple[list[dict], int]:
    """Make the rollouts of the given iterations again, with their per-step arrays, in the run's
    order. Returns (episodes, how many came back with another return than the run recorded: a
    different CPU may round differently, and a locomotion rollout amplifies that)."""
    cfg = run.config
    jobs: list[Job] = []
    for i in iterations:
        M, mu, sigma = run.iterate(i)
        jobs += iteration_jobs(run.task, run.seed, i, cfg, M, mu, sigma, record=True)[1]
    res = _map(jobs, workers)
    recorded = np.concatenate([run.returns[i].reshape(-1) for i in iterations]) if len(iterations) else np.zeros(0)
    mismatches = int(sum(not np.isclose(x["return"], r, rtol=1e-6, atol=1e-6) for x, r in zip(res, recorded)))
    return [x["episode"] for x in res], mismatches


def iterate_rollouts(run: LearningRun, iterate: int, seeds: Sequence[int], workers: int = 1) -> list[dict]:
    """Unperturbed rollouts of one iterate on the given reset seeds, with their per-step arrays."""
    M, mu, sigma = run.iterate(iterate)
    return [x["episode"] for x in _map([(run.task, M, mu, sigma, int(s), 0.0, True) for s in seeds], workers)]


def evaluate_iterate(run: LearningRun, iterate: int, workers: int = 1) -> float:
    """Mean return of an iterate on its evaluation seeds (``eval_seeds``): what the run would have
    logged had it evaluated this iterate."""
    M, mu, sigma = run.iterate(iterate)
    seeds = eval_seeds(run.seed, iterate, run.config.eval_episodes)
    return float(np.mean([x["return"] for x in _map([(run.task, M, mu, sigma, s, 0.0, False) for s in seeds], workers)]))


def medium_iterate(run: LearningRun, random_return: float, fraction: float = 1 / 3, workers: int = 1) -> tuple[int, float]:
    """The first iterate of the run whose mean evaluation return reaches ``fraction`` of the way
    from ``random_return`` to the expert's, to the iterate: the run's learning curve (every
    ``eval_every``) brackets it, and the iterates in between are evaluated the same way. Returns
    (iterate, its mean return)."""
    target = run.medium_target(random_return, fraction)
    curve = run.curve()
    hit = run.first_evaluated_reaching(target)
    below = max([i for i, _ in curve if i < hit] + [0])
    for i in range(below + 1, hit):
        r = evaluate_iterate(run, i, workers)
        if r >= target:
            return i, r
    return hit, dict(curve)[hit]


def _map(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) < 2:
        return [rollout(j) for j in jobs]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(rollout, jobs, chunksize=max(1, len(jobs) // (4 * workers)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.sim.ars", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=sorted(CONFIGS))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="", help="default: the bundled run, sim/learning_runs/<task>_ars.h5")
    a = p.parse_args(argv)
    run = search(a.task, a.iterations, seed=a.seed, workers=a.workers, log=lambda s: print(s, flush=True))
    path = run.save(a.out or run_path(a.task))
    print(f"wrote {path}: expert iterate {run.expert_iterate()} of {run.iterations}, return {run.expert_return():.1f}; "
          f"{run.attrs['env_steps']} env steps, {run.attrs['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
