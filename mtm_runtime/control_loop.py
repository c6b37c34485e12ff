"""The control loop with its safety chain, without ROS: one home for what a step does.

``ControlLoop`` owns, for one policy: input checks (``state_rejection_reason``, JointState stamp
rules), the flood guard, the episode rules (reset service, a stale gap longer than
``stale_reset_s``), ``Policy.act``, the overrun check, clipping to the (narrowed) limits, the
rate limit, the fault action, the counters (``LoopStats``) and the fault log that diagnostics
read. Limits, rate limiter, watchdog and fault action are ``mtm_runtime.safety``'s objects; what
the loop is configured with and answers (``LoopConfig``, ``Command``, ``Fault``, ``FaultLog``) is
``mtm_runtime.loop_types``.

Adapters (the ROS policy node, in-process evaluation) convert their inputs, call
``on_state`` / ``on_tick`` / ``on_reward`` / ``reset`` and emit what comes back:

* ``Command``: the policy's action, clipped and rate-limited, stamped with its state's stamp;
* ``Fault``: the fault action (rate-limited too), stamped with ``clock_ns()``;
* ``None``: nothing to send (inactive, input rejected, or a flooded state deferred to the next
  tick: ``pending`` is then true).

Time is passed in: ``now`` is monotonic seconds (arrival / tick time), ``clock_ns`` the clock the
input stamps are compared with, ``act_clock`` times ``act()``; tests drive all three.
The numbers of the contract are ``mtm_runtime.safety_contract``'s (``docs/safety.md``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mtm_runtime import safety_contract as contract
from mtm_runtime.latency import LoopStats
from mtm_runtime.loop_types import Command, Fault, FaultLog, Log, LoopConfig, no_log
from mtm_runtime.safety import (ActionLimits, FaultAction, RateLimiter, StaleWatchdog, UnsafeCommandError,
                                intersect_limits, state_rejection_reason)

@dataclass
class _Pending:
    state: np.ndarray
    stamp_ns: int
    arrival: float
    stamped: bool = False  # the source's stamp (JointState): its age is checked again at the tick


@dataclass
class _Episode:
    steps: int = 0
    reward: float | None = None
    last_stamp_ns: int | None = None
    pending: _Pending | None = None
    last_arrival: float = -math.inf
    pinned_since: float | None = None  # arrival time of the first of a run of saturated commands


class ControlLoop:
    """One policy behind the safety chain (module docstring). Inactive until ``activate(now)``."""

    def __init__(self, policy: Any, config: LoopConfig, *, clock_ns: Callable[[], int] = time.time_ns,
                 act_clock: Callable[[], float] = time.monotonic, faults: FaultLog | None = None,
                 stats: LoopStats | None = None, log: Log = no_log) -> None:
        self.policy, self.config = policy, config
        width = policy.limits.width
        self.limits: ActionLimits = intersect_limits(policy.limits, list(config.action_low),
                                                     list(config.action_high))
        self.rate_limiter = RateLimiter.from_parameter(float(config.max_rate), width)
        self.fault_action = FaultAction(config.fault_action, self.limits, list(config.safe_action))
        self.watchdog = StaleWatchdog(config.stale_timeout)
        self.period_s = config.period_s
        self.state_width = int(policy.spec.width("states"))
        self._min_step_s = self.period_s / config.max_input_rate_factor
        self._max_age_ns = int(config.max_state_age * 1e9)
        self._max_future_ns = int(config.max_future_s * 1e9)
        self._clock_ns, self._act_clock, self._log = clock_ns, act_clock, log
        self.faults = faults if faults is not None else FaultLog()
        self.stats = stats if stats is not None else LoopStats()  # replaced by activate()
        self.active = False
        self.last_command: np.ndarray | None = None
        self._ep = _Episode()
        #: every tick commands (the async chunked loop streams); the plain loop commands on states
        self.streams = False

    # ---- lifecycle -------------------------------------------------------------------------
    def activate(self, now: float) -> None:
        """Start: fresh counters and episode, the limiter ramps from the resting fault action."""
        self.stats = LoopStats()
        self.policy.reset()
        self.rate_limiter.reset(self.fault_action.action(None))
        self.last_command, self._ep = None, _Episode()
        self.faults.clear("stale_input")
        self.watchdog.arm(now)
        self.active = True

    def held_command(self) -> np.ndarray:
        """What an actuator keeps when the loop sends nothing new: the last command, or the
        resting fault action before the first."""
        return self.last_command if self.last_command is not None else self.fault_action.action(None)

    def report(self) -> dict[str, object]:
        """Diagnostics keys beyond ``LoopStats`` (the chunked loop's plans and monitor)."""
        return {}

    def reset_history(self) -> None:
        """Empty the policy's history (the chunked loop also restarts its planner)."""
        self.policy.reset()

    def deactivate(self) -> None:
        self.watchdog.disarm()
        self.active = False

    def reset(self, why: str, from_rest: bool = False) -> None:
        """New episode: empty policy history, no reward carried, old stamps void; ``from_rest``:
        the limiter ramps from the resting fault action (a simulator reset, not a live robot)."""
        self.reset_history()
        if from_rest:
            self.rate_limiter.reset(self.fault_action.action(None))
            self.last_command = None
        # a simulator's reset may restart its clock: the flood guard starts afresh there
        self._ep = _Episode(last_arrival=-math.inf if from_rest else self._ep.last_arrival)
        self.stats.episode_resets += 1
        self._log("info", f"new episode: {why}")

    # ---- inputs ----------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """A state waits for the next tick (flood guard, or ``trigger: timer``)."""
        return self._ep.pending is not None

    def input_age(self, now: float) -> float:
        return self.watchdog.age(now)

    def on_reward(self, reward: float) -> None:
        """Accumulate a reward for the next step (non-finite rewards are ignored)."""
        if math.isfinite(reward):
            self._ep.reward = (self._ep.reward or 0.0) + reward

    def reject(self, reason: str) -> None:
        """An input dropped before the policy: counted, logged, in the fault log."""
        self.stats.rejected_inputs += 1
        self.stats.last_fault_reason = f"rejected input: {reason}"
        self.faults.note("rejected_input", reason)
        self._log("rejected", self.stats.last_fault_reason)

    def on_state(self, state: np.ndarray, stamp_ns: int, now: float, *,
                 stamped: bool = False) -> Command | Fault | None:
        """A state arrived at ``now``. ``stamped``: ``stamp_ns`` is the source's (JointState) and
        must follow the stamp rules; otherwise it is the adapter's clock at arrival."""
        if not self.active:
            return None
        self.stats.states_in += 1
        if stamped:
            if self.watchdog.age(now) > self.config.stale_reset_s:
                self._ep.last_stamp_ns = None  # a new episode will start: old stamps are void
            reason = self._stamp_rejection(stamp_ns)
            if reason:
                self.reject(reason)
                return None
        reason = state_rejection_reason(state, self.state_width)
        if reason:
            self.reject(reason)
            return None
        # Flood guard on inter-arrival time (not on the time of the last step: a state deferred
        # to a tick would otherwise drag every following state onto the timer's phase, adding up
        # to a period of latency to a well-behaved stream).
        since_last, self._ep.last_arrival = now - self._ep.last_arrival, now
        self._ep.last_stamp_ns = stamp_ns
        if self.config.trigger == "state" and since_last < self._min_step_s:
            self._ep.pending = _Pending(state, stamp_ns, now, stamped)  # flood: deferred to the next tick
            self.watchdog.feed(now)
            return None
        gap = self.watchdog.feed(now)
        if gap > self.watchdog.timeout_s:
            self._log("info", f"fresh input after {gap:.3f} s without one")
            if gap > self.config.stale_reset_s and self._ep.steps:
                self.reset(f"input gap of {gap:.3f} s")
                self._ep.last_stamp_ns, self._ep.last_arrival = stamp_ns, now
        if self.config.trigger == "state":
            return self._step(state, stamp_ns, now)
        self._ep.pending = _Pending(state, stamp_ns, now, stamped)
        return None

    def _stamp_rejection(self, stamp_ns: int) -> str | None:
        """None if the stamp is acceptable (increasing; within max_state_age / max_future_s of now)."""
        last = self._ep.last_stamp_ns
        if last is not None and stamp_ns <= last:
            return (f"state stamp {stamp_ns * 1e-9:.6f} s is not after the previous one "
                    f"({last * 1e-9:.6f} s): duplicate or out of order")
        if self._max_age_ns:
            now = self._clock_ns()
            if now - stamp_ns > self._max_age_ns:
                return f"state stamp is {(now - stamp_ns) * 1e-9:.3f} s old (> max_state_age)"
            if stamp_ns - now > self._max_future_ns:
                return f"state stamp is {(stamp_ns - now) * 1e-9:.3f} s in the future (> max_future_s)"
        return None

    # ---- the loop --------------------------------------------------------------------------
    def on_tick(self, now: float) -> Command | Fault | None:
        """Every control period: the stale check, then the step on a pending state (if any)."""
        if not self.active:
            return None
        if self.watchdog.stale(now):
            self.stats.stale_ticks += 1
            return self._fault("stale_input", f"stale input: no valid state for {self.watchdog.age(now):.3f} s "
                                              f"(> {self.watchdog.timeout_s} s; {self.stats.states_in} states "
                                              f"in since activation)")
        pending, self._ep.pending = self._ep.pending, None
        if pending is None:
            return None
        if pending.stamped and self._max_age_ns:
            age_ns = self._clock_ns() - pending.stamp_ns   # fresh on arrival; a late tick can make it old
            if age_ns > self._max_age_ns:
                self.reject(f"deferred state stamp is {age_ns * 1e-9:.3f} s old at its tick (> max_state_age)")
                return None
        return self._step(pending.state, pending.stamp_ns, pending.arrival)

    def _step(self, state: np.ndarray, stamp_ns: int, arrival: float) -> Command | Fault | None:
        reward = self.take_reward()
        t0 = self._act_clock()
        try:
            action = self.policy.act(state, reward=reward)  # Policy normalises into its float32 buffer
        except Exception as e:  # noqa: BLE001 - a failing model must not stop the loop
            return self.act_failed(e)
        return self.finish(action, self._act_clock() - t0, stamp_ns, arrival)

    # ---- the step's two halves (public for LoopBatch, which runs act() for many loops at once)
    def admit(self, state: np.ndarray) -> bool:
        """The input checks of a state that is stepped at once (no flood guard, no stamp rules:
        in-process evaluation); a rejected state is counted and logged."""
        self.stats.states_in += 1
        reason = state_rejection_reason(state, self.state_width)
        if reason:
            self.reject(reason)
        return not reason

    def take_reward(self) -> float | None:
        """The reward to hand to this step's ``act``: none precedes an episode's first act."""
        ep = self._ep
        reward, ep.reward = (ep.reward if ep.steps else None), None
        return reward

    def act_failed(self, e: Exception) -> Fault:
        self.stats.act_errors += 1
        return self._fault("act_error", f"act() raised {type(e).__name__}: {e}")

    def finish(self, action: np.ndarray, act_s: float, stamp_ns: int, arrival: float,
               check_overrun: bool = True) -> Command | Fault:
        """After ``act`` returned ``action`` in ``act_s`` seconds: overrun (unless a simulator
        waits for the model: ``check_overrun=False``), clip, saturation, rate limit."""
        self._ep.steps += 1
        self.stats.act_latency.add(act_s)
        if check_overrun and act_s > self.period_s:
            self.stats.overruns += 1
            return self._fault("overrun", f"inference overrun: act() took {act_s * 1e3:.2f} ms > period "
                                          f"{self.period_s * 1e3:.2f} ms")
        try:
            clipped = self.limits.clip(np.asarray(action, dtype=np.float32))
        except UnsafeCommandError as e:
            self.stats.act_errors += 1
            return self._fault("unsafe_output", f"unsafe command from the policy: {e}")
        if self.config.saturation_s > 0:
            fault = self._saturation(clipped, arrival)
            if fault is not None:
                return fault
        cmd = self.rate_limiter.apply(clipped)
        self.stats.ticks += 1
        self._sent(cmd)
        return Command(cmd, stamp_ns, arrival, act_s if check_overrun else None)

    def _saturation(self, clipped: np.ndarray, now: float) -> Fault | None:
        """A command at a limit (any dimension) for longer than ``saturation_s``: counted and in
        the fault log; answered with the fault action if ``saturation_fault``. A model whose
        outputs blew up (or a limit set too tight) shows here, not as a robot pushing a stop."""
        pinned = (clipped >= self.limits.high) | (clipped <= self.limits.low)
        ep = self._ep
        if not pinned.any():
            ep.pinned_since = None
            return None
        if ep.pinned_since is None:
            ep.pinned_since = now
        held = now - ep.pinned_since
        if held <= self.config.saturation_s:
            return None
        self.stats.saturated_steps += 1
        detail = (f"command pinned at its limit for {held:.3f} s (> saturation_s {self.config.saturation_s} s) "
                  f"on action dims {np.flatnonzero(pinned).tolist()}")
        if self.config.saturation_fault:
            return self._fault("saturated", detail)
        if self.stats.saturated_steps == 1 or "saturated" not in dict(self.faults.active(now)):
            self._log("fault", detail)  # once per run of saturation, not every step
        self.faults.note("saturated", detail)
        return None

    def _fault(self, kind: str, detail: str) -> Fault:
        """The fault action (through the rate limiter), stamped with the clock."""
        self.stats.fault(detail)
        self._log("fault", detail)
        self.faults.note(kind, detail)
        cmd = self.rate_limiter.apply(self.fault_action.action(self.last_command))
        self._sent(cmd)
        return Fault(kind, detail, cmd, self._clock_ns())

    def _sent(self, cmd: np.ndarray) -> None:
        self.last_command = cmd
        self.stats.published += 1
        self.stats.rate.tick()

    def safe_stop_commands(self) -> list[Fault]:
        """Shutdown: the rate-limited ramp to the fault action (at most SHUTDOWN_RAMP_MAX_STEPS
        commands, one per period), ending on it whenever the ramp fits; [] when inactive."""
        if not self.active:
            return []
        detail = "signal: stopping"
        self.faults.note("shutdown", detail)
        target = self.fault_action.action(self.last_command)
        stamp = self._clock_ns()
        ramp: list[Fault] = []
        while len(ramp) < contract.SHUTDOWN_RAMP_MAX_STEPS:
            cmd = self.rate_limiter.apply(target).copy()
            self._sent(cmd)
            ramp.append(Fault("shutdown", detail, cmd, stamp))
            if np.array_equal(cmd, target):
                break
        return ramp
