"""rosbag2 logs of any robot -> episodes (and our HDF5 layout), guided by the robot description.

Reads MCAP and sqlite3 bags (the storage Humble records by default) with the ``rosbags`` library;
message types come from the bag (MCAP carries its definitions) or the standard ROS 2 types.

What becomes what (``BagImport``):
* **states**: by default ``/joint_states`` (``sensor_msgs/JointState``): the robot file's
  ``state.fields`` of its joints, picked by name (a message may list joints in any order and may
  carry other joints; a message lacking one of ours is counted and skipped). Or, for any numeric
  field, ``state_paths = ["TOPIC:field.path", ...]`` concatenated in order.
* **actions**: ``action_source``:
  ``topic``: the robot's command topic (``Float64MultiArray`` ``data``; ``JointTrajectory``: the
  first point's positions / velocities / effort per the action interface, joints by name;
  ``JointState``: the interface's field, joints by name);
  ``derive``: the next measured value of the action interface's field (the next position for a
  position interface): what the robot reached, used as what it was commanded;
  ``missing``: none (the episodes are state-only; heteromodal training fills them, ``--self-label-at``).
* **goals** (a robot with ``extras: {goals: N}``): ``goal_path = "TOPIC:field"``.
* **rewards**: ``reward_path = "TOPIC:field"`` if the log has them; otherwise no returns modality.

Resampling to the control rate: the rule is ``training/resample.py``'s (ticks at the control rate
aligned to the state samples, zero-order hold, the command sent between each tick's state and the
next state sample; a tick
with a sample older than ``max_age_s``, default 1.25 periods, is stale: dropped, and it ends the
episode). A stream's sample is *held* when it serves a second tick, *skipped* when a newer one
replaced it before any tick used it; every held, skipped and dropped sample is counted in the
report, per topic.

Times: the bag's receive time (``time="log"``), or the message's ``header.stamp`` where it has
one (``time="header"``).

Episodes (``episodes``): ``bag`` (the whole bag, cut only by stale gaps), ``gap:S`` (also a gap of
more than S seconds in the state stream), ``length:N`` (N ticks each; a shorter rest is kept),
``marker:TOPIC`` (every message on TOPIC starts a new episode). Episodes shorter than
``min_length`` ticks are dropped (counted).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from mtm_runtime.robot import Robot
from mtm_runtime.training.loaders import DatasetError, Episode, build_episode
from mtm_runtime.training.resample import cut_episodes, parse_rule, resample

ACTION_SOURCES = ("topic", "derive", "missing")


class BagError(DatasetError):
    """The bag does not match the robot file or the options; the message names the topic or joint."""


@dataclass
class BagImport:
    """How a bag maps onto the robot description (see the module docstring)."""

    robot: Robot
    state_topic: str = "/joint_states"
    state_paths: tuple[str, ...] = ()
    action_source: str = "topic"
    action_topic: str = ""                  # default: the robot's command topic
    goal_path: str = ""
    reward_path: str = ""
    episodes: str = "bag"
    max_age_s: float = 0.0                  # 0: 1.25 control periods
    time: str = "log"
    min_length: int = 2

    def __post_init__(self) -> None:
        if self.action_source not in ACTION_SOURCES:
            raise BagError(f"--actions must be one of {', '.join(ACTION_SOURCES)}, got {self.action_source!r}")
        if self.time not in ("log", "header"):
            raise BagError(f"--time must be log or header, got {self.time!r}")
        try:
            parse_rule(self.episodes)
        except ValueError as e:
            raise BagError(str(e)) from None
        if dict(self.robot.extras).get("goals") and not self.goal_path:
            raise BagError(f"robot {self.robot.name!r} has goals: pass --goal TOPIC:FIELD")
        if self.robot.observation_dim and not self.state_paths:
            raise BagError(f"robot {self.robot.name!r} describes an observation vector: pass --state TOPIC:FIELD")
        if not self.action_topic:
            self.action_topic = self.robot.command_topic if self.robot.command_topic.startswith("/") \
                else "/" + self.robot.command_topic

    @property
    def period(self) -> float:
        return 1.0 / self.robot.rate_hz


@dataclass
class BagReport:
    """What the import did, with every dropped or held sample counted."""

    bag: str
    storage: str
    episodes: int = 0
    steps: int = 0
    ticks: int = 0
    stale_ticks: int = 0
    short_episodes_dropped: int = 0
    derived_last_steps_dropped: int = 0
    topics: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        per = "; ".join(f"{t}: {c['messages']} msgs, {c['used']} used, {c['held']} held, {c['skipped']} skipped"
                        + (f", {c['unusable']} unusable" if c.get("unusable") else "") for t, c in self.topics.items())
        return (f"{self.bag} ({self.storage}): {self.episodes} episodes, {self.steps} steps from {self.ticks} ticks; "
                f"dropped: {self.stale_ticks} stale ticks, {self.short_episodes_dropped} short episodes, "
                f"{self.derived_last_steps_dropped} last steps without a next state; {per}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---- reading the streams -----------------------------------------------------------------------
def _split_path(spec: str, what: str) -> tuple[str, str]:
    if ":" not in spec:
        raise BagError(f"{what} {spec!r} must be TOPIC:FIELD (e.g. /goal:data)")
    topic, path = spec.rsplit(":", 1)
    return topic, path


def _field(msg: Any, path: str, topic: str) -> np.ndarray:
    obj = msg
    for part in path.split("."):
        if not hasattr(obj, part):
            raise BagError(f"topic {topic}: message {type(msg).__name__} has no field {path!r}")
        obj = getattr(obj, part)
    arr = np.asarray(obj, dtype=np.float64).reshape(-1)
    return arr


def _stamp(msg: Any, log_ns: int, mode: str) -> int:
    if mode == "header" and hasattr(msg, "header"):
        s = msg.header.stamp
        ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
        if ns > 0:
            return ns
    return log_ns


class _Stream:
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


def _by_name(names: Sequence[str], joints: Sequence[str], cache: dict) -> np.ndarray | None:
    key = tuple(names)
    if key not in cache:
        index = {n: i for i, n in enumerate(names)}
        cache[key] = None if any(j not in index for j in joints) else np.array([index[j] for j in joints])
    return cache[key]


class _Decoders:
    """Message -> values for the states and the actions, per the robot description."""

    def __init__(self, cfg: BagImport) -> None:
        self.cfg, self.robot = cfg, cfg.robot
        self._state_cache: dict = {}
        self._cmd_cache: dict = {}
        self.missing_joints: dict[str, set[str]] = {}

    def joint_state(self, msg: Any, topic: str, fields: Sequence[str]) -> np.ndarray | None:
        idx = _by_name(msg.name, self.robot.joints, self._state_cache)
        if idx is None:
            self.missing_joints.setdefault(topic, set()).update(j for j in self.robot.joints if j not in msg.name)
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
            idx = _by_name(msg.joint_names, self.robot.joints, self._cmd_cache)
            field = {"position": "positions", "velocity": "velocities", "effort": "effort"}[f]
            v = np.asarray(getattr(msg.points[0], field), np.float64)
            if idx is None:
                self.missing_joints.setdefault(topic, set()).update(j for j in self.robot.joints if j not in msg.joint_names)
                return None
            return v[idx] if len(v) == len(msg.joint_names) else None
        if msgtype.endswith("JointState"):
            return self.joint_state(msg, topic, (f,))
        raise BagError(f"topic {topic}: command type {msgtype} is not Float64MultiArray, JointTrajectory or JointState")


def read_bag(path: str | Path, cfg: BagImport) -> tuple[list[Episode], BagReport]:
    """Read, resample and cut the bag at ``path`` (a rosbag2 directory, or one .mcap/.db3 file)."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises its own error types per storage
        raise BagError(f"{path}: not a readable rosbag2 ({type(e).__name__}: {e})") from None
    try:
        return _read_open(path, reader, cfg)
    finally:
        reader.close()


