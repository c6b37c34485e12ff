"""The Masked Trajectory Model network (Wu et al., ICML 2023), in one readable file.

    packed x [B, T, D] ──(hidden values zeroed)──> per-modality Linear ─┐
    mask     [B, T, M] (1 = visible, 0 = hidden)                         │ + modality emb + time emb
                                                                         v
                      tokens [B, N = T*M, d]   (time-major: token t*M + m)
                                                                         v
      encoder: pre-LN transformer blocks; an additive attention bias keeps every hidden token out
               of every key set, so visible outputs equal an encoder run on visible tokens only
                                                                         v
      hidden positions replaced by a learned mask token per modality (+ decoder position emb)
                                                                         v
      decoder: pre-LN transformer blocks over all N tokens
                                                                         v
      per-modality LayerNorm + Linear heads ──> packed prediction [B, T, D]

Export-friendly by construction: static shapes given (B, spec), the mask is an input tensor,
no data-dependent Python control flow in ``forward`` (loops run over the spec's modalities and
the layer list only). Callers must pass masks with at least one visible token per window
(``masks.validate_mask``); the model itself never produces NaN for any 0/1 mask.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn as nn

from mtm_runtime.spec import TrajectorySpec

#: Additive attention bias for hidden keys. exp(-1e4) == 0 in fp32, and it stays finite in fp16.
HIDDEN_BIAS = -1.0e4


@dataclass(frozen=True)
class MTMConfig:
    """Network hyper-parameters (the window layout lives in the TrajectorySpec)."""

    d_model: int = 512
    n_heads: int = 4
    n_enc_layers: int = 2
    n_dec_layers: int = 1
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        for f in ("d_model", "n_heads", "n_enc_layers", "n_dec_layers", "mlp_ratio"):
            if getattr(self, f) < 1:
                raise ValueError(f"model.{f} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("model.dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model_config") -> "MTMConfig":
        """From metadata: every field typed and inside ``CONFIG_BOUNDS`` (ValueError naming it)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be an object")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{where} has unknown fields {sorted(unknown)}")
        for name, (lo, hi) in CONFIG_BOUNDS.items():
            if name not in d:
                continue
            v = d[name]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{where}.{name} must be an integer in [{lo}, {hi}], got {v!r}")
        drop = d.get("dropout", 0.0)
        if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0.0 <= drop < 1.0:
            raise ValueError(f"{where}.dropout must be a number in [0, 1), got {drop!r}")
        if "d_model" in d and d["d_model"] % d.get("n_heads", cls.n_heads):
            raise ValueError(f"{where}.n_heads ({d.get('n_heads', cls.n_heads)}) must divide "
                             f"{where}.d_model ({d['d_model']})")
        return cls(**dict(d))


#: Accepted ranges of the integer config fields in a file (far above any model this runtime
#: serves; what is really refused is a memory estimate over ``MAX_MODEL_BYTES``).
CONFIG_BOUNDS: dict[str, tuple[int, int]] = {"d_model": (1, 16384), "n_heads": (1, 256), "n_enc_layers": (1, 128),
                                             "n_dec_layers": (1, 128), "mlp_ratio": (1, 64)}
#: Parameters (fp32) + activations of one batch: a file asking for more is refused before allocating.
MAX_MODEL_BYTES = 2 << 30


#: Named presets. ``paper``: the paper's D4RL setting (width 512, 2 encoder + 1 decoder layers,
#: 4 heads, used with T = 4). ``embedded``: sized for kHz control on two CPU cores.
PRESETS: dict[str, MTMConfig] = {
    "paper": MTMConfig(d_model=512, n_heads=4, n_enc_layers=2, n_dec_layers=1, mlp_ratio=4, dropout=0.1),
    "embedded": MTMConfig(d_model=64, n_heads=4, n_enc_layers=2, n_dec_layers=1, mlp_ratio=4, dropout=0.0),
}
PRESET_HORIZON = {"paper": 4, "embedded": 4}


