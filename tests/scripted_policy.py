"""A scripted policy implementing the public ``Policy`` contract, without ROS, so safety behaviour
can be driven deterministically (known actions, slow calls, exceptions, unsafe outputs) by the
ControlLoop unit tests and, through ``ros_harness``, by the ROS tests."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec


class ScriptedPolicy:
    """Implements the Policy contract; ``act`` returns ``gain * state[:action_width]``.

    ``delay_s`` makes act() slow (overrun tests): it sleeps, or with ``advance`` (a fake clock's
    ``advance(seconds)``) moves that clock instead; ``fail`` makes it raise; ``output`` (if set)
    is returned as it is, unclipped (unsafe-output tests). Records calls.
    """

    def __init__(self, state_width: int = 3, action_width: int = 2, bound: float = 1.0, gain: float = 1.0) -> None:
        self.spec = TrajectorySpec.create(4, states=state_width, actions=action_width, returns=1)
        self.modes = ("bc", "rcbc")
        self.mode = "bc"
        self.limits = ActionLimits.symmetric(bound, action_width)
        self.backend_name = "scripted"
        self.gain = gain
        self.delay_s = 0.0
        self.fail = False
        self.advance: Callable[[float], None] | None = None
        self.output: np.ndarray | None = None
        self.calls: list[tuple[np.ndarray, float | None]] = []
        self.resets = 0
        self.target_return: float | None = None

    def set_mode(self, mode: str, *, target_return: float | None = None, goal: Any = None) -> None:
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r} not available (modes: {', '.join(self.modes)})")
        if mode == "rcbc" and target_return is None:
            raise ValueError("rcbc needs a target_return")
        self.mode = mode
        if target_return is not None:
            self.target_return = target_return

    def set_target_return(self, x: float) -> None:
        if not np.isfinite(x):
            raise ValueError("target_return must be finite")
        self.target_return = float(x)

    def set_goal(self, g: np.ndarray) -> None:
        raise ValueError("this model has no goals modality")

    def reset(self) -> None:
        self.resets += 1

    def warmup(self, n: int = 10) -> None:
        pass

    def act(self, state: np.ndarray, reward: float | None = None) -> np.ndarray:
        self.calls.append((np.array(state), reward))
        if self.delay_s:
            (self.advance or time.sleep)(self.delay_s)
        if self.fail:
            raise RuntimeError("scripted failure")
        if self.output is not None:
            return self.output
        a = self.gain * np.asarray(state[: self.limits.width], dtype=np.float32)
        return self.limits.clip(a)
