"""End to end: virtual MCU <-> pty <-> serial bridge node (subprocess) <-> rclpy test node.

Real pty, real pyserial, real rclpy over Fast DDS on localhost; no mocks.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("serial")
rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy,  # noqa: E402
                       qos_profile_sensor_data)
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mtm_runtime import serial_messages as sm  # noqa: E402
from mtm_runtime.sim.virtual_mcu import VirtualMCU  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ros


class Probe:
    """Test-side ROS node in its own context: listens to the bridge and sends commands."""

    def __init__(self) -> None:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("serial_bridge_probe", context=self.ctx)
        self.obs: list[list[float]] = []
        self.joints: list[JointState] = []
        self.diag: list[dict[str, str]] = []
        n = self.node
        n.create_subscription(Float64MultiArray, "observation",
                              lambda m: self.obs.append(list(m.data)), qos_profile_sensor_data)
        n.create_subscription(JointState, "joint_states", self.joints.append,
                              qos_profile_sensor_data)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.cmd_pub = n.create_publisher(
            Float64MultiArray, "commands",
            QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                       reliability=ReliabilityPolicy.RELIABLE))
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(n)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if "serial link" in st.name:
                d = {kv.key: kv.value for kv in st.values}
                d["_level"] = str(int.from_bytes(st.level, "little") if isinstance(st.level, bytes)
                                  else int(st.level))
                d["_message"] = st.message
                self.diag.append(d)

    def spin_until(self, pred: Callable[[], bool], timeout: float,
                   every: Callable[[], None] | None = None) -> bool:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if every is not None:
                every()
            self.ex.spin_once(timeout_sec=0.02)
            if pred():
                return True
        return pred()

    def command(self, values: list[float]) -> None:
        self.cmd_pub.publish(Float64MultiArray(data=values))

    def close(self) -> None:
        self.ex.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def start_bridge(port: str, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "mtm_runtime.ros_nodes.serial_bridge", "--ros-args",
            "-p", f"port:={port}", "-p", "state_type:=both", "-p", "state_width:=10",
            "-p", "command_width:=2", "-p", "heartbeat_hz:=20.0",
            "-p", "reconnect_backoff_min:=0.02", "-p", "reconnect_backoff_max:=0.2",
            "-p", "joint_names:=[c0,c1,s0,s1,tx,ty,v0,v1,dx,dy]"]
    return subprocess.Popen(args, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=os.environ.copy())


def stop_bridge(p: subprocess.Popen) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            return p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            return -9
    return p.returncode


def test_bridge_end_to_end_with_reconnect(ros_env: dict[str, str], tmp_path: Path) -> None:
    link = str(tmp_path / "ttyMTM")
    mcu = VirtualMCU("reacher", 100.0, heartbeat_hz=20.0, heartbeat_timeout=0.3,
                     link_path=link).start()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(link, log)
    probe = Probe()
    try:
        # 1. States flow serial -> ROS on both topics.
        assert probe.spin_until(lambda: len(probe.obs) > 20 and len(probe.joints) > 5, 20.0), \
            log.read_text()
        assert all(len(o) == 10 for o in probe.obs)
        js = probe.joints[-1]
        assert js.name[:2] == ["c0", "c1"] and len(js.position) == 10
        stamp = js.header.stamp.sec + js.header.stamp.nanosec * 1e-9
        assert abs(stamp - time.time()) < 5.0  # host receive time (system clock)

        # 2. Commands flow ROS -> serial -> device; the arm moves.
        q0 = mcu.snapshot()["qpos"][:2].copy()
        assert probe.spin_until(lambda: mcu.snapshot()["commands_applied"] > 10, 5.0,
                                every=lambda: probe.command([1.0, -1.0]))
        snap = mcu.snapshot()
        assert snap["status"] == "OK"
        np.testing.assert_allclose(snap["ctrl"], [1.0, -1.0])
        probe.spin_until(lambda: False, 0.3, every=lambda: probe.command([1.0, -1.0]))
        dq = mcu.snapshot()["qpos"][:2] - q0
        assert dq[0] > 0.2 and dq[1] < -0.2, dq

        # 3. Bad commands are rejected by the bridge and counted in /diagnostics.
        probe.spin_until(lambda: False, 0.5)  # let valid commands still in flight land first
        applied = mcu.snapshot()["commands_applied"]
        probe.command([math.nan, 0.0])
        probe.spin_until(lambda: False, 0.05)
        probe.command([0.1, 0.2, 0.3])
        assert probe.spin_until(lambda: bool(probe.diag)
                                and int(probe.diag[-1]["rejected_commands"]) == 2, 3.0)
        assert mcu.snapshot()["commands_applied"] == applied
        np.testing.assert_allclose(mcu.snapshot()["ctrl"], [1.0, -1.0])  # the bad ones never landed
        d = probe.diag[-1]
        assert d["link_up"] == "True" and int(d["frames_ok"]) > 20 and d["corrupt"] == "0"
        assert d["_level"] == "0", d

        # 4. The port vanishes (pty closed), then returns at the same path: the bridge
        #    reconnects with backoff, states resume, the device becomes OK again.
        mcu.close_port()
        assert probe.spin_until(lambda: probe.diag[-1]["link_up"] == "False", 3.0)
        assert probe.diag[-1]["_level"] == "2"
        probe.spin_until(lambda: False, 0.4)  # > heartbeat_timeout: device goes SAFE
        assert mcu.snapshot()["status"] == "SAFE"
        mcu.open_port()
        n_obs = len(probe.obs)
        assert probe.spin_until(lambda: len(probe.obs) > n_obs + 20
                                and probe.diag[-1]["link_up"] == "True"
                                and int(probe.diag[-1]["reconnects"]) >= 1, 5.0), log.read_text()
        assert probe.spin_until(lambda: mcu.snapshot()["status"] == "OK", 2.0)
        d = probe.diag[-1]
        assert int(d["disconnects"]) >= 1 and int(d["open_failures"]) >= 1
        # The device's "heartbeat restored" FAULT(CLEARED) reached the host.
        assert probe.spin_until(lambda: probe.diag[-1]["last_fault_code"] == "0", 2.5)
        applied = mcu.snapshot()["commands_applied"]
        assert probe.spin_until(lambda: mcu.snapshot()["commands_applied"] > applied + 3, 3.0,
                                every=lambda: probe.command([0.5, 0.5]))

        # 5. The bridge stops (host dies): the device loses the heartbeat and goes safe.
        assert stop_bridge(bridge) == 0, log.read_text()
        time.sleep(0.5)
        snap = mcu.snapshot()
        assert snap["status"] == "SAFE"
        np.testing.assert_array_equal(snap["ctrl"], [0.0, 0.0])
        assert snap["last_fault"][0] == sm.FaultCode.HEARTBEAT_TIMEOUT
    finally:
        stop_bridge(bridge)
        probe.close()
        mcu.stop()
    assert bridge.poll() is not None
