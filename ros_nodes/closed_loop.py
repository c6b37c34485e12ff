"""Watching, recording and running the closed loop from the outside (rclpy; thin).

* :class:`LoopMonitor`: a node that records topics to MCAP (raw CDR, no deserialisation: see
  ``mtm_runtime.recording``) and keeps what a supervisor needs: the policy node's latest
  /diagnostics, the bridge's ``episode_stats``, and whether the policy reported a configure error.
  Subscriptions are created when a publisher of the topic appears, with QoS matched to it (like
  rosbag2): best effort only if every publisher is best effort, transient local if every
  publisher is (latched ``goal``), else reliable; keep-last :data:`RECORD_DEPTH` (10 s at
  500 Hz) so a recorder starved of CPU for a while catches up instead of losing messages.
  The callbacks only queue the bytes (``McapSink.write``) and count sequence numbers
  (``LossCounter``): the recorder's spin loop does no file work. What was missed is written
  into the file (metadata ``mtm_record``) and printed.
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
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from std_msgs.msg import Float64MultiArray

from mtm_runtime.ros_nodes.launch_description import describe
from mtm_runtime.ros_nodes.node_processes import NodeFailure, NodeProcesses
from mtm_runtime.recording import (CLOSED_LOOP_TOPICS, RECORD_METADATA, LossCounter, McapSink, RecordingError,
                                   loss_metadata, loss_summary, loss_warnings)
from mtm_runtime.ros_nodes.conversions import diagnostic_values
from mtm_runtime.ros_nodes.executors import StopSignals, close, init_context, make_executor, spin_loop


#: Topics published latched (reliable, transient local) by the node set.
LATCHED_TOPICS = ("/goal", "/target_return")
#: Measured (rclpy 9.1.2 wheel, lockstep Reacher, 100 steps): with the EventsExecutor the raw
#: /commands subscription recorded 46-48 of 100 commands (the policy's RELIABLE keep-last-1
#: writer); with the SingleThreadedExecutor all of them. The recorder is not a control path.
MONITOR_EXECUTOR = "single"
#: The sim bridge's topics besides /observation, the one its ``start_subscribers`` counts: the
#: recorder subscribes to /observation only once it has these (``LoopMonitor`` ``last``/``first``);
#: ``run_closed_loop`` also waits for the policy's /commands (GATED_AFTER).
BRIDGE_TOPICS = ("/joint_states", "/reward", "/episode_stats")
GATED_AFTER = (*BRIDGE_TOPICS, "/commands")
#: ``mtm record``: the longest wait for the bridge's other topics before subscribing to /observation.
RECORD_LAST_WAIT_S = 2.0
#: At the end of a recording: the longest time spent taking messages sent before the end.
DRAIN_MAX_S = 5.0
#: Recorder queue depth of a volatile topic (keep last): 10 s of a 500 Hz stream.
RECORD_DEPTH = 5000
#: Recorder queue depth of a latched topic (what a transient-local publisher keeps is less).
LATCHED_DEPTH = 10
#: rclpy passes MessageInfo (publication sequence number, publisher GID, DDS timestamps) to a
#: callback that takes two arguments since Iron; Humble's rclpy calls it with the message only.
MESSAGE_INFO = hasattr(Subscription, "CallbackType")


def _record_qos(best_effort: bool, latched: bool) -> QoSProfile:
    """The recorder's QoS for a topic whose publishers are all best effort / all transient local."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=LATCHED_DEPTH if latched else RECORD_DEPTH,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def message_class(type_name: str) -> type:
    """``pkg/msg/Type`` -> the generated Python class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class LoopMonitor(Node):
    """Records ``topics`` (name -> type, "" = take it from the graph) into ``sink`` and watches the loop."""

    def __init__(self, topics: dict[str, str], sink: McapSink | None = None, *, context: Any = None,
                 name: str = "mtm_recorder", eager: bool = False, last: str = "", first: tuple[str, ...] = (),
                 last_wait_s: float = 0.0) -> None:
        """``eager``: subscribe at once to every topic whose type is given, reliable (transient local
        for ``/goal``), instead of waiting to see its publisher: for our own node set, whose
        publishers are all reliable, this is matched before the first message (measured: waiting
        lost the first ~50 commands of a lockstep run on a loaded machine).

        ``last``: subscribe to this topic only when it and every topic of ``first`` have a
        publisher in this node's graph (or ``last_wait_s`` passed). DDS discovery is matched
        separately at each end: a writer that sees our reader may send before our reader knows
        the writer, and those messages are dropped (measured beside a busy loop on every core: the
        first 26 observations of a lockstep run, with the bridge already counting the recorder
        as a subscriber). A reader created after its writer is known is matched at creation, and
        our reader announcements reach a publisher's node in order; so when the bridge counts the
        ``last`` reader (``start_subscribers``), our readers of its other topics are matched at
        both ends too. Without ``eager`` the ``first`` topics count once subscribed."""
        super().__init__(name, context=context, start_parameter_services=False)
        self.sink, self.lock = sink, threading.Lock()
        self.wanted = {(t if t.startswith("/") else "/" + t): ty for t, ty in topics.items()}
        self.subscribed: dict[str, str] = {}
        self.unrecordable: dict[str, str] = {}  # topic -> why it cannot be recorded (type unknown here)
        self.episodes: list[dict[str, float]] = []
        self.policy_diag: dict[str, str] = {}
        self.bridge_diag: dict[str, str] = {}
        self.policy_error = ""
        self.policy_diag_count = 0
        self.loss = LossCounter()
        #: topic -> (source timestamp ns of the newest message taken, time.monotonic() when taken)
        self.latest: dict[str, tuple[int, float]] = {}
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.create_subscription(Float64MultiArray, "/episode_stats", self._on_stats,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self._last, self._first = (last if last.startswith("/") else "/" + last) if last else "", tuple(first)
        self._last_deadline = time.monotonic() + last_wait_s
        if sink is not None and eager:
            for topic, type_name in self.wanted.items():
                if type_name and topic != self._last:
                    self._subscribe(topic, type_name, _record_qos(False, topic in LATCHED_TOPICS))
        self._resolve()
        self.create_timer(0.05, self._resolve)

    def _subscribe(self, topic: str, type_name: str, qos: QoSProfile) -> None:
        assert self.sink is not None
        self.sink.add_topic(topic, type_name)
        self.loss.subscribed(topic, [bytes(i.endpoint_gid) for i in self.get_publishers_info_by_topic(topic)])
        self.create_subscription(message_class(type_name), topic, self._writer(topic), qos, raw=True)
        self.subscribed[topic] = type_name

    # ---- recording ---------------------------------------------------------------------------
    def _qos(self, topic: str) -> QoSProfile | None:
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            return None
        return _record_qos(all(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos),
                           all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos))

    def _resolve(self) -> None:
        if self.sink is None:
            return
        graph = None
        for topic, type_name in sorted(self.wanted.items(), key=lambda kv: kv[0] == self._last):  # last: last
            if topic in self.subscribed or topic in self.unrecordable or (topic == self._last and self._hold_last()):
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
            try:
                self._subscribe(topic, type_name, qos)
            except (RecordingError, ImportError, AttributeError, ValueError) as e:  # no definition / Python class
                self.unrecordable[topic] = f"{type_name}: {e}"
                self.get_logger().warning(f"not recording {topic}: {self.unrecordable[topic]}")

    def _hold_last(self) -> bool:
        """``last`` waits: some topic of ``first`` has no publisher yet, and ``last_wait_s`` has not passed."""
        return time.monotonic() < self._last_deadline and any(
            t not in self.subscribed or self.count_publishers(t) == 0 for t in self._first)

    def _writer(self, topic: str):
        """Raw callback for ``topic``: queue the bytes with the DDS receive and source times, count
        the publisher's sequence number. Nothing slower runs per message (no lock, no file I/O)."""
        assert self.sink is not None
        write, note, latest, now = self.sink.write, self.loss.note, self.latest, time.monotonic
        if not MESSAGE_INFO:
            def on_message(data: bytes) -> None:
                write(topic, data, time.time_ns())
                note(topic, None, None)
                latest[topic] = (0, now())
            return on_message

        def on_message_with_info(data: bytes, info: dict[str, Any]) -> None:
            gid, source = info.get("publisher_gid"), info.get("source_timestamp") or 0
            write(topic, data, info.get("received_timestamp") or time.time_ns(), source or None)
            note(topic, gid["data"] if gid else None, info.get("publication_sequence_number"))
            latest[topic] = (source, now())
        return on_message_with_info

    def caught_up(self, stop_ns: int, quiet_s: float = 0.2) -> bool:
        """Every recorded topic has delivered a message sent at or after ``stop_ns`` (wall clock ns) or
        has been quiet for ``quiet_s``: nothing sent before the stop is still waiting in our queues."""
        t = time.monotonic()
        return all(source >= stop_ns or t - taken >= quiet_s for source, taken in list(self.latest.values()))

    def drain(self, spin: Any, stop_ns: int, max_s: float = DRAIN_MAX_S) -> None:
        """Call ``spin()`` (one spin_once, or a sleep while another thread spins) until ``caught_up``
        or ``max_s``: a recorder running behind empties its queues before the file is closed."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and not self.caught_up(stop_ns):
            spin()

    def finish_recording(self) -> dict[str, dict[str, Any]]:
        """Write the per-topic received/missed counts into the file (metadata ``mtm_record``) and
        close it; returns ``LossCounter.report()``."""
        report = self.loss.report()
        assert self.sink is not None
        self.sink.add_metadata(RECORD_METADATA, loss_metadata(report))
        self.sink.close()
        return report

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
    #: the recorder's per-topic received/missed counts (``LossCounter.report``; empty without ``record``)
    loss: dict[str, dict[str, Any]] = field(default_factory=dict)

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

    With ``record``: the recorder's counts are in ``LoopResult.loss`` and the file's ``mtm_record``
    metadata, and every topic that lost messages gets a warning line on stderr.

    Raises NodeFailure if a node exits non-zero (or the policy node exits at all), the policy
    fails to configure, or no episode ends within ``startup_timeout_s`` of the expected time.
    """
    log_dir = Path(log_dir)
    bridge = dict(bridge_params or {})
    if target == "sim" and episodes:
        bridge["episodes"] = int(episodes)
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
        gate = {"last": "/observation", "first": tuple(first), "last_wait_s": 0.5 * startup_timeout_s}
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
                              f"{diag.get('lifecycle_state', 'unknown')}); last lines of its log:\n"
                              + procs.tail("mtm_policy"))
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
    return LoopResult(wall, list(monitor.episodes), dict(monitor.policy_diag), dict(monitor.bridge_diag),
                      dict(sink.counts) if sink else {}, str(record or ""), str(log_dir), at_bridge_end, loss)


