"""mtm launch: start the node set of ``launch/policy.launch.py`` without ``ros2 launch``.

Each node of ``mtm_runtime.ros_nodes.launch_description.describe(...)`` runs in its own process
(``python -m <module> --ros-args ...``, its own session so a terminal Ctrl-C reaches only this
launcher). SIGINT/SIGTERM are forwarded to every node as SIGINT; nodes that have not exited after
``--grace`` seconds get SIGTERM, then SIGKILL. When one node exits, the others are stopped too
(like ``on_exit=Shutdown``). Exit status: 0 if every node exited 0, else 1 (the first node that
died is named).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mtm_runtime.ros_nodes.launch_description import LAUNCH_ARGUMENTS, TARGETS, NodeSpec, command_line, describe

REPO_ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (default, text) in LAUNCH_ARGUMENTS.items():
        kw: dict = {"default": default, "help": text}
        if name == "target":
            kw["choices"] = TARGETS
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **kw)
    parser.add_argument("--grace", type=float, default=5.0, help="seconds a node gets to stop after SIGINT")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines and exit")


def _stop(procs: dict[str, subprocess.Popen], grace: float) -> None:
    """SIGINT every running node, then SIGTERM, then SIGKILL after ``grace`` seconds each."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs.values() if p.poll() is None]
        if not alive:
            return
        for p in alive:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.05)


def run(nodes: list[NodeSpec], grace: float = 5.0) -> int:
    """Start ``nodes``, wait until one exits or a signal arrives, stop the rest; 0 if all exited 0."""
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    procs: dict[str, subprocess.Popen] = {}
    first_exit: tuple[str, int] | None = None
    try:
        for node in nodes:
            argv = command_line(node)
            print(f"[mtm launch] {node.name}: {shlex.join(argv)}", flush=True)
            procs[node.name] = subprocess.Popen(argv, env=env, start_new_session=True)
        while not stop_requested and first_exit is None:
            for name, p in procs.items():
                if p.poll() is not None:
                    first_exit = (name, p.returncode)
                    break
            time.sleep(0.05)
        if stop_requested:
            print(f"[mtm launch] {signal.Signals(stop_requested[0]).name}: stopping {len(procs)} nodes", flush=True)
        elif first_exit:
            print(f"[mtm launch] {first_exit[0]} exited with {first_exit[1]}; stopping the others", flush=True)
    finally:
        _stop(procs, grace)
        for s, h in old.items():
            signal.signal(s, h)
    failed = [(n, p.returncode) for n, p in procs.items() if p.returncode != 0]
    for name, code in failed:
        print(f"[mtm launch] node {name} died with exit code {code}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    try:
        nodes = describe(**{name: getattr(args, name) for name in LAUNCH_ARGUMENTS})
    except ValueError as e:
        print(f"mtm launch: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for node in nodes:
            print(shlex.join(command_line(node)))
        return 0
    return run(nodes, args.grace)
