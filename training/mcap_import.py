"""MCAP recordings of the closed loop -> our HDF5 dataset layout (``training/datasets.py``).

So logs from a robot (or the sim bridge) train the next model. Reads with ``mcap_ros2`` only
(no rclpy). What the recording must hold (the sim bridge publishes all of them):

* ``/observation`` (Float64MultiArray: the task's ``states`` part) — one per control step;
* ``/commands`` (Float64MultiArray or JointState ``effort``/``position``/``velocity``);
* ``/reward`` (Float64) — the reward of step t, published just before observation t+1;
* ``/episode_stats`` (Float64MultiArray ``episode, return, normalised_score, steps[, success]``) — published
  when an episode ends: the episode boundaries;
* ``/goal`` (goal tasks; latched, published at each episode start);
* ``/joint_states`` (optional): the stamps that identify a step, for exact command pairing.

Episodes: the k-th ``episode_stats`` closes an episode of ``steps`` steps: its observations are
the next ``steps`` of that stream and its rewards the next ``steps - 1`` (streams keep
publication order: one publisher, reliable). The bridge never publishes the last step's reward
(the episode ends instead of sending observation L), so it is the reported ``return`` minus the
others. A first episode cut by the start of the recording (fewer observations before the first
``episode_stats`` than it reports) is dropped; an episode still running when the recording
stopped is kept as a truncated one (the steps whose reward arrived; ``timeouts`` on its last).

Actions (the command computed from state t):
* ``stamp`` pairing, exact: the commands are JointState stamped with the state's stamp (policy
  ``input_type: joint_state`` + ``command_type: joint_state``): the command whose stamp equals
  the stamp of the ``joint_states`` published with observation t.
* ``arrival`` pairing otherwise: commands are matched to states one to one, in order: state t
  takes the first unmatched command received after it and before the bridge's next message of
  the loop (observation t+1 or the episode end); commands received before state t that no
  earlier state took (a fault action published between states) are skipped. Times are the
  publishers' DDS source timestamps (``mtm record``'s ``publish_time``; receive times in files
  without them), and where they are receive times a lockstep bridge answering command t with
  observation t+1 can beat the recorder to it (measured: up to a few ms on a loaded machine), so both window
  edges get a slack of ``race_slack_ns`` (<= 5 ms and <= a quarter of the state interval). A step with no command in
  its window holds the previous action (counted in ``held``; zeros at an episode's first step).

Loss: a recording made by ``mtm record`` / ``mtm rollout`` holds the recorder's own count of
missed messages per topic (MCAP metadata ``mtm_record``); the report carries it
(``recorded_loss``; None for a file without that record) and ``mtm import-mcap`` prints it.

``terminals``: an episode shorter than the task's time limit terminated; otherwise ``timeouts``.
``next_observations``: observation t+1; the last step of an episode repeats its own observation
(the bridge does not publish the terminal observation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtm_runtime.recording import RecordingError, read_messages
from mtm_runtime.recording_loss import recorded_loss
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.relabel import infer_episode

#: Receive-order race allowance: at most this (ns), and at most a quarter of the median interval
#: between observations (so a realtime loop's commands can never slide to the next state).
RACE_NS = 5_000_000


def race_slack_ns(obs_t: np.ndarray) -> int:
    """How far receive order may disagree with causal order (see ``arrival`` pairing)."""
    if len(obs_t) < 3:
        return RACE_NS
    return int(min(RACE_NS, 0.25 * float(np.median(np.diff(obs_t)))))

TOPICS = ("/observation", "/joint_states", "/commands", "/reward", "/goal", "/episode_stats")


@dataclass
class ImportReport:
    """What the import did (printed by ``mtm import-mcap``)."""

    episodes: int = 0
    steps: int = 0
    pairing: str = ""
    held: int = 0
    dropped_partial_first: bool = False
    truncated_last: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    #: the recorder's per-topic counts (``mtm_runtime.recording_loss.LossCounter.report``), None if the file has none
    recorded_loss: dict[str, dict[str, Any]] | None = None
    #: False: the recording had no /commands (a labeller inferred the actions, or none could)
    commands_recorded: bool = True
    inferred_episodes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _values(msg: Any, field_order: Sequence[str] = ("data", "effort", "position", "velocity")) -> np.ndarray:
    """Numbers of a decoded Float64MultiArray (honouring data_offset) or the first non-empty JointState field."""
    if hasattr(msg, "data") and not isinstance(msg.data, (int, float)):
        off = int(msg.layout.data_offset) if hasattr(msg, "layout") else 0
        return np.asarray(msg.data, dtype=np.float64)[off:]
    for name in field_order[1:]:
        v = getattr(msg, name, None)
        if v is not None and len(v):
            return np.asarray(v, dtype=np.float64)
    return np.zeros(0)


def _stamp_ns(msg: Any) -> int | None:
    h = getattr(msg, "header", None)
    return None if h is None else int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)


def load_recording(path: str | Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(time_ns, message)] for the loop topics, in publication order.

    ``time_ns`` is the MCAP publish_time (``mtm record`` and rosbag2: the DDS source timestamp;
    receive time where the rclpy gives no message info) or, where that is 0, the log time."""
    out: dict[str, list[tuple[int, Any]]] = {t: [] for t in TOPICS}
    for rec in read_messages(path, TOPICS):
        out[rec.topic].append((rec.publish_time_ns or rec.log_time_ns, rec.msg))
    for rows in out.values():
        rows.sort(key=lambda r: r[0])  # stable: same-topic order kept on equal times
    return out


