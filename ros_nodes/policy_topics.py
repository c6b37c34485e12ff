"""The policy node's topics: their QoS, and the command output.

``CommandOutput`` is the command publisher with its message (``conversions.CommandWriter``, built
once at configure, refilled per step). The QoS:

* commands: reliable, keep last 1 (an actuator wants the newest command, and every one of them);
* the state: ``sensor_data`` (best effort, keep last 5: takes any sensor publisher) or
  ``reliable`` (keep last 1: a lockstep simulator waits for the command of every state it sends),
  by the ``state_qos`` parameter;
* reward: reliable, keep last 10; goal and target return: latched (the newest value reaches a
  node that starts later).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import rclpy.duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from mtm_runtime.ros_nodes.conversions import CommandWriter

#: command_type -> the message published on the command topic
COMMAND_MESSAGES = {"float64_multiarray": Float64MultiArray, "joint_state": JointState, "joint_trajectory": JointTrajectory}
COMMAND_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: the state subscription, by the ``state_qos`` parameter
STATE_QOS_PROFILES = {"sensor_data": qos_profile_sensor_data,
                      "reliable": QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                             history=HistoryPolicy.KEEP_LAST)}
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class CommandOutput:
    """The command publisher of ``node`` on ``topic``: ``command_type`` messages of ``width`` values."""

    def __init__(self, node: Any, command_type: str, topic: str, joint_names: Sequence[str], field: str,
                 period_s: float, width: int) -> None:
        self._node = node
        self._writer = CommandWriter(command_type, joint_names, field, period_s, width)
        self._pub = node.create_publisher(COMMAND_MESSAGES[command_type], topic, COMMAND_QOS)

    def publish(self, cmd: np.ndarray, stamp_ns: int) -> None:
        self._pub.publish(self._writer.message(cmd, stamp_ns))

    def subscribers(self) -> int:
        return int(self._pub.get_subscription_count())

    def wait_acked(self, timeout_s: float) -> None:
        """Until every reliable subscriber has acknowledged what was published (the shutdown ramp)."""
        self._pub.wait_for_all_acked(timeout=rclpy.duration.Duration(seconds=timeout_s))

    def destroy(self) -> None:
        self._node.destroy_publisher(self._pub)
