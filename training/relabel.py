"""Actions for action-free logs: the model's inverse dynamics (the ID mask) fills them in.

    policy = Policy.load("runs/arm7")                 # trained on the labelled part
    inferred = relabel_actions(episodes, policy)      # indices of the episodes it filled

For every episode without actions and at least T steps, the action of step ``t`` is read from
the window of T states starting at ``t-1`` (clipped to the episode), which shows ``s[t-1]``,
``s[t]`` and ``s[t+1]``: ``Policy.infer_actions`` under the ID mask, denormalised and clipped to
the model's limits. The last step has no next state and repeats the estimate before it. The
episode then counts as labelled; the writer marks its steps ``infos/action_inferred`` and names
the model in the file's metadata, so a reader can always tell measured from inferred actions.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mtm_runtime.policy import Policy
from mtm_runtime.spec import ACTIONS, STATES
from mtm_runtime.training.loaders import DatasetError, Episode


class RelabelError(DatasetError):
    """The model cannot label these episodes (widths differ)."""


def load_labeller(path: str) -> Policy:
    """The model whose inverse dynamics labels the episodes (its own limits; torch or onnxruntime)."""
    return Policy.load(path, mode="bc")


def check_fits(policy: Any, episodes: Sequence[Episode], where: str) -> None:
    spec = policy.spec
    for name in (STATES, ACTIONS):
        have = next((ep[name].shape[1] for ep in episodes if name in ep), None)
        if have is not None and have != spec.width(name):
            raise RelabelError(f"{where}: the model's {name} have width {spec.width(name)}, the episodes' {have}")


def infer_episode(policy: Any, states: np.ndarray) -> np.ndarray:
    """``[L, A]`` inverse-dynamics actions of one episode of ``L >= T`` states."""
    T, L = policy.spec.horizon, len(states)
    out = np.zeros((L, policy.spec.width(ACTIONS)), np.float32)
    for t in range(L):
        start = int(np.clip(t - 1, 0, L - T))
        i = t - start
        if i <= T - 2:
            out[t] = policy.limits.clip(policy.infer_actions(states[start:start + T])[i])
        else:
            out[t] = out[t - 1]  # the last step: no next state to infer from
    return out


def relabel_actions(episodes: Sequence[Episode], policy: Any, where: str = "relabel") -> list[int]:
    """Fill the actions of every action-free episode of at least T steps (in place); returns the
    indices of the episodes filled. Shorter ones stay action-free."""
    check_fits(policy, episodes, where)
    filled = []
    for i, ep in enumerate(episodes):
        if ep.labelled or ep.length < policy.spec.horizon:
            continue
        ep[ACTIONS] = infer_episode(policy, np.asarray(ep[STATES], np.float32))
        ep.present[ACTIONS] = True
        filled.append(i)
    return filled
