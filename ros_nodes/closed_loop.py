"""Watching, recording and running the closed loop from the outside (rclpy; thin).

* :class:`LoopMonitor`: a node that records topics to MCAP (raw CDR, no deserialisation: see
  ``mtm_runtime.recording``) and keeps what a supervisor needs: the policy node's latest
  /diagnostics, the bridge's ``episode_stats``, and whether the policy reported a configure error.
  Subscriptions are created when a publisher of the topic appears, with QoS matched to it (like
  rosbag2): best effort only if every publisher is best effort, transient local if every
  publisher is (latched ``goal``), else reliable with a deep queue.
* :func:`run_closed_loop`: the node set of ``mtm launch`` (``launch_description.describe``), each
  node its own process, plus the monitor in this process; ends after the bridge's ``episodes``
  or ``duration_s``; raises ``NodeFailure`` naming the node (and its last log lines) when a node
  dies or the policy fails to configure.
* ``record_main``: ``mtm record``.
"""
from __future__ import annotations

import importlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray

from mtm_runtime.launch_description import describe
from mtm_runtime.node_processes import NodeFailure, NodeProcesses
from mtm_runtime.recording import CLOSED_LOOP_TOPICS, McapSink
from ros_nodes.conversions import diagnostic_values
from ros_nodes.executors import make_executor, spin_loop


#: Topics published latched (reliable, transient local) by the node set.
LATCHED_TOPICS = ("/goal", "/target_return")
#: Measured (rclpy 9.1.2 wheel, lockstep Reacher, 100 steps): with the EventsExecutor the raw
#: /commands subscription recorded 46-48 of 100 commands (the policy's RELIABLE keep-last-1
#: writer); with the SingleThreadedExecutor all of them. The recorder is not a control path.
MONITOR_EXECUTOR = "single"


