"""The training step (``optimiser_step``, the one both trainers run), and a minimal trainer usable
from a notebook or a script (``training/train.py`` adds DDP, autocast, checkpoints and curves).

    sampler.sample(batch_size) -> (x [B, T, D] normalised float32, present [B, T, M])
    trainer = Trainer(model, TrainConfig(steps=300))
    history = trainer.fit(sampler)

Each step draws per-sample training masks (AUTO_MASK by default), ANDs them with data
availability, runs the packed-encoder forward and the loss of ``mtm_runtime.loss``.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np
import torch

from mtm_runtime import masks as M
from mtm_runtime.loss import mtm_loss
from mtm_runtime.model import MTM
from mtm_runtime.spec import TrajectorySpec


class Sampler(Protocol):
    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    mask_kinds: tuple[str, ...] = ("auto",)
    keep_ratios: tuple[float, ...] = (0.15, 0.35, 0.55, 0.75, 0.85, 0.95)
    masked_only: bool = False
    modality_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` = ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` = ``cuda:<local_rank>``
    (one GPU per torchrun process); ``cpu`` or ``cuda:N`` as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``cfg.lr`` then cosine decay to 10% of it at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def optimiser_step(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], params: Iterable[torch.nn.Parameter],
                   opt: torch.optim.Optimizer, spec: TrajectorySpec, x: torch.Tensor, mask: torch.Tensor,
                   present: torch.Tensor, grad_clip: float, masked_only: bool = False,
                   modality_weights: Mapping[str, float] | None = None,
                   autocast: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One step: ``forward(x, mask)`` (under ``autocast`` if given), the MTM loss in float32,
    backward, gradient clipping, the optimiser's step. Returns (loss, per-modality parts, gradient
    norm), all still on the device: the caller decides when to read them."""
    with autocast if autocast is not None else contextlib.nullcontext():
        pred = forward(x, mask)
    loss, parts = mtm_loss(spec, pred.float(), x, mask, present, modality_weights, masked_only)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    opt.step()
    return loss, parts, grad_norm


class Trainer:
    def __init__(self, model: MTM, cfg: TrainConfig, device: str = "cpu") -> None:
        self.model, self.cfg, self.device = model.to(device), cfg, device
        self.spec = model.spec
        self.rng = np.random.default_rng(cfg.seed)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0

    def make_masks(self, present: np.ndarray) -> np.ndarray:
        """Per-sample training masks ANDed with availability (never an all-hidden window)."""
        raw = M.sample_training_masks(self.spec, present.shape[0], self.rng, self.cfg.mask_kinds,
                                      self.cfg.keep_ratios)
        return M.apply_availability(raw, present, self.rng)

    def train_step(self, x: np.ndarray, present: np.ndarray) -> dict[str, float]:
        """One optimiser step on a batch; returns the loss parts and the learning rate."""
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        mask = self.make_masks(present)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        mt = torch.from_numpy(mask).to(self.device)
        pt = torch.from_numpy(np.ascontiguousarray(present, dtype=np.float32)).to(self.device)
        loss, parts, _ = optimiser_step(self.model.forward_train, self.model.parameters(), self.opt, self.spec, xt, mt, pt,
                                        self.cfg.grad_clip, self.cfg.masked_only, self.cfg.modality_weights)
        self.step += 1
        return {"loss": float(loss.detach()), "lr": self.opt.param_groups[0]["lr"], **{k: float(v) for k, v in parts.items()}}

    def fit(self, sampler: Sampler, callback: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        history = []
        t0 = time.perf_counter()
        while self.step < self.cfg.steps:
            x, present = sampler.sample(self.cfg.batch_size)
            row = self.train_step(x, present)
            row["samples_per_s"] = self.step * self.cfg.batch_size / (time.perf_counter() - t0)
            history.append(row)
            if callback is not None:
                callback(self.step, row)
        self.model.eval()
        return history


@torch.no_grad()
def evaluate_mask(model: MTM, x: np.ndarray, mask: np.ndarray, present: np.ndarray | None = None,
                  modality: str | None = None, targets: np.ndarray | None = None) -> float:
    """Mean squared error (normalised units) on the tokens ``mask`` hides (and data has),
    optionally restricted to one modality and to the tokens ``targets`` ([T, M], 1 = scored).
    ``mask`` is [T, M] or [B, T, M]."""
    model.eval()
    spec = model.spec
    B = x.shape[0]
    m = np.broadcast_to(np.asarray(mask, np.float32), (B, spec.horizon, spec.num_modalities)).copy()
    pres = np.ones_like(m) if present is None else np.asarray(present, np.float32)
    pred = model(torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(m)).numpy()
    counted = (1.0 - m) * pres
    if targets is not None:
        counted = counted * np.asarray(targets, np.float32)
    if modality is not None:
        keep = np.zeros(spec.num_modalities, np.float32)
        keep[spec.index(modality)] = 1.0
        counted = counted * keep
    num = den = 0.0
    for i, name in enumerate(spec.names):
        err = ((pred[..., spec.slice(name)] - x[..., spec.slice(name)]) ** 2).mean(axis=-1)
        num += float((err * counted[..., i]).sum())
        den += float(counted[..., i].sum())
    return num / max(den, 1.0)
