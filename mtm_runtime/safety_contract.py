"""The safety contract as data: one row per fault, read by ``docs/safety.md`` tests and fault tests.

Numbers are in control periods ``P = 1 / control_rate_hz`` unless the name says seconds. The
document ``docs/safety.md`` carries the same table (``tests/runtime/test_faults_contract.py`` parses it
and compares it with ``CONTRACT`` field by field, so the two cannot drift apart).

Bounds a deployment can rely on (the policy node, ``ros_nodes/policy_node.py``, over its
``mtm_runtime.control_loop.ControlLoop``):

* ``detect_periods``: the fault is answered (fault action published, or the input dropped) at
  most this many control periods after it starts; for ``stale_input`` the bound is
  ``stale_timeout`` **plus** this many periods, for ``saturated`` ``saturation_s`` plus them.
* ``report_s``: the fault appears in ``/diagnostics`` (``diag_key`` = ``fault`` value
  ``kind``, at ``level``) at most this many seconds after it is detected.
* ``recover_periods``: after the cause is gone, policy commands resume within this many periods
  (``stale_input``: the first valid state), without restarting any process.
No ROS import here.
"""
from __future__ import annotations

from dataclasses import dataclass

#: ``diagnostic_msgs/DiagnosticStatus`` levels by name (the byte values of the message).
LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2, "STALE": 3}

#: Seconds a fault keeps its diagnostics level after its last occurrence.
FAULT_HOLD_S = 2.0
#: Shortest interval between two event-driven /diagnostics messages (plus the 1 Hz ones).
DIAG_MIN_INTERVAL_S = 0.1
#: At most this many steps per control period in ``trigger: state``; faster states are deferred
#: to the next tick (an input flood cannot multiply the rate limit's velocity bound).
MAX_INPUT_RATE_FACTOR = 2.0
#: On SIGINT/SIGTERM while active: at most this many ramp commands (rate limiter) toward the fault action.
SHUTDOWN_RAMP_MAX_STEPS = 200
#: Largest gap between two commands while active: ``stale_timeout`` + this many periods.
MAX_COMMAND_GAP_PERIODS = 2


@dataclass(frozen=True)
class FaultRow:
    """One fault of the contract."""

    kind: str             # value of the diagnostics key ``fault`` while it is active
    level: str            # diagnostics level while active (a key of LEVELS)
    counter: str          # the diagnostics counter that counts it
    detect_periods: int   # answered within this many periods (stale_input: after stale_timeout)
    report_s: float       # in /diagnostics within this many seconds of detection
    recover_periods: int  # policy commands again within this many periods after the cause ends
    action: str           # what is commanded (short)
    recovery: str         # how it recovers (short)


CONTRACT: dict[str, FaultRow] = {r.kind: r for r in (
    FaultRow("stale_input", "WARN", "stale_ticks", 1, 1.0, 1, "fault action every period",
             "first valid state; gap > stale_reset_s starts a new episode"),
    FaultRow("rejected_input", "WARN", "rejected_inputs", 0, 1.0, 1, "message dropped, not acted on",
             "next valid state"),
    FaultRow("act_error", "ERROR", "act_errors", 0, 1.0, 1, "fault action for that step",
             "next step that succeeds"),
    FaultRow("overrun", "WARN", "overruns", 0, 1.0, 1, "fault action for that step",
             "next step within the period"),
    FaultRow("unsafe_output", "ERROR", "act_errors", 0, 1.0, 1, "fault action for that step",
             "next finite action"),
    FaultRow("saturated", "WARN", "saturated_steps", 1, 1.0, 1,
             "reported; fault action if saturation_fault", "first command off the limits"),
    FaultRow("stale_chunk", "ERROR", "stale_chunks", 1, 1.0, 1, "fault action every period",
             "the next chunk planned from a fresh state"),
    FaultRow("model_mismatch", "WARN", "model_mismatches", 3, 1.0, 3,
             "reported; fault action if monitor_action is fault", "monitor_persist steps under the threshold"),
    FaultRow("param_refused", "WARN", "param_refusals", 0, 1.0, 0, "value refused, old value kept",
             "nothing to recover: the loop never stopped"),
    FaultRow("configure_failed", "ERROR", "config_failures", 0, 1.0, 0, "stays unconfigured, nothing published",
             "fix the file / parameter, configure again"),
    FaultRow("shutdown", "OK", "published", SHUTDOWN_RAMP_MAX_STEPS, 1.0, 0,
             "fault action (rate-limited ramp), then exit 0", "restart the process"),
)}

#: Serial bridge faults (``ros_nodes/serial_bridge.py``): kind -> (level, counter).
SERIAL_CONTRACT: dict[str, tuple[str, str]] = {
    "link_down": ("ERROR", "disconnects"),
    "corrupt_frames": ("WARN", "corrupt"),
    "sequence": ("WARN", "out_of_order"),
    "device_silent": ("WARN", "device_alive"),
}

#: Sim bridge faults (``sim/ros_bridge.py``): kind -> (level, counter).
SIM_CONTRACT: dict[str, tuple[str, str]] = {
    "rejected_command": ("WARN", "rejected_commands"),
    "no_command": ("WARN", "command_timeouts"),
}


def row(kind: str) -> FaultRow:
    return CONTRACT[kind]


def max_command_gap_s(stale_timeout: float, control_rate_hz: float) -> float:
    """Contract bound on the time between two commands while the node is active."""
    return stale_timeout + MAX_COMMAND_GAP_PERIODS / control_rate_hz
