"""Scripted experts reach their reference scores (real MuJoCo, seeded episodes)."""
from __future__ import annotations

import numpy as np

from sim.experts import IDPExpert
from sim.tasks import get_task


def _episode(task, seed: int):
    env = task.make_env(seed=seed)
    obs, _ = env.reset(seed=seed)
    expert = task.make_expert(env)
    total, steps, info = 0.0, 0, {}
    while True:
        obs, r, terminated, truncated, info = env.step(expert(obs))
        total, steps = total + r, steps + 1
        if terminated or truncated:
            return total, steps, task.success(env, info)


def test_reacher_expert_succeeds_on_90_percent() -> None:
    task = get_task("reacher")
    runs = [_episode(task, seed) for seed in range(10)]
    assert np.mean([ok for _, _, ok in runs]) >= 0.9
    score = np.mean([task.normalised_score(r) for r, _, _ in runs])
    assert score > 80


def test_idp_lqr_survives_full_episode() -> None:
    task = get_task("inverted_double_pendulum")
    for seed in (0, 1):
        ret, steps, _ = _episode(task, seed)
        assert steps == 1000
        assert task.normalised_score(ret) > 95


def test_idp_lqr_closed_loop_is_stable() -> None:
    env = get_task("inverted_double_pendulum").make_env()
    from sim.experts import linearise_step

    A, B = linearise_step(env.unwrapped.model, env.unwrapped.frame_skip)
    K = IDPExpert(env.unwrapped.model).K
    assert max(abs(np.linalg.eigvals(A))) > 1.0          # upright is unstable open loop
    assert max(abs(np.linalg.eigvals(A - B @ K))) < 1.0  # and stable with LQR


def test_hopper_balance_expert_stands_for_the_episode() -> None:
    task = get_task("hopper")
    ret, steps, _ = _episode(task, 0)
    assert steps == 1000
    assert abs(ret - task.reference_returns["expert"]) < 20
