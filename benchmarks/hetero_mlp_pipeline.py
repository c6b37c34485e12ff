"""The heteromodal experiment's missing baseline: the same use of state-only episodes without MTM.

    python benchmarks/hetero_mlp_pipeline.py --tasks hopper --draws 0,1,2,3,4,5

Per (task, label draw), on the capability benchmark's heteromodal dataset (same file, split, step
budget and batch as ``capability_jobs.hetero_job``): ``capability_jobs.train_mlp_pipeline`` (an MLP-ID
labels the state-only episodes, an MLP-BC trains on all), evaluated in BC mode over the config's
seeds. This is what ``mtm_runtime.training.train --self-label-at`` does inside one MTM, done with two
specialised networks. The capability benchmark's heteromodal job runs the same pipeline next to its
MTMs; this script runs it alone (seconds per draw), e.g. on more label draws. Prints one JSON object
(and writes ``--json``).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.capability_config import CONFIGS  # noqa: E402
from benchmarks.capability_jobs import dataset, eval_policy, train_mlp_pipeline  # noqa: E402
from benchmarks.common import emit_json, machine  # noqa: E402


def pipeline_job(job: tuple[str, int, dict[str, Any], str]) -> dict[str, Any]:
    import torch

    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.sources import load_episodes

    task_name, draw, cfg, out_s = job
    fraction = cfg["hetero_fraction"][task_name][0]   # the first (smallest) labelled fraction of the config
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task, out = get_task(task_name), Path(out_s)
    data = dataset(out, cfg, task_name, "expert", cfg["hetero_episodes"][task_name], fraction, draw)
    run_dir = out / "runs" / f"pipeline_{task_name}_d{draw}"
    counts = train_mlp_pipeline(task, load_episodes(data, task), cfg, run_dir)
    score = eval_policy(run_dir / "mlp_bc_all", task_name, "bc", cfg)
    return {"task": task_name, "draw": draw, **counts, "mlp_id_then_bc": score, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cpu", choices=tuple(CONFIGS))
    p.add_argument("--tasks", default="hopper")
    p.add_argument("--draws", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="/tmp/mtm_hetero_mlp_pipeline")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    cfg = dict(CONFIGS[a.config])
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
