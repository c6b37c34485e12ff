"""Processes measured by ``benchmarks/closed_loop.py`` (each runs as ``python -m benchmarks.loop_probe``).

Roles (``MTM_BENCH_ROLE``; results go to the JSON file ``MTM_BENCH_OUT`` when the process ends
after ``MTM_BENCH_DURATION`` seconds of measurement, which begin ``MTM_BENCH_WARMUP`` s after
the first reply):

* ``bridge``: ``mtm_runtime.ros_nodes.sim_bridge.SimBridge`` with timing probes added by subclassing (the bridge
  itself is unchanged): every published state is remembered by its stamp with the wall time
  (``time.monotonic``) just before publication; a JointState command carrying that stamp (the
  policy node's ``command_type: joint_state`` copies the state's stamp) gives the state->command
  latency *at the simulator side*. At every realtime tick, a state whose command has not
  arrived is a deadline miss (the command was not received within one period). With
  ``MTM_BENCH_STREAM=1`` (an async policy streaming commands, each stamped with the state its
  chunk was planned from) a period with no command at all is the miss, and the latency is the
  age of the state a command derives from.
* ``echo-client`` / ``echo-server``: the baseline. The client publishes a stamped JointState at
  ``MTM_BENCH_RATE`` Hz (like the bridge, sensor topic) and measures the same way; the server
  answers each with a JointState carrying the same stamp (like the policy node, without a
  policy). Executor from ``MTM_EXECUTOR`` (``single`` or ``events``), spun with spin_once loops.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState

from mtm_runtime.ros_nodes import conversions as conv
from mtm_runtime.ros_nodes.executors import make_executor, settle_heap, spin_loop

RELIABLE_1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


class LoopProbe:
    """State->reply latency and deadline misses of a periodic loop (times in s, monotonic clock).

    Invariants: a state is counted once; a reply whose stamp is unknown (warm-up, duplicate) is
    ignored; only events after ``start()`` count.
    """

    def __init__(self, capacity: int = 2_000_000, stream: bool = False) -> None:
        self.stream = stream  # commands stream (async policy): any command in a period answers it
        self.latency = np.zeros(capacity)
        self.n_lat = 0
        self.step_s = np.zeros(capacity)
        self.n_step = 0
        self.tick_t = np.zeros(capacity)
        self.n_tick = 0
        self.miss_t: list[float] = []       # tick times of the misses (to place them: after a reset?)
        self.sent: dict[int, float] = {}
        self.last_stamp: int | None = None
        self.answered = True
        self.misses = 0
        self.replies = 0
        self.states = 0
        self.first_reply_t = 0.0
        self.measuring = False
        self.t_start = self.t_end = 0.0
        self.cpu_start = self.cpu_end = self.wall_start = self.wall_end = 0.0

    def start(self, now: float) -> None:
        self.measuring, self.t_start = True, now
        self.cpu_start, self.wall_start = time.process_time(), time.time()

    def stop(self, now: float) -> None:
        self.t_end = now
        self.cpu_end, self.wall_end = time.process_time(), time.time()

    def on_send(self, stamp_ns: int, t: float) -> None:
        if len(self.sent) > 10_000:  # unanswered states of the warm-up / resets
            self.sent.clear()
        self.sent[stamp_ns] = t
        self.last_stamp, self.answered = stamp_ns, False
        if self.measuring:
            self.states += 1

    def on_reply(self, stamp_ns: int, t: float) -> None:
        ts = self.sent.get(stamp_ns) if self.stream else self.sent.pop(stamp_ns, None)
        if ts is None:
            return
        if not self.first_reply_t:
            self.first_reply_t = t
        if self.stream or stamp_ns == self.last_stamp:
            self.answered = True
        if self.measuring and self.n_lat < len(self.latency):
            self.latency[self.n_lat] = t - ts
            self.n_lat += 1
            self.replies += 1

    def on_tick(self, t: float) -> None:
        """A control period ends: the newest state must have been answered by now."""
        if not self.measuring:
            return
        if self.n_tick < len(self.tick_t):
            self.tick_t[self.n_tick] = t
            self.n_tick += 1
        if self.last_stamp is not None and not self.answered:
            self.misses += 1
            self.miss_t.append(t)
        if self.stream:
            self.answered = False  # the next period needs a command of its own

    def on_step_time(self, seconds: float) -> None:
        if self.measuring and self.n_step < len(self.step_s):
            self.step_s[self.n_step] = seconds
            self.n_step += 1

    def misses_after(self, starts: list[float], within_s: float) -> int:
        """Misses at most ``within_s`` after one of the ``starts`` (episode starts: the first
        states of an episode wait for the policy's reset)."""
        return sum(any(0.0 <= t - s0 <= within_s for s0 in starts) for t in self.miss_t)

    def result(self, period_s: float) -> dict[str, Any]:
        dur = max(self.t_end - self.t_start, 1e-9)
        lat = self.latency[: self.n_lat] * 1e3
        ticks = self.tick_t[: self.n_tick]
        jit = (np.diff(ticks) - period_s) * 1e3 if len(ticks) > 1 else np.zeros(1)
        steps = self.step_s[: self.n_step] * 1e3

        def pct(a: np.ndarray) -> dict[str, float]:
            if not len(a):
                return {"p50": float("nan"), "p99": float("nan"), "p99.9": float("nan"), "max": float("nan")}
            return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
                    "p99.9": round(float(np.percentile(a, 99.9)), 4), "max": round(float(a.max()), 4)}

        return {"measured_s": round(dur, 3), "ticks": int(self.n_tick), "states_sent": int(self.states),
                "replies": int(self.replies), "tick_rate_hz": round(self.n_tick / dur, 2),
                "reply_rate_hz": round(self.replies / dur, 2), "deadline_misses": int(self.misses),
                "miss_fraction": round(self.misses / max(self.n_tick, 1), 6),
                "latency_ms": pct(lat), "tick_interval_error_ms": pct(np.abs(jit)),
                "tick_callback_ms": pct(steps),
                "process_cpu_cores": round((self.cpu_end - self.cpu_start) / dur, 3),
                "wall_window": [self.wall_start, self.wall_end]}


