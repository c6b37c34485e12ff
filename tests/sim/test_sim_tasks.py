"""Task registry contract and domain randomisation (real MuJoCo)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtm_runtime.sim.randomisation import Randomisation
from mtm_runtime.sim.tasks import REFERENCE_RETURNS_PATH, TASKS, actuated_joint_names, get_task


def test_get_task_by_name_and_env_id_and_clear_error() -> None:
    assert get_task("reacher") is TASKS["reacher"]
    assert get_task("Hopper-v5") is TASKS["hopper"]
    with pytest.raises(KeyError, match="unknown environment 'cartpole'.*benchmark tasks: reacher, inverted_double_pendulum"):
        get_task("cartpole")


def test_any_gymnasium_environment_is_a_task() -> None:
    task = get_task("Ant-v5")             # not a benchmark task: read from one instance of the env
    assert (task.obs_dim, task.action_dim, task.episode_steps) == (105, 8, 1000)
    assert task.joint_names[0] == "hip_4" and not task.has_reference
    assert task.robot is not None and task.robot.limits is not None and task.robot.rate_hz == pytest.approx(20.0)
    assert get_task("HalfCheetah-v5") is get_task("halfcheetah")   # a benchmark task by its env id
    assert task.score_or_none(123.0) is None
    with pytest.raises(KeyError, match="not a flat Box"):
        get_task("CartPole-v1")           # discrete actions


@pytest.mark.parametrize("name", list(TASKS))
def test_task_matches_its_environment(name: str) -> None:
    task = TASKS[name]
    env = task.make_env(seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (task.obs_dim,)
    assert env.action_space.shape == (task.action_dim,)
    assert env.spec.max_episode_steps == task.episode_steps
    assert task.rtg_horizon == task.episode_steps
    assert actuated_joint_names(env) == task.joint_names
    # the bundled robot file says the same as the environment
    robot = task.robot
    assert robot is not None and robot.sim_option("env") == task.env_id
    np.testing.assert_array_equal(robot.limits.low, env.action_space.low)
    np.testing.assert_array_equal(robot.limits.high, env.action_space.high)
    assert robot.rate_hz == pytest.approx(1.0 / env.unwrapped.dt)
    parts = task.split_observation(obs)
    widths = task.modality_widths()
    assert list(widths)[:3] == ["states", "actions", "returns"]
    assert parts["states"].shape == (widths["states"],)
    assert ("goals" in parts) == task.has_goal == ("goals" in widths)
    np.testing.assert_array_equal(task.join_observation(parts["states"], parts.get("goals")), obs)
    action = task.make_expert(env)(obs)
    assert action.shape == (task.action_dim,) and np.all(np.isfinite(action))
    env.close()


def test_reacher_goal_is_the_target() -> None:
    task = get_task("reacher")
    env = task.make_env()
    obs, _ = env.reset(seed=3)
    np.testing.assert_allclose(task.split_observation(obs)["goals"], env.unwrapped.data.qpos[2:4])
    assert task.modality_widths() == {"states": 8, "actions": 2, "returns": 1, "goals": 2}


def test_reference_returns_are_frozen_in_json() -> None:
    table = json.loads(REFERENCE_RETURNS_PATH.read_text())
    for name in ("reacher", "inverted_double_pendulum", "hopper", "halfcheetah", "walker2d"):
        task = TASKS[name]
        assert task.reference_returns["random"] == table[name]["random"]
        assert task.reference_returns["expert"] == table[name]["expert"]
        assert task.reference_returns["expert"] > task.reference_returns["random"]
        assert math.isclose(task.normalised_score(table[name]["random"]), 0.0, abs_tol=1e-9)
        assert math.isclose(task.normalised_score(table[name]["expert"]), 100.0)
        assert task.reference_returns["zero"] == table[name]["zero"]  # do-nothing floor, context only
    # Reacher's random return is mostly control cost: doing nothing already scores ~90 there
    assert TASKS["reacher"].normalised_score(table["reacher"]["zero"]) > 80.0
    assert table["reacher"]["zero_success_rate"] == 0.0


def test_success_is_none_where_undefined() -> None:
    task = get_task("hopper")
    env = task.make_env()
    env.reset(seed=0)
    assert task.success(env, {}) is None


def test_randomisation_fixed_scales_and_reproducible_ranges() -> None:
    task = get_task("hopper")
    nominal = task.make_env().unwrapped.model.body_mass.copy()
    env = task.make_env(seed=1, randomisation=Randomisation(mass_scale=2.0, actuator_gain_scale=0.5))
    env.reset(seed=1)
    np.testing.assert_allclose(env.unwrapped.model.body_mass, 2.0 * nominal)
    env.reset(seed=2)  # scales apply to nominal values: no compounding
    np.testing.assert_allclose(env.unwrapped.model.body_mass, 2.0 * nominal)
    assert env.unwrapped.model.actuator_gear[0, 0] == pytest.approx(100.0)
    rand = Randomisation(mass_scale=(0.8, 1.2), friction_scale=(0.5, 1.5))
    a = task.make_env(randomisation=rand)
    b = task.make_env(randomisation=rand)
    _, ia = a.reset(seed=7)
    _, ib = b.reset(seed=7)
    assert ia["randomisation"] == ib["randomisation"]
    assert 0.8 <= ia["randomisation"]["mass_scale"] <= 1.2
    with pytest.raises(ValueError, match="mass_scale"):
        Randomisation(mass_scale=(1.2, 0.8))


def test_randomisation_latency_and_observation_noise() -> None:
    task = get_task("inverted_double_pendulum")
    env = task.make_env(randomisation=Randomisation(action_latency_steps=2))
    ref = task.make_env()
    env.reset(seed=0)
    ref.reset(seed=0)
    push = np.ones(1, np.float32)
    o1, *_ = env.step(push)            # delayed: zeros applied
    r1, *_ = ref.step(np.zeros(1, np.float32))
    np.testing.assert_allclose(o1, r1)
    noisy = task.make_env(randomisation=Randomisation(obs_noise_std=0.1))
    clean = task.make_env()
    on, _ = noisy.reset(seed=0)
    oc, _ = clean.reset(seed=0)
    assert 0 < np.abs(on - oc).max() < 1.0
