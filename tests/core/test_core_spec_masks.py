"""TrajectorySpec and masks: layout, serialisation, and the semantics of every mask pattern."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtm_runtime import masks as M
from mtm_runtime.spec import SpecError, TrajectorySpec, pack, unpack


def make_spec(T: int = 4, goals: bool = False) -> TrajectorySpec:
    widths = {"states": 5, "actions": 2, "returns": 1}
    if goals:
        widths["goals"] = 3
    return TrajectorySpec.create(T, **widths)


specs = st.builds(make_spec, st.integers(2, 8), st.booleans())


def test_layout_and_json_round_trip():
    spec = make_spec(4, goals=True)
    assert spec.packed_width == 11 and spec.num_modalities == 4 and spec.num_tokens == 16
    assert spec.slice("actions") == slice(5, 7) and spec.token_index(2, "returns") == 2 * 4 + 2
    again = TrajectorySpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    x = np.arange(2 * 4 * 11, dtype=np.float32).reshape(2, 4, 11)
    np.testing.assert_array_equal(pack(spec, unpack(spec, x)), x)


@pytest.mark.parametrize("bad, field", [
    ({"horizon": 0, "modalities": [{"name": "states", "width": 3}]}, "spec.horizon"),
    ({"horizon": 4, "modalities": [{"name": "states", "width": 0}]}, "spec.modalities[0].width"),
    ({"horizon": 4, "modalities": [{"name": "actions", "width": 2}]}, "'states'"),
    ({"horizon": 4, "modalities": [{"name": "states", "width": 2}, {"name": "states", "width": 2}]}, "twice"),
    ({"modalities": []}, "spec.horizon is missing"),
    ({"horizon": 4, "modalities": [{"name": "Bad Name", "width": 2}]}, "spec.modalities[0].name"),
])
def test_validation_names_the_field(bad, field):
    with pytest.raises(SpecError, match=None) as e:
        TrajectorySpec.from_dict(bad)
    assert field in str(e.value)


def test_check_compatible_names_difference():
    a, b = make_spec(4), TrajectorySpec.create(4, states=5, actions=3, returns=1)
    with pytest.raises(SpecError, match=r"actions\]\.width is 3, expected 2"):
        a.check_compatible(b)


def cols(spec, mask, name):
    return mask[:, spec.index(name)]


@given(specs)
def test_inference_mask_semantics(spec):
    T = spec.horizon
    bc = M.bc_mask(spec)
    assert bc.shape == (T, spec.num_modalities) and bc.dtype == np.float32
    assert cols(spec, bc, "states").all() and cols(spec, bc, "actions")[:-1].all()
    assert cols(spec, bc, "actions")[-1] == 0 and not cols(spec, bc, "returns").any()
    rc = M.rcbc_mask(spec)
    assert cols(spec, rc, "returns").all() and cols(spec, rc, "actions")[-1] == 0
    idm = M.id_mask(spec)
    assert cols(spec, idm, "states").all() and not cols(spec, idm, "actions").any()
    fd = M.fd_mask(spec)
    assert cols(spec, fd, "states")[:-1].all() and cols(spec, fd, "states")[-1] == 0
    assert cols(spec, fd, "actions")[:-1].all() and cols(spec, fd, "actions")[-1] == 0
    g = M.goal_mask(spec)
    if "goals" in spec:
        assert cols(spec, g, "goals").all() and cols(spec, g, "actions")[-1] == 0
    else:  # goal = last state, predict a[T-2]
        assert cols(spec, g, "states").all() and not cols(spec, g, "actions")[-2:].any()
    for mode in M.available_modes(spec):
        M.validate_mask(spec, M.mode_mask(spec, mode))


@given(specs, st.integers(0, 8))
def test_history_mask_combines_by_and(spec, k):
    k = min(k, spec.horizon)
    h = M.history_mask(spec, k)
    assert h[: spec.horizon - k].sum() == 0 and h[spec.horizon - k:].all()
    bc = M.combine(M.bc_mask(spec), h)
    np.testing.assert_array_equal(bc, M.bc_mask(spec) * h)
    miss = M.combine(M.rcbc_mask(spec), M.missing_mask(spec, ["returns"]))
    np.testing.assert_array_equal(miss, M.bc_mask(spec))


@settings(max_examples=60)
@given(specs, st.integers(0, 2**32 - 1), st.integers(1, 16))
def test_training_masks_per_sample_and_valid(spec, seed, batch):
    rng = np.random.default_rng(seed)
    m = M.sample_training_masks(spec, batch, rng, kinds=("auto", "random", "bc"))
    assert m.shape == (batch, spec.horizon, spec.num_modalities)
    M.validate_mask(spec, m)


@settings(max_examples=60)
@given(specs, st.integers(0, 2**32 - 1), st.permutations(["states", "actions", "returns"]))
def test_auto_mask_is_a_prefix_in_time_then_modality_order(spec, seed, order):
    """With keep ratio 1 the only hidden tokens are the cut's future: read in (time, order)
    order the mask is 1...1 0...0, and the cut point varies."""
    order = order + (["goals"] if "goals" in spec else [])
    rng = np.random.default_rng(seed)
    m = M.sample_training_masks(spec, 32, rng, kinds=("auto",), keep_ratios=(1.0,), modality_order=order)
    cols = [spec.index(n) for n in order]
    for w in m:
        seq = w[:, cols].reshape(-1)
        first_hidden = np.flatnonzero(seq == 0)
        if len(first_hidden):
            assert not seq[first_hidden[0]:].any(), seq
    assert len({w.tobytes() for w in m}) > 1


def test_per_sample_masks_differ_within_a_batch():
    spec = make_spec(4)
    m = M.sample_training_masks(spec, 64, np.random.default_rng(0))
    assert len({mm.tobytes() for mm in m}) > 10


def test_validate_mask_refuses_bad_masks():
    spec = make_spec(4)
    with pytest.raises(M.MaskError, match="no visible token"):
        M.validate_mask(spec, np.zeros((4, 3)))
    with pytest.raises(M.MaskError, match="shape"):
        M.validate_mask(spec, np.ones((3, 3)))
    with pytest.raises(M.MaskError, match="only 0 and 1"):
        M.validate_mask(spec, np.full((4, 3), 0.5))


@given(st.integers(0, 2**32 - 1))
def test_apply_availability_never_leaves_a_window_blind(seed):
    spec = make_spec(4)
    rng = np.random.default_rng(seed)
    present = np.ones((8, 4, 3), np.float32)
    present[:, :, spec.index("actions")] = 0.0  # unlabelled episodes
    m = M.apply_availability(M.sample_training_masks(spec, 8, rng), present, rng)
    assert not (m * (1 - present)).any()
    M.validate_mask(spec, m)


def test_render_matches_docstring_diagram():
    spec = TrajectorySpec.create(4, states=1, actions=1, returns=1)
    assert M.render(spec, M.bc_mask(spec)).splitlines()[1] == "actions # # # ."
