"""Action chunks from masks, the stream that plays them, and the world-model monitor.

An MTM trained with chunk masks (``masks.chunk_mask``, training kind ``chunk``) predicts the next
``k`` actions in one forward pass of the graph it already has: the window's present moves from
``T-1`` to ``p = T-k`` and the ``k-1`` positions after it are the hidden future.

    planner = ChunkPlanner(policy, chunk=4, monitor=True)   # monitor: backend batch size 2
    stream = ChunkStream(policy.limits.width)
    for j, state in enumerate(states):                      # one model step each
        plan = planner.plan(state, executed=stream.executed(j - 1),
                            committed=stream.actions(j, j + d))  # d steps already on their way
        stream.install(j, plan.actions)
        action = stream.at(j)                               # what the robot gets at step j

* ``ChunkPlanner.plan``: the window (history from ``policy.buffer``) shifted so that the newest
  state sits at ``p``; the actions already committed (streamed while the model was thinking) are
  shown as visible actions at ``p, p+1, ...`` so the new chunk continues them (real-time chunking
  by inpainting); with ``monitor`` the same window goes through the forward-dynamics mask as the
  second row of one batched call, predicting the state just reported from the history before it.
* ``ChunkStream``: actions by model step; never rewrites a step already played; records what was
  played so the next plan's history holds the executed actions.
* ``WorldModelMonitor``: per-step normalised residual (predicted minus reported state, in units
  of the data's standard deviation), its p50/p99 and worst dimension, and an alarm after
  ``persist`` steps over ``threshold``.

The real-time loop that runs the planner on its own thread is ``mtm_runtime.async_planner``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtm_runtime import masks as M
from mtm_runtime.latency import LatencyRing
from mtm_runtime.onnx_metadata import exported_chunk
from mtm_runtime.policy import InferenceError, InputError
from mtm_runtime.safety import UnsafeCommandError
from mtm_runtime.spec import ACTIONS, STATES


@dataclass(frozen=True)
class Plan:
    """One chunk: raw actions ``[k, A]`` for the planned state's step and the k-1 after it (the
    committed ones first, unchanged) and the monitor's residual for that state (normalised, per
    state dimension; None without a monitor, or before the window holds a full history: an
    episode's first steps would otherwise raise alarms on partial context). The backend time of
    each plan is in ``ChunkPlanner.latency``."""

    actions: np.ndarray
    residual: np.ndarray | None


class ChunkPlanner:
    """Chunks of ``chunk`` actions from ``policy`` (its buffer, normaliser, backend, limits and
    mode: bc, rcbc or goal with a ``goals`` modality). Steps are counted from ``reset``."""

    def __init__(self, policy: Any, chunk: int, monitor: bool = False) -> None:
        spec = policy.spec
        T = spec.horizon
        if not 1 <= chunk <= T:
            raise InputError(f"chunk length {chunk} does not fit this model's horizon T = {T} "
                             f"(a chunk of k needs T >= k; train with --horizon and --masks auto,chunk)")
        exported = exported_chunk(getattr(policy, "metadata", None))
        if exported is not None and chunk > 1 and chunk != exported:
            raise InputError(f"chunk {chunk} but this model was exported for chunk {exported} (horizon {T}; its "
                             f"parity was checked on those masks): export it again with --chunk {chunk}, or run "
                             f"chunk {exported}")
        rows = 2 if monitor else 1
        if policy.backend.batch_size != rows:
            raise InputError(f"the planner needs a backend of batch size {rows} "
                             f"({'chunk + forward-dynamics rows' if monitor else 'one window'}), "
                             f"this one has {policy.backend.batch_size}")
        if monitor and T - chunk < 1:
            raise InputError(f"the monitor needs at least one step of history before the present "
                             f"(chunk {chunk} < horizon {T})")
        self.policy, self.spec, self.chunk, self.monitor = policy, spec, int(chunk), bool(monitor)
        self.present = T - self.chunk
        self._masks: dict[tuple[str, int], np.ndarray] = {}  # (mode, committed) -> chunk mask
        self._fd = M.fd_mask(spec, self.present) if monitor else None
        self._x = np.zeros((rows, T, spec.packed_width), np.float32)
        self._m = np.zeros((rows, T, spec.num_modalities), np.float32)
        self._avail = np.zeros((T, spec.num_modalities), np.float32)
        self._a, self._s = spec.slice(ACTIONS), spec.slice(STATES)
        self._ai = spec.index(ACTIONS)
        self.step = -1  # model step of the newest plan
        self.latency = LatencyRing(256)

    def reset(self) -> None:
        self.policy.reset()
        self.step = -1

    def observe(self, state: np.ndarray, reward: float | None = None, executed: np.ndarray | None = None) -> None:
        """A model step without a plan (the stream still holds its action): the state and the
        previous step's played action go into the history."""
        self._push(state, reward, executed)

    def _push(self, state: np.ndarray, reward: float | None, executed: np.ndarray | None) -> np.ndarray:
        pol = self.policy
        ex = None if executed is None else pol._check("executed action", executed, pol.limits.width)
        pol._check("state", state, self.spec.width(STATES))  # before anything is written
        if pol.buffer.steps and ex is not None:
            pol.buffer.write(ACTIONS, ex)  # the previous step's action, as played
        x, _mask = pol.begin_step(state, reward)
        self.step += 1
        return x

    def plan(self, state: np.ndarray, reward: float | None = None, executed: np.ndarray | None = None,
             committed: np.ndarray | None = None) -> Plan:
        """A chunk starting at this state's step. ``executed``: the action played at the previous
        step (None: unknown, hidden from the model); ``committed [d, A]`` (d < chunk): actions of
        this step onwards that are already on their way. ``InputError``: nothing changed;
        ``InferenceError``: the step is in the history, no chunk."""
        pol, p, k = self.policy, self.present, self.chunk
        d = 0 if committed is None else len(committed)
        if d >= k:
            raise InputError(f"{d} committed actions leave nothing to plan in a chunk of {k}")
        com = None if committed is None else pol._check("committed", committed, pol.limits.width, leading=(d,))
        x = self._push(state, reward, executed)
        xs, m = self._x, self._m
        xs.fill(0.0)
        xs[0, :p + 1] = x[0, k - 1:]
        avail = self._avail
        avail.fill(0.0)
        avail[:p + 1] = pol.buffer.available[0, k - 1:]  # the window begin_step laid out
        if com is not None:
            xs[0, p:p + d, self._a] = pol.normaliser.normalise(ACTIONS, com)
            avail[p:p + d, self._ai] = 1.0
        key = (pol.mode, d)
        if key not in self._masks:
            self._masks[key] = M.chunk_mask(self.spec, k, d, pol.mode)
        np.minimum(self._masks[key], avail, out=m[0])
        if self._fd is not None:
            xs[1] = xs[0]
            np.minimum(self._fd, avail, out=m[1])
        t0 = time.perf_counter()
        y = pol.backend.run(xs, m)
        self.latency.add(time.perf_counter() - t0)
        actions = pol.normaliser.denormalise(ACTIONS, y[0, p:, self._a]).astype(np.float32)
        try:
            for row in actions:
                pol.limits.clip(row, out=row)
        except UnsafeCommandError:
            raise InferenceError(f"backend {pol.backend.name!r} returned a non-finite chunk; nothing was emitted") from None
        if com is not None:
            actions[:d] = com
        residual = None
        if self._fd is not None and pol.buffer.history_len > p and avail[p - 1, self._ai]:  # a full window
            residual = (y[1, p, self._s] - xs[0, p, self._s]).astype(np.float32)
        return Plan(actions, residual)


