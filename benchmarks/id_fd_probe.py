"""ID/FD only: the capability benchmark's MTM against MLP-ID and MLP-FD, without rollouts, so that a
larger model and budget (the ``full`` config's ``paper`` preset at batch 1024) fit in a short GPU lease.

    python benchmarks/id_fd_probe.py --config full --steps 8000 \\
        --only inverted_double_pendulum:expert,hopper:expert,hopper:medium-replay,inverted_double_pendulum:medium-replay

Each job is the ID/FD part of ``capabilities.main_job``, unchanged: the same dataset, MTM training
(masks, schedule), MLP training and error formula; one process per job, all at once (one GPU is
shared: the models are small and each step is mostly host work). Prints one JSON object (machine,
config, per-job errors and the MTM / MLP ratio) and writes it to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import capabilities as C  # noqa: E402
from benchmarks.common import emit_json, machine  # noqa: E402


def probe_job(job: tuple[str, str, dict[str, Any], str]) -> dict[str, Any]:
    """Train the MTM and MLP-ID/FD of one (task, tier) and return their validation errors."""
    import torch

    from mtm_runtime.checkpoint import load_checkpoint
    from sim.tasks import get_task
    from training.loaders import load_episodes, split_episodes

    task_name, tier, cfg, out_s = job
    torch.set_num_threads(2)  # several jobs share the machine's cores
    t0 = time.perf_counter()
    task, out = get_task(task_name), Path(out_s)
    data = C.dataset(out, cfg, task_name, tier, C.episodes_for(cfg, task_name, tier))
    run_dir = out / "runs" / f"{task_name}_{tier}"
    mtm = C.train_mtm(cfg, data, run_dir / "mtm", task_name)
    train_eps, val_eps = split_episodes(load_episodes(data, task), 0.1, seed=0)
    C.train_baselines(["id", "fd"], task, train_eps, load_checkpoint(run_dir / "mtm"), cfg, run_dir)
    table = C.id_fd_table(run_dir, val_eps)
    return {"task": task_name, "tier": tier, "train_episodes": len(train_eps), "val_episodes": len(val_eps),
            "mtm_samples_per_s": mtm.get("samples_per_s"), "mtm_device": mtm.get("device"),
            "id_fd": table, "ratio_mtm_vs_mlp": {
                "id": table["mtm"]["id_error"] / table["mlp_id"]["id_error"],
                "fd": table["mtm"]["fd_error"] / table["mlp_fd"]["fd_error"]},
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="full", choices=tuple(C.CONFIGS))
    p.add_argument("--steps", type=int, default=0, help="gradient steps of every model (default from the config)")
    p.add_argument("--only", required=True, help="comma list of task:tier")
    p.add_argument("--out", default="/tmp/mtm_id_fd_probe", help="work directory (datasets, runs)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    cfg = dict(C.CONFIGS[a.config], **({"steps": a.steps} if a.steps else {}))
    jobs = [(*s.strip().split(":"), cfg, a.out) for s in a.only.split(",") if s.strip()]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(probe_job, jobs, chunksize=1)
    emit_json({"benchmark": "id_fd_probe", "machine": machine(), "config_name": a.config,
               "preset": cfg["preset"], "steps": cfg["steps"], "batch_size": cfg["batch_size"],
               "masks": list(C.mtm_masks(cfg, "hopper")), "wall_s": time.perf_counter() - t0,
               "results": results}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
