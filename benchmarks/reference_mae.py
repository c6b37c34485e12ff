"""The reference design we measure against (written here from the paper's description, for
benchmarking only): an MAE-style MTM whose encoder *gathers* the visible tokens, with one mask
shared by the whole batch (so every sample has the same visible set). Same widths, layers,
heads and token layout as ``mtm_runtime.model.MTM``; it reuses that file's ``Block``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mtm_runtime.model import Block, MTMConfig
from mtm_runtime.spec import TrajectorySpec


class ReferenceMAE(nn.Module):
    def __init__(self, spec: TrajectorySpec, cfg: MTMConfig) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        T, M, d = spec.horizon, spec.num_modalities, cfg.d_model
        self._slices = [(spec.offset(n), spec.offset(n) + spec.width(n)) for n in spec.names]
        self.embed = nn.ModuleList(nn.Linear(w, d) for w in spec.widths)
        self.pos = nn.Parameter(torch.randn(T, M, d) * 0.02)
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_enc_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.enc_to_dec = nn.Linear(d, d)
        self.mask_token = nn.Parameter(torch.zeros(M, d))
        self.dec_pos = nn.Parameter(torch.randn(T, M, d) * 0.02)
        self.decoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_dec_layers))
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, w)) for w in spec.widths)

    def forward(self, x: torch.Tensor, mask_tm: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; mask_tm [T, M] shared by the batch (1 = visible)."""
        B = x.shape[0]
        T, M, d = self.spec.horizon, len(self._slices), self.cfg.d_model
        tok = torch.stack([e(x[:, :, lo:hi]) for e, (lo, hi) in zip(self.embed, self._slices)], dim=2) + self.pos
        tok = tok.reshape(B, T * M, d)
        keep = mask_tm.reshape(-1).nonzero().squeeze(1)
        h = tok[:, keep]
        for blk in self.encoder:
            h = blk(h)
        h = self.enc_to_dec(self.enc_norm(h))
        full = (self.mask_token.expand(T, M, d).reshape(1, T * M, d)).repeat(B, 1, 1)
        full[:, keep] = h.to(full.dtype)  # bf16 under autocast
        full = full + self.dec_pos.reshape(1, T * M, d)
        for blk in self.decoder:
            full = blk(full)
        full = full.reshape(B, T, M, d)
        return torch.cat([head(full[:, :, m]) for m, head in enumerate(self.heads)], dim=-1)
