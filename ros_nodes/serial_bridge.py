"""ROS 2 serial bridge: a microcontroller (or ``sim/virtual_mcu.py``) <-> ROS topics.

Thin node: all protocol, port and reconnect logic lives in ``mtm_runtime.serial_link``; this
file converts messages and owns timing (heartbeat and diagnostics timers), QoS and parameters.

Topics (names are parameters)
* out ``observation``  std_msgs/Float64MultiArray  sensor-data QoS (best effort, keep last 1)
* out ``joint_states`` sensor_msgs/JointState, stamped with the host receive time (same QoS);
  ``position`` carries the device state vector, ``name`` the ``joint_names`` parameter (or
  ``state_0..``). ``state_type`` picks ``observation``, ``joint_state`` or ``both``.
* in  ``commands``     std_msgs/Float64MultiArray  reliable, keep last 1; forwarded as COMMAND
  frames; NaN/Inf or wrong width is rejected and counted (never sent).
* out ``/diagnostics`` diagnostic_msgs/DiagnosticArray at 1 Hz, and at once (at most every
  ``DIAG_MIN_INTERVAL_S``) when the set of active faults changes; key ``fault`` lists them
  (``link_down``, ``corrupt_frames``, ``sequence``, ``device_silent``; ``docs/safety.md``).

Threading choice: the serial reader thread publishes STATE messages itself. rclpy's
``Publisher.publish`` may be called from any thread (``rcl_publish`` is documented thread-safe
and rclpy guards the handle), so a state reaches DDS without waiting for the executor; the
executor thread (a SingleThreadedExecutor) runs only the command subscription and the two
timers. The link thread is stopped before the node is destroyed, so it never publishes on a
destroyed publisher.

Run: ``mtm_serial_bridge --ros-args -p port:=/tmp/x/ttyMTM -p command_width:=2``
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mtm_runtime import safety_contract as contract
from mtm_runtime import serial_messages as sm
from mtm_runtime.safety import ActionLimits
from mtm_runtime.serial_link import SerialLink
from mtm_runtime.ros_nodes.executors import run_node

STATE_TYPES = ("observation", "joint_state", "both")


class SerialBridge(Node):
    """Serial <-> ROS bridge node (see module docstring for topics and parameters)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("mtm_serial_bridge", **kwargs)
        p = self._declare_all()
        if p["state_type"] not in STATE_TYPES:
            raise ValueError(f"state_type must be one of {STATE_TYPES}, got {p['state_type']!r}")
        self.state_width = int(p["state_width"])
        self.command_width = int(p["command_width"])
        self.joint_names = list(p["joint_names"] or [])
        self.state_width_errors = 0
        limits = None
        if p["command_limit"] > 0:
            if self.command_width <= 0:
                raise ValueError("command_limit needs command_width")
            limits = ActionLimits.symmetric(p["command_limit"], self.command_width)

        self.obs_pub = self.joint_pub = None
        if p["state_type"] in ("observation", "both"):
            self.obs_pub = self.create_publisher(Float64MultiArray, p["state_topic"],
                                                 qos_profile_sensor_data)
        if p["state_type"] in ("joint_state", "both"):
            self.joint_pub = self.create_publisher(JointState, p["joint_states_topic"],
                                                   qos_profile_sensor_data)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        cmd_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Float64MultiArray, p["command_topic"], self._on_command, cmd_qos)

        self.link = SerialLink(p["port"], p["baud"], on_message=self._on_message,
                               command_limits=limits, command_width=self.command_width,
                               backoff_min=p["reconnect_backoff_min"],
                               backoff_max=p["reconnect_backoff_max"],
                               device_timeout=p["device_timeout"])
        self._was_up = False
        if p["heartbeat_hz"] > 0:
            self.create_timer(1.0 / p["heartbeat_hz"], lambda: None if self.link.send_heartbeat() else None)
        self._last_diag_t = 0.0
        self._faults: tuple[str, ...] = ()
        self._counts: dict[str, int] = {}
        self._fault_t: dict[str, float] = {}
        self.create_timer(contract.DIAG_MIN_INTERVAL_S, self._on_diag_timer)
        self.link.start()
        self.get_logger().info(f"serial bridge on {p['port']} @ {p['baud']} baud, "
                               f"heartbeat {p['heartbeat_hz']:g} Hz")

    def _declare_all(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "port": "/dev/ttyACM0", "baud": 115200,
            "state_type": "observation", "state_topic": "observation",
            "joint_states_topic": "joint_states", "command_topic": "commands",
            "heartbeat_hz": 20.0, "reconnect_backoff_min": 0.05, "reconnect_backoff_max": 2.0,
            "device_timeout": 0.5,
            "state_width": 0,  # 0: accept any width
            "command_width": 0,  # 0: accept any width (set it on a real robot)
            "command_limit": 0.0,  # > 0: symmetric clip before sending; the device clips too
        }
        out = {k: self.declare_parameter(k, v).value for k, v in defaults.items()}
        # A string array with no default: declared by type (Humble and newer).
        self.declare_parameter("joint_names", Parameter.Type.STRING_ARRAY)
        try:
            out["joint_names"] = self.get_parameter("joint_names").value
        except Exception:  # noqa: BLE001 - uninitialised on some distros raises
            out["joint_names"] = None
        return out

    # ------------------------------------------------------------------ serial -> ROS
    def _on_message(self, msg: sm.Message, rx_time: float) -> None:
        """Runs on the serial reader thread (see module docstring)."""
        if isinstance(msg, sm.State):
            if self.state_width and msg.values.size != self.state_width:
                self.state_width_errors += 1
                return
            values = msg.values.astype(np.float64).tolist()
            if self.obs_pub is not None:
                self.obs_pub.publish(Float64MultiArray(data=values))
            if self.joint_pub is not None:
                js = JointState()
                js.header.stamp = self.get_clock().now().to_msg()
                js.name = (self.joint_names if len(self.joint_names) == len(values)
                           else [f"state_{i}" for i in range(len(values))])
                js.position = values
                self.joint_pub.publish(js)
        elif isinstance(msg, sm.Fault):
            log = self.get_logger()
            if msg.code == sm.FaultCode.CLEARED:
                log.info(f"device: fault cleared ({msg.text})")
            else:
                log.warning(f"device fault 0x{msg.code:04x}: {msg.text}")

    # ------------------------------------------------------------------ ROS -> serial
    def _on_command(self, msg: Float64MultiArray) -> None:
        if not self.link.send_command(np.asarray(msg.data, dtype=np.float64)):
            self.get_logger().warning(f"command not sent: {self.link.stats.last_error}",
                                      throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ diagnostics
    def _active_faults(self, s: dict[str, Any]) -> tuple[str, ...]:
        """Faults now: link/device state, and counters that grew within FAULT_HOLD_S."""
        now = time.monotonic()
        for kind, keys in (("corrupt_frames", ("corrupt",)), ("sequence", ("duplicate", "out_of_order"))):
            total = sum(int(s[k]) for k in keys)
            if total > self._counts.get(kind, 0):
                self._fault_t[kind] = now
            self._counts[kind] = total
        out = [k for k, t in self._fault_t.items() if now - t <= contract.FAULT_HOLD_S]
        if not s["link_up"]:
            out.insert(0, "link_down")
        elif not s["device_alive"]:
            out.insert(0, "device_silent")
        return tuple(out)

    def _on_diag_timer(self) -> None:
        s = self.link.snapshot()
        faults = self._active_faults(s)
        if faults != self._faults or time.monotonic() - self._last_diag_t >= 1.0:
            self._faults = faults
            self._publish_diagnostics(s)

    def _publish_diagnostics(self, s: dict[str, Any] | None = None) -> None:
        self._last_diag_t = time.monotonic()
        s = s if s is not None else self.link.snapshot()
        if s["link_up"] != self._was_up:
            self._was_up = s["link_up"]
            if s["link_up"]:
                self.get_logger().info(f"link up on {s['port']} (reconnects: {s['reconnects']})")
            else:
                self.get_logger().warning(f"link down: {s['disconnect_reason'] or s['last_error']}")
        st = DiagnosticStatus()
        st.name = f"{self.get_name()}: serial link"
        st.hardware_id = str(s["port"])
        if not s["link_up"]:
            st.level, st.message = DiagnosticStatus.ERROR, "link down"
        elif not s["device_alive"]:
            st.level, st.message = DiagnosticStatus.WARN, "port open, device silent"
        elif s["device_status"] != sm.DeviceStatus.OK:
            st.level = DiagnosticStatus.WARN
            st.message = f"device status {s['device_status']} (safe / fault)"
        elif self._faults:
            st.level, st.message = DiagnosticStatus.WARN, f"link up; {', '.join(self._faults)}"
        else:
            st.level, st.message = DiagnosticStatus.OK, "link up"
        keys = ["link_up", "device_alive", "device_status", "frames_ok", "corrupt", "bad_cobs",
                "bad_crc", "bad_length", "bad_type", "oversize", "out_of_order", "duplicate",
                "seq_gaps", "resyncs", "states", "tx_frames", "tx_errors", "tx_dropped",
                "rejected_commands", "connects", "reconnects", "disconnects", "open_failures",
                "faults", "last_fault_code", "last_fault_text", "disconnect_reason", "last_error"]
        st.values = [KeyValue(key=k, value=str(s[k])) for k in keys]
        st.values.append(KeyValue(key="state_width_errors", value=str(self.state_width_errors)))
        st.values.append(KeyValue(key="fault", value=",".join(self._faults) or "none"))
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.diag_pub.publish(arr)

    def destroy_node(self) -> None:
        self.link.stop()  # first: the reader thread publishes
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point ``mtm_serial_bridge``; exits 0 on any number of SIGINT/SIGTERM."""
    return run_node(lambda context: SerialBridge(context=context), sys.argv if args is None else args,
                    prefer="single")


if __name__ == "__main__":
    raise SystemExit(main())
