"""Datasets written by the real writers of each format, for the source tests and benchmarks.

* Minari: Minari's own ``DataCollector`` around a Gymnasium environment (either storage format).
* LeRobotDataset: the ``lerobot`` package needs a second torch stack, so the tree is written with
  pyarrow following LeRobot's documented layout (``meta/info.json`` + parquet under ``data/``),
  v2.1 (one parquet file per episode) and v3.0 (several episodes per file).
* rosbag2: the ``rosbags`` library's writer, MCAP or sqlite3 storage, from a synthetic 7-joint arm
  whose joints follow a forward position controller (50 Hz) with a first-order lag, measured at
  100 Hz, and a trajectory controller (10 Hz) publishing the same targets.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ARM_JOINTS = tuple(f"arm_joint_{i}" for i in range(1, 8))
ARM_ROBOT_YAML = """\
name: synthetic_arm7
joints: [{joints}]
rate_hz: {rate}
state: {{fields: [position, velocity]}}
action: {{interface: position, topic: {topic}, type: {type}}}
limits: {{low: -2.0, high: 2.0}}
"""


def write_arm_robot(path: Path, rate: float = 50.0, topic: str = "/forward_position_controller/commands",
                    type: str = "Float64MultiArray", joints: Sequence[str] = ARM_JOINTS) -> Path:
    path.write_text(ARM_ROBOT_YAML.format(joints=", ".join(joints), rate=rate, topic=topic, type=type))
    return path


# ---- Minari ---------------------------------------------------------------------------------------
def write_minari(root: Path, env_id: str, dataset_id: str, episodes: int, max_steps: int, data_format: str = "hdf5",
                 seed: int = 0, policy: Callable | None = None, **create_kwargs) -> Path:
    """Collect ``episodes`` with Minari's DataCollector (random actions unless ``policy``) and
    return the dataset's directory under ``root``."""
    import gymnasium as gym
    from minari import DataCollector

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        env = DataCollector(gym.make(env_id, max_episode_steps=max_steps), data_format=data_format)
        env.action_space.seed(seed)
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            while True:
                action = env.action_space.sample() if policy is None else policy(obs)
                obs, _, term, trunc, _ = env.step(action)
                if term or trunc:
                    break
        env.create_dataset(dataset_id, algorithm_name="random" if policy is None else "scripted",
                           description="test data", **create_kwargs)
        env.close()
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root / dataset_id


# ---- LeRobotDataset -------------------------------------------------------------------------------
def write_lerobot(root: Path, version: str = "v2.1", episodes: int = 3, length: int = 40, state_dim: int = 6,
                  action_dim: int = 6, rewards: bool = False, fps: int = 30, seed: int = 0) -> Path:
    """A LeRobotDataset tree (no videos written, but a video feature declared, as real ones have)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    features = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": [f"motor_{i}" for i in range(state_dim)]},
        "action": {"dtype": "float32", "shape": [action_dim], "names": [f"motor_{i}" for i in range(action_dim)]},
        "observation.images.wrist": {"dtype": "video", "shape": [96, 128, 3], "names": ["height", "width", "channels"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if rewards:
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
        features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    v3 = version.startswith("v3")
    info = {"codebase_version": version, "robot_type": "so100", "total_episodes": episodes,
            "total_frames": episodes * length, "total_tasks": 1, "chunks_size": 1000, "fps": fps,
            "splits": {"train": f"0:{episodes}"}, "features": features,
            "data_path": ("data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3
                          else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"),
            "video_path": ("videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3
                           else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    tables = []
    for e in range(episodes):
        state = np.cumsum(rng.normal(0, 0.05, (length, state_dim)), axis=0).astype(np.float32)
        action = np.roll(state[:, :action_dim], -1, axis=0)
        cols = {"observation.state": pa.array(list(state), pa.list_(pa.float32(), state_dim)),
                "action": pa.array(list(action), pa.list_(pa.float32(), action_dim)),
                "timestamp": pa.array(np.arange(length, dtype=np.float32) / fps),
                "frame_index": pa.array(np.arange(length, dtype=np.int64)),
                "episode_index": pa.array(np.full(length, e, np.int64)),
                "index": pa.array(np.arange(e * length, (e + 1) * length, dtype=np.int64)),
                "task_index": pa.array(np.zeros(length, np.int64))}
        if rewards:
            cols["next.reward"] = pa.array(-np.abs(state[:, 0]))
            cols["next.done"] = pa.array(np.arange(length) == length - 1)
        tables.append(pa.table(cols))
    if v3:   # several episodes per file; the rows of one file in a shuffled order, as nothing promises order
        out = root / "data" / "chunk-000"
        out.mkdir(parents=True, exist_ok=True)
        half = (episodes + 1) // 2
        for k, group in enumerate((tables[:half], tables[half:])):
            if group:
                t = pa.concat_tables(group)
                pq.write_table(t.take(pa.array(rng.permutation(len(t)))), out / f"file-{k:03d}.parquet")
        (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "move"}) + "\n")
    else:
        out = root / "data" / "chunk-000"
        out.mkdir(parents=True, exist_ok=True)
        for e, t in enumerate(tables):
            pq.write_table(t, out / f"episode_{e:06d}.parquet")
        (root / "meta" / "episodes.jsonl").write_text(
            "".join(json.dumps({"episode_index": e, "tasks": ["move"], "length": length}) + "\n" for e in range(episodes)))
    return root


# ---- rosbag2 ----------------------------------------------------------------------------------------
def arm_targets(t: np.ndarray, episode: int) -> np.ndarray:
    """The scripted arm's commanded positions at times ``t`` (s) of ``episode``: a slow sinusoid per joint."""
    k = np.arange(1, len(ARM_JOINTS) + 1)
    return 0.8 * np.sin(0.5 * k[None, :] * t[:, None] + 0.7 * episode + 0.3 * k[None, :])


