"""Training loss: mean squared error per token, averaged per modality, weighted per modality.

Which tokens count: those present in the data (``present == 1``; forced-missing tokens such as
the actions of an unlabelled episode never contribute), and, with ``masked_only``, only those the
mask hid. Each modality's loss is the mean over its counted tokens of the mean squared error over
its dimensions (normalised units), so modalities of different widths weigh the same unless
``weights`` says otherwise.
"""
from __future__ import annotations

from typing import Mapping

import torch

from mtm_runtime.spec import TrajectorySpec


def mtm_loss(spec: TrajectorySpec, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             present: torch.Tensor, weights: Mapping[str, float] | None = None,
             masked_only: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """pred/target [B, T, D], mask/present [B, T, M] -> (scalar loss, {modality: loss}).

    The parts are detached 0-d tensors on the loss's device, so a training loop can read them
    without a host sync on every step (``float(part)`` when it needs the number)."""
    count = present if not masked_only else present * (1.0 - mask)
    total = pred.new_zeros(())
    parts: dict[str, torch.Tensor] = {}
    for m, name in enumerate(spec.names):
        sl = spec.slice(name)
        err = (pred[..., sl] - target[..., sl]).pow(2).mean(dim=-1)  # [B, T]
        c = count[..., m]
        n = c.sum()
        lm = (err * c).sum() / n.clamp_min(1.0)
        parts[name] = lm.detach()
        total = total + float((weights or {}).get(name, 1.0)) * lm
    return total, parts
