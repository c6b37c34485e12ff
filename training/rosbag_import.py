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

Messages to values: ``training/bag_messages.py``; the output file: ``training/hdf5_writer.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from mtm_runtime.robot import Robot
from mtm_runtime.training.bag_messages import BagError, Decoders, Stream, message_field, message_time, split_path
from mtm_runtime.training.hdf5_writer import episodes_to_d4rl, write_d4rl_hdf5
from mtm_runtime.training.loaders import Episode, build_episode
from mtm_runtime.training.resample import cut_episodes, parse_rule, resample

ACTION_SOURCES = ("topic", "derive", "missing")


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


# ---- reading the bag ----------------------------------------------------------------------------
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
    dec = Decoders(cfg.robot)

    # which topic feeds what
    state_specs: list[tuple[str, str | None]] = (  # (topic, field path or None for JointState)
        [split_path(s, "--state") for s in cfg.state_paths] if cfg.state_paths else [(cfg.state_topic, None)])
    wanted: dict[str, list[str]] = {}
    for i, (topic, _) in enumerate(state_specs):
        wanted.setdefault(topic, []).append(f"state{i}")
    if cfg.action_source == "topic":
        wanted.setdefault(cfg.action_topic, []).append("action")
    extra_specs = {}
    if cfg.goal_path:
        extra_specs["goals"] = split_path(cfg.goal_path, "--goal")
    if cfg.reward_path:
        extra_specs["rewards"] = split_path(cfg.reward_path, "--reward")
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

    streams = {role: Stream(topic) for topic, roles in wanted.items() for role in roles}
    counts = {topic: 0 for topic in wanted}
    conns = [c for c in reader.connections if c.topic in wanted]
    for conn, log_ns, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        counts[conn.topic] += 1
        t = message_time(msg, log_ns, cfg.time)
        for role in wanted[conn.topic]:
            s = streams[role]
            if role == "marker":
                s.add(t, np.zeros(1))
            elif role == "action":
                s.add(t, dec.command(msg, conn.msgtype, conn.topic))
            elif role.startswith("state"):
                fpath = state_specs[int(role[5:])][1]
                s.add(t, dec.joint_state(msg, conn.topic, cfg.robot.state_fields) if fpath is None
                      else message_field(msg, fpath, conn.topic))
            else:
                s.add(t, message_field(msg, extra_specs[role][1], conn.topic))
    for topic, joints in dec.missing_joints.items():
        if all(not streams[r].t for r in wanted[topic]):
            raise BagError(f"{path}: topic {topic} never names joint {sorted(joints)[0]!r} of robot {cfg.robot.name!r} "
                           f"(robot joints: {', '.join(cfg.robot.joints)})")
    for role, s in streams.items():
        if not s.t and role != "marker":
            raise BagError(f"{path}: topic {s.topic} has {counts[s.topic]} messages but none usable as {role} "
                           f"(width or joints do not match robot {cfg.robot.name!r})")
    return _resample(path, cfg, streams, counts, report)


def _resample(path: Path, cfg: BagImport, streams: dict[str, Stream], counts: dict[str, int],
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
    """Our HDF5 layout (``training/hdf5_writer.py``; written whole or not at all) with a ``metadata``
    group that names the robot (read back by ``read_hdf5``) and carries the import report.
    ``inferred``: episodes whose actions a model inferred (``training/relabel.py``): their steps
    are ``infos/action_inferred`` and ``metadata.actions_inferred_by`` names the model."""
    metadata = {"robot": json.dumps(robot.to_dict()), "tier": "recorded", "source": "rosbag2",
                "import_report": json.dumps(report.to_dict()), "episodes": len(episodes),
                "actions_inferred_by": inferred_by, "episodes_inferred": len(inferred)}
    return write_d4rl_hdf5(output, episodes_to_d4rl(episodes, inferred), metadata, compress=False)
