"""The networks offline TD3+BC trains (``training/offline_rl.py``, steps 3 and 4).

- ``ObsSource``: what the actor and critics see at a step: a standardised lookup table (raw
  observations, or MTM features precomputed once) or, for ``finetune``, a trainable MTM feature
  extractor on the stored windows with a Polyak-averaged target copy;
- ``Actor`` (deterministic, ``max_action * tanh``) and ``TwinCritic`` (two Q networks), both
  two-hidden-layer ReLU MLPs;
- ``polyak_update``: ``target <- target + tau * (net - target)``, for the target networks.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn as nn


class Standardise(nn.Module):
    """``(z - mean) / std`` with fixed statistics (std floored at 1e-3)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(table.mean(axis=0), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.maximum(table.std(axis=0), 1e-3), dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


class ObsSource:
    """``get(steps, target=False) -> [B, obs_dim]`` float32 tensor for the actor/critics.

    raw / frozen: a standardised lookup table. finetune: the trainable extractor on the stored
    windows (``target=True`` uses the Polyak target encoder, no grad)."""

    def __init__(self, kind: str, table: np.ndarray | None = None, extractor: Any = None,
                 windows: tuple[np.ndarray, np.ndarray] | None = None, stats_table: np.ndarray | None = None) -> None:
        self.kind = kind
        stats = table if table is not None else stats_table
        if stats is None:
            raise ValueError("ObsSource needs a table or a stats_table")
        self.norm = Standardise(stats)
        self.table = None if table is None else self.norm(torch.from_numpy(table)).contiguous()
        self.extractor: Any = extractor
        self.target_extractor: Any = None if extractor is None else copy.deepcopy(extractor).requires_grad_(False)
        self.x: Any = None if windows is None else torch.from_numpy(windows[0])
        self.m: Any = None if windows is None else torch.from_numpy(windows[1])
        self.dim = int(self.norm.mean.shape[0])

    def get(self, steps: torch.Tensor, target: bool = False) -> torch.Tensor:
        if self.table is not None:
            return self.table[steps]
        fx = self.target_extractor if target else self.extractor
        if target:
            with torch.no_grad():
                return self.norm(fx(self.x[steps], self.m[steps]))
        return self.norm(fx(self.x[steps], self.m[steps]))

    def to(self, device: torch.device) -> "ObsSource":
        self.norm = self.norm.to(device)
        for name in ("table", "x", "m"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        for fx in (self.extractor, self.target_extractor):
            if fx is not None:
                fx.to(device)
        return self

    def polyak(self, tau: float) -> None:
        if self.extractor is not None:
            polyak_update(self.extractor, self.target_extractor, tau)


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, max_action: float) -> None:
        super().__init__()
        self.net, self.max_action = mlp(obs_dim, act_dim, hidden), max_action

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(o))


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, o: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        oa = torch.cat([o, a], dim=-1)
        return self.q1(oa), self.q2(oa)


def polyak_update(net: nn.Module, target: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for p, tp in zip(net.parameters(), target.parameters()):
            tp.lerp_(p, tau)
