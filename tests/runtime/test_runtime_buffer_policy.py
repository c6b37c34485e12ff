"""TrajectoryBuffer and Policy: episode start, wrap-around, reset, RTG bookkeeping, modes,
refused inputs, limits and an allocation-free steady state."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from mtm_runtime import masks as M
from mtm_runtime.backends import Backend
from mtm_runtime.buffer import TrajectoryBuffer
from mtm_runtime.checkpoint import save_checkpoint
from mtm_runtime.model import MTMConfig, build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.policy import InferenceError, InputError, Policy
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec

SPEC = TrajectorySpec.create(4, states=3, actions=2, returns=1, goals=2)
CFG = MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2)


def normaliser() -> Normaliser:
    return Normaliser(SPEC, {"states": np.array([1.0, 2.0, 3.0])}, {"states": np.array([2.0, 2.0, 2.0]),
                                                                     "returns": np.array([10.0])})


def test_buffer_episode_start_wraparound_reset():
    buf = TrajectoryBuffer(SPEC, normaliser())
    s_col, a_col = SPEC.index("states"), SPEC.index("actions")
    for t in range(6):
        buf.begin_step()
        buf.write("states", np.array([1.0 + 2 * t, 2.0, 3.0]))  # normalised first dim == t
        x, avail = buf.window()
        k = min(t + 1, 4)
        np.testing.assert_array_equal(avail[0, :, s_col], [0] * (4 - k) + [1] * k)
        assert avail[0, -1, a_col] == 0  # current action not yet known
        np.testing.assert_allclose(x[0, 4 - k:, 0], np.arange(t + 1 - k, t + 1))
        buf.write("actions", np.array([t, -t]))
    x, avail = buf.window()
    np.testing.assert_array_equal(avail[0, :, a_col], [1, 1, 1, 1])
    buf.reset()
    buf.begin_step()
    buf.write("states", np.zeros(3))
    _, avail = buf.window()
    assert avail[0, :3].sum() == 0 and buf.history_len == 1


def make_policy(tmp_path, limits=None, backend_cls=None) -> Policy:
    torch.manual_seed(0)
    model = build_model(SPEC, CFG)
    lim = limits or ActionLimits(np.array([-0.5, -0.5]), np.array([0.5, 0.5]))
    save_checkpoint(tmp_path / "ck", model, normaliser(), lim)
    return Policy.load(tmp_path / "ck", backend="torch", mode="bc")


def test_modes_switch_without_reload_and_invalid_mode_refused(tmp_path):
    p = make_policy(tmp_path)
    assert p.modes == ("bc", "rcbc", "goal")
    with pytest.raises(InputError, match="rcbc mode needs a target return"):
        p.set_mode("rcbc")
        p.act(np.zeros(3))
    p.set_mode("goal", goal=np.array([0.1, 0.2]))
    p.act(np.zeros(3))
    with pytest.raises(InputError, match="not available"):
        p.set_mode("dance")
    assert p.mode == "goal"


def test_rtg_bookkeeping(tmp_path):
    p = make_policy(tmp_path)
    p.set_mode("rcbc", target_return=100.0)
    p.reset()
    p.act(np.zeros(3), reward=5.0)  # first step: reward ignored
    assert p._rtg == 100.0
    p.act(np.zeros(3), reward=5.0)
    p.act(np.zeros(3), reward=2.5)
    assert p._rtg == pytest.approx(92.5)
    np.testing.assert_allclose(p.buffer.read("returns"), [9.25])  # normalised by scale 10
    np.testing.assert_allclose(p.buffer.read("returns", age=2), [10.0])
    p.reset()
    assert p._rtg == 100.0


@pytest.mark.parametrize("bad, msg", [
    (np.array([np.nan, 0, 0]), "NaN or Inf"),
    (np.array([np.inf, 0, 0]), "NaN or Inf"),
    (np.zeros(4), "shape"),
    (np.zeros((1, 3)), "shape"),
    (np.array(["a", "b", "c"]), "numeric"),
])
def test_invalid_inputs_refused_before_the_model(tmp_path, bad, msg):
    p = make_policy(tmp_path)
    p.act(np.zeros(3))
    steps = p.buffer.steps
    with pytest.raises(InputError, match=msg):
        p.act(bad)
    assert p.buffer.steps == steps  # nothing reached the buffer


def test_actions_clipped_to_limits_and_written_back(tmp_path):
    p = make_policy(tmp_path, limits=ActionLimits(np.array([0.0, 0.0]), np.array([1e-4, 1e-4])))
    a = p.act(np.ones(3))
    assert np.all(a >= 0) and np.all(a <= 1e-4)
    np.testing.assert_allclose(p.buffer.read("actions"), a)  # executed action is the history


class NaNBackend(Backend):
    name = "nan"

    def run(self, x, mask):
        return np.full(self.output_shape, np.nan, np.float32)


def test_non_finite_backend_output_never_emitted():
    p = Policy(SPEC, normaliser(), NaNBackend(SPEC), ActionLimits.symmetric(1.0, 2))
    with pytest.raises(InferenceError, match="non-finite"):
        p.act(np.zeros(3))


def test_policy_matches_direct_model_call(tmp_path):
    p = make_policy(tmp_path)
    model = p.backend.model
    states = np.random.default_rng(0).normal(size=(3, 3))
    for s in states:
        a = p.act(s).copy()
    x, avail = p.buffer.window()
    # recompute the last step by hand: window before the action was written back
    x = x.copy()
    x[0, -1, SPEC.slice("actions")] = 0
    mask = M.combine(M.bc_mask(SPEC)[None], avail)
    mask[0, -1, SPEC.index("actions")] = 0
    with torch.no_grad():
        y = model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    expect = np.clip(y[0, -1, SPEC.slice("actions")], -0.5, 0.5)  # actions mean 0 std 1
    np.testing.assert_allclose(a, expect, atol=1e-5)


def test_steady_state_act_allocates_no_numpy_arrays(tmp_path):
    """Same output object every step, and no memory retained per step once warm (a retained
    array per step would cost >= 96 bytes/step; numpy's bounded internal caches fill during the
    warm-up). Transient scalars from the finiteness check are not arrays."""
    p = make_policy(tmp_path)
    state = np.ones(3)
    ids = {id(p.act(state)) for _ in range(5)}
    assert len(ids) == 1 and not p.act(state).flags.writeable
    tracemalloc.start()
    try:
        for _ in range(3000):
            p.act(state)
        before = tracemalloc.take_snapshot()
        for _ in range(2000):
            p.act(state)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    flt = [tracemalloc.Filter(True, "*numpy*"), tracemalloc.Filter(True, "*mtm_runtime*")]
    grown = sum(s.size_diff for s in after.filter_traces(flt).compare_to(before.filter_traces(flt), "lineno"))
    assert grown < 2000 * 8, f"act() retained {grown} bytes over 2000 steps"


def test_id_and_fd_helpers_shapes(tmp_path):
    p = make_policy(tmp_path)
    acts = p.infer_actions(np.zeros((4, 3)))
    assert acts.shape == (3, 2)
    nxt = p.predict_next_state(np.zeros((3, 3)), np.zeros((3, 2)))
    assert nxt.shape == (3,)
    with pytest.raises(InputError, match="shape"):
        p.infer_actions(np.zeros((3, 3)))
