"""Independent safety monitor: a separate process that watches ``commands`` and the node's inputs.

It knows nothing of the node's code: it checks published commands against the contract
(``mtm_runtime.safety_contract`` / ``docs/safety.md``) and writes a JSON verdict.

Violations (each counted; ``unsafe`` is their total):
* ``non_finite``: a command with NaN/Inf; ``width``: wrong number of values;
* ``limits``: a value outside ``[low, high]``;
* ``rate``: a value changed by more than ``max_rate`` since the previous command (0 = off;
  the reference restarts when the node (re)activates);
* ``stale_state``: a JointState command whose stamp is the stamp of a state this monitor received
  more than ``stale_timeout + slack`` seconds earlier; with ``--wall-clock-stamps`` also any
  command stamp older than that against this process's system clock;
* ``command_gap``: while the node is active (``/<node>/transition_event``, or ``--assume-active``),
  two commands further apart than ``--max-gap`` seconds (the trailing gap at the end is not judged).

Run: ``python tests/safety_monitor.py --out verdict.json --low -1 -1 --high 1 1 ...``; stop it with
SIGINT/SIGTERM (or ``--duration``); it writes the verdict and exits 0. ``MonitorProcess`` wraps that
for tests.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class Verdict:
    """Accumulates observations and violations (plain Python, unit-testable without ROS)."""

    def __init__(self, low: list[float], high: list[float], max_rate: float, stale_timeout: float,
                 max_gap: float, slack: float, wall_clock_stamps: bool, active: bool) -> None:
        self.low, self.high = low, high
        self.max_rate, self.stale_timeout, self.max_gap, self.slack = max_rate, stale_timeout, max_gap, slack
        self.wall_clock_stamps = wall_clock_stamps
        self.active = active
        self.commands = 0
        self.violations: collections.Counter[str] = collections.Counter()
        self.examples: list[dict[str, Any]] = []
        self.prev: list[float] | None = None
        self.prev_t: float | None = None
        self.max_gap_seen = 0.0
        self.max_delta = 0.0
        self.max_stamp_age = 0.0
        self.states: "collections.OrderedDict[int, float]" = collections.OrderedDict()
        self.state_count = 0
        self.matched = 0
        self.window: collections.deque[float] = collections.deque()
        self.max_per_s = 0
        self.last: list[float] | None = None
        self.last_t: float | None = None
        self.transitions: list[tuple[float, str]] = []

    def _bad(self, kind: str, t: float, detail: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 20:
            self.examples.append({"kind": kind, "t": t, "detail": detail})

    def on_state(self, stamp_ns: int, t: float) -> None:
        self.state_count += 1
        self.states[stamp_ns] = t
        self.states.move_to_end(stamp_ns)
        while len(self.states) > 20000:
            self.states.popitem(last=False)

    def on_transition(self, label: str, t: float) -> None:
        self.transitions.append((t, label))
        self.active = label == "active"
        self.prev = None  # the rate limiter restarts from the resting command at activation
        self.prev_t = None

    def on_command(self, values: list[float], stamp_ns: int | None, t: float, wall_ns: int) -> None:
        self.commands += 1
        self.last, self.last_t = list(values), t
        self.window.append(t)
        while self.window and self.window[0] < t - 1.0:
            self.window.popleft()
        self.max_per_s = max(self.max_per_s, len(self.window))
        if len(values) != len(self.low):
            self._bad("width", t, f"{len(values)} values, expected {len(self.low)}")
            return
        if not all(math.isfinite(v) for v in values):
            self._bad("non_finite", t, str(values))
            return
        tol = 1e-6
        for i, v in enumerate(values):
            if v < self.low[i] - tol or v > self.high[i] + tol:
                self._bad("limits", t, f"[{i}]={v} outside [{self.low[i]}, {self.high[i]}]")
                break
        if self.prev is not None:
            delta = max(abs(a - b) for a, b in zip(values, self.prev))
            self.max_delta = max(self.max_delta, delta)
            if self.max_rate > 0 and delta > self.max_rate * (1 + 1e-5) + 1e-6:
                self._bad("rate", t, f"changed by {delta:.6g} > max_rate {self.max_rate}")
        if self.active and self.prev_t is not None:
            gap = t - self.prev_t
            self.max_gap_seen = max(self.max_gap_seen, gap)
            if gap > self.max_gap + self.slack:
                self._bad("command_gap", t, f"{gap:.3f} s between commands > {self.max_gap:.3f} s + slack")
        if stamp_ns is not None:
            rx = self.states.get(stamp_ns)
            if rx is not None:
                self.matched += 1
                age = t - rx
                self.max_stamp_age = max(self.max_stamp_age, age)
                if age > self.stale_timeout + self.slack:
                    self._bad("stale_state", t, f"command from a state received {age:.3f} s earlier")
            if self.wall_clock_stamps:
                age = (wall_ns - stamp_ns) * 1e-9
                if age > self.stale_timeout + self.slack:
                    self._bad("stale_state", t, f"command stamp {age:.3f} s old")
        self.prev, self.prev_t = list(values), t

    def result(self) -> dict[str, Any]:
        return {"commands": self.commands, "unsafe": int(sum(self.violations.values())),
                "violations": dict(self.violations), "examples": self.examples,
                "max_gap_s": self.max_gap_seen, "max_delta": self.max_delta,
                "max_stamp_age_s": self.max_stamp_age, "states_seen": self.state_count,
                "stamps_matched": self.matched, "max_commands_per_s": self.max_per_s,
                "last_command": self.last, "transitions": [lbl for _, lbl in self.transitions],
                "limits": {"low": self.low, "high": self.high, "max_rate": self.max_rate,
                           "stale_timeout": self.stale_timeout, "max_gap": self.max_gap, "slack": self.slack}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--low", type=float, nargs="+", required=True)
    ap.add_argument("--high", type=float, nargs="+", required=True)
    ap.add_argument("--max-rate", type=float, default=0.0)
    ap.add_argument("--stale-timeout", type=float, required=True)
    ap.add_argument("--max-gap", type=float, required=True)
    ap.add_argument("--slack", type=float, default=0.3, help="scheduling/transport allowance (s)")
    ap.add_argument("--command-type", choices=("float64_multiarray", "joint_state"), default="float64_multiarray")
    ap.add_argument("--command-field", default="effort")
    ap.add_argument("--commands-topic", default="commands")
    ap.add_argument("--state-topic", default="joint_states")
    ap.add_argument("--node", default="mtm_policy")
    ap.add_argument("--assume-active", action="store_true")
    ap.add_argument("--wall-clock-stamps", action="store_true")
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--ready-file", default="")
    a = ap.parse_args(argv)

    import rclpy
    from lifecycle_msgs.msg import TransitionEvent
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    v = Verdict(a.low, a.high, a.max_rate, a.stale_timeout, a.max_gap, a.slack, a.wall_clock_stamps, a.assume_active)
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: stop.append(s))
    ctx = rclpy.Context()
    try:
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # pragma: no cover
        rclpy.init(context=ctx)
    node = rclpy.create_node("safety_monitor", context=ctx)
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    best = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)

    def on_cmd(msg: Any) -> None:
        t, wall = time.monotonic(), time.time_ns()
        if a.command_type == "joint_state":
            st = msg.header.stamp
            v.on_command(list(getattr(msg, a.command_field)), st.sec * 1_000_000_000 + st.nanosec, t, wall)
        else:
            v.on_command(list(msg.data), None, t, wall)

    def on_state(msg: JointState) -> None:
        st = msg.header.stamp
        v.on_state(st.sec * 1_000_000_000 + st.nanosec, time.monotonic())

    node.create_subscription(JointState if a.command_type == "joint_state" else Float64MultiArray,
                             a.commands_topic, on_cmd, qos)
    node.create_subscription(JointState, a.state_topic, on_state, best)
    node.create_subscription(TransitionEvent, f"/{a.node}/transition_event",
                             lambda m: v.on_transition(m.goal_state.label, time.monotonic()), qos)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    if a.ready_file:
        Path(a.ready_file).write_text("ready")
    end = time.monotonic() + a.duration
    try:
        while not stop and time.monotonic() < end and ctx.ok():
            ex.spin_once(timeout_sec=0.05)
    finally:
        tmp = a.out + ".tmp"
        Path(tmp).write_text(json.dumps(v.result(), indent=1))
        os.replace(tmp, a.out)
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return 0


class MonitorProcess:
    """Start the monitor as a separate process (own session); ``stop()`` returns the verdict dict."""

    def __init__(self, out: Path, *, low: list[float], high: list[float], stale_timeout: float, max_gap: float,
                 max_rate: float = 0.0, command_type: str = "float64_multiarray", slack: float = 0.3,
                 assume_active: bool = False, wall_clock_stamps: bool = False, node: str = "mtm_policy",
                 extra: list[str] | None = None) -> None:
        self.out = Path(out)
        ready = self.out.with_suffix(".ready")
        args = [sys.executable, str(REPO / "tests" / "safety_monitor.py"), "--out", str(out),
                "--low", *map(str, low), "--high", *map(str, high), "--stale-timeout", str(stale_timeout),
                "--max-gap", str(max_gap), "--max-rate", str(max_rate), "--command-type", command_type,
                "--slack", str(slack), "--node", node, "--ready-file", str(ready), *(extra or [])]
        if assume_active:
            args.append("--assume-active")
        if wall_clock_stamps:
            args.append("--wall-clock-stamps")
        self.log = self.out.with_suffix(".log")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=os.environ.copy())
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if not ready.exists():
            self.kill()
            raise RuntimeError(f"safety monitor did not start: {self.log.read_text()[-2000:]}")

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self.out.exists():
            raise RuntimeError(f"safety monitor wrote no verdict: {self.log.read_text()[-2000:]}")
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
