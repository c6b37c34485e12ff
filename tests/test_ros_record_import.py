"""Recording and import over real rclpy + Fast DDS: a lockstep rollout through the launch node set
is recorded to MCAP, imported into our HDF5 layout, loaded with ``load_episodes`` and trained on
for a few steps; ``mtm compare-rollouts`` on two recordings; ``mtm record`` as a CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mcap_ros2")

from mtm_runtime.recording import message_definition, read_messages, summary  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]


def _lockstep(tmp: Path, ckpt: Path, name: str, episodes: int = 2, seed: int = 5):
    from ros_nodes.closed_loop import run_closed_loop

    return run_closed_loop(str(ckpt), log_dir=tmp / f"{name}_logs", task="reacher", sim_mode="lockstep",
                           episodes=episodes, record=tmp / f"{name}.mcap",
                           policy_params={"mask_mode": "bc", "warmup_iters": 2, "stale_timeout": 5.0,
                                          "control_rate_hz": 50.0},
                           bridge_params={"seed": seed}, startup_timeout_s=60.0)


def _goal_free_checkpoint(directory: Path) -> Path:
    """Untrained Reacher-width MTM without a goals modality, run in ``bc``: its actions depend only
    on the recorded states, so the recording can be replayed exactly (a goal-mode policy would
    depend on whether /goal or the episode's first observation reached the node first)."""
    import torch

    from mtm_runtime.checkpoint import save_checkpoint
    from mtm_runtime.model import MTM, MTMConfig
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.safety import ActionLimits
    from mtm_runtime.spec import TrajectorySpec

    spec = TrajectorySpec.create(4, states=8, actions=2, returns=1)
    torch.manual_seed(0)
    model = MTM(spec, MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2))
    return save_checkpoint(directory, model, Normaliser.identity(spec), ActionLimits.symmetric(1.0, 2),
                           provenance={"note": "untrained test checkpoint"})


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory):
    """Two lockstep recordings of the same checkpoint and seeds (deterministic: identical states)."""
    import os

    from conftest import fresh_domain_id

    tmp = tmp_path_factory.mktemp("rec")
    old = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ.update(ROS_DOMAIN_ID=str(fresh_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    try:
        ckpt = _goal_free_checkpoint(tmp / "ckpt")
        a = _lockstep(tmp, ckpt, "a")
        b = _lockstep(tmp, ckpt, "b")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp, a, b


def test_message_definitions_decode_with_mcap_ros2() -> None:
    from mcap_ros2._dynamic import generate_dynamic

    for t in ("sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray", "diagnostic_msgs/msg/DiagnosticArray"):
        text = message_definition(t)
        assert t in generate_dynamic(t, text)
    assert "MSG: builtin_interfaces/Time" in message_definition("sensor_msgs/msg/JointState")


def test_record_import_load_and_train(recordings, tmp_path: Path) -> None:
    from sim.tasks import get_task
    from training.loaders import load_episodes
    from training.mcap_import import import_to_hdf5
    from training.quick import train_on_episodes

    tmp, a, _ = recordings
    assert [e["steps"] for e in a.episodes] == [50, 50]
    info = summary(a.record_path)
    assert info["topics"]["/commands"]["type"] == "std_msgs/msg/Float64MultiArray"
    assert info["topics"]["/observation"]["messages"] == 100 and info["metadata"]["mtm_runtime"]["task"] == "reacher"
    path, rep = import_to_hdf5(a.record_path, "reacher", tmp_path / "data.hdf5")
    assert rep.episodes == 2 and rep.steps == 100 and rep.pairing == "arrival"
    assert rep.held <= 1  # lockstep: every state's command is recorded (the very first may precede the subscription)
    eps = load_episodes(path)
    assert [e.length for e in eps] == [50, 50]
    for ep, reported in zip(eps, a.episodes):  # rewards (last one derived from the reported return) sum up
        assert float(ep["rewards"].sum()) == pytest.approx(reported["return"], abs=1e-4)
        assert ep.present["actions"] and np.all(np.abs(ep["actions"]) <= 1.0)
    task = get_task("reacher")
    # the recorded goal is the bridge's goal of that episode, in every step
    assert np.allclose(eps[0]["goals"], eps[0]["goals"][0])
    # commands are the policy's actions on the recorded states: replay them in process
    from mtm_runtime.policy import Policy

    pol = Policy.load(tmp / "ckpt", mode="bc", threads=1)
    pol.reset()
    replay = [pol.act(s).copy() for s in eps[1]["states"][:10]]
    assert np.allclose(replay, eps[1]["actions"][:10], atol=1e-5)
    _, hist = train_on_episodes(task, eps, None, steps=3, batch_size=8)
    assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)


def test_compare_rollouts_cli(recordings, tmp_path: Path) -> None:
    tmp, a, b = recordings
    out = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "compare-rollouts", a.record_path, b.record_path,
                          "--png", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "states" in out.stdout and "actions" in out.stdout and (tmp_path / "c.png").stat().st_size > 1000
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["matched_steps"] == 100, (res["episodes"], a.recorded, b.recorded)
    states = [r for r in res["rows"] if r["modality"] == "states"]
    assert len(states) == 8 and all(r["rmse"] < 1e-9 for r in states)  # lockstep, same seeds: identical
    assert len([r for r in res["rows"] if r["modality"] == "actions"]) == 2


def test_mtm_record_cli(ros_env, tmp_path: Path) -> None:
    from ros_harness import Graph

    from std_msgs.msg import Float64

    out = tmp_path / "r.mcap"
    proc = subprocess.Popen([sys.executable, "-m", "mtm_runtime.cli", "record", "--topics", "reward", "/nothing_here",
                             "-o", str(out), "--duration", "6"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with Graph() as g:
            from rclpy.qos import QoSProfile, ReliabilityPolicy

            pub = g.publisher(Float64, "reward", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            g.start()
            deadline = time.monotonic() + 20
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pub.get_subscription_count() > 0, "mtm record never subscribed"
            time.sleep(0.3)
            for i in range(20):
                pub.publish(Float64(data=float(i)))
                time.sleep(0.01)
            text, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert "never published: /nothing_here" in text
    vals = [r.msg.data for r in read_messages(out, ["/reward"])]
    assert vals == [float(i) for i in range(20)]
