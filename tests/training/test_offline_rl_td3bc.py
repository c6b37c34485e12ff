"""Offline TD3+BC: reward relabelling, transitions, and a short real-MuJoCo run that beats a
uniform-random policy under the relabelled reward (raw states and frozen MTM features)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtm_runtime.checkpoint import save_checkpoint
from mtm_runtime.model import build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.spec import TrajectorySpec
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.datasets import collect, write_hdf5
from mtm_runtime.training.sources import load_episodes
from mtm_runtime.training.offline_data import RELABELS, build_transitions, get_relabel
from mtm_runtime.training.offline_rl import Config, train


@pytest.fixture(scope="module")
def reacher_data(tmp_path_factory: pytest.TempPathFactory):
    task = get_task("reacher")
    path = write_hdf5(tmp_path_factory.mktemp("d") / "reacher_medium.hdf5",
                      collect(task, "medium", 40, seed=3), task, "medium", 3)
    return path, load_episodes(path)


def test_relabel_registry_and_transitions(reacher_data) -> None:
    task = get_task("reacher")
    _, eps = reacher_data
    rl = get_relabel("", task)
    assert rl is RELABELS["reacher_exp_distance"]
    with pytest.raises(ValueError):
        get_relabel("idp_effort", task)
    tr = build_transitions(eps, task, rl)
    # reacher episodes are time-limited (50 steps): the last step of each has no successor
    assert len(tr.idx) == sum(ep.length - 1 for ep in eps)
    assert np.all(tr.next_idx == tr.idx + 1) and not tr.dones.any()
    assert tr.observations.shape[1] == task.obs_dim
    # the relabelled reward is a function of (obs, action), not the dataset's reward
    o, a = tr.observations[tr.idx[:5]], tr.actions[tr.idx[:5]]
    np.testing.assert_allclose(tr.rewards[:5], rl.fn(o.astype(np.float64), a.astype(np.float64)), rtol=1e-5)
    idp = get_task("inverted_double_pendulum")
    r = get_relabel("", idp).fn(np.zeros((2, 9)), np.array([[0.0], [1.0]]))
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(0.5)


def _random_new_return(task, rl, episodes: int = 5, seed: int = 10_000) -> float:
    rng = np.random.default_rng(0)
    total = []
    for i in range(episodes):
        env = task.make_env()
        obs, _ = env.reset(seed=seed + i)
        ret, done = 0.0, False
        while not done:
            a = rng.uniform(-1, 1, size=task.action_dim).astype(np.float32)
            ret += float(rl.fn(obs[None].astype(np.float64), a[None].astype(np.float64))[0])
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
        total.append(ret)
        env.close()
    return float(np.mean(total))


def test_td3bc_beats_random_policy(tmp_path) -> None:
    """InvertedDoublePendulum, 15 medium episodes, 800 steps: the relabelled (effort-penalised)
    return beats a uniform-random policy's by a wide margin."""
    task = get_task("inverted_double_pendulum")
    path = write_hdf5(tmp_path / "idp.hdf5", collect(task, "medium", 15, seed=3), task, "medium", 3)
    cfg = Config(data=str(path), steps=800, batch_size=64, hidden=64, eval_every=0, eval_episodes=5,
                 max_episode_steps=200, seed=0)
    res = train(cfg, log=lambda s: None)
    random_ret = _random_new_return(task, get_relabel("", task))
    final = res["final"]
    assert np.isfinite(final["critic_loss"]) and final["step"] == 800
    assert final["new_return"] > 3.0 * random_ret, (final, random_ret)
    assert final["score"] > 1.0  # D4RL-normalised: random policy = 0 (episodes capped at 200 steps)


def test_td3bc_on_frozen_features_runs(reacher_data, tmp_path) -> None:
    _, eps = reacher_data
    task = get_task("reacher")
    spec = TrajectorySpec.create(4, **task.modality_widths())
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "mtm", build_model(spec, "embedded"), Normaliser.identity(spec))
    for rep in ("frozen", "finetune"):
        res = train(Config(task="reacher", representation=rep, checkpoint=str(ck), steps=20, batch_size=32,
                           hidden=32, eval_every=0, eval_episodes=2), eps, log=lambda s: None)
        assert res["final"]["step"] == 20 and np.isfinite(res["final"]["new_return"])
