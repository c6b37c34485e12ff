"""Feature API: shapes, determinism, hidden-token invariance, runtime buffer conventions, and
torch vs ONNX Runtime parity of the ``features.onnx`` graph (real ONNX Runtime)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtm_runtime import masks as M
from mtm_runtime.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mtm_runtime.features import (FeatureExtractor, OrtFeatures, RuntimeFeatures, dataset_features,
                                  episode_windows, export_features_onnx, extractor_from_checkpoint,
                                  feature_mask, read_features_metadata)
from mtm_runtime.model import build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.spec import TrajectorySpec

SPEC = TrajectorySpec.create(4, states=8, actions=2, returns=1, goals=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    torch.manual_seed(0)
    net = build_model(SPEC, "embedded")
    rng = np.random.default_rng(0)
    norm = Normaliser(SPEC, {"states": rng.normal(size=8)}, {"states": rng.uniform(0.5, 2.0, size=8)})
    d = save_checkpoint(tmp_path_factory.mktemp("ck"), net, norm, provenance={"task": "test"})
    return load_checkpoint(d)


def _batch(B: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, SPEC.horizon, SPEC.packed_width)).astype(np.float32)
    m = np.stack([M.combine(feature_mask(SPEC), M.history_mask(SPEC, 1 + i % SPEC.horizon)) for i in range(B)])
    return torch.from_numpy(x), torch.from_numpy(m.astype(np.float32))


@pytest.mark.parametrize("kind,mult", [("state", 1), ("state_action", 2)])
def test_shapes_and_determinism(ckpt: Checkpoint, kind: str, mult: int) -> None:
    fx = extractor_from_checkpoint(ckpt, kind)
    x, m = _batch()
    if kind == "state_action":
        m[:, -1, SPEC.index("actions")] = 1.0
    a, b = fx(x, m), fx(x, m)
    assert a.shape == (5, mult * 64) == (5, fx.feature_dim)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.isfinite(a).all()
    # the packed (visible-only) encoder gives the same features
    packed = FeatureExtractor(fx.mtm, kind, packed=True)
    assert torch.allclose(packed(x, m), a, atol=1e-5)
    # batching does not change a sample's features
    assert torch.allclose(fx(x[2:3], m[2:3]), a[2:3], atol=1e-6)


def test_feature_mask_layout() -> None:
    m = feature_mask(SPEC)
    assert m[:, SPEC.index("states")].all() and m[:, SPEC.index("goals")].all()
    assert not m[:, SPEC.index("returns")].any()
    assert m[:-1, SPEC.index("actions")].all() and m[-1, SPEC.index("actions")] == 0
    assert feature_mask(SPEC, "state_action")[-1, SPEC.index("actions")] == 1


def test_hidden_token_values_do_not_matter(ckpt: Checkpoint) -> None:
    fx = extractor_from_checkpoint(ckpt)
    x, m = _batch()
    hidden = (1.0 - m).repeat_interleave(torch.tensor(SPEC.widths), dim=-1).bool()
    x2 = x.clone()
    x2[hidden] = 1e3
    x3 = x.clone()
    x3[hidden] = float("nan")
    ref = fx(x, m)
    assert torch.equal(fx(x2, m), ref)
    assert torch.equal(fx(x3, m), ref)
    # a visible value does matter
    x4 = x.clone()
    x4[:, -1, 0] += 1.0
    assert not torch.allclose(fx(x4, m), ref)


def test_gradients_reach_encoder_when_fine_tuned(ckpt: Checkpoint) -> None:
    fx = extractor_from_checkpoint(ckpt, frozen=False)
    x, m = _batch()
    fx(x, m).pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fx.encoder_parameters())
    assert fx.mtm.heads[0][1].weight.grad is None  # decoder untouched
    frozen = extractor_from_checkpoint(ckpt)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_episode_windows_match_runtime_buffer(ckpt: Checkpoint) -> None:
    rng = np.random.default_rng(3)
    L = 7
    ep = {"states": rng.normal(size=(L, 8)).astype(np.float32), "goals": rng.normal(size=(L, 2)).astype(np.float32),
          "actions": rng.uniform(-1, 1, size=(L, 2)).astype(np.float32), "returns": rng.normal(size=(L, 1)).astype(np.float32)}
    x, m = episode_windows([ep], SPEC, ckpt.normaliser)
    assert x.shape == (L, 4, SPEC.packed_width) and m.shape == (L, 4, SPEC.num_modalities)
    fx = extractor_from_checkpoint(ckpt)
    offline = dataset_features(fx, x, m)
    rf = RuntimeFeatures.load(ckpt.path, backend="torch")
    rf.reset()
    for t in range(L):
        online = rf.features(ep["states"][t], goal=ep["goals"][t]).copy()
        np.testing.assert_allclose(online, offline[t], atol=1e-5)
        rf.record_action(ep["actions"][t])
    # step 0 sees only itself: older positions hidden
    assert m[0, :-1].sum() == 0 and m[0, -1, SPEC.index("states")] == 1


@pytest.mark.parametrize("kind,batch", [("state", 1), ("state_action", 3)])
def test_onnx_features_parity(ckpt: Checkpoint, tmp_path, kind: str, batch: int) -> None:
    path = tmp_path / "features.onnx"
    export_features_onnx(ckpt, path, kind=kind, batch_size=batch)
    meta = read_features_metadata(path)
    assert meta["export"]["graph"] == "features" and meta["export"]["feature_kind"] == kind
    assert meta["spec"] == SPEC.to_dict() and meta["export"]["parity_max_abs_diff"] <= 1e-4
    ort = OrtFeatures(path)
    fx = extractor_from_checkpoint(ckpt, kind)
    x, m = _batch(batch, seed=7)
    if kind == "state_action":
        m[:, -1, SPEC.index("actions")] = 1.0
    got = ort.run(x.numpy(), m.numpy())
    ref = fx(x, m).numpy()
    assert got.shape == (batch, fx.feature_dim)
    assert float(np.max(np.abs(got - ref))) <= 1e-4


def test_runtime_features_onnx_vs_torch(ckpt: Checkpoint, tmp_path) -> None:
    path = tmp_path / "features.onnx"
    export_features_onnx(ckpt, path)
    a, b = RuntimeFeatures.load(path), RuntimeFeatures.load(ckpt.path, backend="torch")
    rng = np.random.default_rng(5)
    for rf in (a, b):
        rf.reset()
    for _ in range(6):
        s, g, act = rng.normal(size=8), rng.normal(size=2), rng.uniform(-1, 1, size=2)
        fa, fb = a.features(s, goal=g).copy(), b.features(s, goal=g).copy()
        assert float(np.max(np.abs(fa - fb))) <= 1e-4
        a.record_action(act)
        b.record_action(act)
