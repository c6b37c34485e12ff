"""Rollouts in chunked and asynchronous mode, through ``ChunkLoop`` with a simulated clock.

Each simulator step ``j`` is one model step at simulated time ``(j + 0.5) / rate_hz``: the state
goes to the loop (``on_state``), then the control tick plays the stream (``on_tick``). In async
mode the model "thread" is stepped in the tick (``threaded=False``), with ``committed`` fixed:
the plan made from ``s_j`` lands after ``committed`` steps, exactly what a real thread with that
latency does, so a score is reproducible. Every played command is recorded, to measure the
jumps at chunk boundaries against the demonstrations' own step-to-step changes.

    res = evaluate_chunked("runs/hopper_T8", "hopper", ChunkConfig(mode="async", chunk=4, committed=1))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtm_runtime.chunk_loop import ChunkConfig, ChunkLoop
from mtm_runtime.loop_types import Command, Fault, LoopConfig
from mtm_runtime.policy import Policy
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.evaluate import _summarise, run_episodes, target_for_score


class ChunkAgents:
    """``run_episodes``'s agent interface over one ``ChunkLoop`` per member."""

    def __init__(self, policies: Sequence[Policy], config: LoopConfig, chunk: ChunkConfig) -> None:
        self.members = list(policies)
        self.period_s = config.period_s
        self._step = [0] * len(self.members)
        self._now = [0.0] * len(self.members)
        self.loops = [ChunkLoop(p, config, chunk, clock_ns=lambda: 0, act_clock=self._clock(i), threaded=False)
                      for i, p in enumerate(self.members)]
        self.async_mode = chunk.mode == "async"
        self.played: list[list[np.ndarray]] = [[] for _ in self.members]
        self.episodes: list[np.ndarray] = []  # played commands of every finished episode
        self.faults: dict[str, int] = {}
        for loop in self.loops:
            loop.activate(0.0)

    def _clock(self, i: int) -> Any:
        return lambda: self._now[i]

    def __len__(self) -> int:
        return len(self.members)

    def reset(self, i: int) -> None:
        if self.played[i]:
            self.episodes.append(np.stack(self.played[i]))
        self.played[i] = []
        self._step[i], self._now[i] = -1, 0.0
        self.loops[i].reset("evaluation episode", from_rest=True)

    def act(self, rows: Sequence[int], states: np.ndarray, rewards: Sequence[float | None]) -> np.ndarray:
        out = []
        for k, i in enumerate(rows):
            loop = self.loops[i]
            self._step[i] += 1
            now = self._now[i] = (self._step[i] + 0.5) * self.period_s
            if rewards[k] is not None:
                loop.on_reward(float(rewards[k]))  # type: ignore[arg-type]
            cmd = loop.on_state(np.asarray(states[k], np.float32), 0, now)  # async: answered from the stream
            if self.async_mode and cmd is None:
                cmd = loop.on_tick(now)
            if isinstance(cmd, Fault):
                self.faults[cmd.kind] = self.faults.get(cmd.kind, 0) + 1
            a = (cmd.action if isinstance(cmd, (Command, Fault)) else loop.held_command()).copy()
            self.played[i].append(a)
            out.append(a)
        return np.stack(out)

    def finish(self) -> None:
        for i in range(len(self.members)):
            if self.played[i]:
                self.episodes.append(np.stack(self.played[i]))
                self.played[i] = []


def step_changes(episodes: Sequence[np.ndarray]) -> np.ndarray:
    """``|a[t+1] - a[t]|`` of every consecutive pair within episodes, ``[N, A]``."""
    parts = [np.abs(np.diff(np.asarray(e, np.float64), axis=0)) for e in episodes if len(e) > 1]
    return np.concatenate(parts) if parts else np.zeros((0, 1))


def jump_summary(changes: np.ndarray) -> dict[str, Any]:
    """Per action dimension: the largest and the p99 step-to-step change."""
    if not len(changes):
        return {"max": [], "p99": []}
    return {"max": changes.max(axis=0).round(5).tolist(), "p99": np.percentile(changes, 99, axis=0).round(5).tolist()}


def evaluate_chunked(path: str | Path, task: Task | str, chunk: ChunkConfig, mode: str = "bc", episodes: int = 10,
                     seeds: Sequence[int] = (0,), target_score: float = 100.0, backend: str = "torch",
                     max_rate: float = 0.0) -> dict[str, Any]:
    """Rollouts of the checkpoint at ``path`` through ``ChunkLoop`` (one member per seed, in this
    process); the summary of ``evaluate`` plus ``jumps`` (``jump_summary`` of the played
    commands) and the faults seen."""
    task = get_task(task) if isinstance(task, str) else task
    rows = 2 if chunk.monitor else 1
    policies = [Policy.load(path, backend=backend, mode="bc", batch_size=rows) for _ in seeds]
    target = target_for_score(task, target_score) if mode == "rcbc" else None
    assert task.robot is not None, f"task {task.name} has no robot description (rate)"
    agents = ChunkAgents(policies, LoopConfig(rate_hz=task.robot.rate_hz, stale_timeout=10.0, stale_reset_s=0.0,
                                              max_rate=max_rate), chunk)
    pairs = [(s, e) for s in seeds for e in range(episodes)]
    results = run_episodes(agents, task, mode, pairs, target)
    agents.finish()
    summary = _summarise(results, seeds, task, mode, target)
    summary.update(chunk=chunk.__dict__, jumps=jump_summary(step_changes(agents.episodes)), faults=agents.faults,
                   monitor=[loop.monitor.report().as_dict() for loop in agents.loops])
    return summary
