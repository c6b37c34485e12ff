"""PolicyBatch: B independent policies stepped in lockstep through one batch-B backend call.

    batch = PolicyBatch.load("runs/reacher", size=16, mode="goal")
    for p, g in zip(batch.members, goals):
        p.set_goal(g); p.reset()
    actions = batch.act([0, 3, 5], states, rewards)   # [3, A]: members 0, 3 and 5 step

Every member is a full ``Policy`` with its own buffer, mode, goal, return-to-go and limits.
``act`` runs ``Policy.begin_step`` on each stepping member, one backend call on the stacked
windows, then ``Policy.finish_step`` on each: the per-step rules (validation, masks, return-to-go,
denormalisation, finiteness, clipping, history) are Policy's, not repeated here. Members that do
not step this call get an all-hidden row whose output is ignored, and their state is untouched.

This is the vectorised path of evaluation (``training/evaluate.py``); the control loop stays
batch 1. Results equal B separate ``Policy.act`` calls up to the backend's batched arithmetic
(bit for bit with the CPU torch backend here: ``tests/runtime/test_policy_batch.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mtm_runtime.backends import Backend, BackendError
from mtm_runtime.checkpoint import load_checkpoint
from mtm_runtime.normalise import Normaliser
from mtm_runtime.policy import InputError, Policy, backend_for_checkpoint, required_limits, verify_behaviour
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import ACTIONS, TrajectorySpec


class _BatchedOnly(Backend):
    """A member's backend: the forward pass belongs to the batch, so a member's own ``act`` is refused."""

    def __init__(self, batch_backend: Backend) -> None:
        super().__init__(batch_backend.spec, 1)
        self.name = f"{batch_backend.name} (batched)"

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise BackendError("this Policy is a member of a PolicyBatch: step it with PolicyBatch.act")


class PolicyBatch:
    def __init__(self, spec: TrajectorySpec, normaliser: Normaliser, backend: Backend,
                 limits: ActionLimits | None = None, mode: str = "bc",
                 metadata: Mapping[str, Any] | None = None) -> None:
        if backend.batch_size < 1:
            raise InputError(f"PolicyBatch needs a backend of batch size >= 1, got {backend.batch_size}")
        self.backend = backend
        member_backend = _BatchedOnly(backend)
        self.members = [Policy(spec, normaliser, member_backend, limits, mode, metadata)
                        for _ in range(backend.batch_size)]
        T, D, M = spec.horizon, spec.packed_width, spec.num_modalities
        B = backend.batch_size
        self._x = np.zeros((B, T, D), np.float32)
        self._mask = np.zeros((B, T, M), np.float32)
        self._actions = np.zeros((B, spec.width(ACTIONS)), np.float32)

    @classmethod
    def load(cls, path: str | Path, size: int, backend: str = "torch", mode: str = "bc",
             limits: ActionLimits | None = None, **backend_options: Any) -> "PolicyBatch":
        """``size`` members over a checkpoint directory (torch or onnxruntime backend, static batch
        ``size``); refused as ``Policy.load`` refuses (limits required, fingerprint through the
        batched backend)."""
        ckpt = load_checkpoint(path, verify_outputs=False)
        chosen = required_limits(limits, ckpt.action_limits, ckpt.meta_path)
        be = backend_for_checkpoint(ckpt, backend, batch_size=size, **backend_options)
        verify_behaviour(be, ckpt.fingerprint, ckpt.meta_path)
        return cls(ckpt.spec, ckpt.normaliser, be, chosen, mode, ckpt.metadata())

    def __len__(self) -> int:
        return len(self.members)

    def act(self, rows: Sequence[int], states: np.ndarray, rewards: Sequence[float | None]) -> np.ndarray:
        """Members ``rows`` (distinct) take one step on ``states [len(rows), S]`` (raw) with the
        rewards of their previous actions; returns their actions ``[len(rows), A]`` (a reused array).

        An ``InputError`` from one member aborts the call; members before it hold a begun step,
        so ``reset()`` the batch's episodes before going on. ``InferenceError`` likewise."""
        if len(set(rows)) != len(rows):
            raise InputError(f"PolicyBatch.act: rows must be distinct, got {list(rows)}")
        self._mask.fill(0.0)
        for k, i in enumerate(rows):
            x, mask = self.members[i].begin_step(states[k], rewards[k])
            self._x[i] = x[0]
            self._mask[i] = mask[0]
        y = self.backend.run(self._x, self._mask)
        out = self._actions[:len(rows)]
        for k, i in enumerate(rows):
            out[k] = self.members[i].finish_step(y[i, -1])
        return out
