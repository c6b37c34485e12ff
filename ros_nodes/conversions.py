"""Message <-> numpy conversions for the ROS nodes: plain functions, no node, no I/O.

Conventions
* Arrays are float64 on the wire (Float64MultiArray, JointState) and float32 toward the Policy.
* Stamps are ``builtin_interfaces/Time``; ``stamp_to_ns``/``ns_to_stamp`` convert exactly.
* A JointState becomes a state by concatenating the requested fields (``position``,
  ``velocity``, ``effort``) in the order of ``joint_names`` (or message order if none given),
  joints picked by name (``mtm_runtime/joint_order.py``).
"""
from __future__ import annotations

import array
from typing import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from mtm_runtime.joint_order import MissingJointsError, joint_order
from mtm_runtime.policy_params import JOINT_FIELDS, Param


#: a JointState field -> the JointTrajectoryPoint field of the same quantity
TRAJECTORY_FIELDS = {"position": "positions", "velocity": "velocities", "effort": "effort"}


class ConversionError(ValueError):
    """A message cannot be turned into the array the node expects; the message says why."""


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def multiarray_to_array(msg: Float64MultiArray) -> np.ndarray:
    """Float64MultiArray -> float64 vector (layout ignored beyond data_offset)."""
    off = int(msg.layout.data_offset)
    return np.asarray(msg.data, dtype=np.float64)[off:]


def array_to_multiarray(values: np.ndarray, label: str = "") -> Float64MultiArray:
    """1-D array -> Float64MultiArray with one labelled dimension (forward_command_controller style)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    msg = Float64MultiArray()
    if label:
        msg.layout.dim = [MultiArrayDimension(label=label, size=v.size, stride=v.size)]
    msg.data = v.tolist()
    return msg


def joint_state_to_array(msg: JointState, joint_names: Sequence[str] = (),
                         fields: Sequence[str] = ("position", "velocity")) -> np.ndarray:
    """Concatenate ``fields`` of ``msg`` ordered by ``joint_names`` (message order if empty).

    Raises ConversionError when a named joint is missing or a field is shorter than ``name``.
    """
    names = msg.name
    if joint_names:
        try:
            order = joint_order(names, joint_names)     # cached per name list: the hot path
        except MissingJointsError as e:
            raise ConversionError(f"joint_states {e}") from None
    else:
        order = np.arange(len(names))
    parts = []
    for f in fields:
        if f not in JOINT_FIELDS:
            raise ConversionError(f"unknown JointState field {f!r}; use {JOINT_FIELDS}")
        values = np.asarray(getattr(msg, f), dtype=np.float64)
        if not order.size:      # a message without names: the field as it is
            parts.append(values)
            continue
        try:
            parts.append(values[order])
        except IndexError:      # the field has fewer values than the joints it is indexed by
            raise ConversionError(f"joint_states.{f} has {values.size} values for {len(names)} joints") from None
    return np.concatenate(parts) if parts else np.zeros(0)


def array_to_joint_state(values: np.ndarray, joint_names: Sequence[str], stamp: Time | None = None,
                         field: str = "effort") -> JointState:
    """A command as JointState: ``values`` go into ``field`` for ``joint_names`` (same length)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if field not in JOINT_FIELDS:
        raise ConversionError(f"unknown JointState field {field!r}; use {JOINT_FIELDS}")
    if joint_names and len(joint_names) != v.size:
        raise ConversionError(f"{v.size} command values for {len(joint_names)} joint names")
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.name = list(joint_names) if joint_names else [f"joint{i}" for i in range(v.size)]
    setattr(msg, field, v.tolist())
    return msg


