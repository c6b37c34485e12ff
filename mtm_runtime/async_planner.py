"""The model on its own thread: replan from the newest state every model period.

Time is a grid of model steps, step ``j`` at ``t0 + j * period``. The control loop plays the
stream at its own (higher) rate: at time ``t`` it plays step ``floor((t - t0) / period)``. At
each grid time the thread takes the newest state, shows the model the actions of the steps that
will have been played before its chunk can land (``committed``: from the measured plan latency,
at least the current step's) and installs the new chunk behind them (``prefix=False``: the
committed actions are still played but not shown to the model, for comparison)::

    t_j                     t_j + latency            t_j+1
     |--- plan from s_j ------|                        |
     | a_j (old chunk) played |  a_j still played      | a_j+1 from the new chunk
                  committed = [a_j]: the new chunk continues it

``step_once(now)`` is the thread's body, so tests drive it with their own clock; ``start`` runs
it on a daemon thread. Everything shared with the control loop goes through ``lock``.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mtm_runtime.chunking import ChunkPlanner, ChunkStream, Plan


#: GIL switch interval while a model thread runs (s)
GIL_SWITCH_S = 1e-4


@dataclass
class _Offer:
    state: np.ndarray
    arrival: float
    reward: float | None
    stamp_ns: int = 0


class AsyncPlanner:
    def __init__(self, planner: ChunkPlanner, stream: ChunkStream, period_s: float, committed: int = -1,
                 prefix: bool = True, clock: Callable[[], float] = time.monotonic,
                 on_plan: Callable[[Plan, float], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"model period must be > 0, got {period_s!r}")
        if committed >= planner.chunk:
            raise ValueError(f"committed {committed} must be < the chunk length {planner.chunk} (-1 = from latency)")
        self.planner, self.stream, self.period_s = planner, stream, float(period_s)
        self.committed, self.prefix = int(committed), bool(prefix)
        self.clock, self.on_plan, self.on_error = clock, on_plan, on_error
        self.lock = threading.Lock()
        self.t0 = 0.0
        self.last_plan_state_arrival = -math.inf  # arrival of the state the newest chunk came from
        self.last_plan_stamp_ns = 0               # and its stamp (what a streamed command carries)
        self.plans = self.late = self.skipped = 0
        self._offer: _Offer | None = None
        self._next_step = 0
        self._epoch = self._planner_epoch = 0
        self._stop = threading.Event()
        self._fresh = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- shared with the control loop ----------------------------------------------------------
    def restart(self, t0: float) -> None:
        """A new episode on a grid starting at ``t0`` (empty history and stream)."""
        with self.lock:
            self.stream.reset()
            self.t0, self._next_step, self._offer = t0, 0, None
            self.last_plan_state_arrival = -math.inf
            self._epoch += 1  # the thread resets the planner before its next plan; a plan under way is dropped

    def offer(self, state: np.ndarray, arrival: float, reward: float | None = None, stamp_ns: int = 0) -> None:
        """The newest valid state (the thread plans from whatever is newest at its grid time);
        rewards of states it never planned from add up."""
        with self.lock:
            old = self._offer.reward if self._offer is not None else None
            if old is not None:
                reward = old + (reward or 0.0)
            self._offer = _Offer(np.array(state, np.float32), arrival, reward, stamp_ns)
        self._fresh.set()

    def step_of(self, now: float) -> int:
        return int(math.floor((now - self.t0) / self.period_s))

    def play(self, now: float, with_next: bool = False) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        """The step at ``now``, its action (None: no chunk covers it) and, ``with_next``, the next
        step's (for interpolation; None if not planned yet). The rows returned are never written
        to again (``install`` replaces rows, it does not modify them)."""
        with self.lock:
            i = self.step_of(now)
            return i, self.stream.at(i), self.stream.peek(i + 1) if with_next else None

    # ---- the thread ------------------------------------------------------------------------------
    def committed_steps(self) -> int:
        """Actions shown as committed: fixed, or the steps the p99 plan latency spans (>= 1 once a
        chunk plays: the current step's action is already out)."""
        if self.committed >= 0:
            return self.committed
        lat = self.planner.latency.summary().p99 if len(self.planner.latency) else 0.0
        return min(self.planner.chunk - 1, 1 + int(lat / self.period_s))

    def step_once(self, now: float) -> Plan | None:
        """If the grid time of the next step has come and a state is waiting: plan it and install
        the chunk. Returns the plan (None: nothing to do). The forward pass runs outside ``lock``:
        the control loop never waits for the model."""
        with self.lock:
            j = self.step_of(now)
            if j < self._next_step or self._offer is None:
                return None
            if j > self._next_step:
                self.late += 1  # fell behind: plan for the current step (the grid skips ahead)
                self.skipped += j - self._next_step
            offer, self._offer = self._offer, None
            d = min(self.committed_steps(), self.planner.chunk - 1) if self.stream.has(j) else 0
            committed = self.stream.actions(j, j + d)
            executed = self.stream.executed(j - 1)
            epoch = self._epoch
            self._next_step = j + 1
        if epoch != self._planner_epoch:
            self.planner.reset()  # only this thread touches the planner
            self._planner_epoch = epoch
        try:
            shown = committed if len(committed) and self.prefix else None
            plan = self.planner.plan(offer.state, offer.reward, executed, shown)
        except Exception as e:  # noqa: BLE001 - reported; the loop answers a missing chunk
            if self.on_error is not None:
                self.on_error(e)
            return None
        with self.lock:
            if epoch != self._epoch:
                return None  # a new episode began while the model was thinking
            d = len(committed)
            self.stream.install(j + d, plan.actions[d:])  # the committed steps keep their actions
            self.last_plan_state_arrival, self.last_plan_stamp_ns = offer.arrival, offer.stamp_ns
            self.plans += 1
        if self.on_plan is not None:
            self.on_plan(plan, now)
        return plan

    def start(self) -> None:
        """Run the thread. The interpreter's GIL switch interval is lowered to
        ``GIL_SWITCH_S`` (process-wide; the default 5 ms would let the model thread's Python work
        delay a control tick by up to that much)."""
        if self._thread is not None:
            return
        if sys.getswitchinterval() > GIL_SWITCH_S:
            sys.setswitchinterval(GIL_SWITCH_S)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mtm-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._fresh.clear()
            self.step_once(self.clock())
            now = self.clock()
            if self.step_of(now) >= self._next_step:  # due, but no state yet: wait for one
                self._fresh.wait(self.period_s / 4)
                continue
            wait = self.t0 + self._next_step * self.period_s - now
            if wait > 0:
                self._stop.wait(min(wait, self.period_s))
