"""What one command publish costs the policy node: ``Publisher.publish`` of its command message,
timed per call, with 0, 1 and 2 matched subscribers in other processes (real Fast DDS, localhost).

    python benchmarks/publish_cost.py [--calls 3000]

The node's time beyond ``act()`` is its Python chain (``benchmarks/loop_overhead.py``, no DDS)
plus this call; ``benchmarks/closed_loop.py`` measures the sum in the node (e2e - act). Messages:
the JointState command of ``command_type: joint_state`` (2 joints, ``effort``, stamped) and a
Float64MultiArray of 2 values, both built once (building one is ``loop_overhead``'s
``command_out``) and published on the node's command QoS (reliable, keep last 1). Variants
are interleaved in rounds (the machine is shared). Prints JSON: percentiles in microseconds, the
machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from benchmarks.common import (add_wake_latency_option, emit_json, hold_wake_latency, interleaved,  # noqa: E402
                               machine, summarise)
from mtm_runtime.ros_nodes import conversions as conv  # noqa: E402
from mtm_runtime.ros_nodes.policy_topics import COMMAND_QOS  # noqa: E402

#: A subscriber process: takes every message of both topics until stdin closes.
SUBSCRIBER = """
import sys, threading, rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Float64MultiArray
from sensor_msgs.msg import JointState
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
COMMAND_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
rclpy.init()
node = rclpy.create_node(sys.argv[1])
for t, topic in ((JointState, "/bench_js"), (Float64MultiArray, "/bench_arr")):
    node.create_subscription(t, topic, lambda m: None, COMMAND_QOS)
ex = SingleThreadedExecutor(); ex.add_node(node)
threading.Thread(target=lambda: (sys.stdin.read(), rclpy.try_shutdown()), daemon=True).start()
try:
    ex.spin()
except Exception:
    pass
"""


def wait_for(pubs: list, count: int, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while any(p.get_subscription_count() < count for p in pubs):
        if time.monotonic() > end:
            raise RuntimeError(f"publish_cost: subscribers did not match within {timeout_s:.0f} s "
                               f"({[p.get_subscription_count() for p in pubs]} of {count})")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000, help="timed publishes per variant and subscriber count")
    p.add_argument("--paced", type=float, default=0.0, metavar="HZ",
                   help="one publish per period at this rate, asleep in between (as the node runs); default back to back")
    p.add_argument("--evict-kb", type=int, default=0, metavar="KB",
                   help="before each publish (untimed), read this much memory, as the model's forward pass does "
                        "in the policy node (it leaves the DDS path out of cache); default 0")
    add_wake_latency_option(p)
    a = p.parse_args(argv)
    wake, wake_json = hold_wake_latency(a.cpu_wake_latency_us)
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rclpy.init()
    node = rclpy.create_node("mtm_publish_cost")
    js_pub = node.create_publisher(JointState, "/bench_js", COMMAND_QOS)
    arr_pub = node.create_publisher(Float64MultiArray, "/bench_arr", COMMAND_QOS)
    values = [0.1, -0.2]
    js = conv.array_to_joint_state(np.asarray(values), ["joint0", "joint1"], conv.ns_to_stamp(time.time_ns()), "effort")
    arr = Float64MultiArray(data=values)
    rows: dict[str, dict[str, float]] = {}
    subscribers: list[subprocess.Popen] = []
    scratch = np.ones(max(1, a.evict_kb) * 128)   # float64: 128 per KB
    evict = (lambda: float(scratch.sum())) if a.evict_kb > 0 else None
    try:
        for count in (0, 1, 2):
            while len(subscribers) < count:
                subscribers.append(subprocess.Popen([sys.executable, "-c", SUBSCRIBER, f"bench_sub{len(subscribers)}"],
                                                    stdin=subprocess.PIPE, cwd=ROOT))
            wait_for([js_pub, arr_pub], count)
            samples = interleaved({
                "joint_state": lambda: js_pub.publish(js),
                "float64_array": lambda: arr_pub.publish(arr),
            }, rounds=10, per_round=max(1, a.calls // 10),
               period_s=1.0 / a.paced if a.paced > 0 else 0.0, before=evict)
            for name, s in samples.items():
                rows[f"{name}_{count}_subscribers"] = summarise(s)
    finally:
        for sp in subscribers:
            if sp.stdin:
                sp.stdin.close()
        for sp in subscribers:
            try:
                sp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sp.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    wake.release()
    emit_json({"benchmark": "publish_cost", "qos": "reliable, keep last 1 (the policy node's COMMAND_QOS)",
               "paced_hz": a.paced, "evict_kb": a.evict_kb, "cpu_wake_latency": wake_json,
               "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)"),
               "ros_domain_id": os.environ["ROS_DOMAIN_ID"], "rows": rows, "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
