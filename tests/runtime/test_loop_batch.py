"""LoopBatch: in-process evaluation through the robot's control loop. Each member's commands
equal those of a ControlLoop over a lone Policy with the same LoopConfig (limits narrowed, rate
limit, saturation), a bad state faults only its own row, and an episode reset ramps from rest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export_fixtures import SPEC, make_checkpoint
from mtm_runtime.control_loop import ControlLoop
from mtm_runtime.loop_types import Command, LoopConfig
from mtm_runtime.loop_batch import LoopBatch
from mtm_runtime.policy import Policy
from mtm_runtime.policy_batch import PolicyBatch
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.evaluate import SerialBatch, run_episodes

RATE = 50.0
CONFIG = LoopConfig(rate_hz=RATE, max_rate=0.05, action_low=[-0.3] * SPEC.width("actions"),
                    action_high=[0.3] * SPEC.width("actions"), saturation_s=0.1)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "ck")


def _states(rng: np.random.Generator, n: int) -> np.ndarray:
    return (3.0 * rng.standard_normal((n, SPEC.width("states")))).astype(np.float32)


def test_members_match_lone_control_loops(ckpt: Path) -> None:
    B, steps = 3, 12
    loops = LoopBatch(PolicyBatch.load(ckpt, size=B), CONFIG)
    loops.activate()
    lone = [ControlLoop(Policy.load(ckpt), CONFIG, clock_ns=lambda: 0) for _ in range(B)]
    for loop in lone:
        loop.activate(0.0)
    rng = np.random.default_rng(0)
    for k in range(steps):
        states = _states(rng, B)
        got = loops.step(list(range(B)), states)
        for i in range(B):
            want = lone[i].finish(lone[i].policy.act(states[i], reward=lone[i].take_reward()), 0.0, 0,
                                  (k + 1) / RATE)
            assert isinstance(got[i], Command) and isinstance(want, Command)
            np.testing.assert_allclose(got[i].action, want.action, atol=1e-5)
            loops.on_reward(i, 0.1 * i)
            lone[i].on_reward(0.1 * i)
    assert all(np.all(np.abs(c.action) <= 0.3 + 1e-6) for c in got)  # the narrowed limits held


def test_bad_state_faults_its_row_only(ckpt: Path) -> None:
    loops = LoopBatch(PolicyBatch.load(ckpt, size=2), CONFIG)
    loops.activate()
    states = _states(np.random.default_rng(1), 2)
    states[1, 0] = np.nan
    out = loops.step([0, 1], states)
    assert isinstance(out[0], Command) and out[1] is None
    assert loops.loops[1].stats.rejected_inputs == 1 and loops.counters()["rejected_inputs"] == 1


def test_reset_ramps_from_rest(ckpt: Path) -> None:
    loops = LoopBatch(PolicyBatch.load(ckpt, size=1), CONFIG)
    loops.activate()
    big = np.full((1, SPEC.width("states")), 50.0, np.float32)
    first = [loops.step([0], big)[0].action.copy() for _ in range(20)]
    assert np.all(np.abs(first[0]) <= CONFIG.max_rate + 1e-6)          # ramps from the resting command
    loops.reset(0)
    again = loops.step([0], big)[0]
    assert np.all(np.abs(again.action) <= CONFIG.max_rate + 1e-6)       # and again after a reset
    assert loops.counters()["episode_resets"] == 1


def test_evaluation_runs_the_loop_and_keeps_the_scores() -> None:
    """``run_episodes`` puts a PolicyBatch behind the ControlLoop: with the default config the
    episodes equal those of lone Policies stepped without a loop (same returns, bit for bit on
    CPU torch); with the deployment's rate limit they differ, as the robot's would."""
    bundled = Path(__file__).resolve().parents[2] / "models" / "reacher_embedded"
    task, pairs = get_task("reacher"), [(0, 0), (0, 1)]
    looped = run_episodes(PolicyBatch.load(bundled, size=2), task, "bc", pairs, None)
    lone = run_episodes(SerialBatch([Policy.load(bundled)]), task, "bc", pairs, None)
    key = lambda r: (r["seed"], r["episode"])  # noqa: E731
    assert [r["return"] for r in sorted(looped, key=key)] == [r["return"] for r in sorted(lone, key=key)]
    slow = run_episodes(PolicyBatch.load(bundled, size=2), task, "bc", pairs, None,
                        LoopConfig(rate_hz=50.0, max_rate=0.001))
    assert [r["return"] for r in sorted(slow, key=key)] != [r["return"] for r in sorted(lone, key=key)]