class ChunkStream:
    """Actions by model step from the newest chunks. ``install`` never changes a step that was
    already played (``at``); ``executed`` returns what was played."""

    def __init__(self, width: int, keep: int = 64) -> None:
        self.width, self.keep = int(width), int(keep)
        self._planned: dict[int, np.ndarray] = {}
        self._played: dict[int, np.ndarray] = {}
        self.last_played = -1
        self.newest_start = -1

    def reset(self) -> None:
        self._planned.clear()
        self._played.clear()
        self.last_played = self.newest_start = -1

    def install(self, start: int, actions: np.ndarray) -> int:
        """Take the chunk for steps ``start ..``; steps already played keep their action. Returns
        the first step it changed."""
        first = max(start, self.last_played + 1)
        for i in range(first, start + len(actions)):
            self._planned[i] = actions[i - start]
        for i in [i for i in self._planned if i > start + len(actions) - 1]:
            del self._planned[i]  # a newer chunk replaces the older one's tail
        self.newest_start = max(self.newest_start, start)
        return first

    def has(self, step: int) -> bool:
        return step in self._played or step in self._planned

    def peek(self, step: int) -> np.ndarray | None:
        """The played or planned action of ``step`` without playing it (None: not covered)."""
        return self._played.get(step, self._planned.get(step))

    def actions(self, first: int, end: int) -> np.ndarray:
        """Planned or played actions of steps ``first .. end-1`` (``[n, A]``, the steps the stream
        holds, stopping at the first gap)."""
        out = []
        for i in range(first, end):
            a = self.peek(i)
            if a is None:
                break
            out.append(a)
        return np.asarray(out, np.float32).reshape(len(out), self.width)

    def at(self, step: int) -> np.ndarray | None:
        """The action of ``step`` (recorded as played), or None if no chunk covers it."""
        if step in self._played:
            return self._played[step]
        a = self._planned.pop(step, None)
        if a is None:
            return None
        self._played[step] = a
        self.last_played = max(self.last_played, step)
        for old in [i for i in self._played if i < step - self.keep]:
            del self._played[old]
        return a

    def executed(self, step: int) -> np.ndarray | None:
        return self._played.get(step)


