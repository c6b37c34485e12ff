"""Running the closed loop from the outside: :func:`run_closed_loop` (rclpy; thin).

The node set of ``mtm launch`` (``launch_description.describe``), each node its own process,
plus a :class:`~mtm_runtime.ros_nodes.loop_monitor.LoopMonitor` in this process that records and
watches; ends after the bridge's ``episodes`` or ``duration_s``; raises ``NodeFailure`` naming the
node (and its last log lines) when a node dies or the policy fails to configure. What the
recorder missed is written into the file (metadata ``mtm_record``) and printed. The outcome is a
:class:`LoopResult`. :func:`write_params` writes the params file the nodes read (the benchmarks
use it too). Used by ``mtm rollout`` and the closed-loop demo.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy

from mtm_runtime.recording import CLOSED_LOOP_TOPICS, McapSink
from mtm_runtime.recording_loss import loss_warnings
from mtm_runtime.ros_nodes.executors import make_executor, spin_loop
from mtm_runtime.ros_nodes.launch_description import describe
from mtm_runtime.ros_nodes.loop_monitor import BRIDGE_TOPICS, MONITOR_EXECUTOR, LoopMonitor
from mtm_runtime.ros_nodes.node_processes import NodeFailure, NodeProcesses

#: The topics the recorder must have subscribed before /observation (``LoopMonitor`` ``first``):
#: the bridge's other topics (``BRIDGE_TOPICS``) and the policy's /commands.
GATED_AFTER = (*BRIDGE_TOPICS, "/commands")


@dataclass
class LoopResult:
    """Outcome of :func:`run_closed_loop` (times in s; latencies from the policy's diagnostics in ms)."""

    wall_s: float
    episodes: list[dict[str, float]]
    policy_diagnostics: dict[str, str]
    bridge_diagnostics: dict[str, str]
    recorded: dict[str, int] = field(default_factory=dict)
    record_path: str = ""
    log_dir: str = ""
    #: the policy's last /diagnostics received before the bridge finished its episodes (empty if
    #: the run ended otherwise): counters after it include the stale-input watchdog reacting to the
    #: bridge having stopped, which is the watchdog working, not a fault of the run
    policy_diagnostics_at_bridge_end: dict[str, str] = field(default_factory=dict)
    #: the recorder's per-topic received/missed counts (``LossCounter.report``; empty without ``record``)
    loss: dict[str, dict[str, Any]] = field(default_factory=dict)

    def faults_after_bridge_end(self) -> int:
        """Faults the policy counted after the bridge ended its last episode (0 if unknown): the
        policy's /diagnostics when the monitor saw the last episode end (or, if it missed one, when
        the bridge's process exited) against its last."""
        try:
            return int(self.policy_diagnostics["faults"]) - int(self.policy_diagnostics_at_bridge_end["faults"])
        except (KeyError, ValueError):
            return 0

    def step_rate_hz(self) -> float:
        """Env steps per second at the bridge between the first and the last episode end that the
        monitor saw arrive (NaN if fewer than 2)."""
        seen = [i for i, e in enumerate(self.episodes) if math.isfinite(e.get("received_s", math.nan))]
        if len(seen) < 2:
            return math.nan
        first, last = seen[0], seen[-1]
        dt = self.episodes[last]["received_s"] - self.episodes[first]["received_s"]
        return sum(e["steps"] for e in self.episodes[first + 1:last + 1]) / dt if dt > 0 else math.nan

    def _finite_mean(self, key: str) -> float:
        s = [e[key] for e in self.episodes if math.isfinite(e[key])]
        return float(sum(s) / len(s)) if s else math.nan

    def success_rate(self) -> float:
        """Share of episodes that met the task's success criterion (NaN if the task has none)."""
        return self._finite_mean("success")

    def mean_score(self) -> float:
        return self._finite_mean("normalised_score")


def episodes_from_results(path: Path, live: list[dict[str, float]]) -> list[dict[str, float]]:
    """Every episode the bridge ended, from its own results file (``results_path``), with the
    arrival time of its /episode_stats where the monitor got one: /episode_stats is volatile, and a
    monitor not yet matched when an episode ends misses it. ``live`` if the file is missing or
    unreadable (said on stderr)."""
    if not live and not Path(path).exists():
        return live  # no episode ended
    try:
        rows = json.loads(Path(path).read_text())["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"closed loop: the bridge's results file {path} is unreadable ({e}): episodes as received "
              f"on /episode_stats ({len(live)})", file=sys.stderr, flush=True)
        return live
    arrived = {int(e["episode"]): e.get("received_s", math.nan) for e in live}
    return [{"episode": int(r["episode"]), "return": float(r["return"]),
             "normalised_score": float(r["normalised_score"]), "steps": int(r["steps"]),
             "success": float(r["success"]), "received_s": arrived.get(int(r["episode"]), math.nan)} for r in rows]


def write_params(path: Path, policy: dict[str, Any], bridge: dict[str, Any]) -> Path:
    """A ROS params file with sections for the policy node and the bridge (JSON is valid YAML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mtm_policy": {"ros__parameters": policy},
                                "mtm_sim_bridge": {"ros__parameters": bridge},
                                "mtm_serial_bridge": {"ros__parameters": bridge}}, indent=1))
    return path


def run_closed_loop(model: str, *, log_dir: Path, target: str = "sim", backend: str = "", rate: str = "",
                    task: str = "reacher", sim_mode: str = "realtime", episodes: int = 0, duration_s: float = 0.0,
                    record: Path | None = None, topics: dict[str, str] | None = None,
                    policy_params: dict[str, Any] | None = None, bridge_params: dict[str, Any] | None = None,
                    startup_timeout_s: float = 30.0, progress: bool = False) -> LoopResult:
    """Run the launch description's node set until ``episodes`` are done (bridge exits 0) or ``duration_s``.

    With ``record``: the recorder's counts are in ``LoopResult.loss`` and the file's ``mtm_record``
    metadata, and every topic that lost messages gets a warning line on stderr.

    Raises NodeFailure if a node exits non-zero (or the policy node exits at all), the policy
    fails to configure, or no episode ends within ``startup_timeout_s`` of the expected time.
    """
    log_dir = Path(log_dir)
    bridge = dict(bridge_params or {})
    if target == "sim" and episodes:
        bridge["episodes"] = int(episodes)
    results = Path(bridge.setdefault("results_path", str(log_dir / "bridge_episodes.json"))) if target == "sim" else None
    wanted = dict(CLOSED_LOOP_TOPICS if topics is None else topics)
    gate: dict[str, Any] = {}
    if target == "sim" and record and wanted.get("/observation") and bridge.get("publish_observation", True):
        # the first episode waits for its readers: the recorder, and the policy unless it reads joint_states;
        # the recorder subscribes to /observation last, once it sees the writers of the loop's other
        # topics (LoopMonitor ``last``), so nothing of the first episode is lost to discovery
        policy_reads = (policy_params or {}).get("input_type", "float64_multiarray") != "joint_state"
        bridge.setdefault("start_subscribers", 1 + int(policy_reads))
        bridge.setdefault("start_wait_s", 0.75 * startup_timeout_s)
        first = [t for t in GATED_AFTER if t in wanted and (t != "/joint_states" or bridge.get("publish_joint_states", True))]
        gate = {"last": "/observation", "first": tuple(first), "last_wait_s": 0.5 * startup_timeout_s,
                "command_readers": 2 if "/commands" in first else 0}  # the bridge and the recorder
    params = write_params(log_dir / "params.yaml", dict(policy_params or {}), bridge)
    nodes = describe(model=model, backend=backend, rate=rate, params_file=str(params), target=target,
                     task=task if target == "sim" else "", sim_mode=sim_mode if target == "sim" else "")
    context = rclpy.Context()
    rclpy.init(context=context)
    sink = McapSink(record, metadata={"model": model, "task": task, "target": target, "sim_mode": sim_mode,
                                      "rate": rate, "backend": backend}) if record else None
    if wanted.get("/commands", None) == "":  # known from the policy's parameters
        wanted["/commands"] = ("sensor_msgs/msg/JointState" if (policy_params or {}).get("command_type") == "joint_state"
                               else "std_msgs/msg/Float64MultiArray")
    monitor = LoopMonitor(wanted, sink, context=context, eager=True, **gate)
    executor, _ = make_executor(context, prefer=MONITOR_EXECUTOR)
    executor.add_node(monitor)
    stop = threading.Event()
    thread = threading.Thread(target=spin_loop, args=(executor, context, lambda: not stop.is_set(), 0.02), daemon=True)
    thread.start()
    procs = NodeProcesses(nodes, log_dir)
    bridge_name = nodes[-1].name if len(nodes) > 1 else ""
    t0 = time.monotonic()
    at_bridge_end: dict[str, str] = {}
    try:
        procs.start()
        shown = 0
        while True:
            time.sleep(0.05)
            now = time.monotonic() - t0
            with monitor.lock:
                err, n_eps = monitor.policy_error, len(monitor.episodes)
                new = monitor.episodes[shown:]
            if progress:
                for e in new:
                    reached = "" if not math.isfinite(e["success"]) else (", success" if e["success"] else ", missed")
                    print(f"  episode {e['episode']}: return {e['return']:.3f}, normalised score "
                          f"{e['normalised_score']:.1f} ({e['steps']} steps{reached})", flush=True)
            shown += len(new)
            if err:
                raise NodeFailure(f"node mtm_policy: {err}; last lines of its log:\n" + procs.tail("mtm_policy"))
            exited = procs.exited()
            bridge_done = bridge_name in exited and exited[bridge_name] == 0 and episodes
            # the policy's counters when the bridge ended its last episode: a fault shows in its
            # /diagnostics at once (event-driven), the watchdog's ticks in the silence after start
            # stale_timeout later; if the monitor missed an episode's end, the exit is the next best moment
            if not at_bridge_end and episodes and (n_eps >= episodes or bridge_done):
                with monitor.lock:
                    at_bridge_end = dict(monitor.policy_diag)
            if bridge_done:
                break  # the bridge finished its episodes
            # the bridge may finish between exited() and check(): the next pass takes it as done
            procs.check(allowed_to_exit=(bridge_name,) if episodes else ())
            if duration_s and now >= duration_s:
                break
            if not n_eps and episodes and now > startup_timeout_s:
                raise NodeFailure(f"no episode finished within {startup_timeout_s:.0f} s; policy diagnostics: "
                                  f"{monitor.policy_diag or 'none received'}\n--- mtm_policy log:\n"
                                  + procs.tail("mtm_policy") + (f"\n--- {bridge_name} log:\n" + procs.tail(bridge_name)
                                                                if bridge_name else ""))
        wall = time.monotonic() - t0
        with monitor.lock:
            seen = monitor.policy_diag_count
        deadline = time.monotonic() + 2.5  # one more policy /diagnostics (1 Hz) to judge the run by
        while time.monotonic() < deadline:
            time.sleep(0.05)
            with monitor.lock:
                if monitor.policy_diag_count > seen:
                    break
        with monitor.lock:
            err, diag = monitor.policy_error, dict(monitor.policy_diag)
        if err:
            raise NodeFailure(f"node mtm_policy: {err}; last lines of its log:\n" + procs.tail("mtm_policy"))
        if target != "none" and (not diag or diag.get("ticks", "0") in ("0", "")):
            raise NodeFailure("node mtm_policy never produced a command from the model (lifecycle state "
                              f"{diag.get('lifecycle_state', 'unknown')}, {diag.get('states_in', '?')} states in, "
                              f"{diag.get('state_publishers', '?')} publishers on its state topic); "
                              "last lines of its log:\n" + procs.tail("mtm_policy")
                              + (f"\n--- {bridge_name} log:\n" + procs.tail(bridge_name) if bridge_name else ""))
    finally:
        codes = procs.stop()
        monitor.drain(lambda: time.sleep(0.02), time.time_ns())  # the spin thread takes what is still queued
        stop.set()
        thread.join(timeout=5)
        executor.shutdown(timeout_sec=1.0)
        monitor.destroy_node()
        loss = monitor.finish_recording() if sink is not None else {}
        if context.ok():
            rclpy.shutdown(context=context)
    for line in loss_warnings(loss):  # a lossy recording is never silent
        print(f"recording {record}: WARNING: {line}", file=sys.stderr, flush=True)
    bad = {n: c for n, c in codes.items() if c not in (0, -2)}  # -2: stopped by our SIGINT
    if bad:
        raise NodeFailure(f"nodes exited with errors while stopping: {bad} (logs in {log_dir})")
    episodes_seen = episodes_from_results(results, list(monitor.episodes)) if results else list(monitor.episodes)
    return LoopResult(wall, episodes_seen, dict(monitor.policy_diag), dict(monitor.bridge_diag),
                      dict(sink.counts) if sink else {}, str(record or ""), str(log_dir), at_bridge_end, loss)
