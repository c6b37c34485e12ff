"""Safety limits: the one home for what may reach an actuator.

Every path that emits a command (Policy.act, the ROS policy node, the serial bridge) goes through
these objects; none of them re-implements clipping or rate limiting.

Invariants
* ``ActionLimits.low <= high`` element-wise, both finite, shape ``[action_width]``.
* ``ActionLimits.clip`` never returns NaN/Inf: a non-finite input raises ``UnsafeCommandError``.
* ``RateLimiter.apply`` changes each element by at most ``max_delta`` per call.
* ``FaultAction.action`` is always inside its limits.
* ``StaleWatchdog`` uses a monotonic clock, never wall time.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def all_finite(a: np.ndarray) -> bool:
    """True iff no element is NaN/Inf, without a temporary array (the control loop calls this
    every step): a float64 sum is NaN/Inf iff an element is, or the sum overflows (|x| > 1e308,
    refused too)."""
    return math.isfinite(float(np.add.reduce(a, axis=None, dtype=np.float64)))


class UnsafeCommandError(ValueError):
    """A command that must not reach an actuator (non-finite, wrong shape)."""


@dataclass(frozen=True)
class ActionLimits:
    """Per-dimension lower/upper bounds of a command, in the actuator's units."""

    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float32).reshape(-1)
        high = np.asarray(self.high, dtype=np.float32).reshape(-1)
        if low.shape != high.shape:
            raise ValueError(f"action limits: low has {low.size} values, high has {high.size}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("action limits must be finite")
        if np.any(low > high):
            i = int(np.argmax(low > high))
            raise ValueError(f"action limits: low[{i}]={low[i]} > high[{i}]={high[i]}")
        low.setflags(write=False)
        high.setflags(write=False)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def width(self) -> int:
        return int(self.low.size)

    @classmethod
    def symmetric(cls, bound: float | Sequence[float], width: int) -> "ActionLimits":
        b = np.broadcast_to(np.abs(np.asarray(bound, dtype=np.float32)), (width,))
        return cls(-b, b)

    def clip(self, action: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Clip into [low, high]; raises UnsafeCommandError on NaN/Inf or a wrong shape."""
        a = np.asarray(action)
        if a.shape != self.low.shape:
            raise UnsafeCommandError(f"command has shape {a.shape}, limits expect ({self.width},)")
        if not all_finite(a):
            raise UnsafeCommandError("command contains NaN or Inf")
        # = np.clip(a, low, high, out=out), without its Python wrapper's cost (the loop clips every step)
        out = np.minimum(a, self.high, out=out)
        return np.maximum(out, self.low, out=out)

    def contains(self, action: np.ndarray, tol: float = 1e-6) -> bool:
        a = np.asarray(action)
        return bool(a.shape == self.low.shape and np.all(np.isfinite(a))
                    and np.all(a >= self.low - tol) and np.all(a <= self.high + tol))

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActionLimits":
        return cls(np.asarray(d["low"], np.float32), np.asarray(d["high"], np.float32))


# ---- rate limiting ---------------------------------------------------------------------------
class RateLimiter:
    """Limits how far a command may move per control step, per dimension.

    ``max_delta`` is in actuator units **per step** (not per second), scalar or ``[width]``;
    ``inf`` (or ``0`` passed as "off" through ``from_parameter``) disables a dimension.
    Invariant: for consecutive outputs ``|out[t] - out[t-1]| <= max_delta`` element-wise. The first
    output after ``reset()`` (no previous command) passes unchanged.
    """

    def __init__(self, max_delta: float | Sequence[float] | np.ndarray, width: int) -> None:
        d = np.broadcast_to(np.asarray(max_delta, dtype=np.float64), (width,)).astype(np.float64)
        if np.any(np.isnan(d)) or np.any(d <= 0):
            raise ValueError(f"rate limit max_delta must be > 0 (inf = off), got {d.tolist()}")
        self.max_delta = d
        self.width = int(width)
        self._last = np.zeros(width, dtype=np.float64)
        self._has_last = False
        self._limited = bool(np.any(np.isfinite(d)))  # off: each output is its input (no clip to do)
        self._lo, self._hi = np.empty(width), np.empty(width)  # this step's window (no temporaries)

    @classmethod
    def from_parameter(cls, value: float | Sequence[float], width: int) -> "RateLimiter":
        """ROS-parameter convention: ``0`` (or an empty list) means "no rate limit"."""
        v = np.atleast_1d(np.asarray(value if np.size(value) else 0.0, dtype=np.float64))
        return cls(np.where(v == 0.0, np.inf, v), width)

    @property
    def enabled(self) -> bool:
        return self._limited

    @property
    def last(self) -> np.ndarray | None:
        """The previous output (a copy), or None right after reset()."""
        return self._last.copy() if self._has_last else None

    def reset(self, last: np.ndarray | None = None) -> None:
        """Forget the previous command (or start from ``last``, e.g. the actuator's position)."""
        if last is None:
            self._has_last = False
        else:
            self._last[:] = np.asarray(last, dtype=np.float64).reshape(self.width)
            self._has_last = True

    def apply(self, action: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return ``action`` moved at most ``max_delta`` from the previous output; remembers it."""
        a = np.asarray(action)
        if a.shape != (self.width,):
            raise UnsafeCommandError(f"command has shape {a.shape}, rate limiter expects ({self.width},)")
        if not all_finite(a):
            raise UnsafeCommandError("command contains NaN or Inf")
        if out is None:
            out = np.empty(self.width, dtype=np.float32)
        if self._has_last and self._limited:
            # = np.clip(a, last - max_delta, last + max_delta), without temporaries or np.clip's wrapper
            np.subtract(self._last, self.max_delta, out=self._lo)
            np.add(self._last, self.max_delta, out=self._hi)
            np.minimum(a, self._hi, out=self._last)
            np.maximum(self._last, self._lo, out=self._last)
        else:
            self._last[:] = a
            self._has_last = True
        out[:] = self._last
        return out


# ---- stale input watchdog --------------------------------------------------------------------
class StaleWatchdog:
    """Declares the input stale ``timeout_s`` seconds after the last ``feed()`` (monotonic clock).

    ``arm()`` starts the timer without an input (e.g. at activation), so "never received
    anything" also becomes stale. Before ``arm()``/``feed()`` the watchdog is disarmed (not stale).
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"stale timeout must be a finite number of seconds > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self._clock = clock
        self._last: float | None = None

    def arm(self, now: float | None = None) -> None:
        self._last = self._clock() if now is None else now

    def disarm(self) -> None:
        self._last = None

    def feed(self, now: float | None = None) -> float:
        """Record a fresh input; returns the gap (s) since the previous feed/arm (inf if none)."""
        now = self._clock() if now is None else now
        gap = math.inf if self._last is None else now - self._last
        self._last = now
        return gap

    def age(self, now: float | None = None) -> float:
        """Seconds since the last feed/arm; inf when disarmed."""
        if self._last is None:
            return math.inf
        return (self._clock() if now is None else now) - self._last

    def stale(self, now: float | None = None) -> bool:
        return self._last is not None and self.age(now) > self.timeout_s


# ---- fault action ----------------------------------------------------------------------------
FAULT_KINDS = ("hold", "zeros", "safe")


class FaultAction:
    """What to command when the policy cannot be trusted (stale input, overrun, act() error).

    * ``hold``: the last command that was sent (zeros clipped into the limits if none yet),
    * ``zeros``: zeros clipped into the limits (so ``0`` outside ``[low, high]`` becomes the bound),
    * ``safe``: a configured action, which must lie inside the limits (checked here).

    Invariant: ``action()`` is always inside ``limits`` and finite.
    """

    def __init__(self, kind: str, limits: ActionLimits, safe_action: Sequence[float] | None = None) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault action must be one of {FAULT_KINDS}, got {kind!r}")
        self.kind = kind
        self.limits = limits
        self._zeros = limits.clip(np.zeros(limits.width, dtype=np.float32))
        self._safe: np.ndarray | None = None
        if kind == "safe":
            s = np.asarray(safe_action if safe_action is not None else [], dtype=np.float32).reshape(-1)
            if s.size != limits.width:
                raise ValueError(f"safe_action has {s.size} values, the action width is {limits.width}")
            if not limits.contains(s):
                raise ValueError(f"safe_action {s.tolist()} is outside the action limits "
                                 f"[{limits.low.tolist()}, {limits.high.tolist()}]")
            self._safe = s

    def action(self, last_command: np.ndarray | None = None) -> np.ndarray:
        """The fault command (a new float32 array inside the limits)."""
        if self.kind == "safe":
            assert self._safe is not None
            return self._safe.copy()
        if self.kind == "hold" and last_command is not None:
            last = np.asarray(last_command, dtype=np.float32)
            if last.shape == self._zeros.shape and np.all(np.isfinite(last)):
                return self.limits.clip(last)
        return self._zeros.copy()


# ---- input validation ------------------------------------------------------------------------
def state_rejection_reason(state: np.ndarray, width: int) -> str | None:
    """None if ``state`` is a finite vector of ``width`` floats, else why it must be rejected."""
    a = np.asarray(state)
    if a.ndim != 1 or a.size != width:
        return f"state has shape {a.shape}, expected ({width},)"
    if a.dtype.kind not in "iuf":   # integers or floats (a dtype-kind test: no np.issubdtype cost per step)
        return f"state has dtype {a.dtype}, expected real numbers"
    if not all_finite(a):
        bad = np.flatnonzero(~np.isfinite(a))
        if not bad.size:
            return "state values are too large (their float64 sum overflows)"
        return f"state contains NaN/Inf at index {bad[:5].tolist()}"
    return None


def intersect_limits(limits: ActionLimits, low: Sequence[float] | None, high: Sequence[float] | None) -> ActionLimits:
    """Narrow ``limits`` by optional overrides (empty/None = keep); never widens them.

    Raises ValueError if an override has the wrong width or the result is empty.
    """
    lo, hi = limits.low.copy(), limits.high.copy()
    for name, value, pick in (("low", low, np.maximum), ("high", high, np.minimum)):
        if value is None or len(value) == 0:
            continue
        v = np.asarray(value, dtype=np.float32).reshape(-1)
        if v.size == 1:
            v = np.full(limits.width, v[0], dtype=np.float32)
        if v.size != limits.width:
            raise ValueError(f"action limit override '{name}' has {v.size} values, the action width is {limits.width}")
        if name == "low":
            lo = pick(lo, v)
        else:
            hi = pick(hi, v)
    if np.any(lo > hi):
        raise ValueError(f"action limit overrides leave an empty range: low={lo.tolist()} high={hi.tolist()}")
    return ActionLimits(lo, hi)
