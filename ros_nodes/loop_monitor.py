"""The recorder and watcher of the closed loop: :class:`LoopMonitor` (rclpy; thin).

A node that records topics to MCAP (raw CDR, no deserialisation: see ``mtm_runtime.recording``)
and keeps what a supervisor needs: the policy node's latest /diagnostics, the bridge's
``episode_stats``, and whether the policy reported a configure error. Subscriptions are created
when a publisher of the topic appears, with QoS matched to it (like rosbag2): best effort only if
every publisher is best effort, transient local if every publisher is (latched ``goal``), else
reliable; keep-last :data:`RECORD_DEPTH` (10 s at 500 Hz) so a recorder starved of CPU for a
while catches up instead of losing messages. The callbacks only queue the bytes
(``McapSink.write``) and count sequence numbers (``LossCounter``, ``mtm_runtime.recording_loss``):
the recorder's spin loop does no file work. What was missed is written into the file (metadata
``mtm_record``).

Used by ``run_closed_loop`` (``closed_loop.py``), ``record_main`` (``recorder.py``: ``mtm record``)
and ``benchmarks/closed_loop.py`` (watching only, no sink).
"""
from __future__ import annotations

import importlib
import math
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from std_msgs.msg import Float64MultiArray

from mtm_runtime.recording import McapSink, RecordingError
from mtm_runtime.recording_loss import RECORD_METADATA, LossCounter, loss_metadata
from mtm_runtime.ros_nodes.conversions import diagnostic_values


#: Topics published latched (reliable, transient local) by the node set.
LATCHED_TOPICS = ("/goal", "/target_return")
#: Measured (rclpy 9.1.2 wheel, lockstep Reacher, 100 steps): with the EventsExecutor the raw
#: /commands subscription recorded 46-48 of 100 commands (the policy's RELIABLE keep-last-1
#: writer); with the SingleThreadedExecutor all of them. The recorder is not a control path.
MONITOR_EXECUTOR = "single"
#: The sim bridge's topics besides /observation, the one its ``start_subscribers`` counts: the
#: recorder subscribes to /observation only once it has these (``LoopMonitor`` ``last``/``first``);
#: ``run_closed_loop`` also waits for the policy's /commands (``closed_loop.GATED_AFTER``).
BRIDGE_TOPICS = ("/joint_states", "/reward", "/episode_stats")
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
                 last_wait_s: float = 0.0, command_readers: int = 0) -> None:
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
        both ends too. Without ``eager`` the ``first`` topics count once subscribed.

        ``command_readers``: ``last`` also waits until the policy node's /diagnostics report that
        many readers matched on its command writer (``command_subscribers``: the bridge and this
        recorder). That is the writer's end, which no graph query here can see (measured beside
        four busy loops on two cores: the first 3 commands of a lockstep run missed, sent before
        the policy's writer had matched the recorder, which already saw the writer)."""
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
        self._command_readers = int(command_readers)
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
        """``last`` waits: some topic of ``first`` has no publisher yet, or the policy's command writer
        has fewer than ``command_readers`` readers, and ``last_wait_s`` has not passed."""
        if time.monotonic() >= self._last_deadline:
            return False
        with self.lock:
            matched = self.policy_diag.get("command_subscribers", "0")
        return (any(t not in self.subscribed or self.count_publishers(t) == 0 for t in self._first)
                or int(matched or 0) < self._command_readers)

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