def _settings() -> tuple[float, float, str]:
    return (float(os.environ.get("MTM_BENCH_DURATION", "5")), float(os.environ.get("MTM_BENCH_WARMUP", "1.0")),
            os.environ.get("MTM_BENCH_OUT", ""))


def _write(out: str, data: dict[str, Any]) -> None:
    if out:
        with open(out, "w") as f:
            json.dump(data, f, indent=1)


# ---- the instrumented sim bridge -------------------------------------------------------------
def run_bridge(argv: list[str]) -> int:
    from mtm_runtime.ros_nodes.sim_bridge import SimBridge

    duration, warmup, out = _settings()

    class ProbedBridge(SimBridge):
        """SimBridge + LoopProbe; stops itself after the measurement (``finished``)."""

        def __init__(self, **kw: Any) -> None:
            self.probe = LoopProbe(stream=os.environ.get("MTM_BENCH_STREAM") == "1")
            self.resets: list[float] = []
            self.episode_starts: list[float] = []
            self._reset_began = 0.0
            super().__init__(**kw)
            self.period_s = 1.0 / (float(self.p("control_rate_hz")) or 1.0 / self.dt)
            self.steps_measured = 0

        def _send(self, obs: np.ndarray, reward: float | None) -> None:
            t = time.monotonic()
            super()._send(obs, reward)
            self.probe.on_send(int(round(self.sim_steps * self.dt * 1e9)), t)

        def _on_command(self, msg: Any) -> None:
            if isinstance(msg, JointState):
                self.probe.on_reply(conv.stamp_to_ns(msg.header.stamp), time.monotonic())
            super()._on_command(msg)

        def _begin_episode(self) -> None:
            self._reset_began = time.monotonic()
            super()._begin_episode()

        def _start_episode(self) -> None:
            if self._resetting and self.probe.measuring:
                self.resets.append(time.monotonic() - self._reset_began)
                self.episode_starts.append(time.monotonic())
            super()._start_episode()

        def _on_realtime_tick(self) -> None:
            t = time.monotonic()
            p = self.probe
            if not p.measuring and p.first_reply_t and t > p.first_reply_t + warmup:
                p.start(t)
            if p.measuring and t - p.t_start >= duration:
                p.stop(t)
                self.finished = True
                return
            stepping = not self._resetting and not self.finished
            if stepping:
                p.on_tick(t)
            super()._on_realtime_tick()
            if stepping:
                p.on_step_time(time.monotonic() - t)
                if p.measuring:
                    self.steps_measured += 1

    args = argv
    context = rclpy.Context()
    rclpy.init(args=args, context=context)
    node = ProbedBridge(context=context)
    executor, name = make_executor(context)
    executor.add_node(node)
    settle_heap()  # as the real nodes do
    try:
        spin_loop(executor, context, keep_going=lambda: not node.finished, period_s=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        res = node.probe.result(node.period_s)
        dur = max(node.probe.t_end - node.probe.t_start, 1e-9)
        res.update({"executor": name, "env_steps": node.steps_measured,
                    "achieved_rate_hz": round(node.steps_measured / dur, 2),
                    "episode_resets": len(node.resets),
                    # where the misses fall: within 10 periods of an episode start (the policy
                    # node's reset service and its first states) or in steady stepping
                    "misses_after_reset": node.probe.misses_after(node.episode_starts, 10 * node.period_s),
                    "reset_pause_ms": {"p50": round(float(np.median(node.resets)) * 1e3, 3) if node.resets else None,
                                       "max": round(max(node.resets) * 1e3, 3) if node.resets else None}})
        _write(out, res)
        executor.shutdown(timeout_sec=1.0)
        node.env.close()
        node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
    return 0


# ---- the echo baseline -----------------------------------------------------------------------
def run_echo(role: str) -> int:
    duration, warmup, out = _settings()
    rate = float(os.environ.get("MTM_BENCH_RATE", "500"))
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node(f"mtm_echo_{role.split('-')[1]}", context=context)
    executor, name = make_executor(context)
    done = [False]
    if role == "echo-server":
        pub = node.create_publisher(JointState, "echo_commands", RELIABLE_1)
        handled: list[float] = []   # each callback, entry to after the publish: what the policy node's beyond_act times

        def answer(msg: JointState) -> None:
            t = time.perf_counter()
            reply = JointState()
            reply.header.stamp = msg.header.stamp
            reply.name = list(msg.name)
            reply.effort = msg.position
            pub.publish(reply)
            handled.append(time.perf_counter() - t)

        node.create_subscription(JointState, "echo_states", answer, qos_profile_sensor_data)
    else:
        probe = LoopProbe()
        pub = node.create_publisher(JointState, "echo_states", RELIABLE_1)
        counter = [0]
        period = 1.0 / rate

        def on_reply(msg: JointState) -> None:
            probe.on_reply(conv.stamp_to_ns(msg.header.stamp), time.monotonic())

        def tick() -> None:
            t = time.monotonic()
            if not probe.measuring and probe.first_reply_t and t > probe.first_reply_t + warmup:
                probe.start(t)
            if probe.measuring and t - probe.t_start >= duration:
                probe.stop(t)
                done[0] = True
                return
            probe.on_tick(t)
            counter[0] += 1
            stamp = counter[0] * 1000  # unique, ns
            msg = conv.joint_state_from_arrays(("joint0", "joint1"), np.zeros(2), np.zeros(2), conv.ns_to_stamp(stamp))
            probe.on_send(stamp, time.monotonic())
            pub.publish(msg)
            probe.on_step_time(time.monotonic() - t)

        node.create_subscription(JointState, "echo_commands", on_reply, RELIABLE_1)
        node.create_timer(period, tick)
    executor.add_node(node)
    settle_heap()  # as the real nodes do
    try:
        spin_loop(executor, context, keep_going=lambda: not done[0], period_s=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        if role == "echo-client":
            res = probe.result(1.0 / rate)
            res["executor"] = name
            _write(out, res)
        elif out and handled:
            ms = np.asarray(handled[len(handled) // 10:]) * 1e3   # past the first tenth (discovery, warm-up)
            _write(out + ".server.json", {"callback_ms": {"n": int(ms.size), "p50": round(float(np.median(ms)), 4),
                                                          "p99": round(float(np.percentile(ms, 99)), 4)}})
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    role = os.environ.get("MTM_BENCH_ROLE", "bridge")
    return run_bridge(argv) if role == "bridge" else run_echo(role)


if __name__ == "__main__":
    sys.exit(main())
