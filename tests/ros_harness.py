"""Helpers for the ROS tests: an in-process graph with its own rclpy Context, a probe node that
talks to the node under test over real Fast DDS, and a scripted policy implementing the public
``Policy`` contract (so safety behaviour can be driven deterministically: known actions, slow
calls, exceptions).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import Trigger

from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec
from mtm_runtime.ros_nodes.conversions import diagnostic_values
from mtm_runtime.ros_nodes.executors import make_executor, spin_loop
from scripted_policy import ScriptedPolicy  # noqa: F401 - re-exported for the ROS tests

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


class Graph:
    """Context + executor thread + a probe node. Use as a context manager."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.probe = rclpy.create_node("probe", context=self.context)
        self.executor, self.executor_name = make_executor(self.context)
        self.executor.add_node(self.probe)
        self.nodes: list[Any] = []
        self.lock = threading.Lock()
        self.commands: list[tuple[float, Any]] = []
        self.diagnostics: list[dict[str, str]] = []
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- wiring
    def add(self, node: Any) -> Any:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def listen_commands(self, msg_type: type = Float64MultiArray, topic: str = "commands") -> None:
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.probe.create_subscription(msg_type, topic, self._on_command, qos)
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_command(self, msg: Any) -> None:
        with self.lock:
            self.commands.append((time.monotonic(), msg))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for st in msg.status:
                self.diagnostics.append(dict(diagnostic_values(st), _message=st.message))

    def publisher(self, msg_type: type, topic: str, qos: Any = qos_profile_sensor_data) -> Any:
        return self.probe.create_publisher(msg_type, topic, qos)

    def start(self) -> "Graph":
        self._thread = threading.Thread(target=spin_loop, args=(self.executor, self.context, lambda: not self._stop, 0.02),
                                        daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "Graph":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1.0)
        for n in self.nodes:
            n.destroy_node()
        self.probe.destroy_node()
        rclpy.shutdown(context=self.context)

    # -- helpers
    def call(self, srv_type: type, name: str, request: Any, timeout: float = 5.0) -> Any:
        client = self.probe.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            fut = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert fut.done(), f"service {name} did not answer in {timeout} s"
            return fut.result()
        finally:
            self.probe.destroy_client(client)

    def change_state(self, node: str, transition: int) -> bool:
        return bool(self.call(ChangeState, f"/{node}/change_state", ChangeState.Request(
            transition=Transition(id=transition))).success)

    def get_state(self, node: str) -> str:
        return self.call(GetState, f"/{node}/get_state", GetState.Request()).current_state.label

    def set_param(self, node: str, name: str, value: Any) -> Any:
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.call(SetParameters, f"/{node}/set_parameters", req).results[0]

    def reset(self, node: str) -> Any:
        return self.call(Trigger, f"/{node}/reset", Trigger.Request())

    def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred():
                    return
            time.sleep(0.005)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def command_values(self) -> list[np.ndarray]:
        with self.lock:
            return [np.asarray(m.data if hasattr(m, "data") else m.effort) for _, m in self.commands]

    def clear(self) -> None:
        with self.lock:
            self.commands.clear()
            self.diagnostics.clear()


class DiagnosticsLog:
    """Timestamped /diagnostics statuses whose name contains ``status_name`` (received by the
    graph's probe node), each as ``{key: value, _message, _level}``."""

    def __init__(self, g: "Graph", status_name: str) -> None:
        self.status_name = status_name
        self.items: list[tuple[float, dict[str, str]]] = []
        self.lock = threading.Lock()
        g.probe.create_subscription(DiagnosticArray, "/diagnostics", self._on, 100)

    def _on(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if self.status_name in st.name:
                d = dict(diagnostic_values(st), _message=st.message, _level=str(st.level[0]))
                with self.lock:
                    self.items.append((time.monotonic(), d))

    def since(self, t0: float, pred: Callable[[dict[str, str]], bool]) -> float | None:
        """Seconds from ``t0`` to the first status at/after ``t0`` matching ``pred`` (or None)."""
        with self.lock:
            for t, d in self.items:
                if t >= t0 and pred(d):
                    return t - t0
        return None

    def wait(self, t0: float, pred: Callable[[dict[str, str]], bool], timeout: float = 3.0) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dt = self.since(t0, pred)
            if dt is not None:
                return dt
            time.sleep(0.01)
        raise AssertionError(f"no matching {self.status_name!r} diagnostics within {timeout} s; "
                             f"last: {self.items[-1:]}")


def obs(values: Any) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return subprocess.run([PY, *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


__all__ = ["ScriptedPolicy", "Graph", "obs", "run_cli", "Float64", "JointState", "Parameter", "Transition"]


def make_tiny_checkpoint(directory: Path, task_name: str = "reacher", seed: int = 0) -> Path:
    """An untrained, deterministic, small MTM checkpoint with the task's modalities (for plumbing tests)."""
    import torch

    from mtm_runtime.checkpoint import save_checkpoint
    from mtm_runtime.model import MTM, MTMConfig
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.sim.tasks import get_task

    task = get_task(task_name)
    spec = TrajectorySpec.create(4, **task.modality_widths())
    torch.manual_seed(seed)
    model = MTM(spec, MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2))
    return save_checkpoint(directory, model, Normaliser.identity(spec), ActionLimits.symmetric(1.0, task.action_dim),
                           provenance={"task": task_name, "note": "untrained test checkpoint"})
