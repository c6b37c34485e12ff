"""/diagnostics for one node: the periodic report, and an immediate one on an event.

``DiagnosticsReporter(node, name, status)`` publishes one ``DiagnosticStatus`` built from
``status() -> (level, message, values, hardware_id)`` at 1 Hz, and within
``DIAG_MIN_INTERVAL_S`` of each ``event()`` (at once if the last report is older than that).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from mtm_runtime import safety_contract as contract
from mtm_runtime.safety_contract import DIAG_MIN_INTERVAL_S
from mtm_runtime.ros_nodes.conversions import diagnostic_status

Status = Callable[[], "tuple[int, str, Mapping[str, object], str]"]
REPORT_PERIOD_S = 1.0


class DiagnosticsReporter:
    def __init__(self, node: Any, name: str, status: Status) -> None:
        self._node, self._name, self._status = node, name, status
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._pending = False
        self._last_t = 0.0
        node.create_timer(DIAG_MIN_INTERVAL_S, self._on_timer)

    def event(self) -> None:
        """Something to report now (at most every DIAG_MIN_INTERVAL_S; else from the timer)."""
        if time.monotonic() - self._last_t >= DIAG_MIN_INTERVAL_S:
            self.publish()
        else:
            self._pending = True

    def _on_timer(self) -> None:
        if self._pending or time.monotonic() - self._last_t >= REPORT_PERIOD_S:
            self.publish()

    def publish(self) -> None:
        self._pending = False
        self._last_t = time.monotonic()
        level, message, values, hardware_id = self._status()
        arr = DiagnosticArray()
        arr.header.stamp = self._node.get_clock().now().to_msg()
        arr.status = [diagnostic_status(self._name, level, message, values, hardware_id=hardware_id)]
        self._pub.publish(arr)


def policy_status(config_error: str, lifecycle_state: str, stale: bool,
                  faults: list[tuple[str, str]]) -> tuple[int, str]:
    """The policy loop's (level, message): a configure error, else stale input while active, else
    the first active fault at its contract level (``safety_contract.CONTRACT``), else the state."""
    if config_error:
        return DiagnosticStatus.ERROR, config_error
    if stale:
        return DiagnosticStatus.WARN, "stale input"
    if faults and faults[0][0] != "configure_failed":
        kind, detail = faults[0]
        return contract.LEVELS[contract.CONTRACT[kind].level], f"{kind}: {detail}"
    return DiagnosticStatus.OK, "running" if lifecycle_state == "active" else lifecycle_state
