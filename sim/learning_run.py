"""A recorded learning run: every iterate of a linear policy search and the returns of every
rollout it made, stored as HDF5 (no pickle), the way D4RL made its data from a training run.

File layout (written by ``mtm_runtime.sim.ars``; ``I`` iterations, ``N`` directions):

=======================  ===========================  ======================================
key                      shape / dtype                meaning
=======================  ===========================  ======================================
M                        [I+1, act, obs] float64      iterate i = the policy after i updates
mu, sigma                [I+1, obs] float64           the whitening iterate i acts with
returns                  [I, N, 2] float64            return of iteration i's rollouts of
                                                      ``M[i] + noise delta_k`` (0) and ``- ...`` (1)
lengths                  [I, N, 2] int32              their lengths (steps)
eval_iterations          [E] int32                    iterates evaluated without perturbation
eval_returns             [E, eval_episodes] float64   their returns
attrs                    task, env_id, seed, config (JSON), env_steps, wall_s, created, command,
                         generator_version
=======================  ===========================  ======================================

Iteration i's perturbations and reset seeds come from ``SeedSequence([seed, i])`` and the
evaluation seeds of iterate i from ``SeedSequence([seed, i, 1])`` (``iteration_draws``,
``eval_seeds``), so any rollout of the run can be made again from the file alone: that is how
the medium-replay tier holds "every rollout of the run up to the medium iterate" without storing
millions of steps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mtm_runtime.fileio import atomic_path

GENERATOR_VERSION = "mtm_runtime.ars/1"
RUNS_DIR = Path(__file__).with_name("learning_runs")


def run_path(task_name: str) -> Path:
    """Where the bundled learning run of a benchmark task lives (it may not exist)."""
    return RUNS_DIR / f"{task_name}_ars.h5"


def has_run(task_name: str) -> bool:
    return run_path(task_name).exists()


@dataclass(frozen=True)
class ARSConfig:
    """ARS V2-t hyperparameters (Mania et al. 2018, Algorithm 2 with the top-b directions)."""

    directions: int = 8       # N: perturbations per iteration (2N rollouts)
    top: int = 4              # b: directions kept by max(r+, r-)
    step: float = 0.02        # alpha
    noise: float = 0.03       # nu
    shift: float = 0.0        # subtracted from every reward while searching (removes an alive bonus)
    eval_every: int = 5       # evaluate the iterate every this many updates (and the last)
    eval_episodes: int = 4

    def check(self) -> None:
        if not 1 <= self.top <= self.directions or self.eval_every < 1 or self.eval_episodes < 1:
            raise ValueError(f"ARS config needs 1 <= top <= directions, eval_every >= 1, eval_episodes >= 1; got {self}")


def iteration_draws(seed: int, iteration: int, directions: int, act_dim: int, obs_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(deltas [N, act, obs], reset seeds [N]) of one iteration: a pure function of its arguments."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, iteration]))
    return rng.standard_normal((directions, act_dim, obs_dim)), rng.integers(0, 2**31 - 1, size=directions)


def eval_seeds(seed: int, iterate: int, episodes: int) -> list[int]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, iterate, 1]))
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=episodes)]


@dataclass
class LearningRun:
    """A learning run in memory (see the module docstring for the arrays)."""

    task: str
    env_id: str
    seed: int
    config: ARSConfig
    M: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray
    eval_iterations: np.ndarray
    eval_returns: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return int(self.returns.shape[0])

    def iterate(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M, mu, sigma) of iterate ``i`` (0 = the zero policy, ``iterations`` = the final one)."""
        if not 0 <= i <= self.iterations:
            raise IndexError(f"{self.task} learning run has iterates 0..{self.iterations}, not {i}")
        return self.M[i], self.mu[i], self.sigma[i]

    def curve(self) -> list[tuple[int, float]]:
        """The learning curve: (iterate, mean evaluation return) at every evaluated iterate."""
        return [(int(i), float(r.mean())) for i, r in zip(self.eval_iterations, self.eval_returns)]

    def expert_iterate(self) -> int:
        """The evaluated iterate with the best mean return (the last one on a tie): the run's
        expert. Not simply the last iterate: ARS iterates oscillate (HalfCheetah's run ends at
        2875 +- 993 after 4124 +- 25 at iterate 195), where D4RL's SAC experts had settled."""
        curve = self.curve()
        best = max(r for _, r in curve)
        return max(i for i, r in curve if r == best)

    def expert_return(self) -> float:
        return dict(self.curve())[self.expert_iterate()]

    def medium_target(self, random_return: float, fraction: float = 1 / 3) -> float:
        """The return of D4RL's medium policy, "a policy trained to about a third of the expert's
        performance": ``fraction`` of the way from ``random_return`` to the expert iterate's."""
        return random_return + fraction * (self.expert_return() - random_return)

    def first_evaluated_reaching(self, target: float) -> int:
        """The first evaluated iterate whose mean return reaches ``target`` (the expert iterate if
        none does); ``sim/ars.medium_iterate`` refines it between evaluations."""
        return next((i for i, r in self.curve() if r >= target), self.expert_iterate())

    def save(self, path: str | Path) -> Path:
        """Write atomically (``.partial`` then rename)."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for key in ("M", "mu", "sigma", "returns", "lengths", "eval_iterations", "eval_returns"):
                f.create_dataset(key, data=getattr(self, key), compression="gzip", compression_opts=4)
            f.attrs.update({"task": self.task, "env_id": self.env_id, "seed": int(self.seed),
                            "config": json.dumps(self.config.__dict__), "generator_version": GENERATOR_VERSION,
                            **{k: v for k, v in self.attrs.items() if k not in ("task", "env_id", "seed", "config")}})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LearningRun":
        path = Path(path)
        try:
            with h5py.File(path, "r") as f:
                arrays = {k: np.asarray(f[k]) for k in ("M", "mu", "sigma", "returns", "lengths", "eval_iterations",
                                                        "eval_returns")}
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        except (OSError, KeyError) as e:
            raise ValueError(f"{path}: not a learning run file ({e})") from None
        config = ARSConfig(**json.loads(str(attrs["config"])))
        run = cls(task=str(attrs["task"]), env_id=str(attrs["env_id"]), seed=int(attrs["seed"]), config=config,
                  attrs=attrs, **arrays)
        n = run.iterations
        if run.M.shape[0] != n + 1 or run.mu.shape[0] != n + 1 or run.lengths.shape != run.returns.shape:
            raise ValueError(f"{path}: inconsistent learning run (M {run.M.shape}, returns {run.returns.shape})")
        return run


def load_run(task_name: str) -> LearningRun:
    path = run_path(task_name)
    if not path.exists():
        raise FileNotFoundError(f"no learning run for {task_name!r} (expected {path}; make it with "
                                f"python -m mtm_runtime.sim.ars {task_name} --out {path})")
    return LearningRun.load(path)
