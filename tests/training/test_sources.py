"""Datasets from outside the benchmark set, written by each format's real writer
(tests/dataset_writers.py), each: import -> train a few steps -> Policy.load -> act().

Minari (its DataCollector, both storage formats, environments outside the benchmark set), a
LeRobotDataset tree (v2.1 and v3.0, written with pyarrow to the documented layout: the lerobot
package would bring a second torch), rosbag2 bags of a synthetic 7-joint arm written by the
rosbags library (MCAP and sqlite3, two controllers at different rates), and plain D4RL-layout
HDF5. Bad input: one line on stderr, exit code 2, nothing written.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dataset_writers import ARM_JOINTS, write_arm_bag, write_arm_robot, write_lerobot, write_minari
from mtm_runtime import cli
from mtm_runtime.checkpoint import load_checkpoint
from mtm_runtime.integrity import CheckpointError
from mtm_runtime.policy import Policy
from mtm_runtime.safety import ActionLimits
from mtm_runtime.sim.tasks import task_for_provenance
from mtm_runtime.training.evaluate import evaluate_agent_path
from mtm_runtime.training.loaders import DatasetError
from mtm_runtime.training.sources import load_dataset
from mtm_runtime.training.train import run
from mtm_runtime.training.train_args import Args

LOCOMOTION = ("HalfCheetah-v5", "Walker2d-v5", "Ant-v5", "Hopper-v5", "Swimmer-v5", "InvertedPendulum-v5")


def small(data: Path, out: Path, **kw) -> Args:
    base = dict(data=str(data), out=str(out), steps=3, batch_size=16, val_every=0, ckpt_every=0, warmup_steps=1,
                val_windows=16, progress=False, plot=False, threads=1)
    return Args(**{**base, **kw})


def act_once(out: Path, limits: ActionLimits | None = None) -> np.ndarray:
    policy = Policy.load(out, limits=limits)
    state = np.zeros(policy.spec.width("states"), np.float32)
    action = policy.act(state)
    assert action.shape == (policy.spec.width("actions"),) and np.all(np.isfinite(action))
    assert np.all(action >= policy.limits.low) and np.all(action <= policy.limits.high)
    return action


def one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and match in err, err
    return err


# ---- Minari ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("minari")


@pytest.mark.parametrize("env_id", LOCOMOTION)
def test_every_locomotion_env_trains_and_evaluates_from_minari(env_id: str, minari_root: Path, tmp_path: Path) -> None:
    """Targets: every Gymnasium MuJoCo locomotion env, no code change (the env id from Minari's metadata)."""
    name = env_id.split("-")[0].lower()
    data = write_minari(minari_root, env_id, f"{name}/random-v0", episodes=3, max_steps=20,
                        ref_min_score=-100.0, ref_max_score=100.0)
    ds = load_dataset(data)
    assert ds.source == "minari" and ds.task.env_id == env_id and ds.widths["returns"] == 1
    assert [ep.length for ep in ds.episodes] == [len(ep["rewards"]) for ep in ds.episodes]
    run(small(data, tmp_path / "run"))
    prov = load_checkpoint(tmp_path / "run").provenance
    assert prov["env_id"] == env_id and prov["dataset"]["format"] == "minari"
    act_once(tmp_path / "run")
    task = task_for_provenance(prov)
    res = evaluate_agent_path(tmp_path / "run", task, "bc", episodes=1, seeds=(0,), workers=1)
    assert np.isfinite(res["return_mean"]) and res["score_mean"] is not None   # Minari's ref scores


def test_minari_arrow_format_and_an_env_without_reference_returns(minari_root: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = write_minari(minari_root, "Pendulum-v1", "pendulum/random-v0", episodes=3, max_steps=25, data_format="arrow")
    ds = load_dataset(data)
    assert ds.task.env_id == "Pendulum-v1" and ds.widths == {"states": 3, "actions": 1, "returns": 1}
    np.testing.assert_array_equal(ds.limits.high, [2.0])          # from the env's action space
    assert cli.main(["train", "--data", str(data), "--steps", "3", "--batch-size", "16", "--val-every", "0",
                     "--out", str(tmp_path / "run"), "--no-progress", "--no-plot"]) == 0
    act_once(tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--episodes", "1", "--seeds", "0", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "Pendulum-v1 bc: return" in out and "no reference returns" in out
    # the same data against an environment whose widths disagree: one line, exit 2, nothing written
    one_line_exit_2(["train", "--data", str(data), "--env", "Hopper-v5", "--out", str(tmp_path / "bad")], capsys,
                    "task hopper needs width 11")
    assert not (tmp_path / "bad").exists()


def test_damaged_minari_dataset_is_one_line(minari_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_minari(minari_root, "Pendulum-v1", "pendulum/damaged-v0", episodes=2, max_steps=10)
    with h5py.File(data / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/actions"]
    one_line_exit_2(["train", "--data", str(data), "--out", str(tmp_path / "x")], capsys, "minari cannot read this dataset")


# ---- LeRobotDataset ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_dataset(version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_lerobot(tmp_path / "lr", version, episodes=4, length=30, rewards=version == "v3.0")
    ds = load_dataset(data)
    assert [ep.length for ep in ds.episodes] == [30] * 4
    assert ("returns" in ds.widths) == (version == "v3.0")        # rewards only where the data has them
    assert any("observation.images.wrist" in n and "not read" in n for n in ds.notes)
    for ep in ds.episodes:   # frames back in frame order (v3 files hold them shuffled): small steps only
        assert np.abs(np.diff(ep["states"], axis=0)).max() < 0.5
    run(small(data, tmp_path / "run"))
    with pytest.raises(CheckpointError, match="no action limits"):
        Policy.load(tmp_path / "run")                                  # the data gave no limits
    act_once(tmp_path / "run", limits=ActionLimits.symmetric(1.0, 6))
    one_line_exit_2(["train", "--data", str(data), "--state-keys", "observation.joints", "--out", str(tmp_path / "x")],
                    capsys, "no feature 'observation.joints' for the state")
    so100 = tmp_path / "so100.yaml"   # the robot file names the dataset's features instead of the flags
    so100.write_text("name: so100\njoints: [m0, m1, m2, m3, m4, m5]\nrate_hz: 30\nstate: {observation: 6}\n"
                     "limits: {low: -3.0, high: 3.0}\ndataset: {state_keys: [observation.state], action_key: action}\n")
    ds = load_dataset(data, robot=so100)
    assert ds.robot.name == "so100" and ds.limits is not None and ds.widths["states"] == 6
    so100.write_text(so100.read_text().replace("action_key: action", "action_key: action.joints"))
    one_line_exit_2(["train", "--data", str(data), "--robot", str(so100), "--out", str(tmp_path / "x")], capsys,
                    "no feature 'action.joints' for the action")
    robot = write_arm_robot(tmp_path / "arm.yaml")                    # 14 state values, 7 joints: not this data
    one_line_exit_2(["train", "--data", str(data), "--robot", str(robot), "--out", str(tmp_path / "x")], capsys,
                    "robot 'synthetic_arm7' describes 14")


# ---- rosbag2 -------------------------------------------------------------------------------------------
def _best_match(states: np.ndarray, actions: np.ndarray) -> list[int]:
    """For each action dimension, the position column it correlates with most."""
    n = actions.shape[1]
    c = np.corrcoef(np.concatenate([actions, states[:, :n]], 1).T)[:n, n:]
    return [int(i) for i in np.argmax(c, axis=1)]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag_import_train_load_act(storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_arm_bag(tmp_path / "bag", storage, episodes=3, seconds=3.0)
    robot = write_arm_robot(tmp_path / "arm.yaml")
    out = tmp_path / "arm.hdf5"
    assert cli.main(["import-bag", str(bag), "--robot", str(robot), "-o", str(out), "--episodes", "marker:/episode_start"]) == 0
    said = capsys.readouterr().out
    assert f"({storage}): 3 episodes" in said
    ds = load_dataset(out)
    assert ds.robot is not None and ds.robot.joints == ARM_JOINTS and ds.widths == {"states": 14, "actions": 7}
    assert ds.limits is not None and all(149 <= ep.length <= 151 for ep in ds.episodes)   # 3 s at 50 Hz
    for ep in ds.episodes:   # joints by name: each commanded joint moves its own measured position
        assert _best_match(ep["states"], ep["actions"]) == list(range(7))
    rep = ds.notes  # nothing about limits: the robot file gave them
    assert not any("no action limits" in n for n in rep)
    run(small(out, tmp_path / "run"))
    prov = load_checkpoint(tmp_path / "run").provenance
    assert prov["robot"]["joints"] == list(ARM_JOINTS)
    act_once(tmp_path / "run")
    # straight from the bag, no intermediate file
    direct = load_dataset(bag, robot=robot)
    assert direct.bag_report is not None and direct.bag_report.topics["/joint_states"]["skipped"] > 0   # 100 Hz -> 50 Hz


def test_rosbag_counts_rules_and_controllers(tmp_path: Path) -> None:
    from mtm_runtime.robot import load_robot
    from mtm_runtime.training.rosbag_import import BagImport, read_bag

    bag = write_arm_bag(tmp_path / "bag", "mcap", episodes=3, seconds=2.0, pause_s=0.5)
    robot = load_robot(write_arm_robot(tmp_path / "arm.yaml"))
    eps, rep = read_bag(bag, BagImport(robot))                 # whole bag: cut only where streams go stale
    assert rep.episodes == 3 and rep.stale_ticks > 0
    c = rep.topics["/joint_states"]
    assert c["messages"] == 3 * 200 and c["used"] + c["skipped"] == c["messages"]
    assert rep.topics["/forward_position_controller/commands"]["messages"] == 3 * 100
    eps, rep = read_bag(bag, BagImport(robot, episodes="length:40"))
    assert all(ep.length <= 40 for ep in eps) and rep.episodes == 9           # 3 x (40 + 40 + ~20)
    eps, rep = read_bag(bag, BagImport(robot, episodes="gap:0.2"))
    assert rep.episodes == 3
    eps, rep = read_bag(bag, BagImport(robot, action_source="derive"))
    assert rep.derived_last_steps_dropped == 3
    np.testing.assert_allclose(eps[0]["actions"][:-1], eps[0]["states"][1:, :7])   # the next measured position
    eps, _ = read_bag(bag, BagImport(robot, action_source="missing"))
    assert not any(ep.labelled for ep in eps)
    # the 10 Hz trajectory controller (joints listed in reverse): needs a longer hold than two 50 Hz periods
    traj = load_robot(write_arm_robot(tmp_path / "traj.yaml", topic="/joint_trajectory_controller/joint_trajectory",
                                      type="JointTrajectory"))
    eps, rep = read_bag(bag, BagImport(traj, max_age_s=0.15))
    assert rep.episodes == 3 and rep.topics["/joint_trajectory_controller/joint_trajectory"]["held"] > 0
    assert _best_match(eps[0]["states"], eps[0]["actions"]) == list(range(7))


def test_bad_bags_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_arm_bag(tmp_path / "bag", "sqlite3", episodes=1, seconds=1.0)
    out = tmp_path / "x.hdf5"
    wrong_joint = write_arm_robot(tmp_path / "j.yaml", joints=(*ARM_JOINTS[:6], "wrist_3"))
    one_line_exit_2(["import-bag", str(bag), "--robot", str(wrong_joint), "-o", str(out)], capsys,
                    "never names joint 'wrist_3'")
    no_topic = write_arm_robot(tmp_path / "t.yaml", topic="/arm_controller/commands")
    one_line_exit_2(["import-bag", str(bag), "--robot", str(no_topic), "-o", str(out)], capsys,
                    "no topic /arm_controller/commands")
    three = write_arm_robot(tmp_path / "3.yaml", joints=ARM_JOINTS[:3])
    one_line_exit_2(["import-bag", str(bag), "--robot", str(three), "-o", str(out)], capsys,
                    "none usable as action")
    one_line_exit_2(["import-bag", str(tmp_path / "nope"), "--robot", str(three), "-o", str(out)], capsys, "no such bag")
    one_line_exit_2(["import-bag", str(bag), "--robot", str(three), "-o", str(out), "--episodes", "gap"], capsys,
                    "--episodes must be")
    one_line_exit_2(["train", "--data", str(bag), "--out", str(tmp_path / "r")], capsys, "needs a robot file")
    assert not out.exists() and not list(tmp_path.glob("*.partial")) and not (tmp_path / "r").exists()


def test_bad_recordings_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mtm import-mcap`` / ``compare-rollouts`` on a file that is no MCAP, a missing file, or a
    robot's rosbag2 (an MCAP without the loop's topics): one line, exit code 2, no output."""
    out = tmp_path / "x.hdf5"
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file\n")
    one_line_exit_2(["import-mcap", str(junk), "-o", str(out)], capsys, "cannot read (InvalidMagic")
    one_line_exit_2(["import-mcap", str(tmp_path / "nope.mcap"), "-o", str(out)], capsys, "no such recording")
    bag = next(write_arm_bag(tmp_path / "bag", "mcap", episodes=1, seconds=1.0).glob("*.mcap"))
    one_line_exit_2(["import-mcap", str(bag), "-o", str(out)], capsys, "no messages on /observation")
    one_line_exit_2(["compare-rollouts", str(junk), str(bag), "--png", str(tmp_path / "c.png")], capsys,
                    "cannot read (InvalidMagic")
    assert not out.exists() and not list(tmp_path.glob("*.partial")) and not (tmp_path / "c.png").exists()


# ---- plain D4RL-layout HDF5 and unknown environments ----------------------------------------------
def test_d4rl_layout_file_without_a_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "walker_medium.hdf5"
    n = 120
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 17)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        t = np.zeros(n, bool)
        t[[39, 79, 119]] = True
        f["timeouts"] = t
    ds = load_dataset(path)
    assert ds.task.name == "walker_medium" and not ds.task.env_id and len(ds.episodes) == 3
    ds = load_dataset(path, env="Walker2d-v5")   # the same file, with its simulator named
    assert ds.task.env_id == "Walker2d-v5" and ds.limits is not None
    one_line_exit_2(["train", "--data", str(path), "--env", "NoSuchEnv-v0", "--out", str(tmp_path / "r")], capsys,
                    "unknown environment 'NoSuchEnv-v0'")
    run(small(path, tmp_path / "run"))   # no simulator: trains; evaluation names what is missing
    one_line_exit_2(["eval", str(tmp_path / "run")], capsys, "no simulator for this checkpoint")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "none.hdf5")