class SelfAttention(nn.Module):
    def __init__(self, cfg: MTMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, d]; bias [B, 1, 1, N] additive (0 visible key, HIDDEN_BIAS hidden) or None."""
        return self.proj(self.attend(self.qkv(x), bias))

    def attend(self, qkv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """qkv [B, N, 3d] -> attention output before the projection, [B, N, d]."""
        B, N, C3 = qkv.shape
        q, k, v = qkv.reshape(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if bias is not None:
            scores = scores + bias
        att = self.drop(torch.softmax(scores, dim=-1))
        return (att @ v).transpose(1, 2).reshape(B, N, C3 // 3)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, cfg: MTMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))

    def forward_packed(self, h: torch.Tensor, rows: torch.Tensor, shape: tuple[int, int],
                       bias: torch.Tensor) -> torch.Tensor:
        """Same maths on visible tokens only: h [V, d] are rows ``rows`` of a [B*N, d] grid.

        Per-token layers (LayerNorm, qkv, projection, MLP) run on the V visible rows; only the
        attention itself is laid out on the [B, N] grid (hidden keys are masked by ``bias``).
        """
        B, N = shape
        qkv = self.attn.qkv(self.ln1(h))
        grid = qkv.new_zeros(B * N, qkv.shape[1]).index_copy(0, rows, qkv)
        y = self.attn.attend(grid.reshape(B, N, -1), bias).reshape(B * N, -1).index_select(0, rows)
        h = h + self.attn.proj(y)
        return h + self.mlp(self.ln2(h))


class MTM(nn.Module):
    """forward(x [B, T, D], mask [B, T, M]) -> prediction [B, T, D] (all float32)."""

    def __init__(self, spec: TrajectorySpec, cfg: MTMConfig) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        T, M, d = spec.horizon, spec.num_modalities, cfg.d_model
        self._slices = [(spec.offset(n), spec.offset(n) + spec.width(n)) for n in spec.names]
        self.embed = nn.ModuleList(nn.Linear(w, d) for w in spec.widths)
        self.enc_modality = nn.Parameter(torch.zeros(M, d))
        self.enc_time = nn.Parameter(torch.zeros(T, d))
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_enc_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.enc_to_dec = nn.Linear(d, d)
        self.mask_token = nn.Parameter(torch.zeros(M, d))
        self.dec_modality = nn.Parameter(torch.zeros(M, d))
        self.dec_time = nn.Parameter(torch.zeros(T, d))
        self.decoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_dec_layers))
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, w)) for w in spec.widths)
        self.apply(self._init_weights)
        for p in (self.enc_modality, self.enc_time, self.mask_token, self.dec_modality, self.dec_time):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    # The three stages are separate methods so tests (and the feature API) can call them.
    def embed_tokens(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D], [B, T, M] -> tokens [B, N, d]; hidden input values never matter (even NaN)."""
        B, T, _ = x.shape
        toks = []
        for m, (lo, hi) in enumerate(self._slices):
            xm = torch.where(mask[:, :, m:m + 1] > 0.5, x[:, :, lo:hi], torch.zeros_like(x[:, :, lo:hi]))
            toks.append(self.embed[m](xm))
        tok = torch.stack(toks, dim=2) + self.enc_modality + self.enc_time[:, None, :]  # [B, T, M, d]
        return tok.reshape(B, T * len(self._slices), self.cfg.d_model)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, N, d]; rows of hidden tokens are defined but meaningless."""
        B = x.shape[0]
        flat = mask.reshape(B, 1, 1, -1)
        bias = (1.0 - flat) * HIDDEN_BIAS
        h = self.embed_tokens(x, mask)
        for blk in self.encoder:
            h = blk(h, bias)
        return self.enc_norm(h)

    def encode_packed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training-speed encoder: per-token layers run on the visible tokens only (per-sample
        counts differ, so shapes are data-dependent: not for export). Equals ``encode`` on
        visible rows; hidden rows are zero."""
        B = x.shape[0]
        N = self.spec.num_tokens
        flat = mask.reshape(B, N)
        rows = flat.reshape(-1).nonzero().squeeze(1)
        bias = (1.0 - flat.reshape(B, 1, 1, N)) * HIDDEN_BIAS
        h = self.embed_tokens(x, mask).reshape(B * N, -1).index_select(0, rows)
        blk: Block
        for blk in self.encoder:  # type: ignore[assignment]  # ModuleList yields Module
            h = blk.forward_packed(h, rows, (B, N), bias)
        h = self.enc_norm(h)
        return h.new_zeros(B * N, h.shape[1]).index_copy(0, rows, h).reshape(B, N, -1)

    def decode(self, enc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output + mask -> packed prediction [B, T, D]."""
        B = enc.shape[0]
        T, M, d = self.spec.horizon, len(self._slices), self.cfg.d_model
        vis = mask.reshape(B, T * M, 1) > 0.5
        mask_tok = self.mask_token.expand(T, M, d).reshape(1, T * M, d)
        h = torch.where(vis, self.enc_to_dec(enc), mask_tok)
        h = h + (self.dec_modality + self.dec_time[:, None, :]).reshape(1, T * M, d)
        for blk in self.decoder:
            h = blk(h)
        h = h.reshape(B, T, M, d)
        return torch.cat([head(h[:, :, m]) for m, head in enumerate(self.heads)], dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Static-shape path (export, runtime)."""
        return self.decode(self.encode(x, mask), mask)

    def forward_train(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Same result as ``forward``, faster for training: the encoder skips hidden tokens."""
        return self.decode(self.encode_packed(x, mask), mask)


def build_model(spec: TrajectorySpec, cfg: MTMConfig | str) -> MTM:
    """``build_model(spec, "embedded")`` or with an explicit MTMConfig."""
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"unknown preset {cfg!r}; choose from {', '.join(PRESETS)}")
        cfg = PRESETS[cfg]
    return MTM(spec, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(spec: TrajectorySpec, cfg: MTMConfig) -> int:
    """``count_parameters(MTM(spec, cfg))`` by arithmetic, without building anything."""
    d, r, T, M, W = cfg.d_model, cfg.mlp_ratio, spec.horizon, spec.num_modalities, spec.packed_width
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (r * d * d + r * d) + (r * d * d + d)
    embed = W * d + M * d
    heads = M * 2 * d + d * W + W
    return (embed + 3 * M * d + 2 * T * d + (cfg.n_enc_layers + cfg.n_dec_layers) * block + 2 * d + d * d + d
            + heads)


def memory_estimate(spec: TrajectorySpec, cfg: MTMConfig, batch_size: int = 1) -> int:
    """Bytes of fp32 parameters plus the largest activations of one forward pass (attention
    scores of all heads, the MLP hidden layer, a few token tensors) at ``batch_size``."""
    N, d = spec.num_tokens, cfg.d_model
    activations = batch_size * (2 * cfg.n_heads * N * N + N * d * (cfg.mlp_ratio + 8))
    return 4 * (parameter_count(spec, cfg) + activations)


__all__ = ["MTM", "MTMConfig", "PRESETS", "PRESET_HORIZON", "HIDDEN_BIAS", "CONFIG_BOUNDS", "MAX_MODEL_BYTES",
           "build_model", "count_parameters", "parameter_count", "memory_estimate"]