def write_arm_bag(path: Path, storage: str = "mcap", episodes: int = 3, seconds: float = 4.0, pause_s: float = 1.0,
                  state_hz: float = 100.0, forward_hz: float = 50.0, trajectory_hz: float = 10.0,
                  marker_topic: str = "/episode_start", extra_joint: bool = True, lag: float = 0.2) -> Path:
    """A rosbag2 of ``episodes`` runs of the synthetic arm, separated by ``pause_s`` of silence.

    Topics: ``/joint_states`` (JointState, ``state_hz``, joints in a shuffled order plus a gripper
    joint), ``/forward_position_controller/commands`` (Float64MultiArray, ``forward_hz``),
    ``/joint_trajectory_controller/joint_trajectory`` (JointTrajectory, ``trajectory_hz``, joints
    reversed) and ``marker_topic`` (std_msgs/Empty at each episode start). The joints move toward
    the latest forward command: ``q += lag * (cmd - q)`` every state period.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    JointState, F64A = T["sensor_msgs/msg/JointState"], T["std_msgs/msg/Float64MultiArray"]
    Layout = T["std_msgs/msg/MultiArrayLayout"]
    Traj, Point = T["trajectory_msgs/msg/JointTrajectory"], T["trajectory_msgs/msg/JointTrajectoryPoint"]
    Duration, Empty = T["builtin_interfaces/msg/Duration"], T["std_msgs/msg/Empty"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    order = [3, 0, 6, 1, 5, 2, 4]
    names = [ARM_JOINTS[i] for i in order] + (["gripper_finger"] if extra_joint else [])
    events: list[tuple[int, str, object]] = []
    t0 = 1_700_000_000.0
    q = np.zeros(len(ARM_JOINTS))
    start = t0
    for e in range(episodes):
        tt = np.arange(0, seconds, 1.0 / state_hz)
        cmd_t = np.arange(0, seconds, 1.0 / forward_hz)
        cmds = arm_targets(cmd_t, e)
        events.append((int((start - 0.001) * 1e9), marker_topic, Empty()))
        for i, t in enumerate(cmd_t):
            events.append((int((start + t + 0.002) * 1e9), "/forward_position_controller/commands",
                           F64A(layout=Layout(dim=[], data_offset=0), data=cmds[i].astype(np.float64))))
        for t in np.arange(0, seconds, 1.0 / trajectory_hz):
            target = arm_targets(np.array([t]), e)[0]
            rev = list(range(len(ARM_JOINTS)))[::-1]
            events.append((int((start + t + 0.003) * 1e9), "/joint_trajectory_controller/joint_trajectory",
                           Traj(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""),
                                joint_names=[ARM_JOINTS[i] for i in rev],
                                points=[Point(positions=target[rev].astype(np.float64), velocities=np.zeros(0),
                                              accelerations=np.zeros(0), effort=np.zeros(0),
                                              time_from_start=Duration(sec=0, nanosec=100_000_000))])))
        prev = q.copy()
        for t in tt:
            k = min(int(np.floor((t + 1e-9) * forward_hz)), len(cmd_t) - 1)
            cmd = cmds[k] if t >= cmd_t[0] + 0.002 else q
            q = q + lag * (cmd - q)
            vel = (q - prev) * state_hz
            prev = q.copy()
            stamp = start + t
            pos = np.concatenate([q[order], [0.01]]) if extra_joint else q[order]
            v = np.concatenate([vel[order], [0.0]]) if extra_joint else vel[order]
            events.append((int(stamp * 1e9), "/joint_states",
                           JointState(header=Header(stamp=Time(sec=int(stamp), nanosec=int((stamp % 1) * 1e9)), frame_id=""),
                                      name=names, position=pos.astype(np.float64), velocity=v.astype(np.float64),
                                      effort=np.zeros(len(names)))))
        start += seconds + pause_s
    events.sort(key=lambda ev: ev[0])
    types = {"/joint_states": "sensor_msgs/msg/JointState",
             "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
             "/joint_trajectory_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
             marker_topic: "std_msgs/msg/Empty"}
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {topic: w.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in types.items()}
        for t_ns, topic, msg in events:
            w.write(conns[topic], t_ns, ts.serialize_cdr(msg, types[topic]))
    return path
