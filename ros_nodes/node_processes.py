"""Start the nodes of a launch description as child processes and watch them (no ROS import).

Used by ``mtm rollout``, the closed-loop demo and ``benchmarks/closed_loop.py``: each node runs
as ``mtm_runtime.ros_nodes.launch_description.command_line(node)`` (exactly what ``mtm launch`` runs), in
its own session, with stdout+stderr captured to ``<log_dir>/<node>.log`` so a failure can be
reported with the node's last lines instead of interleaved terminal output.

Stopping: SIGINT, then SIGTERM, then SIGKILL, ``grace`` seconds apart (like ``mtm launch``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mtm_runtime.ros_nodes.launch_description import NodeSpec, command_line

REPO_ROOT = Path(__file__).resolve().parents[1]


class NodeFailure(RuntimeError):
    """A node exited with a non-zero status (or failed to come up); the message says which and why."""


@dataclass
class _Proc:
    spec: NodeSpec
    popen: subprocess.Popen
    log_path: Path
    log: IO[Any]


class NodeProcesses:
    """Context manager: one child process per ``NodeSpec``; ``poll()`` reports exits."""

    def __init__(self, nodes: list[NodeSpec], log_dir: str | Path, env: dict[str, str] | None = None,
                 module_override: dict[str, str] | None = None, grace: float = 3.0) -> None:
        self.nodes, self.log_dir, self.grace = list(nodes), Path(log_dir), grace
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.module_override = dict(module_override or {})
        self.procs: dict[str, _Proc] = {}

    def start(self) -> "NodeProcesses":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            argv = command_line(node, python=sys.executable)
            if node.name in self.module_override:  # same argv, another module (benchmark instrumentation)
                argv[2] = self.module_override[node.name]
            log_path = self.log_dir / f"{node.name}.log"
            log = open(log_path, "w")
            log.write(" ".join(argv) + "\n")
            log.flush()
            popen = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                     start_new_session=True)
            self.procs[node.name] = _Proc(node, popen, log_path, log)
        return self

    def pids(self) -> dict[str, int]:
        return {name: p.popen.pid for name, p in self.procs.items()}

    def exited(self) -> dict[str, int]:
        """name -> exit code of every node that has exited."""
        return {name: p.popen.returncode for name, p in self.procs.items() if p.popen.poll() is not None}

    def check(self, allowed_to_exit: tuple[str, ...] = ()) -> None:
        """Raise NodeFailure if a node exited non-zero, or exited at all and is not in ``allowed_to_exit``."""
        for name, code in self.exited().items():
            if code != 0 or name not in allowed_to_exit:
                raise NodeFailure(f"node {name} exited with code {code}; last lines of {self.procs[name].log_path}:\n"
                                  + self.tail(name))

    def tail(self, name: str, lines: int = 15) -> str:
        p = self.procs[name]
        p.log.flush()
        try:
            text = p.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self) -> dict[str, int]:
        """Stop every running node (SIGINT -> SIGTERM -> SIGKILL); returns name -> exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [p.popen for p in self.procs.values() if p.popen.poll() is None]
            if not alive:
                break
            for pop in alive:
                try:
                    pop.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + self.grace
            while time.monotonic() < deadline and any(pop.poll() is None for pop in alive):
                time.sleep(0.02)
        for p in self.procs.values():
            p.popen.wait(timeout=5)
            p.log.close()
        return {name: p.popen.returncode for name, p in self.procs.items()}

    def __enter__(self) -> "NodeProcesses":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