def interpolate(a0: np.ndarray, a1: np.ndarray | None, frac: float, out: np.ndarray) -> np.ndarray:
    """Command between two model steps: ``a0`` held (``a1`` None), else linear at ``frac`` in [0, 1)."""
    if a1 is None:
        np.copyto(out, a0)
    else:
        np.subtract(a1, a0, out=out)
        np.multiply(out, frac, out=out)
        np.add(out, a0, out=out)
    return out


@dataclass(frozen=True)
class MonitorReport:
    steps: int
    p50: float
    p99: float
    worst_dim: int
    alarms: int
    alarm: bool

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "residual_p50": self.p50, "residual_p99": self.p99,
                "worst_dim": self.worst_dim, "alarms": self.alarms, "alarm": self.alarm}


class WorldModelMonitor:
    """Residual statistics and the alarm rule. The per-step score is the RMS over state
    dimensions of the normalised residual; the alarm reads its mean over the last ``average``
    steps (1 = the step's own; a longer mean lets a persistent bias rise above the per-step
    noise). An alarm starts when ``persist`` consecutive values exceed ``threshold`` (0 = never)
    and ends after ``persist`` consecutive ones below it."""

    def __init__(self, state_width: int, threshold: float = 0.0, persist: int = 3, window: int = 2048,
                 average: int = 1) -> None:
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"monitor threshold must be a finite number >= 0 (0 = off), got {threshold!r}")
        if persist < 1 or average < 1:
            raise ValueError(f"monitor persist and average must be >= 1, got {persist!r}, {average!r}")
        self._recent = np.zeros(int(average))
        self._n_recent = 0
        self.threshold, self.persist = float(threshold), int(persist)
        self.scores = LatencyRing(window)  # a ring of floats with percentiles
        self.sum_sq = np.zeros(state_width, np.float64)
        self.steps = self.alarms = 0
        self.alarm = False
        self._run = 0
        self.last_score = self.last_level = 0.0
        self.last_residual: np.ndarray | None = None

    def reset_episode(self) -> None:
        self._run = self._n_recent = 0
        self.alarm = False

    def observe(self, residual: np.ndarray | None) -> bool:
        """One step's residual (None: nothing to compare); returns whether an alarm is active."""
        if residual is None:
            return self.alarm
        r = np.asarray(residual, np.float64)
        score = float(np.sqrt(np.mean(r * r)))
        self.steps += 1
        self.sum_sq += r * r
        self.scores.add(score)
        self.last_score, self.last_residual = score, r
        self._recent[self._n_recent % len(self._recent)] = score
        self._n_recent += 1
        level = float(self._recent[:min(self._n_recent, len(self._recent))].mean())
        self.last_level = level
        over = self.threshold > 0 and level > self.threshold
        if over != self.alarm:
            self._run += 1
            if self._run >= self.persist:
                self.alarm, self._run = over, 0
                self.alarms += int(over)
        else:
            self._run = 0
        return self.alarm

    def per_dimension(self) -> np.ndarray:
        """RMS normalised residual per state dimension over every observed step."""
        return np.sqrt(self.sum_sq / max(self.steps, 1))

    def report(self) -> MonitorReport:
        s = self.scores.summary()
        worst = int(np.argmax(self.last_residual ** 2)) if self.last_residual is not None else -1
        return MonitorReport(self.steps, s.p50, s.p99, worst, self.alarms, self.alarm)
