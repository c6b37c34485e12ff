"""Optional job: the reference MTM (github facebookresearch/mtm) trained on exactly the capability
benchmark's datasets, split and budget, and scored with our evaluation, for the report's
"reference MTM" columns.

    python benchmarks/reference_mtm.py --reference /path/to/mtm-snapshot --config cpu
    python benchmarks/reference_mtm.py --reference ... --only hopper:medium-replay --no-render

The reference code is imported at run time from the snapshot the user points to (``--reference``
or ``MTM_REFERENCE``: the folder that holds ``research/mtm/``); nothing of it is copied here. What
comes from it: the network and its loss (``research.mtm.models.mtm_model.MTM``, ``MTMConfig``,
``MTM.forward_loss``, ``MTM.configure_optimizers``) and its default training mask, AUTO_MASK
(``research.mtm.masks.create_random_autoregressize_mask`` with the reference's mask ratios and
mode weights). The reference's model module imports ``wandb`` for plotting helpers that are never
called here; where wandb is not installed an empty module stands in for it (nothing is logged).

What is ours, so that only the implementation differs:
- the data: the cell's HDF5 file (``capability_jobs.dataset``, the same file the main job trains
  on), its train/val split, and our normaliser fitted on the training episodes (the
  standardisation the reference's ``ContinuousTokenizer`` does);
- the budget: the config's steps, batch and learning-rate warmup (``mlp_budget``), the network
  sized as the config's preset (width, heads, encoder and decoder layers);
- the scores: BC and RCBC rollouts through ``evaluate_checkpoint_object`` (the PolicyBatch and
  ControlLoop path our MTM is scored on) and ID/FD errors on the same validation windows
  (``id_fd_errors``). ``ReferenceAdapter`` presents the reference network as ours (packed window
  and mask in, packed prediction out); the reference takes one mask per batch, so a batch is
  split by its distinct masks.

Each cell's result goes to ``<out>/reference/<task>_<tier>.json``, and is merged into the main
job of the same cell in ``--json`` (key ``reference``) before RESULTS.md is rendered again.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.capability_config import CONFIGS, REPO, mlp_budget, tiers_for  # noqa: E402

#: the reference's defaults (research/mtm/config.yaml): AUTO_MASK's ratios and mode weights, the
#: optimiser's weight decay and betas
MASK_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
MODE_WEIGHTS = (0.2, 0.1, 0.7)
WEIGHT_DECAY = 0.005


class ReferenceError(RuntimeError):
    """The reference snapshot cannot be used (one line, for the user)."""


def import_reference(root: str) -> tuple[Any, Any]:
    """(the reference's ``mtm_model`` module, its ``masks`` module) from the snapshot at ``root``."""
    path = Path(root or "").expanduser()
    if not root or not (path / "research" / "mtm" / "models" / "mtm_model.py").exists():
        raise ReferenceError(f"--reference {root!r}: not a facebookresearch/mtm snapshot "
                             "(expected research/mtm/models/mtm_model.py under it)")
    if "wandb" not in sys.modules and importlib.util.find_spec("wandb") is None:
        sys.modules["wandb"] = types.ModuleType("wandb")   # imported for plotting helpers never called
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        return importlib.import_module("research.mtm.models.mtm_model"), importlib.import_module("research.mtm.masks")
    except ImportError as e:
        raise ReferenceError(f"--reference {root}: importing the reference failed ({e})") from None


def make_adapter(mtm_model: Any, spec: Any, preset: str) -> Any:
    """The reference network at the size of our ``preset``, behind our model's interface."""
    import torch

    from mtm_runtime.model import PRESETS

    ours = PRESETS[preset]
    cfg = mtm_model.MTMConfig(n_embd=ours.d_model, n_head=ours.n_heads, n_enc_layer=ours.n_enc_layers,
                              n_dec_layer=ours.n_dec_layers, dropout=ours.dropout, norm="none")
    shapes = {name: (1, spec.width(name)) for name in spec.names}

    class ReferenceAdapter(torch.nn.Module):
        """Packed ``x [B, T, D]`` and ``mask [B, T, M]`` (1 = visible) in, packed prediction out."""

        def __init__(self) -> None:
            super().__init__()
            self.spec = spec
            self.net = mtm_model.MTM(shapes, spec.horizon, cfg)

        def split(self, x: Any) -> dict[str, Any]:
            return {n: x[:, :, spec.offset(n):spec.offset(n) + spec.width(n)].unsqueeze(2) for n in spec.names}

        def forward(self, x: Any, mask: Any) -> Any:
            out = torch.empty_like(x)
            groups: dict[bytes, list[int]] = {}
            for b, m in enumerate(mask.detach().cpu().numpy().astype(np.uint8)):
                groups.setdefault(m.tobytes(), []).append(b)
            for rows in groups.values():
                idx = torch.as_tensor(rows)
                m = mask[rows[0]]
                masks = {n: m[:, i:i + 1].float() for i, n in enumerate(spec.names)}
                pred = self.net(self.split(x[idx]), masks)
                out[idx] = torch.cat([pred[n].squeeze(2) for n in spec.names], dim=-1).to(out.dtype)
            return out

    return ReferenceAdapter()


def train_reference(mtm_model: Any, masks_mod: Any, spec: Any, norm: Any, train_eps: Any, cfg: dict[str, Any],
                    seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train the reference network on our windows with the reference's AUTO_MASK and loss, at the
    config's budget. Returns (adapter, training summary)."""
    import torch

    from mtm_runtime.training.pipeline import NormalisedSampler

    torch.manual_seed(seed)
    np.random.seed(seed)                     # the reference's mask functions draw from numpy's global RNG
    budget = mlp_budget(cfg)
    model = make_adapter(mtm_model, spec, cfg["preset"])
    opt = mtm_model.MTM.configure_optimizers(model.net, learning_rate=budget["lr"], weight_decay=WEIGHT_DECAY,
                                             betas=(0.9, 0.999))
    warm = max(1, budget["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 1.0))
    sampler = NormalisedSampler(train_eps, spec, norm)
    rng = np.random.default_rng(seed)
    shapes = {n: (1, spec.width(n)) for n in spec.names}
    discrete = {n: False for n in spec.names}
    t0, losses = time.perf_counter(), []
    model.train()
    for _ in range(budget["steps"]):
        x, _present = sampler.sample(budget["batch_size"], rng)
        traj = model.split(torch.from_numpy(x))
        masks = masks_mod.create_random_autoregressize_mask(shapes, MASK_RATIOS, spec.horizon, "cpu", MODE_WEIGHTS)
        masks = {k: v.float() for k, v in masks.items()}
        pred = model.net(traj, masks)
        loss = mtm_model.MTM.forward_loss(traj, pred, masks, discrete, norm="none")[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    wall = time.perf_counter() - t0
    return model, {"steps": budget["steps"], "batch_size": budget["batch_size"], "lr": budget["lr"],
                   "final_loss": float(np.mean(losses[-50:])), "train_s": wall,
                   "samples_per_s": budget["steps"] * budget["batch_size"] / wall}


def reference_cell(task_name: str, tier: str, cfg: dict[str, Any], out: Path, root: str) -> dict[str, Any]:
    """One cell: the reference trained and scored; written to ``out/reference/<task>_<tier>.json``."""
    import torch

    from benchmarks.capability_config import episodes_for
    from benchmarks.capability_jobs import dataset
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.spec import TrajectorySpec
    from mtm_runtime.training.evaluate import evaluate_checkpoint_object
    from mtm_runtime.training.id_fd import id_fd_errors, validation_windows
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.pipeline import fit_normaliser
    from mtm_runtime.training.sources import load_episodes

    mtm_model, masks_mod = import_reference(root)
    torch.set_num_threads(1)
    task = get_task(task_name)
    data = dataset(out, cfg, task_name, tier, episodes_for(cfg, task_name, tier))
    episodes = load_episodes(data, task)
    train_eps, val_eps = split_episodes(episodes, 0.1, seed=0)
    spec = TrajectorySpec.create(4, **task.modality_widths())
    norm = fit_normaliser(spec, train_eps)
    model, summary = train_reference(mtm_model, masks_mod, spec, norm, train_eps, cfg)
    limits = task.robot.limits if task.robot is not None else None     # the limits our MTM's checkpoint carries
    expert = task.reference_returns["expert"]
    res: dict[str, Any] = {"task": task_name, "tier": tier, "dataset": str(data), "train": summary,
                           "reference": str(root), "rollouts": {}}
    for mode, target in (("bc", None), ("rcbc", expert)):
        res["rollouts"][f"ref_{mode}"] = evaluate_checkpoint_object(model, norm, limits, task, mode, cfg["eval_episodes"],
                                                                    cfg["seeds"], target)
    x, _ = validation_windows(val_eps, spec, norm)

    def predict(xb: np.ndarray, mb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(xb), torch.from_numpy(mb)).numpy()

    res["id_fd"] = id_fd_errors(predict, spec, x)
    path = out / "reference" / f"{task_name}_{tier}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    return res


def _cell_star(job: tuple) -> dict[str, Any]:
    return reference_cell(*job)


def merge(results_json: Path, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Put each cell's reference result under ``reference`` of the main job of the same cell."""
    report = json.loads(results_json.read_text())
    by_cell = {(c["task"], c["tier"]): c for c in cells}
    for r in report["results"]:
        if r["kind"] == "main" and (r["task"], r["tier"]) in by_cell:
            c = by_cell[(r["task"], r["tier"])]
            r["reference"] = {"rollouts": c["rollouts"], "id_fd": c["id_fd"], "train": c["train"]}
    report["reference_command"] = " ".join(["python benchmarks/reference_mtm.py", *sys.argv[1:]])
    results_json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    import multiprocessing as mp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default=os.environ.get("MTM_REFERENCE", ""),
                   help="root of a facebookresearch/mtm snapshot (holds research/mtm/); default $MTM_REFERENCE")
    p.add_argument("--config", default="cpu", choices=tuple(CONFIGS))
    p.add_argument("--out", default="", help="the capability benchmark's work directory (default /tmp/mtm_capabilities_<config>)")
    p.add_argument("--only", default="", help="comma list of task:tier cells (default: every main cell of the config)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results.json"), help="capability results to merge into")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="markdown to render again ('' = none)")
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args(argv)
    try:
        import_reference(a.reference)
    except ReferenceError as e:
        print(f"reference_mtm: {e}", file=sys.stderr)
        return 2
    cfg = dict(CONFIGS[a.config])
    out = Path(a.out or f"/tmp/mtm_capabilities_{a.config}")
    cells = [(t, tier) for t in cfg["tasks"] for tier in tiers_for(cfg, t)]
    if a.only:
        keep = {s.strip() for s in a.only.split(",")}
        cells = [c for c in cells if f"{c[0]}:{c[1]}" in keep]
    jobs = [(t, tier, cfg, out, a.reference) for t, tier in cells]
    workers = a.workers or cfg["workers"]
    t0 = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            done = list(pool.imap(_cell_star, jobs, chunksize=1))
    else:
        done = [_cell_star(j) for j in jobs]
    print(json.dumps({"cells": [f"{c['task']}:{c['tier']}" for c in done], "wall_s": time.perf_counter() - t0,
                      "scores": {f"{c['task']}:{c['tier']}": {k: v["score_mean"] for k, v in c["rollouts"].items()}
                                 for c in done}}, indent=2))
    if a.json and Path(a.json).exists():
        report = merge(Path(a.json), done)
        if a.results:
            from benchmarks.capability_report import targets, write_report

            report["targets"] = targets(report["results"])
            Path(a.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
            write_report(report, Path(a.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
