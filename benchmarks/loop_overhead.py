"""The policy node's per-step work outside ``act()``, without DDS: where the time goes.

    python benchmarks/loop_overhead.py [--model models/reacher_embedded] [--backend torch] [--steps 3000]

Interleaved in rounds (the machine is shared), each timed per call:
* ``act``: ``Policy.act`` alone (the baseline);
* ``loop``: ``ControlLoop.on_state`` with the same policy: input checks, flood guard, act, clip,
  saturation check, rate limit, counters (``loop - act``: the chain's own cost);
* ``joint_state_in``: ``conversions.joint_state_to_array`` of a 2-joint JointState by name;
* ``command_out``: filling the JointState command (``conversions.CommandWriter``, as the node does);
* ``diagnostics``: one ``/diagnostics`` key/value report (1 Hz, or at a fault);
* ``node_step``: the node's state callback without DDS (JointState in, the loop, the command
  message); ``node_step_beyond_act``: each such step minus its own act(), as the node's
  ``beyond_act`` diagnostic counts it (there, plus the publish call: ``publish_cost.py``).
Prints JSON: percentiles in microseconds, ``beyond_act_us`` = loop + conversions - act (p50),
the machine. ``--paced`` makes one call per control period with the process asleep in between, as
the node runs: every part then costs about 2-3x its back-to-back time (colder caches). The
publish call is ``benchmarks/publish_cost.py``'s; the whole in the node (e2e - act) is
``benchmarks/closed_loop.py``'s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (add_wake_latency_option, emit_json, hold_wake_latency, interleaved,  # noqa: E402
                               machine, summarise)
from mtm_runtime.control_loop import ControlLoop  # noqa: E402
from mtm_runtime.loop_types import Command, LoopConfig  # noqa: E402
from mtm_runtime.policy import Policy  # noqa: E402
from mtm_runtime.ros_nodes import conversions as conv  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "reacher_embedded"))
    p.add_argument("--backend", default="torch")
    p.add_argument("--steps", type=int, default=3000, help="timed calls per variant")
    p.add_argument("--rate", type=float, default=500.0, help="the loop's control rate (its period bounds act)")
    p.add_argument("--paced", action="store_true", help="one call per period of --rate, sleeping in between "
                                                        "(as in the node); default back to back")
    add_wake_latency_option(p)
    a = p.parse_args(argv)
    wake, wake_json = hold_wake_latency(a.cpu_wake_latency_us)

    policy = Policy.load(a.model, backend=a.backend, **({"threads": 1} if a.backend == "torch" else {}))
    width = policy.spec.width("states")
    rng = np.random.default_rng(0)
    states = (0.1 * rng.standard_normal((1024, width))).astype(np.float32)
    loop = ControlLoop(policy, LoopConfig(rate_hz=a.rate, stale_timeout=1.0, max_rate=0.05, saturation_s=0.5))
    loop.activate(time.monotonic())
    names = [f"j{i}" for i in range(width // 2)]
    msg = JointState(name=names, position=[0.1] * len(names), velocity=[0.0] * (width - len(names)))
    command = np.zeros(policy.spec.width("actions"), np.float32)
    writer = conv.CommandWriter("joint_state", names[:len(command)] or ["a"] * len(command), "effort",
                                1.0 / a.rate, len(command))
    k = [0]

    def act() -> None:
        k[0] += 1
        policy.act(states[k[0] % 1024])

    clock = [time.monotonic()]

    def step() -> None:
        # the loop's clock advances one period per state: no flood, and no input gap (a gap over
        # stale_timeout would start a new episode every step)
        k[0] += 1
        clock[0] += 1.0 / a.rate
        loop.on_state(states[k[0] % 1024], time.time_ns(), clock[0])

    def diagnostics() -> None:
        loop.stats.report()
        loop.faults.report()

    node_beyond: list[float] = []
    n_pos = len(names)
    msgs = [JointState(name=names, position=s[:n_pos].tolist(), velocity=s[n_pos:].tolist()) for s in states[:256]]

    def node_step() -> None:
        """The node's state callback without DDS: JointState in, the loop, the command message;
        records the step's time minus its own act() (what the node's beyond_act reports)."""
        t = time.perf_counter()
        k[0] += 1
        clock[0] += 1.0 / a.rate
        state = conv.joint_state_to_array(msgs[k[0] % 256], names, ["position", "velocity"])
        out = loop.on_state(state, time.time_ns(), clock[0])
        if isinstance(out, Command) and out.act_s is not None:
            writer.message(out.action, out.stamp_ns)
            node_beyond.append(time.perf_counter() - t - out.act_s)

    samples = interleaved({
        "act": act, "loop": step,
        "joint_state_in": lambda: conv.joint_state_to_array(msg, names, ["position", "velocity"]),
        "command_out": lambda: writer.message(command, time.time_ns()),
        "diagnostics": diagnostics, "node_step": node_step,
    }, rounds=10, per_round=max(1, a.steps // 10), period_s=1.0 / a.rate if a.paced else 0.0)
    rows = {name: summarise(s) for name, s in samples.items()}
    rows["node_step_beyond_act"] = summarise(node_beyond)
    beyond = (rows["loop"]["p50_us"] - rows["act"]["p50_us"] + rows["joint_state_in"]["p50_us"]
              + rows["command_out"]["p50_us"])
    wake.release()
    emit_json({"benchmark": "loop_overhead", "model": a.model, "backend": a.backend, "rate_hz": a.rate, "paced": a.paced,
               "cpu_wake_latency": wake_json,
               "rows": rows, "beyond_act_p50_us": round(beyond, 1),
               "loop_minus_act_p99_us": round(rows["loop"]["p99_us"] - rows["act"]["p99_us"], 1),
               "target_beyond_act_p50_us": 100.0, "faults_seen": loop.stats.faults,
               "episode_resets": loop.stats.episode_resets, "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
