"""``mtm demo``: the quick start that ``make demo`` runs.

Step 1 trains on the toy sinusoid set (under a minute on CPU) and prints reconstructions under
BC, FD, ID and random masks. Step 2 runs the Reacher model (``models/reacher_embedded``, or a
quickly trained one if it is not bundled) in closed loop against the MuJoCo bridge over ROS 2,
each node its own process from the shared launch description, and prints achieved rate,
latency percentiles and normalised score (``--record``: also an MCAP file). A node that fails
makes the demo exit 1 with the node's name and last log lines.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mtm_runtime.arg_types import at_least


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--record", action="store_true", help="record the closed loop to <out>/closed_loop.mcap")
    p.add_argument("--episodes", type=at_least(1), default=4, help="closed-loop Reacher episodes (1 s each at 50 Hz)")
    p.add_argument("--model", default="", help="checkpoint for the closed loop (default: models/reacher_embedded)")
    p.add_argument("--skip-toy", action="store_true", help="only the closed-loop step")
    p.add_argument("--skip-closed-loop", action="store_true", help="only the toy step")


def main(args: argparse.Namespace) -> int:
    import sys

    if not args.skip_toy:
        from mtm_runtime.commands import toy

        print("== mtm demo: step 1/2: MTM on a toy sinusoid set ==")
        r = toy.run(out=args.out / "toy")
        print(f"BC held-out error fell {r['improvement']['bc']}x; plot: {r.get('plot')}")
    if args.skip_closed_loop:
        return 0
    print("== mtm demo: step 2/2: Reacher in closed loop, policy node <-> MuJoCo bridge over ROS 2 ==", flush=True)
    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        print(f"mtm demo: the closed-loop step needs ROS 2 (rclpy): {e}", file=sys.stderr)
        return 1
    from mtm_runtime.commands import demo_closed_loop
    from mtm_runtime.ros_nodes.node_processes import NodeFailure

    try:
        demo_closed_loop.run(args.out, episodes=args.episodes, record=args.record, model=args.model)
    except NodeFailure as e:
        print(f"mtm demo: closed loop failed: {e}", file=sys.stderr)
        return 1
    return 0