def _read_open(path: Path, reader: AnyReader, cfg: BagImport) -> tuple[list[Episode], BagReport]:
    topics = {c.topic: c.msgtype for c in reader.connections}
    storage = "mcap" if any(p.suffix == ".mcap" for p in ([path] if path.is_file() else path.iterdir())) else "sqlite3"
    report = BagReport(str(path), storage)
    dec = _Decoders(cfg)

    # which topic feeds what
    state_specs: list[tuple[str, str | None]] = (  # (topic, field path or None for JointState)
        [_split_path(s, "--state") for s in cfg.state_paths] if cfg.state_paths else [(cfg.state_topic, None)])
    wanted: dict[str, list[str]] = {}
    for i, (topic, _) in enumerate(state_specs):
        wanted.setdefault(topic, []).append(f"state{i}")
    if cfg.action_source == "topic":
        wanted.setdefault(cfg.action_topic, []).append("action")
    extra_specs = {}
    if cfg.goal_path:
        extra_specs["goals"] = _split_path(cfg.goal_path, "--goal")
    if cfg.reward_path:
        extra_specs["rewards"] = _split_path(cfg.reward_path, "--reward")
    for name, (topic, _) in extra_specs.items():
        wanted.setdefault(topic, []).append(name)
    marker = cfg.episodes.split(":", 1)[1] if cfg.episodes.startswith("marker:") else ""
    if marker:
        wanted.setdefault(marker, []).append("marker")
    for topic, roles in wanted.items():
        if topic not in topics:
            have = ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())) or "none"
            raise BagError(f"{path}: no topic {topic} (needed for {roles[0].rstrip('0123456789')}); the bag has: {have}")
    for topic, fpath in state_specs:
        if fpath is None and not topics[topic].endswith("JointState"):
            raise BagError(f"{path}: topic {topic} is {topics[topic]}, not sensor_msgs/msg/JointState; "
                           "give numeric fields with --state TOPIC:FIELD")

    streams = {role: _Stream(topic) for topic, roles in wanted.items() for role in roles}
    counts = {topic: 0 for topic in wanted}
    conns = [c for c in reader.connections if c.topic in wanted]
    for conn, log_ns, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        counts[conn.topic] += 1
        t = _stamp(msg, log_ns, cfg.time)
        for role in wanted[conn.topic]:
            s = streams[role]
            if role == "marker":
                s.add(t, np.zeros(1))
            elif role == "action":
                s.add(t, dec.command(msg, conn.msgtype, conn.topic))
            elif role.startswith("state"):
                fpath = state_specs[int(role[5:])][1]
                s.add(t, dec.joint_state(msg, conn.topic, cfg.robot.state_fields) if fpath is None
                      else _field(msg, fpath, conn.topic))
            else:
                s.add(t, _field(msg, extra_specs[role][1], conn.topic))
    for topic, joints in dec.missing_joints.items():
        if all(not streams[r].t for r in wanted[topic]):
            raise BagError(f"{path}: topic {topic} never names joint {sorted(joints)[0]!r} of robot {cfg.robot.name!r} "
                           f"(robot joints: {', '.join(cfg.robot.joints)})")
    for role, s in streams.items():
        if not s.t and role != "marker":
            raise BagError(f"{path}: topic {s.topic} has {counts[s.topic]} messages but none usable as {role} "
                           f"(width or joints do not match robot {cfg.robot.name!r})")
    return _resample(path, cfg, streams, counts, report)