@dataclass
class Segmented:
    """A recording cut into steps: ``states[i]`` (raw /observation), ``actions[i]`` (paired),
    ``rewards[i]`` (NaN where none was recorded) and ``episodes`` as (start, steps, reported return
    or None, end log time); ``goals`` as [(log time, vector)]."""

    states: np.ndarray
    obs_t: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episodes: list[tuple[int, int, float | None, int]]
    goals: list[tuple[int, np.ndarray]]
    report: ImportReport


def segment(path: str | Path, require_rewards: bool = True, require_commands: bool = True) -> Segmented:
    """Read ``path`` and cut it into episodes and paired steps (no task needed). Without
    ``require_commands`` a recording with no /commands at all is cut too: ``actions`` is then
    ``[N, 0]`` (``report.commands_recorded`` False) for ``import_recording``'s labeller."""
    rec = load_recording(path)
    rep = ImportReport(counts={t: len(v) for t, v in rec.items()}, recorded_loss=recorded_loss(path))
    obs, rewards, stats = rec["/observation"], rec["/reward"], rec["/episode_stats"]
    if not obs:
        raise RecordingError(f"{path}: no messages on /observation (recorded topics: "
                             f"{', '.join(t for t, v in rec.items() if v) or 'none'})")
    if not rec["/commands"] and require_commands:
        raise RecordingError(f"{path}: no messages on /commands: nothing to pair the states with (a "
                             f"states-only recording imports with --relabel-actions MODEL)")
    if require_rewards and not rewards:
        raise RecordingError(f"{path}: no messages on /reward")
    states = [_values(m) for _, m in obs]
    widths = {s.size for s in states}
    if len(widths) != 1:
        raise RecordingError(f"{path}: /observation messages have different widths {sorted(widths)}")
    obs_t = np.array([t for t, _ in obs], dtype=np.int64)
    rew = np.array([float(m.data) for _, m in rewards], dtype=np.float64)
    rew_t = np.array([t for t, _ in rewards], dtype=np.int64)

    # The bridge publishes reward t just before observation t+1, so an episode of L steps has L
    # observations and L-1 rewards on the wire; the last step's reward is its reported return
    # minus the others (exact up to float64 rounding).
    episodes: list[tuple[int, int, float | None, int]] = []  # obs start, steps, reported return, end time
    rew_aligned = np.full(len(obs), np.nan)
    o = r = 0
    for k, (t_end, m) in enumerate(stats):
        v = _values(m)
        steps, ret = int(round(v[3])), float(v[1])
        if k == 0:
            before = int(np.searchsorted(obs_t, t_end))  # observations received before this episode ended
            if before < steps:  # the recording began mid-episode
                rep.dropped_partial_first = True
                o, r = before, int(np.searchsorted(rew_t, t_end))
                continue
        if o + steps > len(obs) or (require_rewards and r + steps - 1 > len(rew)):
            raise RecordingError(f"{path}: episode {len(episodes)} reports {steps} steps but the recording holds "
                                 f"only {len(obs) - o} more observations / {len(rew) - r} more rewards (messages lost?)")
        if rewards:
            rew_aligned[o:o + steps - 1] = rew[r:r + steps - 1]
            rew_aligned[o + steps - 1] = ret - float(rew[r:r + steps - 1].sum())
        episodes.append((o, steps, ret, t_end))
        o, r = o + steps, r + steps - 1
    tail = min(len(obs) - o, len(rew) - r) if rewards else len(obs) - o
    if tail >= 2:  # an episode still running when the recording stopped: the steps whose reward arrived
        if rewards:
            rew_aligned[o:o + tail] = rew[r:r + tail]
        episodes.append((o, tail, None, int(np.iinfo(np.int64).max)))
        rep.truncated_last = True
    if not episodes:
        raise RecordingError(f"{path}: no complete episode ({len(stats)} episode_stats, {len(obs)} observations)")
    if rec["/commands"]:
        action_width = max(_values(m).size for _, m in rec["/commands"])
        actions, rep.pairing, rep.held = _pair_actions(rec, obs_t, episodes, action_width)
    else:
        actions, rep.pairing, rep.commands_recorded = np.zeros((len(obs), 0)), "none", False
    goals = [(t, _values(m)) for t, m in rec["/goal"]]
    rep.episodes = len(episodes)
    rep.steps = int(sum(e[1] for e in episodes))
    return Segmented(np.stack(states), obs_t, actions, rew_aligned, episodes, goals, rep)


