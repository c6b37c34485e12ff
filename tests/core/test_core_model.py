"""The MTM network: static shapes, the attention-mask encoder equals a visible-only encoder,
hidden inputs never matter, the packed training path equals the static path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtm_runtime import masks as M
from mtm_runtime.model import PRESETS, MTMConfig, build_model
from mtm_runtime.spec import TrajectorySpec

SPEC = TrajectorySpec.create(4, states=5, actions=2, returns=1)
CFG = MTMConfig(d_model=32, n_heads=4, n_enc_layers=2, n_dec_layers=1, mlp_ratio=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SPEC, CFG).eval()


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, 4, SPEC.packed_width)).astype(np.float32))
    m = torch.from_numpy(M.sample_training_masks(SPEC, n, rng, kinds=("auto", "random", "bc", "id")))
    return x, m


def test_presets():
    assert PRESETS["paper"].d_model == 512 and PRESETS["paper"].n_enc_layers == 2
    assert PRESETS["paper"].n_dec_layers == 1 and PRESETS["paper"].n_heads == 4
    out = build_model(SPEC, "embedded").eval()(*batch(2))
    assert out.shape == (2, 4, SPEC.packed_width)


@torch.no_grad()
def test_encoder_equals_visible_only_encoder(model):
    x, m = batch(6)
    enc = model.encode(x, m)
    for b in range(x.shape[0]):
        tokens = model.embed_tokens(x[b:b + 1], m[b:b + 1])[0]
        vis = m[b].reshape(-1) > 0.5
        h = tokens[vis][None]  # only the visible tokens, no attention mask at all
        for blk in model.encoder:
            h = blk(h)
        h = model.enc_norm(h)[0]
        torch.testing.assert_close(enc[b][vis], h, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_hidden_inputs_never_matter_even_nan(model):
    x, m = batch(4)
    y = model(x, m)
    x2 = x.clone()
    hidden = (m == 0).repeat_interleave(torch.tensor(SPEC.widths), dim=2)
    x2[hidden] = float("nan")
    y2 = model(x2, m)
    assert torch.isfinite(y2).all()
    torch.testing.assert_close(y, y2, atol=0, rtol=0)


@torch.no_grad()
def test_packed_training_path_equals_static_path(model):
    x, m = batch(16, seed=3)
    torch.testing.assert_close(model.forward_train(x, m), model(x, m), atol=1e-5, rtol=1e-5)


def test_gradients_flow_and_per_sample_masks_change_outputs(model):
    x, m = batch(2)
    m[1] = m[0]
    x[1] = x[0]
    out = model(x, m)
    assert torch.allclose(out[0], out[1], atol=1e-6)
    m2 = m.clone()
    m2[0] = torch.from_numpy(M.bc_mask(SPEC))
    m2[1] = torch.from_numpy(M.id_mask(SPEC))
    out2 = model(x, m2)
    assert (out2[0] - out2[1]).abs().max() > 1e-5  # each sample follows its own mask
    out2.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_no_nan_for_single_visible_token(model):
    x, _ = batch(1)
    m = torch.zeros(1, 4, 3)
    m[0, 0, 0] = 1.0
    assert torch.isfinite(model(x, m)).all()
