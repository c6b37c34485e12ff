"""ChunkLoop: the control loop of ``control_loop`` playing action chunks, sync or async.

Everything ``ControlLoop`` does to a state (input checks, flood guard, stamp rules, episodes,
stale watchdog) and to a command (clip to the narrowed limits, saturation, rate limit, fault
action) is unchanged; what changes is where the action comes from:

* ``sync``: each state is one model step; every ``replan_every`` steps one forward pass plans a
  chunk (``ChunkPlanner``), the steps in between play it (their states still enter the history).
  A plan slower than the period is an ``overrun`` as in the plain loop.
* ``async``: states go to the model thread (``AsyncPlanner``), which replans at ``model_rate_hz``
  from the newest one. With ``trigger: state`` each valid state is answered at once from the
  stream and ``on_tick`` fills only periods without a state; with ``trigger: timer`` every
  ``on_tick`` (the control rate, e.g. 1 kHz) plays it. The stream is held or
  interpolated between model steps, each command stamped with the state its chunk was planned
  from. No chunk for the step being played, or a chunk planned from a state older than
  ``max_chunk_age_s``: ``stale_chunk``, the fault action.

With ``monitor`` the same forward pass predicts, by forward dynamics, the state just reported;
``WorldModelMonitor`` turns the residual into ``model_mismatch`` (a warning, or the fault action
with ``monitor_action: fault``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mtm_runtime.async_planner import AsyncPlanner
from mtm_runtime.chunking import ChunkPlanner, ChunkStream, Plan, WorldModelMonitor, interpolate
from mtm_runtime.control_loop import ControlLoop
from mtm_runtime.loop_types import Command, Fault, FaultLog, LoopConfig, Log, no_log
from mtm_runtime.latency import LoopStats

CHUNK_MODES = ("sync", "async")
INTERPOLATIONS = ("hold", "linear")
MONITOR_ACTIONS = ("warn", "fault")


@dataclass(frozen=True)
class ChunkConfig:
    """Chunk and monitor settings, checked as a whole (ValueError names the field)."""

    mode: str = "sync"
    chunk: int = 1                 # actions per plan (k); the model's horizon must be >= k
    replan_every: int = 1          # sync: model steps between plans (<= chunk)
    model_rate_hz: float = 0.0     # async: model steps per second; 0 = the loop's rate_hz
    interpolate: str = "hold"      # command rate above the model rate: hold or linear
    committed: int = -1            # async: actions shown as committed; -1 = from the plan latency
    prefix: bool = True            # async: show the committed actions to the model (real-time chunking)
    max_chunk_age_s: float = 0.0   # async: newest chunk's state older than this is stale; 0 = chunk span
    monitor: bool = False          # world-model monitor (backend batch size 2)
    monitor_threshold: float = 0.0  # alarm level of the RMS normalised residual; 0 = report only
    monitor_persist: int = 3       # model steps over (under) the threshold to raise (clear) it
    monitor_average: int = 1       # steps the alarm's residual level is averaged over
    monitor_action: str = "warn"   # warn | fault

    def __post_init__(self) -> None:
        problems = [f"{name} must be {what}, got {getattr(self, name)!r}" for name, ok, what in (
            ("mode", self.mode in CHUNK_MODES, f"one of {CHUNK_MODES}"),
            ("chunk", self.chunk >= 1, ">= 1"),
            ("replan_every", 1 <= self.replan_every <= self.chunk, "in [1, chunk]"),
            ("model_rate_hz", math.isfinite(self.model_rate_hz) and self.model_rate_hz >= 0, ">= 0 (0 = rate_hz)"),
            ("interpolate", self.interpolate in INTERPOLATIONS, f"one of {INTERPOLATIONS}"),
            ("committed", -1 <= self.committed < self.chunk, "-1 (auto) or in [0, chunk-1]"),
            ("max_chunk_age_s", math.isfinite(self.max_chunk_age_s) and self.max_chunk_age_s >= 0, ">= 0 (0 = chunk span)"),
            ("monitor_threshold", math.isfinite(self.monitor_threshold) and self.monitor_threshold >= 0, ">= 0 (0 = off)"),
            ("monitor_persist", self.monitor_persist >= 1, ">= 1"),
            ("monitor_average", self.monitor_average >= 1, ">= 1"),
            ("monitor_action", self.monitor_action in MONITOR_ACTIONS, f"one of {MONITOR_ACTIONS}"),
        ) if not ok]
        if self.mode == "async" and self.chunk < 2:
            problems.append("async mode needs chunk >= 2 (the current step's action is committed while the model thinks)")
        if problems:
            raise ValueError("chunk config: " + "; ".join(problems))

    @property
    def active(self) -> bool:
        """Whether this config changes anything over the plain loop."""
        return self.mode == "async" or self.chunk > 1 or self.monitor


class ChunkLoop(ControlLoop):
    def __init__(self, policy: Any, config: LoopConfig, chunk: ChunkConfig, *,
                 clock_ns: Callable[[], int] = time.time_ns, act_clock: Callable[[], float] = time.monotonic,
                 faults: FaultLog | None = None, stats: LoopStats | None = None, log: Log = no_log,
                 threaded: bool = True, on_residual: Callable[[np.ndarray], None] | None = None) -> None:
        """``on_residual``: called with each plan's monitor residual (normalised, per state dim), from
        the thread that planned it (the model thread in async mode): the node publishes it."""
        super().__init__(policy, config, clock_ns=clock_ns, act_clock=act_clock, faults=faults, stats=stats, log=log)
        self.chunk = chunk
        self._on_residual = on_residual
        self.planner = ChunkPlanner(policy, chunk.chunk, chunk.monitor)
        self.stream = ChunkStream(self.limits.width)
        self.monitor = WorldModelMonitor(self.state_width, chunk.monitor_threshold, chunk.monitor_persist,
                                         average=chunk.monitor_average)
        self.model_period_s = 1.0 / (chunk.model_rate_hz or config.rate_hz)
        self.max_chunk_age_s = chunk.max_chunk_age_s or chunk.chunk * self.model_period_s
        self.threaded = threaded
        self.streams = chunk.mode == "async"
        self.async_planner: AsyncPlanner | None = None
        if chunk.mode == "async":
            self.async_planner = AsyncPlanner(self.planner, self.stream, self.model_period_s, chunk.committed,
                                              chunk.prefix, clock=act_clock, on_plan=self._planned, on_error=self._plan_failed)
        self._model_step = -1
        self._cmd = np.zeros(self.limits.width, np.float32)
        self._plan_error: Exception | None = None
        self._since = 0.0
        self._last_play = -math.inf

    # ---- lifecycle ---------------------------------------------------------------------------
    def activate(self, now: float) -> None:
        super().activate(now)
        self._restart(now)  # on the activation's clock
        if self.async_planner is not None and self.threaded:
            self.async_planner.start()

    def deactivate(self) -> None:
        if self.async_planner is not None:
            self.async_planner.stop()
        super().deactivate()

    def reset_history(self) -> None:
        self._restart(self._act_clock())

    def _restart(self, now: float) -> None:
        self._since = now
        self.monitor.reset_episode()
        self._model_step = -1
        if self.async_planner is not None:
            self.async_planner.restart(now)
        else:
            self.planner.reset()
            self.stream.reset()

    def report(self) -> dict[str, object]:
        """Diagnostics: the loop mode, chunk, plan counts and latency, the monitor's residuals."""
        ap = self.async_planner
        lat = self.planner.latency.summary()
        vals: dict[str, object] = {"loop_mode": self.chunk.mode, "chunk": self.chunk.chunk,
                                   "plan_p50_ms": lat.p50 * 1e3, "plan_p99_ms": lat.p99 * 1e3}
        if ap is not None:
            vals.update(plans=ap.plans, late_plans=ap.late, committed=ap.committed_steps(),
                        model_rate_hz=1.0 / self.model_period_s)
        if self.chunk.monitor:
            vals.update({f"monitor_{k}": v for k, v in self.monitor.report().as_dict().items()})
        return vals

    # ---- monitor -----------------------------------------------------------------------------
    def _planned(self, plan: Plan, now: float) -> None:
        if plan.residual is not None and self._on_residual is not None:
            self._on_residual(plan.residual)
        was = self.monitor.alarm
        if self.monitor.observe(plan.residual) and not was:
            self.stats.model_mismatches += 1
            detail = (f"world model mismatch: residual {self.monitor.last_level:.3f} > monitor_threshold "
                      f"{self.chunk.monitor_threshold} for {self.chunk.monitor_persist} steps "
                      f"(worst state dim {self.monitor.report().worst_dim})")
            self.faults.note("model_mismatch", detail)
            self._log("fault", detail)
        elif self.monitor.alarm:
            self.faults.note("model_mismatch", f"world model mismatch: residual {self.monitor.last_score:.3f}")

    def _plan_failed(self, e: Exception) -> None:
        self._plan_error = e

    def _mismatch_fault(self) -> Fault | None:
        if self.monitor.alarm and self.chunk.monitor_action == "fault":
            return self._fault("model_mismatch", f"world model mismatch: residual {self.monitor.last_score:.3f} "
                                                 f"> {self.chunk.monitor_threshold}")
        return None

    # ---- sync: one model step per state ---------------------------------------------------------
    def _step(self, state: np.ndarray, stamp_ns: int, arrival: float) -> Command | Fault | None:
        if self.async_planner is not None:
            self.async_planner.offer(state, arrival, self.take_reward(), stamp_ns)
            # trigger: state: the state is answered at once from the stream; the timer fills the rest
            return self._play(arrival) if self.config.trigger == "state" else None
        reward = self.take_reward()
        j = self._model_step + 1
        t0 = self._act_clock()
        try:
            if j % self.chunk.replan_every == 0 or not self.stream.has(j):
                plan = self.planner.plan(state, reward, self.stream.executed(j - 1))
                self.stream.install(j, plan.actions)
                self._planned(plan, arrival)
            else:
                self.planner.observe(state, reward, self.stream.executed(j - 1))
        except Exception as e:  # noqa: BLE001 - a failing model must not stop the loop
            return self.act_failed(e)
        self._model_step = j
        action = self.stream.at(j)
        assert action is not None  # installed above or by an earlier plan covering j
        fault = self._mismatch_fault()
        if fault is not None:
            return fault
        return self.finish(action, self._act_clock() - t0, stamp_ns, arrival)

    # ---- async: play the stream every tick --------------------------------------------------------
    def on_tick(self, now: float) -> Command | Fault | None:
        out = super().on_tick(now)
        ap = self.async_planner
        if ap is None or out is not None or not self.active:
            return out
        if now - self._last_play < 0.5 * self.period_s:
            return None  # a state was just answered from the stream (trigger: state)
        return self._play(now)

    def _play(self, now: float) -> Command | Fault | None:
        """The stream's command at ``now`` (held or interpolated), or stale_chunk's fault action."""
        ap = self.async_planner
        assert ap is not None
        self._last_play = now
        if not self.threaded:
            ap.step_once(now)
        if self._plan_error is not None:
            e, self._plan_error = self._plan_error, None
            return self.act_failed(e)
        step, action, following = ap.play(now, with_next=self.chunk.interpolate == "linear")
        age = now - ap.last_plan_state_arrival
        if action is None or age > self.max_chunk_age_s:
            if age == math.inf and now - self._since <= self.max_chunk_age_s:
                return None  # the episode's first chunk is not there yet: nothing to play
            self.stats.stale_chunks += 1
            why = (f"no chunk covers model step {step}" if action is None
                   else f"newest chunk planned from a state {age:.3f} s old (> max_chunk_age_s {self.max_chunk_age_s:.3f} s)")
            return self._fault("stale_chunk", f"stale chunk: {why}; model thread made {ap.plans} plans")
        fault = self._mismatch_fault()
        if fault is not None:
            return fault
        if self.chunk.interpolate == "linear":
            frac = (now - ap.t0) / self.model_period_s - step
            action = interpolate(action, following, frac, self._cmd)
        # stamped with the state its chunk was planned from: the data the command derives from
        return self.finish(action, 0.0, ap.last_plan_stamp_ns, ap.last_plan_state_arrival, check_overrun=False)
