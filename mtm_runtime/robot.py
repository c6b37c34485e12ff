"""The robot description: one YAML file says what a robot is to the runtime.

    name: arm7
    joints: [shoulder_pan, shoulder_lift, upper_arm_roll, elbow, forearm_roll, wrist_flex, wrist_roll]
    rate_hz: 50
    state:
      fields: [position, velocity]     # per joint, field-major: all positions, then all velocities
      extras: {goals: 3}               # extra vectors, each its own modality (so far: goals, set by set_goal)
      # observation: 11                # instead of fields: an opaque observation vector of this width
    action:
      interface: position              # position | velocity | effort
      topic: /arm_controller/commands  # the ros2_control controller's command topic
      type: Float64MultiArray          # Float64MultiArray | JointTrajectory | JointState
    limits:                            # given ...
      low: [-1, -1, -1, -1, -1, -1, -1]
      high: [1, 1, 1, 1, 1, 1, 1]
    # limits: {from: arm7.xml}         # ... or read from an MJCF (actuator ctrlrange) or URDF (joint limit)
    sim: {env: Pusher-v5}              # optional: a Gymnasium id, or {mjcf: arm7.xml}, for evaluation and HIL
    success: {body: fingertip, target: target, radius: 0.02}   # optional: a distance rule at episode end
    dataset: {state_keys: [observation.state], action_key: action}   # optional: a LeRobotDataset's features

One home: :func:`load_robot` validates the whole file (every message names the file and the key)
and gives a frozen :class:`Robot`; :meth:`Robot.to_dict` / :func:`robot_from_dict` carry it in a
checkpoint (``mtm.json``), the ONNX metadata and the engine sidecar. Nothing here imports MuJoCo or
ROS: MJCF/URDF limits are read from the XML text.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from mtm_runtime.safety import ActionLimits

__all__ = ["Robot", "RobotError", "load_robot", "robot_from_dict", "STATE_FIELDS", "ACTION_INTERFACES",
           "COMMAND_TYPES", "limits_from_model_file", "BUNDLED_ROBOTS", "bundled_robot", "robot_of_metadata"]

#: The robot files shipped with the package: the four benchmark tasks (``mtm_runtime/robots/*.yaml``).
BUNDLED_ROBOTS = Path(__file__).with_name("robots")

STATE_FIELDS = ("position", "velocity", "effort")
ACTION_INTERFACES = ("position", "velocity", "effort")
COMMAND_TYPES = ("Float64MultiArray", "JointTrajectory", "JointState")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_MODALITY = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED = ("states", "actions", "returns", "rewards")


class RobotError(ValueError):
    """A robot description is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Robot:
    """A validated robot description (see the module docstring for the file)."""

    name: str
    joints: tuple[str, ...]
    rate_hz: float
    state_fields: tuple[str, ...] = ("position", "velocity")
    observation_dim: int = 0                          # > 0: states are an observation vector, not joint fields
    extras: tuple[tuple[str, int], ...] = ()           # (modality name, width), in file order
    action_interface: str = "position"
    command_topic: str = "commands"
    command_type: str = "Float64MultiArray"
    limits: ActionLimits | None = field(default=None, compare=False)
    sim: tuple[tuple[str, Any], ...] = ()             # ("env", id) / ("mjcf", path) / ("episode_steps", n)
    success: tuple[tuple[str, Any], ...] = ()         # ("body", b), ("target", t), ("radius", r)
    state_keys: tuple[str, ...] = ()                   # dataset features that are the states (LeRobotDataset)
    action_key: str = ""                               # ... and the actions

    # ---- widths ----------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return self.observation_dim or len(self.joints) * len(self.state_fields)

    @property
    def action_dim(self) -> int:
        return len(self.joints)

    def state_names(self) -> list[str]:
        """``joint.field`` for every column of ``states``, in order (field-major)."""
        if self.observation_dim:
            return [f"observation[{i}]" for i in range(self.observation_dim)]
        return [f"{j}.{f}" for f in self.state_fields for j in self.joints]

    def modality_widths(self, rewards: bool = False) -> dict[str, int]:
        """Widths in model order: states, actions, returns (only with ``rewards``), extras."""
        widths = {"states": self.state_dim, "actions": self.action_dim}
        if rewards:
            widths["returns"] = 1
        widths.update(dict(self.extras))
        return widths

    def sim_option(self, key: str, default: Any = None) -> Any:
        return dict(self.sim).get(key, default)

    def check_joints(self, joints: Sequence[str], where: str) -> None:
        """RobotError naming the first joint where ``joints`` (e.g. the model's) differ from ours."""
        joints = tuple(joints)
        for i, (a, b) in enumerate(zip(self.joints, joints)):
            if a != b:
                raise RobotError(f"{where}: joint {i} is {b!r}, robot {self.name!r} has {a!r} there")
        if len(joints) != len(self.joints):
            extra = joints[len(self.joints):] or self.joints[len(joints):]
            raise RobotError(f"{where}: {len(joints)} joints, robot {self.name!r} has {len(self.joints)} "
                             f"(joint {extra[0]!r} is not in both)")

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :func:`robot_from_dict` reads it back (limits inline)."""
        d: dict[str, Any] = {"name": self.name, "joints": list(self.joints), "rate_hz": self.rate_hz,
                             "state": ({"observation": self.observation_dim} if self.observation_dim
                                       else {"fields": list(self.state_fields)}) | {"extras": dict(self.extras)},
                             "action": {"interface": self.action_interface, "topic": self.command_topic,
                                        "type": self.command_type}}
        if self.limits is not None:
            d["limits"] = {"low": [float(v) for v in self.limits.low], "high": [float(v) for v in self.limits.high]}
        if self.sim:
            d["sim"] = dict(self.sim)
        if self.success:
            d["success"] = dict(self.success)
        if self.state_keys or self.action_key:
            d["dataset"] = {k: v for k, v in (("state_keys", list(self.state_keys)), ("action_key", self.action_key)) if v}
        return d


# ---- reading and validation ----------------------------------------------------------------
def load_robot(path: str | Path) -> Robot:
    """Read and validate a robot YAML file; RobotError naming the file and key on any problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RobotError(f"{path}: no such robot file") from None
    except (OSError, yaml.YAMLError) as e:
        raise RobotError(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    return robot_from_dict(data, str(path), base=path.parent)


def bundled_robot(name: str) -> Robot:
    """One of the bundled robot files by name (``reacher``, ``hopper``, ...)."""
    path = BUNDLED_ROBOTS / f"{name}.yaml"
    if not path.exists():
        valid = ", ".join(sorted(p.stem for p in BUNDLED_ROBOTS.glob("*.yaml")))
        raise RobotError(f"no bundled robot {name!r} (bundled: {valid}); pass a robot file's path")
    return load_robot(path)


def robot_of_metadata(metadata: Mapping[str, Any], where: str = "model") -> Robot | None:
    """The robot a model was trained for (``provenance.robot`` of its checkpoint / ONNX / engine
    metadata), or None if its training data named none."""
    d = (metadata.get("provenance") or {}).get("robot")
    return None if d is None else robot_from_dict(d, f"{where} provenance.robot")


def _need(d: Mapping, key: str, where: str) -> Any:
    if key not in d:
        raise RobotError(f"{where}: missing key '{key}'")
    return d[key]


def _mapping(value: Any, key: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RobotError(f"{where}: '{key}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _unknown(d: Mapping, allowed: Sequence[str], key: str, where: str) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise RobotError(f"{where}: unknown key '{key + '.' if key else ''}{extra[0]}' (allowed: {', '.join(allowed)})")


def _choice(value: Any, allowed: Sequence[str], key: str, where: str) -> str:
    if value not in allowed:
        raise RobotError(f"{where}: '{key}' must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def robot_from_dict(data: Any, where: str = "robot", base: Path | None = None) -> Robot:
    """Validate a parsed robot description (a YAML file's content, or ``Robot.to_dict()``)."""
    d = _mapping(data, "robot", where)
    _unknown(d, ("name", "joints", "rate_hz", "state", "action", "limits", "sim", "success", "dataset"), "", where)
    name = _need(d, "name", where)
    if not isinstance(name, str) or not _NAME.match(name):
        raise RobotError(f"{where}: 'name' must be a word ([A-Za-z0-9_./-]), got {name!r}")
    joints = _need(d, "joints", where)
    if not isinstance(joints, list) or not joints:
        raise RobotError(f"{where}: 'joints' must be a non-empty list of joint names")
    for i, j in enumerate(joints):
        if not isinstance(j, str) or not _NAME.match(j):
            raise RobotError(f"{where}: 'joints[{i}]' must be a joint name, got {j!r}")
    dup = [j for j in joints if joints.count(j) > 1]
    if dup:
        raise RobotError(f"{where}: 'joints' names {dup[0]!r} twice")
    rate = _need(d, "rate_hz", where)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 < rate <= 10_000:
        raise RobotError(f"{where}: 'rate_hz' must be a number in (0, 10000], got {rate!r}")

    state = _mapping(d.get("state"), "state", where)
    _unknown(state, ("fields", "extras", "observation"), "state", where)
    obs_dim = state.get("observation", 0)
    if "observation" in state and "fields" in state:
        raise RobotError(f"{where}: 'state' takes 'fields' or 'observation', not both")
    if isinstance(obs_dim, bool) or not isinstance(obs_dim, int) or obs_dim < 0:
        raise RobotError(f"{where}: 'state.observation' must be a width >= 1, got {obs_dim!r}")
    fields = state.get("fields", ["position", "velocity"])
    if not isinstance(fields, list) or not fields:
        raise RobotError(f"{where}: 'state.fields' must be a non-empty list of {', '.join(STATE_FIELDS)}")
    for i, f in enumerate(fields):
        _choice(f, STATE_FIELDS, f"state.fields[{i}]", where)
    if len(set(fields)) != len(fields):
        raise RobotError(f"{where}: 'state.fields' names a field twice")
    extras = _mapping(state.get("extras"), "state.extras", where)
    for k, w in extras.items():
        if not isinstance(k, str) or not _MODALITY.match(k) or k in _RESERVED:
            raise RobotError(f"{where}: 'state.extras.{k}' must be a modality name ([a-z][a-z0-9_]*, not {', '.join(_RESERVED)})")
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise RobotError(f"{where}: 'state.extras.{k}' must be a width >= 1, got {w!r}")
        if k != "goals":
            raise RobotError(f"{where}: 'state.extras.{k}': only 'goals' is supported as an extra modality so far "
                             "(the policy sets it with set_goal)")

    action = _mapping(d.get("action"), "action", where)
    _unknown(action, ("interface", "topic", "type"), "action", where)
    interface = _choice(action.get("interface", "position"), ACTION_INTERFACES, "action.interface", where)
    topic = action.get("topic", "commands")
    if not isinstance(topic, str) or not topic or " " in topic:
        raise RobotError(f"{where}: 'action.topic' must be a topic name, got {topic!r}")
    ctype = _choice(action.get("type", "Float64MultiArray"), COMMAND_TYPES, "action.type", where)

    limits = _limits(d.get("limits"), joints, where, base)
    sim = _mapping(d.get("sim"), "sim", where)
    _unknown(sim, ("env", "mjcf", "episode_steps"), "sim", where)
    if "env" in sim and "mjcf" in sim:
        raise RobotError(f"{where}: 'sim' takes 'env' or 'mjcf', not both")
    for key in ("env", "mjcf"):
        if key in sim and (not isinstance(sim[key], str) or not sim[key]):
            raise RobotError(f"{where}: 'sim.{key}' must be a string")
    if "mjcf" in sim and base is not None and not Path(sim["mjcf"]).is_absolute():
        sim["mjcf"] = str((base / sim["mjcf"]).resolve())
    if "episode_steps" in sim and (isinstance(sim["episode_steps"], bool) or not isinstance(sim["episode_steps"], int)
                                   or sim["episode_steps"] < 1):
        raise RobotError(f"{where}: 'sim.episode_steps' must be an integer >= 1")
    success = _mapping(d.get("success"), "success", where)
    if success:
        _unknown(success, ("body", "target", "radius"), "success", where)
        for key in ("body", "target"):
            if not isinstance(_need(success, key, where + " success"), str):
                raise RobotError(f"{where}: 'success.{key}' must be a body name")
        r = _need(success, "radius", where + " success")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
            raise RobotError(f"{where}: 'success.radius' must be a distance > 0 (m)")
    dataset = _mapping(d.get("dataset"), "dataset", where)
    _unknown(dataset, ("state_keys", "action_key"), "dataset", where)
    state_keys = dataset.get("state_keys", [])
    if not isinstance(state_keys, list) or not all(isinstance(k, str) and k for k in state_keys):
        raise RobotError(f"{where}: 'dataset.state_keys' must be a list of feature names")
    action_key = dataset.get("action_key", "")
    if not isinstance(action_key, str):
        raise RobotError(f"{where}: 'dataset.action_key' must be a feature name")
    return Robot(name=name, joints=tuple(joints), rate_hz=float(rate), state_fields=tuple(fields), observation_dim=obs_dim,
                 state_keys=tuple(state_keys), action_key=action_key,
                 extras=tuple((k, int(w)) for k, w in extras.items()), action_interface=interface,
                 command_topic=topic, command_type=ctype, limits=limits, sim=tuple(sim.items()),
                 success=tuple(success.items()))


def _limits(value: Any, joints: list[str], where: str, base: Path | None) -> ActionLimits | None:
    if value is None:
        return None
    n = len(joints)
    lim = _mapping(value, "limits", where)
    if "from" in lim:
        _unknown(lim, ("from",), "limits", where)
        src = Path(str(lim["from"]))
        if base is not None and not src.is_absolute():
            src = base / src
        return limits_from_model_file(src, joints, where)
    _unknown(lim, ("low", "high"), "limits", where)
    out = []
    for key in ("low", "high"):
        v = _need(lim, key, where + " limits")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v] * n
        if not isinstance(v, list) or len(v) != n:
            raise RobotError(f"{where}: 'limits.{key}' must give one number per joint ({n}), got {v!r}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise RobotError(f"{where}: 'limits.{key}' must be finite numbers")
        out.append([float(x) for x in v])
    for i, (lo, hi) in enumerate(zip(*out)):
        if not lo < hi:
            raise RobotError(f"{where}: 'limits' joint {i}: low {lo} is not below high {hi}")
    return ActionLimits(np.asarray(out[0]), np.asarray(out[1]))


_MJCF_ACTUATORS = ("motor", "position", "velocity", "general", "intvelocity", "damper", "cylinder", "muscle")


def _mjcf_defaults(root: ET.Element) -> dict[tuple[str, str], dict[str, str]]:
    """(default class, element tag) -> attributes, with nested classes inheriting from their parent."""
    out: dict[tuple[str, str], dict[str, str]] = {}

    def walk(node: ET.Element, name: str, inherited: dict[str, dict[str, str]]) -> None:
        mine = {tag: dict(attrs) for tag, attrs in inherited.items()}
        for child in node:
            if child.tag != "default":
                mine[child.tag] = {**mine.get(child.tag, {}), **child.attrib}
        for tag, attrs in mine.items():
            out[(name, tag)] = attrs
        for child in node:
            if child.tag == "default":
                walk(child, child.get("class", name), mine)

    for top in root.findall("default"):
        walk(top, top.get("class", "main"), {})
    return out


def limits_from_model_file(path: Path, joints: Sequence[str], where: str) -> ActionLimits:
    """Command limits from an MJCF (each actuator's ``ctrlrange``, in actuator order) or a URDF
    (each named joint's ``<limit lower upper>``; ``joints`` are the description's joints)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise RobotError(f"{where}: 'limits.from' {path}: not a readable XML file ({e})") from None
    lows, highs = [], []
    if root.tag == "mujoco":
        defaults = _mjcf_defaults(root)
        for section in root.iter("actuator"):
            for act in section:
                if act.tag not in _MJCF_ACTUATORS:
                    continue
                attrs = {**defaults.get(("main", act.tag), {}), **defaults.get((act.get("class", "main"), act.tag), {}),
                         **act.attrib}
                if not attrs.get("ctrlrange"):
                    raise RobotError(f"{where}: 'limits.from' {path}: actuator {attrs.get('name') or act.tag} "
                                     f"(on joint {attrs.get('joint', '?')}) has no ctrlrange")
                lo, hi = (float(v) for v in attrs["ctrlrange"].split())
                lows.append(lo)
                highs.append(hi)
    elif root.tag == "robot":
        by_name = {j.get("name"): j.find("limit") for j in root.iter("joint")}
        for j in joints:
            lim = by_name.get(j)
            if lim is None or lim.get("lower") is None:
                raise RobotError(f"{where}: 'limits.from' {path}: joint {j!r} has no <limit lower upper>")
            lows.append(float(lim.get("lower", "nan")))
            highs.append(float(lim.get("upper", "nan")))
    else:
        raise RobotError(f"{where}: 'limits.from' {path}: neither MJCF (<mujoco>) nor URDF (<robot>)")
    if len(lows) != len(joints):
        raise RobotError(f"{where}: 'limits.from' {path} gives {len(lows)} limited actuators/joints, "
                         f"the robot has {len(joints)} joints")
    try:
        return ActionLimits(np.asarray(lows), np.asarray(highs))
    except ValueError as e:
        raise RobotError(f"{where}: 'limits.from' {path}: {e}") from None
