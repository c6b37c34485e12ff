"""The capability benchmark's jobs. ``job_main`` runs one (in a worker process) and caches its
result as JSON; ``main_job`` is a (task, tier) row, ``hetero_job`` one label draw of the
heteromodal experiment. Each trains its models with ``training/`` and evaluates them through the
``Policy`` path (``training/evaluate.py``)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.capability_config import config_digest, episodes_for, mlp_budget, mtm_masks, warmup_steps

def dataset(out: Path, cfg: dict[str, Any], task: str, tier: str, episodes: int, fraction: float = 1.0,
            draw: int = 0) -> Path:
    """Collect (or reuse) ``out/data/<config digest>/<task>_<tier>[_fF_dD]_<episodes>.hdf5``: reused
    only by jobs of the same config and commit, so a changed expert or tier definition never trains
    on the data of an old one. ``draw`` is the label seed of a heteromodal file (``fraction < 1``).
    Locomotion tiers come from the task's learning run (``training/run_tiers.py``)."""
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.datasets import write_hdf5
    from mtm_runtime.training.run_tiers import collect_tier

    tag = "" if fraction >= 1.0 else f"_f{fraction:g}_d{draw}"
    path = out / "data" / config_digest(cfg) / f"{task}_{tier}{tag}_{episodes}.hdf5"
    if not path.exists():
        data, meta = collect_tier(task, tier, episodes, seed=0, action_fraction=fraction, label_seed=draw,
                                  workers=1)
        write_hdf5(path.with_suffix(".tmp"), data, get_task(task), tier, 0, fraction, label_seed=draw, extra=meta)
        os.replace(path.with_suffix(".tmp"), path)
    return path


def train_mtm(cfg: dict[str, Any], data: Path, out: Path, task_name: str, labelled_only: bool = False,
              labelled_share: float = 0.0, self_label_at: int = 0) -> dict[str, Any]:
    from mtm_runtime.training.train import run
    from mtm_runtime.training.train_args import Args

    args = Args(data=str(data), out=str(out), preset=cfg["preset"], steps=cfg["steps"], batch_size=cfg["batch_size"],
                masks=mtm_masks(cfg, task_name),
                val_every=0, ckpt_every=0, progress=False, plot=True, labelled_only=labelled_only,
                labelled_share=labelled_share, self_label_at=self_label_at,
                threads=0, warmup_steps=warmup_steps(cfg))  # threads: job_main's choice stands
    t0 = time.perf_counter()
    res = run(args)
    res["train_s"] = time.perf_counter() - t0
    return res


def eval_policy(path: Path, task: str, mode: str, cfg: dict[str, Any], target: float | None = None) -> dict[str, Any]:
    from mtm_runtime.training.evaluate import evaluate_agent_path

    return evaluate_agent_path(path, task, mode, cfg["eval_episodes"], cfg["seeds"], target, workers=1)


def job_name(kind: str, task_name: str, tier: str, draw: int, fraction: float = 1.0) -> str:
    """``main_<task>_<tier>`` or ``hetero_<task>_<tier>_f<fraction>_d<draw>``: the job's result file
    (and a hetero job's run directory)."""
    return f"{kind}_{task_name}_{tier}" + (f"_f{fraction:g}_d{draw}" if kind == "hetero" else "")


def job_main(job: tuple[str, str, str, int, float, dict[str, Any], str]) -> dict[str, Any]:
    """One benchmark job (in a worker process: one torch thread when jobs run in parallel); ``draw``
    and the labelled ``fraction`` only for hetero."""
    import torch

    kind, task_name, tier, draw, fraction, cfg, out_s = job
    if cfg["workers"] > 1:
        torch.set_num_threads(1)  # one thread per parallel job; a lone job keeps torch's default
    out = Path(out_s)
    result_file = out / "jobs" / f"{job_name(kind, task_name, tier, draw, fraction)}.json"
    digest = config_digest(cfg)
    if result_file.exists():
        cached = json.loads(result_file.read_text())
        if cached.get("config_digest") == digest:
            return cached  # same config: reuse; otherwise the job is rerun from scratch
    t0 = time.perf_counter()
    res = main_job(task_name, tier, cfg, out) if kind == "main" else hetero_job(task_name, tier, draw, fraction, cfg, out)
    res.update({"kind": kind, "task": task_name, "tier": tier, "draw": draw, "wall_s": time.perf_counter() - t0,
                "config_digest": digest})
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(res, indent=2) + "\n")
    return res