def import_recording(path: str | Path, task: Task | str,
                     labeller: Any = None) -> tuple[dict[str, np.ndarray], ImportReport]:
    """Recorded rollouts -> concatenated D4RL arrays (``mtm_runtime.training.datasets.write_hdf5`` input).

    A recording without /commands needs ``labeller`` (a Policy): its inverse dynamics fills the
    actions of every episode of at least T steps (``training/relabel.py``), marked
    ``infos/action_inferred``; shorter episodes stay action-free (``infos/action_present`` False)."""
    task = get_task(task) if isinstance(task, str) else task
    seg = segment(path, require_commands=labeller is None)
    rep = seg.report
    if not rep.commands_recorded:
        widths = {"states": seg.states.shape[1], "actions": task.action_dim}
        for name, have in widths.items():
            if labeller.spec.width(name) != have:
                raise RecordingError(f"{path}: the labelling model's {name} have width {labeller.spec.width(name)}, "
                                     f"the recording's (task {task.name}) {have}")
        seg.actions = np.full((len(seg.states), task.action_dim), np.nan)
        for o0, L, *_ in seg.episodes:
            if L >= labeller.spec.horizon:
                seg.actions[o0:o0 + L] = infer_episode(labeller, seg.states[o0:o0 + L].astype(np.float32))
                rep.inferred_episodes += 1
    if seg.states.shape[1] != task.state_dim:
        raise RecordingError(f"{path}: /observation has {seg.states.shape[1]} values, "
                             f"task {task.name} states have {task.state_dim}")
    if seg.actions.shape[1] != task.action_dim:
        raise RecordingError(f"{path}: /commands have {seg.actions.shape[1]} values, "
                             f"task {task.name} actions have {task.action_dim}")
    if task.has_goal and not seg.goals:
        raise RecordingError(f"{path}: task {task.name} needs /goal messages to rebuild its observations")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "terminals",
                                                         "timeouts", "next_observations", "infos/episode_id")}
    goal_t = np.array([t for t, _ in seg.goals], dtype=np.int64)
    for e, (o0, L, ret, _t_end) in enumerate(seg.episodes):
        st = seg.states[o0:o0 + L]
        if task.has_goal:
            gi = max(int(np.searchsorted(goal_t, seg.obs_t[o0], side="right")) - 1, 0)
            ob = task.join_observation(st, np.broadcast_to(seg.goals[gi][1], (L, task.goal_dim)))
        else:
            ob = st
        rw = seg.rewards[o0:o0 + L]
        if not np.all(np.isfinite(rw)):
            raise RecordingError(f"{path}: episode {e} lacks rewards for some of its {L} steps")
        term, tout = np.zeros(L, bool), np.zeros(L, bool)
        if ret is None or L >= task.episode_steps:
            tout[-1] = True
        else:
            term[-1] = True
        rows["observations"].append(ob)
        rows["actions"].append(seg.actions[o0:o0 + L])
        rows["rewards"].append(rw)
        rows["terminals"].append(term)
        rows["timeouts"].append(tout)
        rows["next_observations"].append(np.concatenate([ob[1:], ob[-1:]]))
        rows["infos/episode_id"].append(np.full(L, e, np.int32))
    data = {k: np.concatenate(v) for k, v in rows.items()}
    for k in ("observations", "actions", "rewards", "next_observations"):
        data[k] = data[k].astype(np.float32)
    data["infos/action_present"] = np.all(np.isfinite(data["actions"]), axis=1)
    data["infos/action_inferred"] = np.full(len(data["rewards"]), not rep.commands_recorded) & data["infos/action_present"]
    if task.has_goal:
        data["infos/goal"] = task.split_observation(data["observations"])["goals"].astype(np.float32)
    return data, rep


