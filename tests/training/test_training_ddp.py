"""training/train.py under real torchrun: two processes, gloo on CPU, DDP keeps ranks identical."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtm_runtime.checkpoint import load_checkpoint
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.datasets import collect, write_hdf5

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def reacher_small(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "reacher_expert.hdf5"
    task = get_task("reacher")
    return write_hdf5(path, collect(task, "expert", 12, seed=3), task, "expert", 3)


@pytest.mark.timeout(180)
def test_torchrun_two_ranks_end_identical(reacher_small, tmp_path):
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "mtm_runtime.training.train",
           "--data", str(reacher_small), "--out", str(out), "--steps", "6", "--batch-size", "16",
           "--val-every", "0", "--ckpt-every", "3", "--threads", "1", "--no-progress", "--no-plot",
           "--val-windows", "32", "--warmup-steps", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d)/2 final weights sha256 ([0-9a-f]{64})", proc.stdout + proc.stderr))
    assert set(digests) == {"0", "1"}, proc.stdout[-2000:]
    assert digests["0"] == digests["1"]
    ckpt = load_checkpoint(out)  # only rank 0 wrote, and what it wrote loads
    assert ckpt.provenance["world_size"] == 2 and ckpt.provenance["steps"] == 6
    from mtm_runtime.training.train_checkpoint import weights_digest

    assert weights_digest(ckpt.build_model()) == digests["0"]
