"""Every dataset a user can bring, to one in-memory form: ``load_dataset(path, ...) -> Dataset``.

Which reader (by what is on disk):

=================================  ==========================================================
a directory with ``meta/info.json``  LeRobotDataset, v2.1 or v3.0 (``training/lerobot_dataset.py``)
a directory with ``data/metadata.json`` or a Minari ``data`` dir   Minari, either storage format
a directory with ``metadata.yaml``, or a ``.mcap`` / ``.db3`` file  rosbag2 (``training/rosbag_import.py``; needs a robot file)
any other file                      HDF5: ours (``mtm collect``, ``mtm import-bag``) or D4RL layout
=================================  ==========================================================

The spec comes from the data: the modality widths are read from the episodes (``returns`` only
where the data has rewards). The task (``Task``: layout, and the simulator where one exists) is,
in order: ``env`` (a benchmark name, any Gymnasium id or a robot file), the robot file, what the
file names (our metadata, Minari's ``env_spec``), else the data alone (no simulator: training
works, rollout evaluation says what is missing). Action limits: the robot file's, else the
environment's action space, else Minari's recorded action space, else none (the checkpoint then
says so and the policy node needs ``action_low``/``action_high``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mtm_runtime.robot import Robot, RobotError, load_robot
from mtm_runtime.safety import ActionLimits
from mtm_runtime.sim.tasks import Task, TaskError, get_task, task_for_data, task_for_robot
from mtm_runtime.training.lerobot_dataset import is_lerobot, read_lerobot
from mtm_runtime.training.loaders import DatasetError, Episode, data_widths, load_hdf5, read_hdf5
from mtm_runtime.training.minari_dataset import load_minari, read_minari
from mtm_runtime.training.rosbag_import import BagImport, BagReport, read_bag

__all__ = ["Dataset", "load_dataset", "load_episodes", "detect_format"]


@dataclass
class Dataset:
    """Episodes plus what the data says about itself."""

    episodes: list[Episode]
    task: Task
    source: str                                   # hdf5 | minari | lerobot | rosbag2
    path: str
    widths: dict[str, int]
    limits: ActionLimits | None = None
    notes: list[str] = field(default_factory=list)
    bag_report: BagReport | None = None

    @property
    def robot(self) -> Robot | None:
        return self.task.robot


def detect_format(path: Path) -> str:
    if path.is_dir():
        if is_lerobot(path):
            return "lerobot"
        if (path / "metadata.yaml").exists():
            return "rosbag2"
        if (path / "data" / "metadata.json").exists() or (path / "metadata.json").exists():
            return "minari"
        raise DatasetError(f"{path}: a directory, but neither a LeRobotDataset (meta/info.json), a Minari dataset "
                           "(data/metadata.json) nor a rosbag2 (metadata.yaml)")
    if path.suffix in (".mcap", ".db3"):
        return "rosbag2"
    return "hdf5"


def load_dataset(path: str | Path, env: str = "", robot: Robot | str | Path | None = None,
                 state_keys: Sequence[str] = (), action_key: str = "", bag: BagImport | None = None) -> Dataset:
    """Read the dataset at ``path`` (see the module docstring); DatasetError with one line on bad input."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    try:
        rob = load_robot(robot) if isinstance(robot, (str, Path)) and str(robot) else robot
        task: Task | None = get_task(env) if env else (task_for_robot(rob) if isinstance(rob, Robot) else None)
    except (RobotError, TaskError) as e:
        raise DatasetError(str(e)) from None
    fmt = detect_format(path)
    notes: list[str] = []
    limits = None
    report = None
    if fmt == "hdf5":
        episodes, task = read_hdf5(path, task)
    elif fmt == "minari":
        episodes, task, meta = read_minari(path, task)
        limits = _box_limits(meta.get("action_space"))
        lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
        if not task.has_reference and isinstance(lo, (int, float)) and isinstance(hi, (int, float)) \
                and _finite(lo) and _finite(hi) and hi != lo:
            task = dataclasses.replace(task, reference_returns={"random": float(lo), "expert": float(hi), "zero": math.nan})
            notes.append(f"normalised scores use the dataset's ref_min_score {lo} / ref_max_score {hi}")
        if not task.env_id:
            env_id = (meta.get("env_spec") or {}).get("id")
            notes.append(f"environment {env_id or '(none named)'} does not install here: training only, no rollout evaluation")
    elif fmt == "lerobot":
        robot_arg = rob if isinstance(rob, Robot) else None   # the flags, else the robot file's dataset keys
        episodes, _info, notes = read_lerobot(path, state_keys or (robot_arg.state_keys if robot_arg else ()),
                                              action_key or (robot_arg.action_key if robot_arg else ""), robot_arg)
    else:
        if not isinstance(rob, Robot):
            raise DatasetError(f"{path}: a rosbag2 needs a robot file (--robot robot.yaml) to say which joints and topics to read")
        cfg = bag or BagImport(rob)
        episodes, report = read_bag(path, cfg)
        notes.append(report.summary())
    widths = data_widths(episodes, str(path))
    if fmt in ("lerobot", "rosbag2"):
        if task is None:   # no --env and no robot file: the data alone gives the layout
            task = task_for_data(path.name, widths["states"], widths["actions"])
        task = task.with_data_widths(widths)
    assert task is not None
    expected = task.modality_widths()
    if expected != widths:
        diff = next(k for k in {**expected, **widths} if expected.get(k) != widths.get(k))
        raise DatasetError(f"{path}: widths disagree with {task.name}: {diff} is {widths.get(diff, 'missing')} in the data, "
                           f"{expected.get(diff, 'missing')} for the task")
    if not any(ep.labelled for ep in episodes):
        notes.append("no episode has actions: the model learns states only until actions are filled (--self-label-at)")
    robot_limits = task.robot.limits if task.robot is not None else None
    limits = robot_limits or limits
    if limits is not None and limits.width != widths["actions"]:
        raise DatasetError(f"{path}: action limits give {limits.width} values, the data's actions are {widths['actions']} wide")
    if limits is None:
        notes.append("no action limits in the data or a robot file: the checkpoint carries none, so the policy node "
                     "needs action_low/action_high")
    return Dataset(episodes, task, fmt, str(path), widths, limits, notes, report)


def load_episodes(path: str | Path, task: Task | str | None = None) -> list[Episode]:
    """The episodes of our HDF5, a D4RL-layout HDF5 or a Minari directory, laid out for ``task``
    (a benchmark name, Gymnasium id or Task; default: what the file names)."""
    return load_minari(path, task) if Path(path).is_dir() else load_hdf5(path, task)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box_limits(space: object) -> ActionLimits | None:
    """Limits of a recorded Box action space (Minari's JSON), if finite."""
    if not isinstance(space, dict) or space.get("type") != "Box":
        return None
    lo, hi = np.asarray(space.get("low", []), np.float64), np.asarray(space.get("high", []), np.float64)
    if lo.size == 0 or lo.shape != hi.shape or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return None
    return ActionLimits(lo.reshape(-1), hi.reshape(-1))
