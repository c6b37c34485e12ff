"""A message's joints in the robot's order, by name: ``values[joint_order(msg.name, joints)]``.

A ``JointState`` (or a ``JointTrajectory``'s ``joint_names``) may list the joints in any order
and may carry joints the robot does not have; :func:`joint_order` gives, for each of the robot's
joints in its order, the joint's index in the message, so indexing a field with it yields the
robot's vector. A robot joint the message does not name is a :class:`MissingJointsError` that
lists them. One home for the ROS nodes (``ros_nodes/conversions.py``, rclpy messages) and the
rosbag2 import (``training/bag_messages.py``, ``rosbags`` messages): names in, indices out, no ROS.

The order is cached per (message names, joints): a stream repeats the same name list in every
message, so the hot path is one look-up.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["MissingJointsError", "joint_order"]


class MissingJointsError(ValueError):
    """The message does not name every joint; ``missing`` lists those it lacks (in joint order)."""

    def __init__(self, missing: Sequence[str], names: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(f"lacks joints {list(missing)} (has {list(names)})")


def joint_order(names: Sequence[str], joints: Sequence[str]) -> np.ndarray:
    """The index into ``names`` of each of ``joints``, in the order of ``joints`` (a read-only
    integer array; names not among ``joints`` are ignored). MissingJointsError if ``names`` lacks
    one of ``joints``."""
    order = _order(tuple(names), tuple(joints))
    if isinstance(order, tuple):
        raise MissingJointsError(order, names)
    return order


@lru_cache(maxsize=256)
def _order(names: tuple[str, ...], joints: tuple[str, ...]) -> np.ndarray | tuple[str, ...]:
    """The order, or the joints ``names`` lacks (cached too: a stream that lacks them, lacks them
    in every message)."""
    index = {n: i for i, n in enumerate(names)}
    missing = tuple(j for j in joints if j not in index)
    if missing:
        return missing
    order = np.array([index[j] for j in joints], dtype=np.intp)
    order.flags.writeable = False  # shared by every caller with these names
    return order
