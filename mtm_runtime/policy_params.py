"""The policy node's parameters as data, and their checks (no ROS import).

``PARAMETERS`` is the table (default, text, range, allowed choices) the ROS node declares its
parameters from; the choices are data here, never re-parsed from descriptor text.

A parameter update is handled in two steps (``ros_nodes/policy_node.py``):
1. ``set_problem`` checks the whole set (each value; run-time rules; the mode / goal /
   target_return the live policy would end up with) and has no side effect;
2. only if the whole set passed, ``apply_conditioning`` hands the new values to the policy.
So an atomic set with one bad value changes nothing.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from mtm_runtime import safety_contract as contract
from mtm_runtime.chunk_loop import CHUNK_MODES, INTERPOLATIONS, MONITOR_ACTIONS, ChunkConfig
from mtm_runtime.loop_types import TRIGGERS, LoopConfig
from mtm_runtime.integrity import CheckpointError
from mtm_runtime import package_paths
from mtm_runtime.robot import load_robot, robot_of_metadata
from mtm_runtime.safety import FAULT_KINDS, ActionLimits

JOINT_FIELDS = ("position", "velocity", "effort")
COMMAND_TYPES = ("float64_multiarray", "joint_state", "joint_trajectory")
#: A robot file's ``action.type`` -> the node's ``command_type``.
ROBOT_COMMAND_TYPES = {"Float64MultiArray": "float64_multiarray", "JointState": "joint_state",
                       "JointTrajectory": "joint_trajectory"}
INPUT_TYPES = ("float64_multiarray", "joint_state")
#: QoS of the state subscription: ``sensor_data`` (best effort, keep last 5: takes any sensor
#: publisher) or ``reliable`` (keep last 1: a lockstep simulator waits for the command of every
#: state it sends, so that state must not be dropped on the way)
STATE_QOS = ("sensor_data", "reliable")
#: Parameters applied while running; all others take effect at the next configure and may only
#: change while unconfigured.
DYNAMIC_PARAMS = ("mask_mode", "target_return", "goal")
#: Prefix of the test-only backend form ``external:module:Class`` (needs EXTERNAL_BACKENDS_ENV=1).
EXTERNAL_PREFIX = "external:"
EXTERNAL_BACKENDS_ENV = "MTM_ALLOW_EXTERNAL_BACKENDS"


@dataclass(frozen=True)
class Param:
    """One parameter: default, description, and what values it accepts."""

    default: Any
    text: str
    lo: float | None = None       # float range [lo, hi]
    hi: float | None = None
    ilo: int | None = None        # integer range [ilo, ihi]
    ihi: int | None = None
    choices: tuple[str, ...] = ()
    numbers: bool = False         # a list of finite numbers

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, list)


#: name -> Param. Numbers use dynamic typing in ROS so YAML ``100`` works for a double.
PARAMETERS: dict[str, Param] = {
    "model_path": Param("", "checkpoint directory, .onnx or .engine"),
    "backend": Param("torch", "inference backend passed to Policy.load (torch, onnxruntime, ...)"),
    "mask_mode": Param("bc", "inference mode (bc, rcbc, goal, ...); changeable at run time"),
    "target_return": Param(0.0, "target return for rcbc (task reward units); run time", lo=-1e12, hi=1e12),
    "goal": Param([], "goal vector for goal mode (empty = unset); run time", numbers=True),
    "control_rate_hz": Param(50.0, "control rate; also the act() time budget (1/rate)", lo=1.0, hi=2000.0),
    "trigger": Param("state", "step on each state or on a timer", choices=TRIGGERS),
    "robot_file": Param("", "robot description (YAML; package:// paths work): joints, state fields, command type, "
                        "interface and topic, rate and limits come from it ('' = from the parameters)"),
    "command_type": Param("float64_multiarray", "message type on the command topic (Float64MultiArray, JointState, "
                          "or a one-point JointTrajectory)", choices=COMMAND_TYPES),
    "command_interface": Param("effort", "JointState / JointTrajectory field for commands", choices=JOINT_FIELDS),
    "command_topic": Param("commands", "topic the commands go to (a ros2_control controller's, say)"),
    "input_type": Param("float64_multiarray", "state input: 'observation' Float64MultiArray or "
                        "'joint_states' JointState", choices=INPUT_TYPES),
    "state_qos": Param("sensor_data", "state subscription QoS: sensor_data (best effort) or reliable "
                       "(a lockstep simulator: every state it sends waits for its command)", choices=STATE_QOS),
    "joint_names": Param([], "joint order for JointState input/commands (empty = message order)"),
    "state_fields": Param(["position", "velocity"], "JointState fields concatenated into the state"),
    "state_width": Param(0, "expected state width (0 = take the model's)", ilo=0, ihi=100000),
    "action_low": Param([], "narrow the checkpoint's lower action limits (empty = keep)", numbers=True),
    "action_high": Param([], "narrow the checkpoint's upper action limits (empty = keep)", numbers=True),
    "max_rate": Param(0.0, "max command change per step per dimension (actuator units; 0 = off)", lo=0.0, hi=1e9),
    "stale_timeout": Param(0.25, "seconds without a valid state before the fault action", lo=0.001, hi=3600.0),
    "stale_reset_s": Param(1.0, "a stale gap longer than this starts a new policy episode (s)", lo=0.0, hi=1e6),
    "fault_action": Param("hold", "command on a fault", choices=FAULT_KINDS),
    "safe_action": Param([], "the action for fault_action=safe (inside the limits)", numbers=True),
    "warmup_iters": Param(10, "act() calls at configure to warm the backend", ilo=0, ihi=10000),
    "inference_threads": Param(1, "torch intra-op threads for the default loader (0 = library default)",
                               ilo=0, ihi=256),
    "autostart": Param(False, "configure and activate at start-up (no lifecycle manager needed)"),
    "max_state_age": Param(0.0, "reject JointState stamps older than this vs the node clock (s; 0 = off: "
                           "only needs stamps to increase)", lo=0.0, hi=3600.0),
    "max_future_s": Param(0.05, "with max_state_age > 0: reject stamps this far ahead of the node clock (s)",
                          lo=0.0, hi=3600.0),
    "saturation_s": Param(0.0, "a command pinned at a limit longer than this (s) is reported as the fault "
                          "'saturated' (0 = off)", lo=0.0, hi=3600.0),
    "saturation_fault": Param(False, "answer 'saturated' with the fault action (else: diagnostics only)"),
    "cpu_wake_latency_us": Param(-1, "while active, hold idle CPUs to this wake-up latency (Linux PM QoS, "
                                 "/dev/cpu_dma_latency; 0 = poll; -1 = leave the OS alone; docs/realtime.md)",
                                 ilo=-1, ihi=1_000_000),
    "max_input_rate_factor": Param(contract.MAX_INPUT_RATE_FACTOR,
                                   "trigger=state: at most this many steps per control period", lo=1.0, hi=100.0),
    # chunks, asynchronous inference and the world-model monitor (mtm_runtime/chunk_loop.py)
    "loop_mode": Param("sync", "sync: the model steps on each state; async: the model replans on its own thread "
                       "at model_rate_hz and commands stream at control_rate_hz", choices=CHUNK_MODES),
    "chunk": Param(1, "actions per forward pass (a model of horizon >= chunk trained with --masks ...,chunk)",
                   ilo=1, ihi=64),
    "replan_every": Param(1, "sync: model steps between plans (<= chunk)", ilo=1, ihi=64),
    "model_rate_hz": Param(0.0, "async: model steps (replans) per second; 0 = control_rate_hz", lo=0.0, hi=2000.0),
    "interpolate": Param("hold", "async: commands between model steps: hold or linear", choices=INTERPOLATIONS),
    "committed": Param(-1, "async: actions shown to the model as committed (-1 = from the plan latency)",
                       ilo=-1, ihi=63),
    "max_chunk_age_s": Param(0.0, "async: a chunk planned from an older state is stale (s; 0 = the chunk's span)",
                             lo=0.0, hi=3600.0),
    "monitor": Param(False, "world-model monitor: forward-dynamics residual of each reported state (batch of two)"),
    "monitor_threshold": Param(0.0, "monitor alarm level (RMS normalised residual; 0 = report only)", lo=0.0, hi=1e6),
    "monitor_persist": Param(3, "model steps over (under) the threshold to raise (clear) the alarm", ilo=1, ihi=100000),
    "monitor_average": Param(1, "model steps the monitor's residual level is averaged over", ilo=1, ihi=100000),
    "monitor_action": Param("warn", "on a monitor alarm: warn, or command the fault action", choices=MONITOR_ACTIONS),
}
#: Parameters whose value is a list. The rcl YAML parser cannot type an empty list: a params file's
#: ``goal: []`` leaves the parameter unset (None), which reads as the empty list.
LIST_PARAMS = frozenset(name for name, prm in PARAMETERS.items() if prm.is_list)


def floats(value: Any) -> list[float]:
    return [float(v) for v in (value or [])]


def value_problem(name: str, value: Any) -> str | None:
    """None if ``value`` is acceptable for parameter ``name`` (range, type, choices), else why not."""
    prm = PARAMETERS.get(name)
    if prm is None:
        return None
    try:
        if prm.lo is not None:
            v = float(value)
            if not (math.isfinite(v) and prm.lo <= v <= prm.hi):  # type: ignore[operator]
                return f"{name} must be in [{prm.lo}, {prm.hi}], got {value!r}"
        if prm.ilo is not None:
            if int(value) != value or not prm.ilo <= int(value) <= prm.ihi:  # type: ignore[operator]
                return f"{name} must be an integer in [{prm.ilo}, {prm.ihi}], got {value!r}"
        if prm.choices and value not in prm.choices:
            return f"{name} must be one of: {', '.join(prm.choices)}, got {value!r}"
        if prm.is_list:
            if not isinstance(value, (list, tuple)) and not hasattr(value, "__len__"):
                return f"{name} must be a list, got {value!r}"
            if prm.numbers and not all(math.isfinite(v) for v in floats(value)):
                return f"{name} must be finite numbers"
    except (TypeError, ValueError) as e:
        return f"{name}: invalid value {value!r} ({e})"
    return None


def mode_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """``Policy.set_mode`` keyword arguments for the mode in ``values`` (target_return, goal)."""
    mode = str(values["mask_mode"])
    kw: dict[str, Any] = {}
    if mode == "rcbc":
        kw["target_return"] = float(values["target_return"])
    goal = floats(values["goal"])
    if mode == "goal" or goal:
        kw["goal"] = np.asarray(goal, dtype=np.float32) if goal else None
    return kw


def _conditioning_problem(policy: Any, changes: Mapping[str, Any],
                          values: Mapping[str, Any]) -> tuple[str, str] | None:
    """What the live policy would refuse of the merged dynamic values (checked, nothing applied)."""
    spec, mode, goal = policy.spec, str(values["mask_mode"]), floats(values["goal"])
    if "mask_mode" in changes and mode not in policy.modes:
        return "mask_mode", f"mode {mode!r} is not available for this model; choose from {', '.join(policy.modes)}"
    if "target_return" in changes and "returns" not in spec:
        return "target_return", "this model has no 'returns' modality"
    if goal and ("goal" in changes or "mask_mode" in changes):
        if "goals" not in spec:
            return "goal", "this model has no 'goals' modality"
        if len(goal) != spec.width("goals"):
            return "goal", f"goal has shape ({len(goal)},), expected ({spec.width('goals')},)"
    return None


def set_problem(changes: Mapping[str, Any], current: Mapping[str, Any], policy: Any = None) -> tuple[str, str] | None:
    """(name, why) for the first problem of an update ``changes`` (the whole set; no side effects),
    or None. ``current`` holds the present values; ``policy`` is the live one (None: unconfigured)."""
    for name, value in changes.items():
        if name not in PARAMETERS:
            continue
        if policy is not None and name not in DYNAMIC_PARAMS:
            return name, f"'{name}' takes effect at configure; clean up the node first"
        reason = value_problem(name, value)
        if reason:
            return name, reason
    if policy is None:
        return None
    dynamic = {k: v for k, v in changes.items() if k in DYNAMIC_PARAMS}
    return _conditioning_problem(policy, dynamic, {**current, **dynamic}) if dynamic else None


def update(changes: Mapping[str, Any], current: Mapping[str, Any], policy: Any = None) -> tuple[str, str] | None:
    """A parameter update as one step: ``set_problem`` on the whole set, then (only if it passed)
    the dynamic values to the live policy. Returns (name, why) of a refusal, or None."""
    problem = set_problem(changes, current, policy)
    dynamic = {k: v for k, v in changes.items() if k in DYNAMIC_PARAMS}
    if problem is None and policy is not None and dynamic:
        try:
            apply_conditioning(policy, dynamic, {**current, **dynamic})
        except (ValueError, TypeError) as e:  # a rule only the policy knows
            return next(iter(dynamic)), str(e) or type(e).__name__
    return problem


def with_robot(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the robot file's settings (``robot_file``) in place of parameters left at
    their defaults: joints, state fields and input type, command type, interface and topic,
    control rate, and its limits unless ``action_low``/``action_high`` are set. A parameter set to
    something else than the file says is refused, naming both (joints: the first that differs)."""
    path = str(values.get("robot_file") or "")
    if not path:
        return dict(values)
    robot = load_robot(package_paths.resolve(path))
    derived: dict[str, Any] = {"input_type": "float64_multiarray" if robot.observation_dim else "joint_state",
                               "command_type": ROBOT_COMMAND_TYPES[robot.command_type],
                               "command_interface": robot.action_interface, "command_topic": robot.command_topic,
                               "control_rate_hz": robot.rate_hz, "joint_names": list(robot.joints)}
    if not robot.observation_dim:
        derived["state_fields"] = list(robot.state_fields)
    if robot.limits is not None and not floats(values["action_low"]) and not floats(values["action_high"]):
        derived["action_low"], derived["action_high"] = robot.limits.low.tolist(), robot.limits.high.tolist()
    for name, want in derived.items():
        have = values[name]
        have = list(have) if isinstance(have, (list, tuple)) or hasattr(have, "tolist") else have
        if have == PARAMETERS[name].default or have == want:
            continue
        if name == "joint_names":
            robot.check_joints(have, f"parameter joint_names vs robot file {path}")
        raise ValueError(f"parameter {name}={have!r} contradicts robot file {path}, which says {want!r}; "
                         "leave the parameter unset")
    return {**values, **derived}


