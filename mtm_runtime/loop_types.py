"""What the control loop is configured with and what it answers (``mtm_runtime.control_loop``):
``LoopConfig`` (checked as a whole), ``Command`` and ``Fault`` (a step's result) and ``FaultLog``
(the faults diagnostics read). Plain data, no policy: adapters and evaluators import these
without the loop."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mtm_runtime import safety_contract as contract
from mtm_runtime.safety import FAULT_KINDS

TRIGGERS = ("state", "timer")
Log = Callable[[str, str], None]  # (what: "info" | "rejected" | "fault", text); the last two are warnings


def no_log(what: str, text: str) -> None:
    return None


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs to know, checked as a whole at construction (ValueError names the field)."""

    rate_hz: float = 50.0
    stale_timeout: float = 0.25
    stale_reset_s: float = 1.0
    trigger: str = "state"
    max_input_rate_factor: float = contract.MAX_INPUT_RATE_FACTOR
    max_state_age: float = 0.0      # > 0: stamps older than this vs clock_ns() are rejected
    max_future_s: float = 0.05      # with max_state_age > 0: stamps this far ahead are rejected
    max_rate: float = 0.0           # per-step change per dimension; 0 = off
    fault_action: str = "hold"
    safe_action: Sequence[float] = ()
    action_low: Sequence[float] = ()   # narrow the policy's limits (empty = keep)
    action_high: Sequence[float] = ()
    saturation_s: float = 0.0       # > 0: a command pinned at a limit longer than this is a fault
    saturation_fault: bool = False  # answer saturation with the fault action (else: report only)

    def __post_init__(self) -> None:
        problems = [f"{name} must be {what}, got {getattr(self, name)!r}" for name, ok, what in (
            ("rate_hz", math.isfinite(self.rate_hz) and self.rate_hz > 0, "a finite number > 0"),
            ("stale_timeout", math.isfinite(self.stale_timeout) and self.stale_timeout > 0, "a finite number > 0"),
            ("stale_reset_s", self.stale_reset_s >= 0, ">= 0"),
            ("trigger", self.trigger in TRIGGERS, f"one of {TRIGGERS}"),
            ("max_input_rate_factor", self.max_input_rate_factor >= 1, ">= 1"),
            ("max_state_age", self.max_state_age >= 0, ">= 0"),
            ("max_future_s", self.max_future_s >= 0, ">= 0"),
            ("max_rate", self.max_rate >= 0, ">= 0 (0 = off)"),
            ("fault_action", self.fault_action in FAULT_KINDS, f"one of {FAULT_KINDS}"),
            ("saturation_s", math.isfinite(self.saturation_s) and self.saturation_s >= 0, ">= 0 (0 = off)"),
        ) if not ok]
        if problems:
            raise ValueError("loop config: " + "; ".join(problems))

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True)
class Command:
    """A policy command: clipped and rate-limited, stamped with its state's stamp."""

    action: np.ndarray
    stamp_ns: int
    arrival: float  # monotonic arrival time of the state it was computed from
    act_s: float | None = None  # this step's act() time; None when none ran for it (a streamed chunk step)


@dataclass(frozen=True)
class Fault:
    """The fault action answering ``kind`` (a row of the safety contract), stamped with the clock."""

    kind: str
    detail: str
    action: np.ndarray
    stamp_ns: int


class FaultLog:
    """Faults seen, for diagnostics: kind -> (monotonic time, detail); ``on_note`` hears each one."""

    def __init__(self, on_note: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[str, tuple[float, str]] = {}
        self._on_note = on_note
        self._clock = clock

    def note(self, kind: str, detail: str) -> None:
        self._seen[kind] = (self._clock(), detail)
        if self._on_note is not None:
            self._on_note(kind, detail)

    def clear(self, kind: str) -> None:
        self._seen.pop(kind, None)

    def active(self, now: float | None = None) -> list[tuple[str, str]]:
        """(kind, detail) of faults seen within FAULT_HOLD_S, worst level first."""
        now = self._clock() if now is None else now
        live = [(k, d) for k, (t, d) in self._seen.items() if now - t <= contract.FAULT_HOLD_S]
        return sorted(live, key=lambda kd: -contract.LEVELS[contract.CONTRACT[kd[0]].level])

    def report(self) -> dict[str, str]:
        """Diagnostics keys: ``fault`` (active kinds, worst first, or ``none``), ``fault_detail``."""
        live = self.active()
        return {"fault": ",".join(k for k, _ in live) or "none", "fault_detail": live[0][1] if live else "none"}