def array_to_joint_trajectory(values: np.ndarray, joint_names: Sequence[str], stamp: Time | None = None,
                              field: str = "position", period_s: float = 0.0) -> JointTrajectory:
    """A command as a one-point JointTrajectory (ros2_control's joint_trajectory_controller):
    ``values`` in the point's ``field`` (positions / velocities / effort), reached one control
    period (``period_s``) after the header stamp."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(joint_names) != v.size:
        raise ConversionError(f"{v.size} command values for {len(joint_names)} joint names (a trajectory needs names)")
    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.joint_names = list(joint_names)
    point = JointTrajectoryPoint()
    setattr(point, TRAJECTORY_FIELDS[field], v.tolist())
    ns = int(round(period_s * 1e9))
    point.time_from_start.sec, point.time_from_start.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
    msg.points = [point]
    return msg


class CommandWriter:
    """The command message for ``command_type`` (``policy_params.COMMAND_TYPES``), built once and
    refilled per step: Float64MultiArray (forward command controllers; no stamp), JointState
    stamped with the source state's stamp, or a one-point JointTrajectory reached one period
    (``period_s``) after its stamp. ``message(values, stamp_ns)`` returns the same object each
    call (``publish`` serialises it at once), its values set through ``array.array``, which the
    generated message classes take without checking element by element: on the control path
    that is most of the cost of building a message (``benchmarks/loop_overhead.py``)."""

    def __init__(self, command_type: str, joint_names: Sequence[str], field: str, period_s: float, width: int) -> None:
        zeros = np.zeros(width)
        if command_type == "joint_state":
            self._msg: Float64MultiArray | JointState | JointTrajectory = array_to_joint_state(zeros, joint_names,
                                                                                               Time(), field)
            self._target: object = self._msg
            self._attr, self._stamp = field, self._msg.header.stamp
        elif command_type == "joint_trajectory":
            self._msg = array_to_joint_trajectory(zeros, joint_names, Time(), field, period_s)
            self._target = self._msg.points[0]
            self._attr, self._stamp = TRAJECTORY_FIELDS[field], self._msg.header.stamp
        else:
            self._msg = array_to_multiarray(zeros)
            self._target, self._attr, self._stamp = self._msg, "data", None
        self.width = width

    def message(self, values: np.ndarray, stamp_ns: int) -> Float64MultiArray | JointState | JointTrajectory:
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (self.width,):
            raise ConversionError(f"command has shape {v.shape}, the command message holds ({self.width},)")
        setattr(self._target, self._attr, array.array("d", v.tobytes()))
        if self._stamp is not None:
            self._stamp.sec, self._stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self._msg


def joint_state_from_arrays(names: Sequence[str], position: np.ndarray, velocity: np.ndarray,
                            stamp: Time | None = None) -> JointState:
    """Measured joint positions/velocities -> JointState (used by the sim bridge)."""
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = np.asarray(position, dtype=np.float64).reshape(-1).tolist()
    msg.velocity = np.asarray(velocity, dtype=np.float64).reshape(-1).tolist()
    return msg


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def diagnostic_status(name: str, level: int, message: str, values: Mapping[str, object],
                      hardware_id: str = "") -> DiagnosticStatus:
    """A DiagnosticStatus with ``values`` as key/value strings (floats to 6 significant digits).

    ``level`` is DiagnosticStatus.OK / WARN / ERROR / STALE (bytes in the message definition).
    """
    st = DiagnosticStatus()
    st.level = bytes([level]) if isinstance(level, int) else level
    st.name = name
    st.message = message
    st.hardware_id = hardware_id
    st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    return st


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """KeyValue list -> dict (for tests and tools)."""
    return {kv.key: kv.value for kv in status.values}


def parameter_descriptor(prm: Param) -> ParameterDescriptor:
    """A parameter of a table (``mtm_runtime.policy_params.Param``) as a ROS descriptor: ranges for
    ROS tools, choices as text for people (the checks read the table, never this text)."""
    d = ParameterDescriptor(description=prm.text, dynamic_typing=True)
    if prm.lo is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(prm.lo), to_value=float(prm.hi or 0.0), step=0.0)]
    if prm.ilo is not None:
        d.integer_range = [IntegerRange(from_value=int(prm.ilo), to_value=int(prm.ihi or 0), step=1)]
    if prm.choices:
        d.additional_constraints = "one of: " + ", ".join(prm.choices)
    return d