def checked_values(values: Mapping[str, Any]) -> None:
    """At configure: every value (overrides and params files never passed the update check)."""
    problem = set_problem(values, values)
    if problem:
        raise ValueError(problem[1])
    if not values["model_path"]:
        raise ValueError("parameter model_path is empty")


def apply_conditioning(policy: Any, changes: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """Hand the checked dynamic ``changes`` to the live policy (``values``: all merged values)."""
    if "mask_mode" in changes:
        policy.set_mode(str(values["mask_mode"]), **mode_kwargs(values))
        return
    if "goal" in changes and floats(values["goal"]):
        policy.set_goal(np.asarray(floats(values["goal"]), dtype=np.float32))
    if "target_return" in changes:
        policy.set_target_return(float(values["target_return"]))


def check_model_fits(policy: Any, values: Mapping[str, Any], path: str) -> None:
    """ValueError unless the loaded model fits the parameters (widths, joints, mode)."""
    sw, aw = policy.spec.width("states"), policy.spec.width("actions")
    joints, fields, want = list(values["joint_names"]), list(values["state_fields"]), int(values["state_width"])
    robot = robot_of_metadata(getattr(policy, "metadata", {}) or {}, path)
    if robot is not None and joints:   # the model's joints, by name and order, are the robot's
        robot.check_joints(joints, f"joint_names parameter (model {path})")
    if want and want != sw:
        raise ValueError(f"state_width is {want} but the model {path} expects states of width {sw}")
    if values["input_type"] == "joint_state" and joints and len(joints) * len(fields) != sw:
        raise ValueError(f"{len(joints)} joint_names x {len(fields)} state_fields = "
                         f"{len(joints) * len(fields)} values, the model's states have width {sw}")
    if values["command_type"] != "float64_multiarray" and joints and len(joints) != aw:
        raise ValueError(f"{len(joints)} joint_names but the model's actions have width {aw}")
    if values["mask_mode"] not in policy.modes:
        raise ValueError(f"mask_mode {values['mask_mode']!r} is not valid for this model "
                         f"(modes: {', '.join(policy.modes)})")


def loop_config(values: Mapping[str, Any]) -> LoopConfig:
    """The ControlLoop's configuration from parameter values."""
    return LoopConfig(
        rate_hz=float(values["control_rate_hz"]), stale_timeout=float(values["stale_timeout"]),
        stale_reset_s=float(values["stale_reset_s"]), trigger=str(values["trigger"]),
        max_input_rate_factor=float(values["max_input_rate_factor"]),
        max_state_age=float(values["max_state_age"]), max_future_s=float(values["max_future_s"]),
        max_rate=float(values["max_rate"]), fault_action=str(values["fault_action"]),
        safe_action=tuple(floats(values["safe_action"])), action_low=tuple(floats(values["action_low"])),
        action_high=tuple(floats(values["action_high"])),
        saturation_s=float(values["saturation_s"]), saturation_fault=bool(values["saturation_fault"]))


def chunk_config(values: Mapping[str, Any]) -> ChunkConfig:
    """The chunked loop's configuration from parameter values (``ChunkConfig.active`` False:
    the plain ControlLoop runs)."""
    return ChunkConfig(
        mode=str(values["loop_mode"]), chunk=int(values["chunk"]), replan_every=int(values["replan_every"]),
        model_rate_hz=float(values["model_rate_hz"]), interpolate=str(values["interpolate"]),
        committed=int(values["committed"]), max_chunk_age_s=float(values["max_chunk_age_s"]),
        monitor=bool(values["monitor"]), monitor_threshold=float(values["monitor_threshold"]),
        monitor_persist=int(values["monitor_persist"]), monitor_average=int(values["monitor_average"]),
        monitor_action=str(values["monitor_action"]))


def load_external_policy(path: str, spec_str: str, mode: str) -> Any:
    """``external:module:Class`` -> a Policy on that Backend subclass (tests only)."""
    from mtm_runtime.backends import Backend
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.policy import Policy

    if os.environ.get(EXTERNAL_BACKENDS_ENV) != "1":
        raise ValueError(f"backend {spec_str!r}: external backends are for tests; set {EXTERNAL_BACKENDS_ENV}=1")
    target = spec_str[len(EXTERNAL_PREFIX):]
    module, _, cls_name = target.partition(":")
    if not module or not cls_name:
        raise ValueError(f"backend {spec_str!r}: expected external:package.module:Class")
    cls = getattr(importlib.import_module(module), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ValueError(f"backend {spec_str!r}: {cls_name} is not a mtm_runtime Backend subclass")
    ckpt = load_checkpoint(path)
    return Policy(ckpt.spec, ckpt.normaliser, cls(ckpt.spec), ckpt.action_limits, mode, ckpt.metadata())


def configured_limits(values: Mapping[str, Any]) -> ActionLimits | None:
    """The node's own limits when ``action_low`` and ``action_high`` both give every dimension
    (more than one value each): a model without limits runs with them, a model with limits
    with the intersection (never wider than the file's). None otherwise."""
    low, high = floats(values["action_low"]), floats(values["action_high"])
    if len(low) < 2 and len(high) < 2 or len(low) != len(high):
        return None
    return ActionLimits(np.asarray(low), np.asarray(high))


def load_policy(path: str, backend: str, mode: str, threads: int, limits: ActionLimits | None = None,
                batch_size: int = 1) -> Any:
    """Default loader: ``Policy.load``; torch backends on a checkpoint get ``threads`` threads
    (1 by default: on a couple of shared cores one thread has the lowest jitter). ``limits``:
    ``configured_limits`` (required for a model that carries none). ``batch_size`` 2: the
    monitor's chunk + forward-dynamics rows (an .onnx/.engine must be exported at that size)."""
    from mtm_runtime.policy import Policy  # torch: only where a model is loaded, not in the bridges

    if backend.startswith(EXTERNAL_PREFIX):
        return load_external_policy(path, backend, mode)
    opts: dict[str, Any] = {"batch_size": batch_size} if batch_size != 1 else {}
    if threads and (backend or "torch").startswith("torch") and not path.endswith((".onnx", ".engine")):
        opts["threads"] = threads
    try:
        return Policy.load(path, backend=backend, mode=mode, limits=limits, **opts)
    except CheckpointError as e:
        if e.field != "action_limits" or limits is not None:
            raise
        raise CheckpointError(e.path, e.field, "missing: this model has no action limits; set the node's "
                              "action_low and action_high (one value per action dimension)") from None