def _resample(path: Path, cfg: BagImport, streams: dict[str, _Stream], counts: dict[str, int],
              report: BagReport) -> tuple[list[Episode], BagReport]:
    data = {role: s.arrays() for role, s in streams.items()}
    state_roles = sorted(r for r in data if r.startswith("state"))
    if len(data[state_roles[0]][0]) < 2:
        raise BagError(f"{path}: topic {streams[state_roles[0]].topic} has fewer than two state samples")
    times = {r: data[r][0] for r in data if r != "marker"}
    period_ns = int(round(1e9 * cfg.period))
    res = resample(times, state_roles[0], {"action", "rewards"}, period_ns,
                   int(round(1e9 * (cfg.max_age_s or 1.25 * cfg.period))))
    report.ticks, report.stale_ticks = len(res.ticks), int((~res.fresh).sum())
    for topic in counts:
        roles = [r for r in times if streams[r].topic == topic]
        c = {"messages": counts[topic], "used": 0, "held": 0, "skipped": 0,
             "unusable": sum(streams[r].unusable for r in roles)}
        if roles:
            c.update(res.usage(roles[0], len(times[roles[0]])))
        report.topics[topic] = c
    kind, value = parse_rule(cfg.episodes)
    episodes: list[Episode] = []
    for piece in cut_episodes(res, kind, value, times[state_roles[0]], data["marker"][0] if "marker" in data else None):
        ep = _episode(cfg, data, res.index, state_roles, piece, report, f"{path} ticks {piece[0]}..{piece[-1]}")
        if ep is not None:
            episodes.append(ep)
    report.episodes, report.steps = len(episodes), int(sum(ep.length for ep in episodes))
    if not episodes:
        raise BagError(f"{path}: no episode of at least {cfg.min_length} steps ({report.summary()})")
    return episodes, report


