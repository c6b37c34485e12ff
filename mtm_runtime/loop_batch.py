"""LoopBatch: B control loops over one ``PolicyBatch``, for in-process evaluation.

Each member of the batch gets its own ``ControlLoop`` with the deployment's ``LoopConfig``, so an
evaluated rollout goes through the chain the robot gets (input checks, the (narrowed) limits,
saturation, rate limit, fault action on an error) and the episode scores are those of the
commands the robot would receive. Only ``act`` is shared: one batched forward pass per step.

    loops = LoopBatch(PolicyBatch.load(path, size=8), LoopConfig(rate_hz=50, max_rate=0.2))
    loops.activate()
    commands = loops.step(rows, states)          # one Command | Fault | None per row
    loops.on_reward(row, r); loops.reset(row)    # after the simulator's step / at episode end

Time is simulated: step k of an episode happens at ``k / rate_hz`` (the stale watchdog and the
saturation timer run on that clock); ``act`` is timed, but an overrun is never a fault here,
because a simulator waits for the model.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from mtm_runtime.control_loop import ControlLoop
from mtm_runtime.loop_types import Command, Fault, LoopConfig
from mtm_runtime.policy_batch import PolicyBatch


class LoopBatch:
    def __init__(self, batch: PolicyBatch, config: LoopConfig) -> None:
        self.batch, self.config = batch, config
        self._now = [0.0] * len(batch)
        self.loops = [ControlLoop(member, config, clock_ns=lambda: 0, act_clock=time.perf_counter)
                      for member in batch.members]

    def __len__(self) -> int:
        return len(self.loops)

    def activate(self) -> None:
        for i, loop in enumerate(self.loops):
            self._now[i] = 0.0
            loop.activate(0.0)

    def reset(self, row: int) -> None:
        """A new episode in ``row``: empty history, the limiter ramps from rest; counters kept."""
        self._now[row] = 0.0
        self.loops[row].reset("evaluation episode", from_rest=True)

    def on_reward(self, row: int, reward: float) -> None:
        self.loops[row].on_reward(reward)

    def step(self, rows: Sequence[int], states: np.ndarray) -> list[Command | Fault | None]:
        """Members ``rows`` step on ``states [len(rows), S]``: one batched ``act`` over the rows
        whose state passed the input checks, then each loop's own chain on its action."""
        out: list[Command | Fault | None] = [None] * len(rows)
        admitted = [k for k, i in enumerate(rows) if self.loops[i].admit(np.asarray(states[k]))]
        for k in admitted:
            self._now[rows[k]] += self.loops[rows[k]].period_s
        if not admitted:
            return out
        stepping = [rows[k] for k in admitted]
        rewards = [self.loops[i].take_reward() for i in stepping]
        t0 = time.perf_counter()
        try:
            actions = self.batch.act(stepping, np.asarray(states)[admitted], rewards)
        except Exception as e:  # noqa: BLE001 - one failing forward pass faults every row that stepped
            for k, i in zip(admitted, stepping):
                out[k] = self.loops[i].act_failed(e)
            return out
        per_row = (time.perf_counter() - t0) / len(stepping)
        for j, (k, i) in enumerate(zip(admitted, stepping)):
            out[k] = self.loops[i].finish(actions[j], per_row, 0, self._now[i], check_overrun=False)
        return out

    def counters(self) -> dict[str, int]:
        """The loops' counters summed (faults, saturated steps, ... over the whole evaluation)."""
        total: dict[str, int] = {}
        for loop in self.loops:
            for k, v in loop.stats.counters().items():
                total[k] = total.get(k, 0) + v
        return total
