"""rosbag2 messages -> numpy rows, per the robot description (the reading half of ``training/rosbag_import.py``).

A message is read in one of three ways: a JointState's fields of the robot's joints, picked by
name (``mtm_runtime/joint_order.py``: any order, other joints ignored); a command (Float64MultiArray
``data``, a JointTrajectory's first point, a JointState's field of the action interface); or any
numeric field by its path (``TOPIC:field.path``). A message that does not fit (a missing joint, a
field of another width) gives None: the :class:`Stream` counts it as unusable, and
:class:`Decoders` keeps the joints each topic lacked, for the error the import raises when no
message of a topic fits. The messages are ``rosbags`` classes (no rclpy).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mtm_runtime.joint_order import MissingJointsError, joint_order
from mtm_runtime.robot import Robot
from mtm_runtime.training.loaders import DatasetError

__all__ = ["BagError", "Decoders", "Stream", "message_field", "message_time", "split_path"]

_TRAJECTORY_FIELDS = {"position": "positions", "velocity": "velocities", "effort": "effort"}


class BagError(DatasetError):
    """The bag does not match the robot file or the options; the message names the topic or joint."""


def split_path(spec: str, what: str) -> tuple[str, str]:
    """``TOPIC:field.path`` -> (topic, field path); ``what`` names the option in the error."""
    if ":" not in spec:
        raise BagError(f"{what} {spec!r} must be TOPIC:FIELD (e.g. /goal:data)")
    topic, path = spec.rsplit(":", 1)
    return topic, path


def message_field(msg: Any, path: str, topic: str) -> np.ndarray:
    """The numeric field at ``path`` (dotted) of ``msg``, as a float64 vector."""
    obj = msg
    for part in path.split("."):
        if not hasattr(obj, part):
            raise BagError(f"topic {topic}: message {type(msg).__name__} has no field {path!r}")
        obj = getattr(obj, part)
    arr = np.asarray(obj, dtype=np.float64).reshape(-1)
    return arr


def message_time(msg: Any, log_ns: int, mode: str) -> int:
    """The message's time (ns): ``header.stamp`` where ``mode`` is ``header`` and it has a nonzero
    one, else the bag's receive time ``log_ns``."""
    if mode == "header" and hasattr(msg, "header"):
        s = msg.header.stamp
        ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
        if ns > 0:
            return ns
    return log_ns


class Stream:
    """One topic's samples: times (ns) and values [N, width] (NaN rows: unusable messages)."""

    def __init__(self, topic: str) -> None:
        self.topic, self.unusable = topic, 0
        self.t: list[int] = []
        self.v: list[np.ndarray] = []

    def add(self, t: int, values: np.ndarray | None) -> None:
        if values is None:
            self.unusable += 1
            return
        self.t.append(t)
        self.v.append(values)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.t:
            return np.zeros(0, np.int64), np.zeros((0, 0))
        widths = {len(v) for v in self.v}
        if len(widths) > 1:
            raise BagError(f"topic {self.topic}: messages have different widths {sorted(widths)}")
        t = np.asarray(self.t, np.int64)
        order = np.argsort(t, kind="stable")
        return t[order], np.stack(self.v)[order]


class Decoders:
    """Message -> values for the states and the actions, per the robot description; None for a
    message that does not fit (``missing_joints``: topic -> the robot joints its messages lacked)."""

    def __init__(self, robot: Robot) -> None:
        self.robot = robot
        self.missing_joints: dict[str, set[str]] = {}

    def _order(self, names: Sequence[str], topic: str) -> np.ndarray | None:
        try:
            return joint_order(names, self.robot.joints)
        except MissingJointsError as e:
            self.missing_joints.setdefault(topic, set()).update(e.missing)
            return None

    def joint_state(self, msg: Any, topic: str, fields: Sequence[str]) -> np.ndarray | None:
        idx = self._order(msg.name, topic)
        if idx is None:
            return None
        out = []
        for f in fields:
            arr = np.asarray(getattr(msg, f), dtype=np.float64)
            if len(arr) != len(msg.name):
                return None
            out.append(arr[idx])
        return np.concatenate(out)

    def command(self, msg: Any, msgtype: str, topic: str) -> np.ndarray | None:
        f = self.robot.action_interface
        n = self.robot.action_dim
        if msgtype.endswith("Float64MultiArray") or msgtype.endswith("Float32MultiArray"):
            v = np.asarray(msg.data, np.float64)
            return v if len(v) == n else None
        if msgtype.endswith("JointTrajectory"):
            if not msg.points:
                return None
            idx = self._order(msg.joint_names, topic)
            if idx is None:
                return None
            v = np.asarray(getattr(msg.points[0], _TRAJECTORY_FIELDS[f]), np.float64)
            return v[idx] if len(v) == len(msg.joint_names) else None
        if msgtype.endswith("JointState"):
            return self.joint_state(msg, topic, (f,))
        raise BagError(f"topic {topic}: command type {msgtype} is not Float64MultiArray, JointTrajectory or JointState")