def message_class(type_name: str) -> type:
    """``pkg/msg/Type`` -> the generated Python class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class LoopMonitor(Node):
    """Records ``topics`` (name -> type, "" = take it from the graph) into ``sink`` and watches the loop."""

    def __init__(self, topics: dict[str, str], sink: McapSink | None = None, *, context: Any = None,
                 name: str = "mtm_recorder", eager: bool = False) -> None:
        """``eager``: subscribe at once to every topic whose type is given, reliable (transient local
        for ``/goal``), instead of waiting to see its publisher: for our own node set, whose
        publishers are all reliable, this is matched before the first message (measured: waiting
        lost the first ~50 commands of a lockstep run on a loaded machine)."""
        super().__init__(name, context=context, start_parameter_services=False)
        self.sink, self.lock = sink, threading.Lock()
        self.wanted = {(t if t.startswith("/") else "/" + t): ty for t, ty in topics.items()}
        self.subscribed: dict[str, str] = {}
        self.episodes: list[dict[str, float]] = []
        self.policy_diag: dict[str, str] = {}
        self.bridge_diag: dict[str, str] = {}
        self.policy_error = ""
        self.policy_diag_count = 0
        self.messages = 0
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.create_subscription(Float64MultiArray, "/episode_stats", self._on_stats,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        if sink is not None and eager:
            for topic, type_name in self.wanted.items():
                if type_name:
                    latched = topic in LATCHED_TOPICS
                    self._subscribe(topic, type_name, QoSProfile(
                        history=HistoryPolicy.KEEP_LAST, depth=10 if latched else 1000,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE))
        self._resolve()
        self.create_timer(0.05, self._resolve)

    def _subscribe(self, topic: str, type_name: str, qos: QoSProfile) -> None:
        self.sink.add_topic(topic, type_name)
        self.create_subscription(message_class(type_name), topic, self._writer(topic), qos, raw=True)
        self.subscribed[topic] = type_name

    # ---- recording ---------------------------------------------------------------------------
    def _qos(self, topic: str) -> QoSProfile | None:
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            return None
        best_effort = all(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10 if latched else 1000,
                          reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def _resolve(self) -> None:
        if self.sink is None:
            return
        graph = None
        for topic, type_name in self.wanted.items():
            if topic in self.subscribed:
                continue
            if not type_name:
                graph = graph if graph is not None else dict(self.get_topic_names_and_types())
                types = graph.get(topic, [])
                if not types:
                    continue
                type_name = types[0]
            qos = self._qos(topic)
            if qos is None:  # no publisher yet: subscribe when one appears (QoS matched to it)
                continue
            self._subscribe(topic, type_name, qos)

    def _writer(self, topic: str):
        """Raw callback for ``topic``: the receive time is both log and publish time.

        (MessageInfo source timestamps were tried: with the rclpy 9.1.2 wheel the EventsExecutor
        raises SystemError on such callbacks; not retried with the SingleThreadedExecutor.)"""
        sink = self.sink

        def write(data: bytes) -> None:
            now = time.time_ns()
            with self.lock:
                sink.write(topic, data, now)
                self.messages += 1
        return write

    # ---- watching ----------------------------------------------------------------------------
    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            vals = dict(diagnostic_values(st), _message=st.message, _level=str(st.level[0] if isinstance(
                st.level, (bytes, bytearray)) else st.level))
            with self.lock:
                if "policy loop" in st.name:
                    self.policy_diag = vals
                    self.policy_diag_count += 1
                    if vals["_level"] == "2" and "configure failed" in st.message:
                        self.policy_error = st.message
                elif ": sim" in st.name:
                    self.bridge_diag = vals

    def _on_stats(self, msg: Float64MultiArray) -> None:
        v = list(msg.data)
        if len(v) >= 4:
            with self.lock:
                self.episodes.append({"episode": int(v[0]), "return": v[1], "normalised_score": v[2],
                                      "steps": int(v[3]), "success": v[4] if len(v) >= 5 else math.nan,
                                      "received_s": time.monotonic()})


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

    def faults_after_bridge_end(self) -> int:
        """Faults the policy counted after the bridge's last /diagnostics snapshot (0 if unknown)."""
        try:
            return int(self.policy_diagnostics["faults"]) - int(self.policy_diagnostics_at_bridge_end["faults"])
        except (KeyError, ValueError):
            return 0

    def step_rate_hz(self) -> float:
        """Env steps per second at the bridge between the first and the last episode end (NaN if < 2)."""
        if len(self.episodes) < 2:
            return math.nan
        dt = self.episodes[-1]["received_s"] - self.episodes[0]["received_s"]
        return sum(e["steps"] for e in self.episodes[1:]) / dt if dt > 0 else math.nan

    def _finite_mean(self, key: str) -> float:
        s = [e[key] for e in self.episodes if math.isfinite(e[key])]
        return float(sum(s) / len(s)) if s else math.nan

    def success_rate(self) -> float:
        """Share of episodes that met the task's success criterion (NaN if the task has none)."""
        return self._finite_mean("success")

    def mean_score(self) -> float:
        return self._finite_mean("normalised_score")


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

    Raises NodeFailure if a node exits non-zero (or the policy node exits at all), the policy
    fails to configure, or no episode ends within ``startup_timeout_s`` of the expected time.
    """
    log_dir = Path(log_dir)
    bridge = dict(bridge_params or {})
    if target == "sim" and episodes:
        bridge["episodes"] = int(episodes)
    wanted = dict(CLOSED_LOOP_TOPICS if topics is None else topics)
    if target == "sim" and record and wanted.get("/observation"):
        # the first episode waits for its readers: the recorder, and the policy unless it reads joint_states
        policy_reads = (policy_params or {}).get("input_type", "float64_multiarray") != "joint_state"
        bridge.setdefault("start_subscribers", 1 + int(policy_reads))
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
    monitor = LoopMonitor(wanted, sink, context=context, eager=True)
    executor, _ = make_executor(context, prefer=MONITOR_EXECUTOR)
    executor.add_node(monitor)
    stop = threading.Event()
    thread = threading.Thread(target=spin_loop, args=(executor, context, lambda: not stop.is_set(), 0.02), daemon=True)
    thread.start()
    procs = NodeProcesses(nodes, log_dir)
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
            bridge_name = nodes[-1].name if len(nodes) > 1 else ""
            if bridge_name in exited and exited[bridge_name] == 0 and episodes:
                with monitor.lock:
                    at_bridge_end = dict(monitor.policy_diag)
                break  # the bridge finished its episodes
            procs.check()
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
                              f"{diag.get('lifecycle_state', 'unknown')}); last lines of its log:\n"
                              + procs.tail("mtm_policy"))
    finally:
        codes = procs.stop()
        stop.set()
        thread.join(timeout=5)
        executor.shutdown(timeout_sec=1.0)
        monitor.destroy_node()
        if sink is not None:
            sink.close()
        if context.ok():
            rclpy.shutdown(context=context)
    bad = {n: c for n, c in codes.items() if c not in (0, -2)}  # -2: stopped by our SIGINT
    if bad:
        raise NodeFailure(f"nodes exited with errors while stopping: {bad} (logs in {log_dir})")
    return LoopResult(wall, list(monitor.episodes), dict(monitor.policy_diag), dict(monitor.bridge_diag),
                      dict(sink.counts) if sink else {}, str(record or ""), str(log_dir), at_bridge_end)


# ---- mtm record ------------------------------------------------------------------------------
def record_main(output: Path, topics: list[str] | None, duration_s: float) -> int:
    """Record ``topics`` (default: the closed-loop set) until Ctrl-C or ``duration_s``; prints counts."""
    context = rclpy.Context()
    rclpy.init(context=context)
    wanted = CLOSED_LOOP_TOPICS if not topics else {t if t.startswith("/") else "/" + t:
                                                   CLOSED_LOOP_TOPICS.get(t if t.startswith("/") else "/" + t, "")
                                                   for t in topics}
    sink = McapSink(output, metadata={"recorded_by": "mtm record"})
    node = LoopMonitor(dict(wanted), sink, context=context)
    executor, _ = make_executor(context, prefer=MONITOR_EXECUTOR)
    executor.add_node(node)
    t_end = time.monotonic() + duration_s if duration_s > 0 else math.inf
    print(f"mtm record: recording {', '.join(wanted)} to {output}"
          + (f" for {duration_s:g} s" if duration_s > 0 else " until Ctrl-C"), flush=True)
    try:
        spin_loop(executor, context, keep_going=lambda: time.monotonic() < t_end, period_s=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        sink.close()
        if context.ok():
            rclpy.shutdown(context=context)
    missing = [t for t in wanted if t not in sink.counts]
    print(f"mtm record: wrote {output}: " + ", ".join(f"{t} {n}" for t, n in sink.counts.items())
          + (f"; never published: {', '.join(missing)}" if missing else ""), flush=True)
    return 0
