"""The worked example (examples/arm7): a 7-joint arm that is not a benchmark task, end to end at
small size through the real tools: ROS 2 demonstrations recorded to MCAP -> mtm import-bag ->
mtm train -> mtm export onnx -> mtm rollout (policy node + sim bridge on the MJCF) -> mtm
compare-rollouts. Target: the policy reaches >= 90% of its demonstrator's success rate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "arm7"
sys.path.insert(0, str(EXAMPLE))

from demonstrator import GOAL_POSE, JOINTS, demo_command  # noqa: E402
from mtm_runtime.robot import load_robot  # noqa: E402
from mtm_runtime.sim.tasks import get_task  # noqa: E402


def test_the_target_is_where_the_goal_pose_puts_the_fingertip() -> None:
    m = mujoco.MjModel.from_xml_path(str(EXAMPLE / "arm7.xml"))
    d = mujoco.MjData(m)
    d.qpos[:7] = GOAL_POSE
    mujoco.mj_forward(m, d)
    np.testing.assert_allclose(d.body("fingertip").xpos, d.body("target").xpos, atol=1e-3)
    robot = load_robot(EXAMPLE / "arm7.yaml")
    assert robot.joints == JOINTS and np.all(robot.limits.high == 2.5)      # limits read from the MJCF
    task = get_task(str(EXAMPLE / "arm7.yaml"))
    env = task.make_env(seed=0)
    for seed in range(5):   # the scripted demonstrator succeeds in the simulator itself
        obs, _ = env.reset(seed=seed)
        for _ in range(task.episode_steps):
            obs, *_ = env.step(demo_command(obs[:7]))
        assert task.success(env)
    env.close()


def test_worked_example_end_to_end(ros_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "arm7"
    env = {**os.environ, **ros_env}
    # The example's 12 demonstrations, 2000 training steps and 10 policy episodes: with 8, 1000 and 5,
    # a busy loop on both cores (realtime demonstrations lose and hold commands) gave policies that
    # missed 1-3 starts of 10 (success 0.7-0.8, the code before and after 2026-12-04 alike); with
    # these, 10 of 10 twice under the same load
    proc = subprocess.run([sys.executable, str(EXAMPLE / "run_example.py"), "-o", str(out), "--demos", "12",
                           "--episodes", "10", "--steps", "2000"], env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo_episodes"] == 12 and summary["policy_episodes"] == 10
    assert summary["demonstrator_success"] >= 0.75, summary
    assert summary["ratio"] >= 0.9, summary
    imp = summary["import"]
    # every recorded state became a step, but for a few at the episode seams (the reset pauses are stale ticks)
    assert imp["episodes"] == 12 and imp["topics"]["/joint_states"]["messages"] == 12 * 60
    assert imp["steps"] >= 12 * 60 - 12, imp
    for stage in ("$ python -m mtm_runtime.cli import-bag", "$ python -m mtm_runtime.cli train",
                  "$ python -m mtm_runtime.cli export onnx", "$ python -m mtm_runtime.cli rollout",
                  "$ python -m mtm_runtime.cli compare-rollouts"):
        assert stage in proc.stdout
    compare = json.loads((out / "compare.json").read_text())
    assert compare and (out / "compare.png").stat().st_size > 0