def _episode(cfg: BagImport, data: dict, idx: dict, state_roles: list[str], piece: np.ndarray,
             report: BagReport, where: str) -> Episode | None:
    states = np.concatenate([data[r][1][idx[r][piece]] for r in state_roles], axis=1)
    actions: np.ndarray | None
    if cfg.action_source == "topic":
        actions = data["action"][1][idx["action"][piece]]
    elif cfg.action_source == "derive":
        robot = cfg.robot
        if robot.observation_dim or robot.action_interface not in robot.state_fields:
            raise BagError(f"--actions derive needs the robot's state fields to include its action interface "
                           f"({robot.action_interface}); use --actions missing or a command topic")
        k = robot.state_fields.index(robot.action_interface)
        n = robot.action_dim
        actions = states[1:, k * n:(k + 1) * n]
        states = states[:-1]
        piece = piece[:-1]
        report.derived_last_steps_dropped += 1
    else:
        actions = None
    if len(states) < cfg.min_length:
        report.short_episodes_dropped += 1
        return None
    parts = {"states": states}
    if "goals" in data:
        parts["goals"] = data["goals"][1][idx["goals"][piece]]
    rewards = data["rewards"][1][idx["rewards"][piece], 0] if "rewards" in data else None
    return build_episode(where, parts, actions, rewards, terminated=False, action_dim=cfg.robot.action_dim)


# ---- our HDF5 ------------------------------------------------------------------------------------
def write_episodes_hdf5(output: str | Path, episodes: Sequence[Episode], robot: Robot, report: BagReport,
                        inferred: Sequence[int] = (), inferred_by: str = "") -> Path:
    """Our D4RL layout with a ``metadata`` group that names the robot (read back by ``read_hdf5``).
    ``inferred``: episodes whose actions a model inferred (``training/relabel.py``): their steps
    are ``infos/action_inferred`` and ``metadata.actions_inferred_by`` names the model.
    Written to a temporary name and renamed: a failed import leaves no half-written file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    obs = np.concatenate([np.concatenate([ep["states"], ep["goals"]], 1) if "goals" in ep else ep["states"]
                          for ep in episodes])
    lengths = [ep.length for ep in episodes]
    ends = np.cumsum(lengths) - 1
    timeouts = np.zeros(len(obs), bool)
    timeouts[ends] = True
    try:
        with h5py.File(tmp, "w") as f:
            f["observations"] = obs.astype(np.float32)
            f["actions"] = np.concatenate([ep["actions"] if ep.labelled else np.full(ep["actions"].shape, np.nan, np.float32)
                                           for ep in episodes]).astype(np.float32)
            if all("rewards" in ep for ep in episodes):
                f["rewards"] = np.concatenate([ep["rewards"][:, 0] for ep in episodes]).astype(np.float32)
            f["terminals"] = np.zeros(len(obs), bool)
            f["timeouts"] = timeouts
            f["infos/action_present"] = np.concatenate([np.full(L, ep.labelled) for L, ep in zip(lengths, episodes)])
            f["infos/episode_id"] = np.concatenate([np.full(L, i, np.int32) for i, L in enumerate(lengths)])
            f["infos/action_inferred"] = np.concatenate([np.full(L, i in set(inferred)) for i, L in enumerate(lengths)])
            meta = f.create_group("metadata")
            meta.attrs.update({"robot": json.dumps(robot.to_dict()), "tier": "recorded", "source": "rosbag2",
                               "import_report": json.dumps(report.to_dict()), "episodes": len(episodes),
                               "actions_inferred_by": inferred_by, "episodes_inferred": len(inferred)})
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return output
