"""PolicyBatch (lockstep policies over one batched backend call) and vectorised evaluation:
the same actions as separate Policies, members that sit out untouched, refusals, and episode
results that do not depend on the batch size or worker count."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtm_runtime.backends import BackendError
from mtm_runtime.checkpoint import save_checkpoint
from mtm_runtime.model import MTMConfig, build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.policy import InputError, Policy
from mtm_runtime.policy_batch import PolicyBatch
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec

SPEC = TrajectorySpec.create(4, states=3, actions=2, returns=1, goals=2)
BUNDLED = Path(__file__).resolve().parents[2] / "models" / "reacher_embedded"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    norm = Normaliser(SPEC, {"states": np.array([1.0, 2.0, 3.0])}, {"states": np.full(3, 2.0), "returns": np.array([10.0])})
    lim = ActionLimits(np.array([-0.5, -0.5]), np.array([0.5, 0.5]))
    model = build_model(SPEC, MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2))
    save_checkpoint(tmp_path / "ck", model, norm, lim)
    return tmp_path / "ck"


def condition(p, i: int, mode: str) -> None:
    p.set_mode(mode, target_return=5.0 + i, goal=np.array([0.1 * i, -0.1]))
    p.reset()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_batch_matches_separate_policies_and_idle_members_are_untouched(checkpoint, backend):
    """Four members in three modes; members sit out on some steps (a finished episode waiting);
    every action equals a lone Policy fed the same steps."""
    modes = ["bc", "rcbc", "goal", "rcbc"]
    batch = PolicyBatch.load(checkpoint, 4, backend=backend)
    lone = [Policy.load(checkpoint, backend="torch") for _ in modes]
    for i, m in enumerate(modes):
        condition(batch.members[i], i, m)
        condition(lone[i], i, m)
    rng = np.random.default_rng(0)
    for t in range(9):
        rows = [i for i in range(4) if (t + i) % 3]  # each member skips every third step
        states = rng.normal(size=(len(rows), 3)).astype(np.float32)
        rewards = [None if t == 0 else float(rng.normal()) for _ in rows]
        got = batch.act(rows, states, rewards).copy()
        want = np.stack([lone[i].act(states[k], rewards[k]) for k, i in enumerate(rows)])
        # a batch of rows may take another GEMM kernel than one row (seen with 16 threads): ~1e-9 apart
        np.testing.assert_allclose(got, want, atol=1e-6 if backend == "torch" else 1e-5, rtol=0)
        assert np.all(np.abs(got) <= 0.5)  # the members' limits hold
        for i in range(4):
            assert batch.members[i].buffer.steps == lone[i].buffer.steps


def test_member_refuses_its_own_act_and_bad_rows_or_inputs_are_refused(checkpoint):
    batch = PolicyBatch.load(checkpoint, 2)
    for p in batch.members:
        p.reset()
    with pytest.raises(BackendError, match="member of a PolicyBatch"):
        batch.members[0].act(np.zeros(3))
    with pytest.raises(InputError, match="distinct"):
        batch.act([1, 1], np.zeros((2, 3)), [None, None])
    with pytest.raises(InputError, match="state contains NaN"):
        batch.act([0, 1], np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]), [None, None])
    batch.members[1].set_mode("goal")
    batch.members[1].reset()
    with pytest.raises(InputError, match="goal mode needs a goal"):
        batch.act([1], np.zeros((1, 3)), [None])


@pytest.mark.skipif(not (BUNDLED / "mtm.json").exists(), reason="bundled model not present")
def test_episode_results_do_not_depend_on_batch_size_or_workers():
    """The bundled Reacher model: 6 goal episodes one at a time, 4 at a time (members take the
    next waiting episode when theirs ends) and over 2 worker processes give the same returns."""
    from mtm_runtime.training.evaluate import evaluate_agent_path

    runs = {(b, w): evaluate_agent_path(BUNDLED, "reacher", "goal", episodes=3, seeds=(0, 1), workers=w, batch=b)
            for b, w in ((1, 1), (4, 1), (16, 2))}
    ref = runs[(1, 1)]
    for key, res in runs.items():
        np.testing.assert_allclose(res["score_per_seed"], ref["score_per_seed"], rtol=1e-6, err_msg=str(key))
        assert res["success_per_seed"] == ref["success_per_seed"], key
    assert ref["episodes_per_seed"] == 3
