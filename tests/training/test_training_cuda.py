"""Training on CUDA: ``mtm train`` (bf16 autocast) and the MLP baselines run on the GPU, save
weights that load on the CPU, and compute there what they computed on the GPU. Skipped, with the
reason, on a machine without CUDA (the CPU path is covered by test_training_train.py)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtm_runtime import masks as M
from mtm_runtime.checkpoint import load_checkpoint
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.datasets import collect, write_hdf5
from mtm_runtime.training.train import run
from mtm_runtime.training.train_args import Args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")


@pytest.fixture(scope="module")
def reacher_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cuda") / "reacher_expert.hdf5"
    task = get_task("reacher")
    return write_hdf5(path, collect(task, "expert", 30, seed=5), task, "expert", 5)


def test_mtm_train_on_cuda_saves_weights_the_cpu_reproduces(reacher_data: Path, tmp_path: Path) -> None:
    args = Args(data=str(reacher_data), out=str(tmp_path / "run"), steps=60, batch_size=64, val_every=30,
                ckpt_every=0, warmup_steps=5, val_windows=64, progress=False, plot=False, device="cuda")
    res = run(args)
    assert res["device"] == "cuda:0" and math.isfinite(res["loss"]) and res["samples_per_s"] > 0
    ckpt = load_checkpoint(tmp_path / "run")
    cpu_model = ckpt.build_model()
    assert all(p.device.type == "cpu" for p in cpu_model.parameters())
    gpu_model = ckpt.build_model().to("cuda")
    x = np.random.default_rng(0).standard_normal((8, ckpt.spec.horizon, ckpt.spec.packed_width)).astype(np.float32)
    m = np.broadcast_to(M.bc_mask(ckpt.spec), (8,) + M.bc_mask(ckpt.spec).shape).copy()
    with torch.inference_mode():
        y_cpu = cpu_model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        y_gpu = gpu_model(torch.from_numpy(x).cuda(), torch.from_numpy(m).cuda()).cpu().numpy()
    assert np.isfinite(y_cpu).all()
    np.testing.assert_allclose(y_gpu, y_cpu, atol=1e-3)  # fp32 on both (TF32 off by default for matmul)


def test_baseline_trains_on_cuda_and_loads_on_cpu(reacher_data: Path, tmp_path: Path) -> None:
    from mtm_runtime.training.baselines import load_baseline, train_baseline
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes
    from mtm_runtime.training.pipeline import fit_normaliser
    from mtm_runtime.spec import TrajectorySpec

    task = get_task("reacher")
    train_eps, _ = split_episodes(load_episodes(reacher_data), 0.25, seed=0)
    norm = fit_normaliser(TrajectorySpec.create(4, **task.modality_widths()), train_eps)
    losses = {}
    for device in ("cpu", "cuda"):
        res = train_baseline("bc", task, train_eps, norm, 200, 64, 1e-3, tmp_path / device, device=device)
        losses[device] = res["final_loss"]
        _meta, _spec, _norm, net = load_baseline(tmp_path / device)
        assert all(p.device.type == "cpu" for p in net.parameters())
    # same seed, same batches: the two devices train the same network up to float rounding
    assert math.isfinite(losses["cuda"]) and abs(losses["cuda"] - losses["cpu"]) < 0.2 * losses["cpu"] + 1e-3, losses