# ---- mtm record ------------------------------------------------------------------------------


class _DrainStopped(Exception):
    """A second SIGINT/SIGTERM while ``mtm record`` drains its queues."""


def record_main(output: Path, topics: list[str] | None, duration_s: float) -> int:
    """Record ``topics`` (default: the closed-loop set) until Ctrl-C/SIGTERM or ``duration_s``.

    At the end it keeps taking what is queued until every topic has delivered a message sent
    after the end or gone quiet (``LoopMonitor.drain``). Prints one summary line (messages per
    topic, how many were missed); every topic that lost messages gets a warning line on stderr.
    Exit status 0, or 1 when messages were missed (the
    file is complete either way and holds the counts in its ``mtm_record`` metadata)."""
    context = init_context(None)
    wanted = CLOSED_LOOP_TOPICS if not topics else {t if t.startswith("/") else "/" + t:
                                                   CLOSED_LOOP_TOPICS.get(t if t.startswith("/") else "/" + t, "")
                                                   for t in topics}
    try:
        sink = McapSink(output, metadata={"recorded_by": "mtm record"})
    except OSError as e:
        rclpy.shutdown(context=context)
        print(f"mtm record: cannot write {output}: {e.strerror or e}", file=sys.stderr)
        return 2
    # /observation last, once the bridge's other topics are subscribed (see LoopMonitor ``last``): with
    # the bridge's start_subscribers the loop then starts only when every stream reaches the recorder
    gate: dict[str, Any] = {"last": "/observation", "first": tuple(t for t in BRIDGE_TOPICS if t in wanted),
            "last_wait_s": RECORD_LAST_WAIT_S} if "/observation" in wanted else {}
    node = LoopMonitor(dict(wanted), sink, context=context, **gate)
    executor, _ = make_executor(context, prefer=MONITOR_EXECUTOR)
    executor.add_node(node)
    t_end = time.monotonic() + duration_s if duration_s > 0 else math.inf
    print(f"mtm record: recording {', '.join(wanted)} to {output}"
          + (f" for {duration_s:g} s" if duration_s > 0 else " until Ctrl-C"), flush=True)
    with StopSignals() as stop:  # rclpy's own handlers are off: the context stays up to drain
        try:
            spin_loop(executor, context, keep_going=lambda: time.monotonic() < t_end and not stop.requested,
                      period_s=0.05)
            stop_ns, signals_at_stop = time.time_ns(), len(stop.received)

            def spin_until_second_signal() -> None:  # a second signal: stop draining, still finish the file
                if len(stop.received) > signals_at_stop:
                    raise _DrainStopped
                executor.spin_once(timeout_sec=0.02)

            node.drain(spin_until_second_signal, stop_ns)
        except _DrainStopped:
            pass
        finally:
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
            report = node.finish_recording()
            close(None, None, context)
    missing = [t for t in wanted if t not in report and t not in node.unrecordable]
    print(f"mtm record: wrote {output}: {loss_summary(report)}"
          + (f"; never published: {', '.join(missing)}" if missing else "")
          + "".join(f"; not recorded: {t} ({why})" for t, why in node.unrecordable.items()), flush=True)
    for line in loss_warnings(report):
        print(f"mtm record: WARNING: {line}", file=sys.stderr, flush=True)
    return 1 if any(r["missed"] for r in report.values()) else 0