def main_job(task_name: str, tier: str, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes

    task = get_task(task_name)
    data = dataset(out, cfg, task_name, tier, episodes_for(cfg, task_name, tier))
    run_dir = out / "runs" / f"{task_name}_{tier}"
    mtm = train_mtm(cfg, data, run_dir / "mtm", task_name)
    ckpt = load_checkpoint(run_dir / "mtm")
    episodes = load_episodes(data, task)
    train_eps, val_eps = split_episodes(episodes, 0.1, seed=0)
    kinds = ["bc", "rcbc", "id", "fd"] + (["gcbc"] if task.has_goal else [])
    base_train = train_baselines(kinds, task, train_eps, ckpt, cfg, run_dir)
    res: dict[str, Any] = {"dataset": str(data), "data_score": data_score(episodes, task),
                           "train_episodes": len(train_eps), "val_episodes": len(val_eps),
                           "mtm_samples_per_s": mtm.get("samples_per_s"), "mtm_train_s": mtm.get("train_s"),
                           "baseline_samples_per_s": {k: v["samples_per_s"] for k, v in base_train.items()},
                           "rollouts": {}, "id_fd": {}}
    expert = task.reference_returns["expert"]
    R = res["rollouts"]
    R["mtm_bc"] = eval_policy(run_dir / "mtm", task_name, "bc", cfg)
    R["mtm_rcbc"] = eval_policy(run_dir / "mtm", task_name, "rcbc", cfg, expert)
    R["mlp_bc"] = eval_policy(run_dir / "mlp_bc", task_name, "bc", cfg)
    R["mlp_rcbc"] = eval_policy(run_dir / "mlp_rcbc", task_name, "rcbc", cfg, expert)
    if task.has_goal:
        R["mtm_goal"] = eval_policy(run_dir / "mtm", task_name, "goal", cfg)
        R["mlp_gcbc"] = eval_policy(run_dir / "mlp_gcbc", task_name, "goal", cfg)
    res["id_fd"] = id_fd_table(run_dir, val_eps)
    return res


def data_score(episodes: Sequence[Any], task: Any) -> dict[str, float]:
    """The dataset's own D4RL-normalised score (its behaviour policy's): mean and std over its
    episodes, the level a policy trained on it is compared with."""
    s = np.array([task.normalised_score(float(np.sum(ep["rewards"]))) for ep in episodes])
    return {"score_mean": float(s.mean()), "score_std": float(s.std())}


def train_baselines(kinds: Sequence[str], task: Any, train_eps: Sequence[Any], ckpt: Any, cfg: dict[str, Any],
                    run_dir: Path) -> dict[str, dict[str, Any]]:
    """The MLP baselines ``kinds`` on the MTM's training episodes, normaliser, step budget and batch
    size, written to ``run_dir/mlp_<kind>``."""
    from mtm_runtime.training.baselines import train_baseline

    return {k: train_baseline(k, task, train_eps, ckpt.normaliser, out=run_dir / f"mlp_{k}", **mlp_budget(cfg),
                              provenance={"val_fraction": 0.1, "seed": 0, "horizon": ckpt.spec.horizon})
            for k in kinds}


def id_fd_table(run_dir: Path, val_eps: Sequence[Any]) -> dict[str, dict[str, float]]:
    """ID/FD errors on the validation windows of ``run_dir/mtm`` (``mtm``) and of the MLPs in
    ``run_dir/mlp_id`` and ``run_dir/mlp_fd`` (formula in training/evaluate.py)."""
    import torch

    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.training.baselines import baseline_errors, load_baseline
    from mtm_runtime.training.id_fd import id_fd_errors, validation_windows

    ckpt = load_checkpoint(run_dir / "mtm")
    x, _ = validation_windows(val_eps, ckpt.spec, ckpt.normaliser)
    model = ckpt.build_model()

    def predict(xb: np.ndarray, mb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(xb), torch.from_numpy(mb)).numpy()

    table = {"mtm": id_fd_errors(predict, ckpt.spec, x)}
    for k in ("id", "fd"):
        _meta, _spec, _norm, net = load_baseline(run_dir / f"mlp_{k}")
        table[f"mlp_{k}"] = baseline_errors(k, net, ckpt.spec, x)
    return table


def train_mlp_pipeline(task: Any, all_eps: Sequence[Any], cfg: dict[str, Any], run_dir: Path) -> dict[str, int]:
    """The heteromodal experiment without MTM: an MLP-ID trained on the labelled training episodes
    gives every state-only training episode its actions (a_t from s_t and s_{t+1}; the last step
    from (s_t, s_t)), then an MLP-BC trains on all of them, with the config's step budget. The
    normaliser is fitted on all training episodes (actions: labelled ones). Writes
    ``run_dir/mlp_id`` and ``run_dir/mlp_bc_all``; returns the episode counts."""
    import torch

    from mtm_runtime.spec import ACTIONS, STATES, TrajectorySpec
    from mtm_runtime.training.baselines import load_baseline, train_baseline
    from mtm_runtime.training.loaders import Episode, split_episodes
    from mtm_runtime.training.pipeline import fit_normaliser

    train_eps, _ = split_episodes(all_eps, 0.1, seed=0)
    labelled, _ = split_episodes(all_eps, 0.1, seed=0, labelled_only=True)
    norm = fit_normaliser(TrajectorySpec.create(4, **task.modality_widths()), train_eps)
    train_baseline("id", task, labelled, norm, out=run_dir / "mlp_id", **mlp_budget(cfg))
    _meta, _spec, norm_id, net = load_baseline(run_dir / "mlp_id")
    relabelled = []
    for ep in train_eps:
        if not ep.labelled:
            s = norm_id.normalise(STATES, ep[STATES])
            pairs = np.concatenate([s, np.vstack([s[1:], s[-1:]])], 1).astype(np.float32)
            with torch.no_grad():
                a = norm_id.denormalise(ACTIONS, net(torch.from_numpy(pairs)).numpy()).astype(np.float32)
            ep = Episode({**ep, ACTIONS: a}, {**ep.present, ACTIONS: True}, ep.terminated)
        relabelled.append(ep)
    train_baseline("bc", task, relabelled, norm, out=run_dir / "mlp_bc_all", **mlp_budget(cfg))
    return {"labelled_train_episodes": len(labelled), "train_episodes": len(train_eps)}


def hetero_job(task_name: str, tier: str, draw: int, frac: float, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.baselines import train_baseline
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes

    task = get_task(task_name)
    data = dataset(out, cfg, task_name, tier, cfg["hetero_episodes"][task_name], frac, draw)
    run_dir = out / "runs" / job_name("hetero", task_name, tier, draw, frac)
    mtm_lab = train_mtm(cfg, data, run_dir / "mtm_labelled", task_name, labelled_only=True)
    mtm_all = train_mtm(cfg, data, run_dir / "mtm_all", task_name, labelled_share=cfg["hetero_labelled_share"],
                        self_label_at=int(cfg.get("hetero_self_label", 0.0) * cfg["steps"]))
    ckpt = load_checkpoint(run_dir / "mtm_labelled")
    all_eps = load_episodes(data, task)
    episodes = [ep for ep in all_eps if ep.labelled]
    # every model of this job trains on the same labelled episodes: those of the training split
    train_eps, _ = split_episodes(all_eps, 0.1, seed=0, labelled_only=True)
    train_baseline("bc", task, train_eps, ckpt.normaliser, out=run_dir / "mlp_bc_labelled", **mlp_budget(cfg))
    train_mlp_pipeline(task, all_eps, cfg, run_dir / "pipeline")
    return {"dataset": str(data), "action_fraction": frac, "episodes": len(all_eps),
            "labelled_episodes": len(episodes), "labelled_train_episodes": len(train_eps),
            "labelled_steps": int(sum(ep.length for ep in episodes)),
            "labelled_train_steps": int(sum(ep.length for ep in train_eps)),
            "mtm_samples_per_s": [mtm_lab.get("samples_per_s"), mtm_all.get("samples_per_s")],
            "rollouts": {"mlp_bc_labelled": eval_policy(run_dir / "mlp_bc_labelled", task_name, "bc", cfg),
                         "mtm_labelled": eval_policy(run_dir / "mtm_labelled", task_name, "bc", cfg),
                         "mtm_heteromodal": eval_policy(run_dir / "mtm_all", task_name, "bc", cfg),
                         "mlp_id_then_bc": eval_policy(run_dir / "pipeline" / "mlp_bc_all", task_name, "bc", cfg)}}


def throughput(preset: str, batch: int = 256, steps: int = 10) -> float:
    """Training samples/s of ``preset`` on this CPU (Hopper-sized spec, AUTO masks, 1 process)."""
    import torch

    from mtm_runtime import masks as M
    from mtm_runtime.loss import mtm_loss
    from mtm_runtime.model import build_model
    from mtm_runtime.spec import TrajectorySpec

    spec = TrajectorySpec.create(4, states=11, actions=3, returns=1)
    rng = np.random.default_rng(0)
    model = build_model(spec, preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, spec.packed_width)
    pres = np.ones((batch, 4, 3), np.float32)

    def step() -> None:
        m = torch.from_numpy(M.apply_availability(M.sample_training_masks(spec, batch, rng), pres, rng))
        loss, _ = mtm_loss(spec, model.forward_train(x, m), x, m, torch.from_numpy(pres))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