def _pair_actions(rec: dict[str, list[tuple[int, Any]]], obs_t: np.ndarray,
                  episodes: list[tuple[int, int, float | None, int]], width: int) -> tuple[np.ndarray, str, int]:
    """One action per observation (see the module docstring): (actions [N, width], pairing, held)."""
    cmds = rec["/commands"]
    vals = [_values(m) for _, m in cmds]
    cmd_t = np.array([t for t, _ in cmds], dtype=np.int64)
    n = len(obs_t)
    out = np.full((n, width), np.nan)
    js = rec["/joint_states"]
    cmd_stamps = [_stamp_ns(m) for _, m in cmds]
    pairing = "arrival"
    if js and len(js) == n and all(s is not None for s in cmd_stamps):
        js_stamps = [_stamp_ns(m) for _, m in js]
        index = {s: i for i, s in enumerate(js_stamps)}
        hits = sum(1 for s in cmd_stamps if s in index)
        if hits >= 0.9 * len(cmds):
            pairing = "stamp"
            for s, v in zip(cmd_stamps, vals):
                i = index.get(s)
                if i is not None and v.shape == (width,):
                    out[i] = v  # the last command computed from state i wins
    if pairing == "arrival":
        ends = np.empty(n, np.int64)
        ends[:-1] = obs_t[1:]
        ends[-1] = np.iinfo(np.int64).max
        for o0, L, _ret, t_end in episodes:  # an episode's last window closes with its end
            ends[o0 + L - 1] = t_end
        slack = race_slack_ns(obs_t)
        j = 0
        for i in range(n):  # one command per state, in order (trigger: state answers each state once)
            while j < len(cmd_t) and cmd_t[j] < obs_t[i] - slack:
                j += 1  # received before this state: an extra (fault) command of an earlier one
            if j < len(cmd_t) and cmd_t[j] <= ends[i] + slack:
                if vals[j].shape == (width,):
                    out[i] = vals[j]
                j += 1
    held = 0
    for o0, L, _ret, _t in episodes:
        prev = np.zeros(width)
        for i in range(o0, o0 + L):
            if not np.all(np.isfinite(out[i])):
                out[i] = prev
                held += 1
            prev = out[i]
    return out, pairing, held


def import_to_hdf5(path: str | Path, task: Task | str, output: str | Path, labeller: Any = None,
                   labeller_name: str = "") -> tuple[Path, ImportReport]:
    """Import ``path`` and write ``output`` (tier ``recorded``; ``labeller`` as in ``import_recording``,
    named by ``labeller_name`` in the file's metadata); loads with ``mtm_runtime.training.loaders.load_episodes``."""
    from mtm_runtime.training.datasets import write_hdf5

    task = get_task(task) if isinstance(task, str) else task
    data, rep = import_recording(path, task, labeller)
    extra = ({"actions_inferred_by": labeller_name or "a model", "episodes_inferred": rep.inferred_episodes}
             if not rep.commands_recorded else None)
    return write_hdf5(output, data, task, "recorded", seed=0, extra=extra), rep
