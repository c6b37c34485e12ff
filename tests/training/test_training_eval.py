"""Evaluation harness (`mtm eval`) on the bundled model, the ID/FD error formula, and the MLP
baselines (train, save without pickle, evaluate through the same harness)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtm_runtime.spec import TrajectorySpec
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.datasets import collect, write_hdf5

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "reacher_embedded"


@pytest.mark.skipif(not (BUNDLED / "mtm.json").exists(), reason="bundled model not present")
def test_mtm_eval_bundled_model_goal_mode(tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "eval", str(BUNDLED), "--mode", "goal",
                           "--episodes", "10", "--seeds", "0", "--workers", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reacher goal: normalised score" in proc.stdout and "success" in proc.stdout
    res = json.loads(out.read_text())["results"][0]
    assert res["score_mean"] >= 90.0
    assert res["success_mean"] >= 0.7  # the model reaches >= 90 % over 3 x 20 episodes (models/README.md)


@pytest.mark.skipif(not (BUNDLED / "mtm.json").exists(), reason="bundled model not present")
def test_mtm_eval_rcbc_sweep_runs(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, "-m", "mtm_runtime.training.evaluate", str(BUNDLED), "--mode", "rcbc", "--sweep",
                           "--episodes", "1", "--seeds", "0", "--workers", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    task = get_task("reacher")
    targets = [r["target_return"] for r in results]
    assert len(targets) == 5 and targets == sorted(targets)
    assert task.normalised_score(targets[3]) == pytest.approx(100.0)


BUNDLED_CHUNK = REPO / "models" / "reacher_chunk"


@pytest.mark.skipif(not (BUNDLED_CHUNK / "mtm.json").exists(), reason="bundled chunk model not present")
def test_bundled_chunk_model_keeps_its_skill_in_async_mode():
    """models/reacher_chunk (T = 8, chunk masks): async chunks of 3 with the committed action shown
    reach the goal as often as the synchronous loop (models/README.md: 3 seeds x 20 episodes)."""
    from mtm_runtime.chunk_loop import ChunkConfig
    from mtm_runtime.training.chunk_eval import evaluate_chunked

    sync = evaluate_chunked(BUNDLED_CHUNK, "reacher", ChunkConfig(), mode="goal", episodes=10, seeds=(0,))
    chunked = evaluate_chunked(BUNDLED_CHUNK, "reacher", ChunkConfig(mode="async", chunk=3, committed=1),
                               mode="goal", episodes=10, seeds=(0,))
    assert sync["success_mean"] >= 0.7 and chunked["success_mean"] >= sync["success_mean"] - 0.2
    assert chunked["score_mean"] >= sync["score_mean"] - 3.0


def test_id_fd_error_formula():
    """Repeating the previous value scores exactly 1.0; a perfect prediction 0.0."""
    from mtm_runtime.training.id_fd import id_fd_errors

    spec = TrajectorySpec.create(4, states=3, actions=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, spec.packed_width)).astype(np.float32)
    a, s = spec.slice("actions"), spec.slice("states")

    def previous(xb, mb):
        pred = np.zeros_like(xb)
        pred[:, 1:3, a] = xb[:, 0:2, a]          # ID: a_{t-1} for a_t (t = 1, 2) ...
        pred[:, 0, a] = xb[:, 0, a]              # ... and exact at t = 0
        pred[:, 3, s] = xb[:, 2, s]              # FD: s_{T-2} for s_{T-1}
        return pred

    errs = id_fd_errors(previous, spec, x)
    assert errs["fd_error"] == pytest.approx(1.0, rel=1e-6)
    assert errs["id_error"] == pytest.approx(2.0 / 3.0, rel=1e-6)  # 2 of 3 scored actions repeat, one exact
    den = ((x[:, 3, s] - x[:, 2, s]) ** 2).mean()
    assert errs["visible_state_error"] == pytest.approx((x[:, 2, s] ** 2).mean() / den, rel=1e-5)  # s_{T-2} left at 0
    exact = id_fd_errors(lambda xb, mb: xb.copy(), spec, x)
    assert exact["id_error"] == 0.0 and exact["fd_error"] == 0.0 and exact["visible_state_error"] == 0.0


def test_baselines_train_save_and_evaluate(tmp_path):
    from mtm_runtime.training.baselines import baseline_id_fd, load_baseline_agent, train_baseline
    from mtm_runtime.training.evaluate import evaluate_agent_path
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes
    from mtm_runtime.training.pipeline import fit_normaliser

    task = get_task("reacher")
    data = write_hdf5(tmp_path / "r.hdf5", collect(task, "expert", 16, seed=1), task, "expert", 1)
    train_eps, _ = split_episodes(load_episodes(data), 0.25, seed=0)
    norm = fit_normaliser(TrajectorySpec.create(4, **task.modality_widths()), train_eps)
    prov = {"val_fraction": 0.25, "seed": 0, "horizon": 4}
    for kind, mode in (("bc", "bc"), ("rcbc", "rcbc"), ("gcbc", "goal"), ("id", None), ("fd", None)):
        res = train_baseline(kind, task, train_eps, norm, 40, 64, 1e-3, tmp_path / kind, provenance=prov)
        assert math.isfinite(res["final_loss"])
        assert not list((tmp_path / kind).glob("*.pt"))
        if mode is not None:
            agent = load_baseline_agent(tmp_path / kind)
            assert agent.modes == (mode,)
            r = evaluate_agent_path(tmp_path / kind, task, mode, episodes=1, seeds=(0,), workers=1)
            assert math.isfinite(r["score_mean"]) and r["success_mean"] is not None
    errs = baseline_id_fd(tmp_path / "id", data)
    assert errs["id_error"] > 0 and math.isnan(errs["fd_error"])
    errs = baseline_id_fd(tmp_path / "fd", data)
    assert errs["fd_error"] > 0 and math.isnan(errs["id_error"]) and math.isnan(errs["visible_state_error"])
