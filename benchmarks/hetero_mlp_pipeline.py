"""The heteromodal experiment's missing baseline: the same use of state-only episodes without MTM.

    python benchmarks/hetero_mlp_pipeline.py --tasks inverted_double_pendulum --draws 0,1,2,3,4,5

Per (task, label draw), on the capability benchmark's heteromodal dataset (same file, split, step
budget and batch as ``capabilities.hetero_job``): an MLP-ID trained on the labelled training
episodes gives every state-only training episode its actions (a_t from s_t and s_{t+1}; the last
step from (s_t, s_t)), then an MLP-BC trains on all of them and is evaluated in BC mode over the
config's seeds. This is what ``training.train --self-label-at`` does inside one MTM, done with two
specialised networks. The normaliser is fitted on all training episodes (actions: labelled ones).
Prints one JSON object (and writes ``--json``).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import capabilities as C  # noqa: E402
from benchmarks.common import emit_json, machine  # noqa: E402


def pipeline_job(job: tuple[str, int, dict[str, Any], str]) -> dict[str, Any]:
    import torch

    from mtm_runtime.spec import ACTIONS, STATES, TrajectorySpec
    from sim.tasks import get_task
    from training.baselines import load_baseline, train_baseline
    from training.loaders import Episode, load_episodes, split_episodes
    from training.train import fit_normaliser

    task_name, draw, cfg, out_s = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task, out = get_task(task_name), Path(out_s)
    frac = cfg["hetero_fraction"][task_name]
    data = C.dataset(out, cfg, task_name, "expert", cfg["hetero_episodes"][task_name], frac, draw)
    all_eps = load_episodes(data, task)
    train_eps, _ = split_episodes(all_eps, 0.1, seed=0)
    labelled, _ = split_episodes(all_eps, 0.1, seed=0, labelled_only=True)
    norm = fit_normaliser(TrajectorySpec.create(4, **task.modality_widths()), train_eps)
    run_dir = out / "runs" / f"pipeline_{task_name}_d{draw}"
    budget = C.mlp_budget(cfg)
    train_baseline("id", task, labelled, norm, out=run_dir / "mlp_id", **budget)
    _meta, _spec, norm2, net = load_baseline(run_dir / "mlp_id")
    relabelled = []
    for ep in train_eps:
        if ep.labelled:
            relabelled.append(ep)
            continue
        s = norm2.normalise(STATES, ep[STATES])
        with torch.no_grad():
            a = net(torch.from_numpy(np.concatenate([s, np.vstack([s[1:], s[-1:]])], 1).astype(np.float32))).numpy()
        relabelled.append(Episode({**ep, ACTIONS: norm2.denormalise(ACTIONS, a).astype(np.float32)},
                                  {**ep.present, ACTIONS: True}, ep.terminated))
    train_baseline("bc", task, relabelled, norm, out=run_dir / "mlp_bc_all", **budget)
    score = C.eval_policy(run_dir / "mlp_bc_all", task_name, "bc", cfg)
    return {"task": task_name, "draw": draw, "labelled_train_episodes": len(labelled),
            "train_episodes": len(train_eps), "mlp_id_then_bc": score, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cpu", choices=tuple(C.CONFIGS))
    p.add_argument("--tasks", default="inverted_double_pendulum")
    p.add_argument("--draws", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="/tmp/mtm_hetero_mlp_pipeline")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    cfg = dict(C.CONFIGS[a.config])
    jobs = [(t, int(d), cfg, a.out) for t in a.tasks.split(",") for d in a.draws.split(",")]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        results = pool.map(pipeline_job, jobs, chunksize=1)
    emit_json({"benchmark": "hetero_mlp_pipeline", "machine": machine(), "config_name": a.config,
               "command": "python benchmarks/hetero_mlp_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "wall_s": time.perf_counter() - t0,
               "scores": {f"{r['task']}_d{r['draw']}": round(r["mlp_id_then_bc"]["score_mean"], 1) for r in results},
               "results": results}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
