"""Normaliser, checkpoints (bit-exact round trip, tampering refused) and the minimal trainer."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mtm_runtime import masks as M
from mtm_runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtm_runtime.integrity import stamp_json
from mtm_runtime.commands import toy
from mtm_runtime.policy import Policy
from mtm_runtime.model import MTMConfig, build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import SpecError, TrajectorySpec

SPEC = TrajectorySpec.create(4, states=3, actions=2, returns=1)
CFG = MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2)


def fitted_normaliser(seed=0) -> Normaliser:
    rng = np.random.default_rng(seed)
    data = {"states": rng.normal(3.0, 2.0, (500, 3)), "actions": rng.normal(0, 0.5, (500, 2)),
            "returns": rng.normal(50, 10, (500, 1))}
    data["states"][:, 2] = 1.0  # a constant dimension: std floored, not zero
    return Normaliser.fit(SPEC, data, std_floor=1e-2)


def test_normaliser_round_trip_and_floor():
    n = fitted_normaliser()
    assert n.std["states"][2] == pytest.approx(1e-2) and n.mean["returns"][0] == 0.0  # scale-only
    x = np.random.default_rng(1).normal(size=(10, 4, SPEC.packed_width)).astype(np.float32)
    np.testing.assert_allclose(n.denormalise_packed(n.normalise_packed(x)), x, atol=1e-5)
    again = Normaliser.from_dict(SPEC, json.loads(json.dumps(n.to_dict())))
    np.testing.assert_array_equal(again.std["states"], n.std["states"])
    with pytest.raises(SpecError, match=r"normaliser.std.actions is missing"):
        d = n.to_dict()
        del d["std"]["actions"]
        Normaliser.from_dict(SPEC, d)


def test_normaliser_ignores_missing_rows():
    data = {"states": np.ones((10, 3)), "actions": np.full((10, 2), np.nan)}
    data["actions"][:3] = 2.0
    n = Normaliser.fit(SPEC, data)
    assert n.mean["actions"][0] == pytest.approx(2.0)


@pytest.fixture
def ckpt_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model(SPEC, CFG)
    limits = ActionLimits(np.array([-1, -2]), np.array([1, 2]))
    return save_checkpoint(tmp_path / "ck", model, fitted_normaliser(), limits, {"task": "unit"}), model


def test_checkpoint_round_trip_bit_exact(ckpt_dir):
    d, model = ckpt_dir
    ck = load_checkpoint(d)
    assert ck.spec == SPEC and ck.config == CFG and ck.provenance["task"] == "unit"
    np.testing.assert_array_equal(ck.action_limits.high, [1, 2])
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.state_dict[k]), k
    x = torch.randn(2, 4, SPEC.packed_width)
    m = torch.from_numpy(M.bc_mask(SPEC))[None].repeat(2, 1, 1)
    assert torch.equal(model.eval()(x, m), ck.build_model()(x, m))


def test_corrupt_weights_refused(ckpt_dir):
    d, _ = ckpt_dir
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"model.safetensors: sha256"):
        load_checkpoint(d)


def test_missing_files_refused(ckpt_dir):
    d, _ = ckpt_dir
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors: \(file\): missing"):
        load_checkpoint(d)
    shutil.rmtree(d)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(d)


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(format="something-else"), "format"),
    (lambda m: m["spec"].update(horizon=0), "spec"),
    (lambda m: m["model_config"].update(d_model=33), "model_config"),
    (lambda m: m["normaliser"]["mean"].pop("states"), "normaliser"),
    (lambda m: m["weights"].update(file="../../etc/passwd"), "weights.file"),
    (lambda m: m["spec"]["modalities"][0].update(width=4), "sha256|states"),  # spec changed: shapes differ
    (lambda m: m.update(action_limits={"low": [0], "high": [1]}), "action_limits"),
])
def test_tampered_metadata_refused_with_field(ckpt_dir, edit, field):
    """Each edit is refused by the integrity digest, naming the top-level field; with the digest
    recomputed (someone who knows the scheme), by the field's own validation."""
    d, _ = ckpt_dir
    meta = json.loads((d / "mtm.json").read_text())
    edit(meta)
    (d / "mtm.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="digest mismatch") as e:
        load_checkpoint(d)
    assert "mtm.json: " in str(e.value)
    (d / "mtm.json").write_text(json.dumps(stamp_json(meta)))
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(d)


def test_invalid_json_refused(ckpt_dir):
    d, _ = ckpt_dir
    (d / "mtm.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"mtm.json: \(json\)"):
        load_checkpoint(d)


def test_expected_spec_mismatch_refused(ckpt_dir):
    d, _ = ckpt_dir
    other = TrajectorySpec.create(4, states=3, actions=1, returns=1)
    with pytest.raises(CheckpointError, match=r"spec: .*width is 2, expected 1"):
        load_checkpoint(d, expect_spec=other)


def test_no_pickle_on_the_load_path(ckpt_dir, monkeypatch):
    import pickle

    def boom(*a, **k):
        raise AssertionError("pickle used on the load path")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    load_checkpoint(ckpt_dir[0]).build_model()


def test_sinusoid_training_cuts_heldout_bc_error_10x(tmp_path):
    r = toy.run(steps=300, out=tmp_path, plot=True, verbose=False)
    assert r["improvement"]["bc"] >= 10.0, r
    assert r["improvement"]["fd"] >= 10.0, r
    assert (tmp_path / "toy_reconstruction.png").stat().st_size > 1000
    load_checkpoint(tmp_path / "checkpoint")
    policy = Policy.load(tmp_path / "checkpoint")  # carries the toy's limits, so it loads and acts
    action = policy.act(np.array([1.0, 0.0], np.float32))
    assert policy.limits.contains(action) and np.all(np.isfinite(action))
