"""ID/FD only: the capability benchmark's MTM against MLP-ID and MLP-FD, without rollouts, so that a
larger model and budget (the ``full`` config's ``paper`` preset at batch 1024) fit in a short GPU lease.

    python benchmarks/id_fd_probe.py --config full --steps 8000 \\
        --only inverted_double_pendulum:expert,hopper:expert,hopper:medium-replay,inverted_double_pendulum:medium-replay

Each job is the ID/FD part of ``capability_jobs.main_job``, unchanged: the same dataset, MTM training
(masks, schedule), MLP training and error formula; one process per job, all at once (one GPU is
shared: the models are small and each step is mostly host work). Prints one JSON object (machine,
config, per-job errors and the MTM / MLP ratio), writes it to ``--json`` and, with ``--results``,
a section of benchmarks/RESULTS.md. ``--render JSON`` writes that section from a saved result
(the committed one: ``benchmarks/results/gpu_h100/id_fd_probe_full_steps8000.json``).
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

from benchmarks.capability_config import CONFIGS, ID_FD_WITHIN, REPO, episodes_for, mtm_masks  # noqa: E402
from benchmarks.capability_jobs import dataset, id_fd_table, train_baselines, train_mtm  # noqa: E402
from benchmarks.common import emit_json, machine, replace_section  # noqa: E402

BEGIN, END = "<!-- id_fd_probe:begin -->", "<!-- id_fd_probe:end -->"


def probe_job(job: tuple[str, str, dict[str, Any], str]) -> dict[str, Any]:
    """Train the MTM and MLP-ID/FD of one (task, tier) and return their validation errors."""
    import torch

    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes

    task_name, tier, cfg, out_s = job
    torch.set_num_threads(2)  # several jobs share the machine's cores
    t0 = time.perf_counter()
    task, out = get_task(task_name), Path(out_s)
    data = dataset(out, cfg, task_name, tier, episodes_for(cfg, task_name, tier))
    run_dir = out / "runs" / f"{task_name}_{tier}"
    mtm = train_mtm(cfg, data, run_dir / "mtm", task_name)
    train_eps, val_eps = split_episodes(load_episodes(data, task), 0.1, seed=0)
    train_baselines(["id", "fd"], task, train_eps, load_checkpoint(run_dir / "mtm"), cfg, run_dir)
    table = id_fd_table(run_dir, val_eps)
    return {"task": task_name, "tier": tier, "train_episodes": len(train_eps), "val_episodes": len(val_eps),
            "mtm_samples_per_s": mtm.get("samples_per_s"), "mtm_device": mtm.get("device"),
            "id_fd": table, "ratio_mtm_vs_mlp": {
                "id": table["mtm"]["id_error"] / table["mlp_id"]["id_error"],
                "fd": table["mtm"]["fd_error"] / table["mlp_fd"]["fd_error"]},
            "wall_s": time.perf_counter() - t0}


def command(result: dict[str, Any]) -> str:
    """The invocation that produced ``result``."""
    only = ",".join(f"{r['task']}:{r['tier']}" for r in result["results"])
    return f"python benchmarks/id_fd_probe.py --config {result['config_name']} --steps {result['steps']} --only {only}"


def section(result: dict[str, Any], throughput: dict[str, Any] | None = None) -> list[str]:
    """RESULTS.md lines for ``result`` (and the GPU training throughput of ``model_forward.py --device cuda``)."""
    m, cpu = result["machine"], CONFIGS["cpu"]
    rows = result["results"]
    held = sum(r["ratio_mtm_vs_mlp"][k] <= ID_FD_WITHIN for r in rows for k in ("id", "fd"))
    L = ["## ID/FD at the paper's scale (GPU probe)", "",
         f"`{command(result)}` on {m.get('cuda') or m.get('cpu', '?')} ({result['wall_s'] / 60:.1f} min, "
         f"{len(rows)} jobs sharing it): `{result['preset']}` preset, {result['steps']} gradient steps at batch "
         f"{result['batch_size']} for the MTM and both MLPs (the cpu config: `{cpu['preset']}`, {cpu['steps']} x "
         f"{cpu['batch_size']}), MTM masks "
         f"{', '.join(result['masks'])}. Datasets, MLPs and error formula as above; no rollouts. Generated from "
         "its JSON by the same script (`--render`).", "",
         "| task | tier | train episodes | MTM ID | MLP-ID | MTM / MLP | MTM FD | MLP-FD | MTM / MLP |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t, q = r["id_fd"], r["ratio_mtm_vs_mlp"]
        L.append(f"| {r['task']} | {r['tier']} | {r['train_episodes']} | {t['mtm']['id_error']:.3g} | "
                 f"{t['mlp_id']['id_error']:.3g} | {q['id']:.2f} | {t['mtm']['fd_error']:.3g} | "
                 f"{t['mlp_fd']['fd_error']:.3g} | {q['fd']:.2f} |")
    L += ["", f"MTM within {100 * (ID_FD_WITHIN - 1):.0f} % of the MLP or better: {held} of {2 * len(rows)}."]
    if throughput:
        b = throughput["train_throughput_batch1024"]["paper"]
        L += ["", f"Training throughput on {throughput.get('device', '?')} (`python benchmarks/model_forward.py "
              f"--device cuda`, bf16 autocast, forward + backward + AdamW at batch 1024, paper preset): ours "
              f"{b['ours']['samples_per_s_median']:.0f} samples/s, the reference design "
              f"{b['reference']['samples_per_s_median']:.0f} samples/s (ratio {b['ratio_ours_vs_reference']:.2f}); "
              f"`mtm train` end to end in this probe (sampler included, {len(rows)} runs sharing the GPU): "
              f"{min(r['mtm_samples_per_s'] for r in rows):.0f}-{max(r['mtm_samples_per_s'] for r in rows):.0f} "
              "samples/s each."]
    return L


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="full", choices=tuple(CONFIGS))
    p.add_argument("--steps", type=int, default=0, help="gradient steps of every model (default from the config)")
    p.add_argument("--only", default="", help="comma list of task:tier")
    p.add_argument("--out", default="/tmp/mtm_id_fd_probe", help="work directory (datasets, runs)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None, help="markdown file to write the section into "
                   "(benchmarks/RESULTS.md)")
    p.add_argument("--render", type=Path, default=None, help="a saved result: write its section, run nothing")
    p.add_argument("--throughput", type=Path, default=None, help="JSON of model_forward.py --device cuda to cite")
    a = p.parse_args(argv)
    tp = json.loads(a.throughput.read_text()) if a.throughput else None
    if a.render:
        replace_section(a.results or REPO / "benchmarks" / "RESULTS.md", BEGIN, END,
                        section(json.loads(a.render.read_text()), tp))
        return 0
    if not a.only:
        p.error("--only is required unless --render is given")
    cfg = dict(CONFIGS[a.config], **({"steps": a.steps} if a.steps else {}))
    jobs = [(*s.strip().split(":"), cfg, a.out) for s in a.only.split(",") if s.strip()]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(probe_job, jobs, chunksize=1)
    result = {"benchmark": "id_fd_probe", "machine": machine(), "config_name": a.config,
              "preset": cfg["preset"], "steps": cfg["steps"], "batch_size": cfg["batch_size"],
              "masks": list(mtm_masks(cfg, "hopper")), "wall_s": time.perf_counter() - t0, "results": results}
    emit_json(result, a.json)
    if a.results:
        replace_section(a.results, BEGIN, END, section(result, tp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
