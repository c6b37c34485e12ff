"""Train a Masked Trajectory Model on an offline dataset (CleanRL-style: read it top to bottom).

    python -m mtm_runtime.training.train --data reacher_expert.hdf5 --preset embedded --steps 6000 --out runs/reacher
    mtm train --data reacher_expert.hdf5 --out runs/reacher                        # same thing
    torchrun --nproc_per_node=2 -m mtm_runtime.training.train --data ... --out ...             # DDP (gloo/nccl)
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d \
             --rdzv_endpoint=HOST:29500 -m mtm_runtime.training.train ...                       # several hosts
(with several hosts, ``--data`` must exist on every host and ``--out`` be on a shared filesystem
for ``--resume``: every rank reads the train state, only rank 0 writes.)

What one run does:
 1. arguments: dataclass defaults < ``--config`` YAML/JSON < explicit command-line flags;
 2. distributed setup from torchrun's environment (``RANK``/``WORLD_SIZE``); gloo on CPU, nccl on
    CUDA; only rank 0 writes files or prints;
 3. data: load episodes, split train/validation by episode (seeded), build the spec from the task's
    ``modality_widths()`` and horizon T, fit the normaliser on the training split only (returns
    are scale-only: the RTG scale is ``max |return of an episode|`` in the training split, so
    normalised returns-to-go lie in [-1, 1] on the data, unless ``--rtg-scale`` is given);
 4. model (``--preset``) and AdamW; learning rate: linear warmup then cosine to 10 %
    (``mtm_runtime.trainer.lr_at``); bf16 autocast on CUDA; gradient clipping;
 5. loop: per step, windows + per-sample training masks (``--masks``, AUTO_MASK by default)
    ANDed with data availability, packed-encoder forward, ``mtm_runtime.loss.mtm_loss``;
    periodic validation loss (+ per-mode errors), optional periodic policy evaluation in the
    simulator, checkpoints every ``--ckpt-every`` steps; with ``--self-label-at N``, at step N the
    action-free episodes get the model's own inverse-dynamics estimates as actions
    (``NormalisedSampler.fill_actions``) and count as labelled from then on; the per-step
    scalars stay on the device and are read in groups (``FLUSH_STEPS``), never once a step;
 6. the end: final checkpoint, ``scalars.csv``, ``curves.png``.

Randomness is a pure function of ``(seed, rank, step)``: each step draws its windows, masks and
dropout from generators seeded with that triple. So a resumed run (``--resume``) continues
bit-exactly (same CPU thread count assumed) without saving any generator state, and DDP ranks
draw different data.

Output directory (``--out``), a checkpoint directory ``load_checkpoint`` reads:
    model.safetensors, mtm.json   weights + spec/normaliser/provenance (mtm_runtime.checkpoint)
    train_state.safetensors       optimizer tensors (AdamW moments, step counts)
    train_state.json              step, optimizer hyper-parameters, resolved run config
    scalars.csv, curves.png       training curves (train/val loss, lr, samples/s, eval scores)
    self_labels.safetensors       with --self-label-at: the estimated actions (read by --resume)
No pickle anywhere: tensors in safetensors, everything else in JSON.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from mtm_runtime import masks as M
from mtm_runtime.checkpoint import save_checkpoint
from mtm_runtime.fileio import sha256_file
from mtm_runtime.loss import mtm_loss
from mtm_runtime.model import MTM, PRESETS, build_model, count_parameters
from mtm_runtime.spec import ACTIONS, TrajectorySpec
from mtm_runtime.trainer import TrainConfig, lr_at, optimiser_step, resolve_device
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.evaluate import evaluate_checkpoint_object
from mtm_runtime.training.loaders import DatasetError, Episode, data_widths, read_metadata, split_episodes
from mtm_runtime.training.sources import load_dataset
from mtm_runtime.training.pipeline import PRESET_LR, NormalisedSampler, fit_normaliser, step_rng

TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
SELF_LABELS = "self_labels.safetensors"   # --self-label-at: the estimated actions, for --resume


#: The training loop reads its per-step scalars (loss, grad norm, per-modality losses) from the
#: device every FLUSH_STEPS steps or FLUSH_S seconds, and at every validation, evaluation and
#: checkpoint, so that a GPU never waits on the host between steps.
FLUSH_STEPS, FLUSH_S = 50, 1.0


# ---- 1. arguments ------------------------------------------------------------------------------
@dataclass
class Args:
    """Every knob of a run. Units: steps are optimiser steps; batch_size is global (all ranks)."""

    data: str = ""                        # dataset: HDF5 (ours / D4RL layout), Minari dir, LeRobotDataset dir, rosbag2
    env: str = ""                         # simulator: benchmark task, Gymnasium id or robot file; default: what the data names
    task: str = ""                        # older name of --env
    robot: str = ""                       # robot file (joints, fields, limits; needed for a rosbag2)
    state_keys: tuple[str, ...] = ()      # LeRobotDataset: state feature(s), default observation.state
    action_key: str = ""                  # LeRobotDataset: action feature, default action
    out: str = "runs/mtm"                 # output / checkpoint directory
    preset: str = "embedded"              # model size: embedded | paper
    dropout: float = -1.0                 # model dropout; < 0 = the preset's (embedded 0, paper 0.1)
    horizon: int = 4                      # window length T
    steps: int = 5000                     # total optimiser steps
    batch_size: int = 256                 # global batch (split evenly over ranks)
    lr: float = 0.0                       # peak learning rate; 0 = PRESET_LR[preset]
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    masks: tuple[str, ...] = ("auto",)    # training mask kinds, one drawn per sample
    loss_on: str = "all"                  # tokens the loss counts: all present ones | hidden (the ones the mask hid)
    val_fraction: float = 0.1             # fraction of episodes held out for validation
    val_every: int = 500                  # validation loss period (steps); 0 = only at the end
    val_windows: int = 1024               # validation windows (fixed set)
    eval_every: int = 0                   # policy evaluation period (steps); 0 = never
    eval_episodes: int = 10
    eval_modes: tuple[str, ...] = ("bc",)
    ckpt_every: int = 1000                # checkpoint period (steps); always at the end
    until: int = 0                        # stop (with a checkpoint) once this step is reached; 0 = steps
    resume: bool = False                  # continue from the train state in --out
    labelled_only: bool = False           # train on the labelled episodes of the usual split only (heteromodal baseline)
    labelled_share: float = 0.0           # min share of each batch from action-labelled episodes; 0 = uniform
    self_label_at: int = 0                # at this step, give action-free episodes the model's own ID estimates; 0 = off
    start_windows: bool = True            # also train on episode-start windows (history < T, as after reset)
    rtg_scale: float = 0.0                # returns normalisation scale; 0 = max |episode return|
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    threads: int = 0                      # torch CPU threads per process; 0 = torch default
    progress: bool = True                 # tqdm bar (rank 0)
    plot: bool = True                     # curves.png at the end


def _coerce(name: str, value: Any) -> Any:
    """Config-file / CLI value -> the Args field's type (tuples from lists or comma strings)."""
    default = Args.__dataclass_fields__[name].default
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in items if str(v).strip())
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    return type(default)(value)  # type: ignore[misc]  # every Args field has a plain default


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file of Args fields; unknown keys are an error."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(text) or {}
    else:
        cfg = json.loads(text)
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: must hold a mapping of training options")
    unknown = sorted(set(cfg) - set(Args.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{p}: unknown training options {unknown}")
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for every Args field; all default to None so only explicit flags override a config."""
    p.add_argument("--config", help="YAML or JSON file of training options (flags override it)")
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, dest=f.name, default=None, help=f"comma list (default {','.join(f.default)})")
        else:
            p.add_argument(flag, dest=f.name, default=None, type=type(f.default), help=f"default {f.default!r}")


def resolve_args(ns: argparse.Namespace) -> Args:
    """Defaults < config file < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_config_file(ns.config))
    for f in dataclasses.fields(Args):
        v = getattr(ns, f.name, None)
        if v is not None:
            values[f.name] = v
    args = Args(**{k: _coerce(k, v) for k, v in values.items()})
    if not args.data:
        raise SystemExit("train: --data is required (in a flag or the config file)")
    if args.preset not in PRESETS:
        raise SystemExit(f"train: unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    if not args.dropout < 1.0:
        raise SystemExit(f"train: --dropout must be < 1 (or < 0 for the preset's), got {args.dropout}")
    if args.loss_on not in ("all", "hidden"):
        raise SystemExit(f"train: --loss-on must be 'all' or 'hidden', got {args.loss_on!r}")
    for k in args.masks:
        if k not in M.TRAINING_MASKS:
            raise SystemExit(f"train: unknown mask kind {k!r}; choose from {', '.join(M.TRAINING_MASKS)}")
    return args


# ---- helpers -----------------------------------------------------------------------------------
class TrainForward(nn.Module):
    """Makes ``MTM.forward_train`` the module's ``forward`` so DDP's hooks see it."""

    def __init__(self, mtm: MTM) -> None:
        super().__init__()
        self.mtm = mtm

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mtm.forward_train(x, mask)


def weights_digest(mtm: MTM) -> str:
    """sha256 over every parameter and buffer (float32 bytes, state_dict order)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in mtm.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def save_train_state(out: Path, opt: torch.optim.Optimizer, step: int, args: Args) -> None:
    """Optimizer tensors -> safetensors (``state.<param index>.<key>``), the rest -> JSON."""
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous()
               for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    tmp = out / f".{TRAIN_STATE_TENSORS}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / TRAIN_STATE_TENSORS)
    meta = {"step": step, "param_groups": sd["param_groups"], "args": dataclasses.asdict(args),
            "tensors_sha256": sha256_file(out / TRAIN_STATE_TENSORS)}
    tmp = out / f".{TRAIN_STATE_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / TRAIN_STATE_JSON)


def load_train_state(out: Path, opt: torch.optim.Optimizer) -> int:
    """Restore the optimizer from ``out``; returns the step to continue from."""
    from safetensors.torch import load_file

    meta = json.loads((out / TRAIN_STATE_JSON).read_text())
    if sha256_file(out / TRAIN_STATE_TENSORS) != meta["tensors_sha256"]:
        raise RuntimeError(f"{out / TRAIN_STATE_TENSORS}: sha256 does not match {TRAIN_STATE_JSON}")
    tensors = load_file(str(out / TRAIN_STATE_TENSORS))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def self_label(mtm: MTM, sampler: NormalisedSampler, device: torch.device, out: Path | None) -> int:
    """``sampler.fill_actions`` with ``mtm`` in eval mode (fp32); writes the estimates to
    ``out/SELF_LABELS`` (rank 0 passes ``out``). Returns the number of steps filled."""
    from safetensors.numpy import save_file

    mtm.eval()

    def predict(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return mtm(torch.from_numpy(x).to(device), torch.from_numpy(mask.astype(np.float32)).to(device)).cpu().numpy()

    n = sampler.fill_actions(predict)
    mtm.train()
    if out is not None:
        rows = sampler.action_free_rows()
        out.mkdir(parents=True, exist_ok=True)
        actions = np.ascontiguousarray(sampler.flat_x[rows][:, sampler.spec.slice(ACTIONS)])  # safetensors ignores strides
        save_file({"rows": rows.astype(np.int64), "actions": actions}, str(out / SELF_LABELS))
    return n


def load_self_labels(out: Path, sampler: NormalisedSampler) -> None:
    """Put the estimates of an earlier ``self_label`` back into ``sampler`` (``--resume`` past it)."""
    from safetensors.numpy import load_file

    path = out / SELF_LABELS
    if not path.exists():
        raise FileNotFoundError(f"{path}: --resume past --self-label-at needs the labels written at that step")
    saved, rows = load_file(str(path)), sampler.action_free_rows()
    if not np.array_equal(saved["rows"], rows):
        raise ValueError(f"{path}: written for other training episodes ({len(saved['rows'])} rows, these have {len(rows)})")
    sampler.set_actions(rows, saved["actions"])


def load_model_weights(out: Path, mtm: MTM) -> None:
    from mtm_runtime.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out, expect_spec=mtm.spec)
    mtm.load_state_dict(ckpt.state_dict, strict=True)


@torch.no_grad()
def validate(mtm: MTM, spec: TrajectorySpec, val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
             device: torch.device) -> dict[str, float]:
    """Validation: AUTO-mask loss on the fixed windows and hidden-token MSE of each mode mask
    (normalised units; bc/rcbc/goal score the action at T-1, id all actions, fd the state at T-1)."""
    if val is None:
        return {}
    x, present, mask = val
    mtm.eval()
    xt, pt, mt = (torch.from_numpy(a).to(device) for a in (x, present, mask))
    loss, _ = mtm_loss(spec, mtm(xt, mt), xt, mt, pt)
    out = {"val_loss": float(loss)}
    for mode in M.available_modes(spec):
        m = torch.from_numpy(M.mode_mask(spec, mode)).to(device).expand_as(mt)
        m = torch.minimum(m, pt)
        pred = mtm(xt, m)
        col = spec.index(ACTIONS) if mode != "fd" else spec.index("states")
        sl = spec.slice(spec.names[col])
        err = (pred[..., sl] - xt[..., sl]).pow(2).mean(-1)                  # [B, T]
        w = (1.0 - m[..., col]) * pt[..., col]
        out[f"val_{mode}_mse"] = float((err * w).sum() / w.sum().clamp_min(1.0))
    return out


def plot_curves(rows: list[dict[str, float]], path: Path) -> None:
    """Train/val loss, learning rate and throughput (and eval scores if any) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r})
    score_keys = [k for k in keys if k.startswith("eval_") and k.endswith("_score")]
    fig, axes = plt.subplots(1, 3 + bool(score_keys), figsize=(4.5 * (3 + bool(score_keys)), 3.5))
    series = lambda k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])  # noqa: E731
    for k in ["loss", "val_loss"] + [k for k in keys if k.startswith("val_") and k.endswith("_mse")]:
        axes[0].plot(*series(k), label=k)
    axes[0].set_yscale("log"), axes[0].set_title("loss (normalised MSE)"), axes[0].legend(fontsize=7)
    axes[1].plot(*series("lr")), axes[1].set_title("learning rate")
    axes[2].plot(*series("samples_per_s")), axes[2].set_title("samples/s")
    for k in score_keys:
        axes[3].plot(*series(k), marker="o", label=k)
    if score_keys:
        axes[3].set_title("normalised score"), axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- the run -----------------------------------------------------------------------------------
def run(args: Args, episodes: list[Episode] | None = None) -> dict[str, Any]:
    """Train; returns a summary (final val metrics, samples/s, out dir). ``episodes`` replaces
    loading ``args.data`` (the benchmark passes subsets in memory; provenance still names data)."""
    if args.lr <= 0:  # 0 = the preset's default (resolved here so Args built in code get it too)
        args = dataclasses.replace(args, lr=PRESET_LR[args.preset])
    # 2. distributed setup (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR ...)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(args.device, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    is_main = rank == 0
    if args.batch_size % world:
        raise SystemExit(f"train: --batch-size {args.batch_size} must divide evenly over {world} ranks")
    local_batch = args.batch_size // world
    out = Path(args.out)
    log = print if is_main else (lambda *a, **k: None)

    # 3. data, spec, normaliser
    meta: dict[str, Any] = {}
    if episodes is None:
        ds = load_dataset(args.data, env=args.env or args.task, robot=args.robot, state_keys=args.state_keys,
                          action_key=args.action_key)
        episodes, task, limits, widths, source = ds.episodes, ds.task, ds.limits, ds.widths, ds.source
        if ds.source == "hdf5":
            try:
                meta = read_metadata(args.data)
            except DatasetError:   # a plain D4RL-layout file: no metadata group
                meta = {}
        for note in ds.notes:
            log(f"[train] {ds.path}: {note}")
    else:   # in-memory episodes of a benchmark task (tests, benchmarks)
        widths = data_widths(episodes, "episodes")
        task = get_task(args.env or args.task).with_data_widths(widths)
        limits = task.robot.limits if task.robot is not None else None
        source = None
    train_eps, val_eps = split_episodes(episodes, args.val_fraction, seed=args.seed, labelled_only=args.labelled_only)
    if not train_eps:
        raise ValueError(f"{args.data}: --labelled-only left no training episode (no action-labelled episode in "
                         f"the training split of {len(episodes)} episodes; val_fraction {args.val_fraction}, seed {args.seed})")
    spec = TrajectorySpec.create(args.horizon, **widths)   # the spec comes from the data
    norm = fit_normaliser(spec, train_eps, args.rtg_scale)
    sampler = NormalisedSampler(train_eps, spec, norm, start_windows=args.start_windows,
                                labelled_share=args.labelled_share)
    val = None
    if val_eps:
        vrng = np.random.default_rng([args.seed, 0x5A1])
        vx, vp = NormalisedSampler(val_eps, spec, norm).sample(args.val_windows, vrng)
        vm = M.apply_availability(M.sample_training_masks(spec, len(vx), vrng, ("auto",)), vp, vrng)
        val = (vx, vp, vm)
    n_labelled = sum(ep.labelled for ep in train_eps)
    log(f"[train] {task.name}: {len(train_eps)} train episodes ({n_labelled} with actions), {len(val_eps)} val; "
        f"spec {spec.describe()}; world {world} on {device}")

    # 4. model, optimiser, schedule
    torch.manual_seed(args.seed)
    model_cfg = PRESETS[args.preset]
    if args.dropout >= 0:
        model_cfg = dataclasses.replace(model_cfg, dropout=args.dropout)
    mtm = build_model(spec, model_cfg).to(device)
    net: nn.Module = TrainForward(mtm)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if use_cuda else None)
    opt = torch.optim.AdamW(mtm.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=args.warmup_steps)
    start = 0
    if args.resume and (out / TRAIN_STATE_JSON).exists():
        load_model_weights(out, mtm)
        start = load_train_state(out, opt)
        log(f"[train] resumed from {out} at step {start}")
    elif args.resume:
        log(f"[train] --resume: no train state in {out}, starting from scratch")
    if world > 1:  # every rank starts from rank 0's weights and optimizer state
        for p in mtm.parameters():
            dist.broadcast(p.data, 0)
    if task.robot is not None and limits is not None and task.robot.limits is None:
        task = dataclasses.replace(task, robot=dataclasses.replace(task.robot, limits=limits))
    provenance = {   # action limits travel in the checkpoint (the robot file's, or the env's actuator range)
        "task": task.key or task.name, "env_id": task.env_id or None,
        "robot": task.robot.to_dict() if task.robot is not None else None,
        "reference_returns": {k: v for k, v in task.reference_returns.items() if math.isfinite(v)} or None,
        "dataset": {"path": str(Path(args.data).resolve()) if args.data else None,
                                       "sha256": sha256_file(args.data) if args.data and Path(args.data).is_file() else None,
                                       "tier": meta.get("tier"), "format": source,
                                       "episodes": len(episodes),
                                       "train_episodes": len(train_eps), "val_episodes": len(val_eps)},
        "config": dataclasses.asdict(args), "git_commit": git_commit(), "world_size": world,
        "parameters": count_parameters(mtm), "trainer": "training/train.py",
    }

    def checkpoint(step: int) -> None:
        if not is_main:
            return
        prov = {**provenance, "steps": step, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        save_checkpoint(out, mtm, norm, limits, prov)
        save_train_state(out, opt, step, args)

    # 5. the loop
    rows: list[dict[str, float]] = []
    csv_path = out / "scalars.csv"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")
        if start > 0 and csv_path.exists():
            with open(csv_path) as f:
                rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
            rows = [r for r in rows if r["step"] <= start]
    stop = min(args.until or args.steps, args.steps)
    bar = None
    if is_main and args.progress and stop > start:
        from tqdm import tqdm
        bar = tqdm(total=stop - start, initial=0, desc="train", unit="step", dynamic_ncols=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)
    t_start, smooth = time.perf_counter(), None
    summary: dict[str, Any] = {}
    # Per-step scalars stay on the device until ``flush`` reads a group of steps in one transfer:
    # a float() per scalar per step would stall a GPU's queue six times a step.
    scalar_keys = ["loss", "grad_norm", *(f"loss_{k}" for k in spec.names)]
    pending: list[tuple[dict[str, Any], torch.Tensor]] = []
    last_flush = time.perf_counter()

    def flush() -> None:
        """Finish the pending steps' rows (one host sync), keep them, move the progress bar."""
        nonlocal smooth, last_flush
        if not pending:
            return
        for (row, _), vals in zip(pending, torch.stack([v for _, v in pending]).tolist()):
            row.update(zip(scalar_keys, vals))
            smooth = row["loss"] if smooth is None else 0.98 * smooth + 0.02 * row["loss"]
            if is_main:
                rows.append(row)
        row = pending[-1][0]  # its rate, read after the sync, counts the device's queued work too
        row["samples_per_s"] = (row["step"] - start) * args.batch_size / max(time.perf_counter() - t_start, 1e-9)
        if bar is not None:
            bar.update(len(pending))
            bar.set_postfix(loss=f"{smooth:.4f}", samples_s=f"{row['samples_per_s']:.0f}", lr=f"{row['lr']:.1e}")
        pending.clear()
        last_flush = time.perf_counter()

    if 0 < args.self_label_at < start:
        load_self_labels(out, sampler)
    for step in range(start, stop):
        if step == args.self_label_at > 0:
            n = self_label(mtm, sampler, device, out if is_main else None)
            log(f"[train] step {step}: self-labelled {n} action-free steps with the model's inverse dynamics", flush=True)
        net.train()
        rng = step_rng(args.seed, rank, step)
        torch.manual_seed(args.seed * 1_000_003 + rank * 10_007 + step)  # dropout
        x, present = sampler.sample(local_batch, rng)
        mask = M.apply_availability(M.sample_training_masks(spec, local_batch, rng, args.masks), present, rng)
        xt, mt, pt = (torch.from_numpy(a).to(device, non_blocking=True) for a in (x, mask, present))
        lr = lr_at(step, sched)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, parts, grad_norm = optimiser_step(net, mtm.parameters(), opt, spec, xt, mt, pt, args.grad_clip,
                                                masked_only=args.loss_on == "hidden", autocast=autocast)

        done = step + 1
        elapsed = time.perf_counter() - t_start
        row = {"step": done, "lr": lr, "samples_per_s": (done - start) * args.batch_size / max(elapsed, 1e-9)}
        pending.append((row, torch.stack([loss.detach(), grad_norm.detach(), *parts.values()]).float()))
        last = done == stop
        validating = bool(args.val_every and done % args.val_every == 0) or last
        evaluating = is_main and args.eval_every and (done % args.eval_every == 0 or (last and done == args.steps))
        saving = bool(args.ckpt_every and done % args.ckpt_every == 0) or last
        if validating or evaluating or saving or len(pending) >= FLUSH_STEPS or time.perf_counter() - last_flush >= FLUSH_S:
            flush()
        if validating:
            row.update(validate(mtm, spec, val, device))
            if bar is None and not last:
                log(f"[train] step {done}: loss {row['loss']:.4f} val_loss {row.get('val_loss', math.nan):.4f} "
                    f"val_bc_mse {row.get('val_bc_mse', math.nan):.4f}; {row['samples_per_s']:.0f} samples/s", flush=True)
        if evaluating:

            for mode in args.eval_modes:
                res = evaluate_checkpoint_object(mtm, norm, limits, task, mode, episodes=args.eval_episodes,
                                                 seeds=(10_000,))
                row[f"eval_{mode}_score" if res["score_mean"] is not None else f"eval_{mode}_return"] = (
                    res["score_mean"] if res["score_mean"] is not None else res["return_mean"])
                if res.get("success_mean") is not None:
                    row[f"eval_{mode}_success"] = res["success_mean"]
        if saving:
            checkpoint(done)
        summary = row
    if bar is not None:
        bar.close()

    # 6. the end: scalars + curves (rank 0)
    if is_main and rows:
        keys = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        if args.plot:
            plot_curves(rows, out / "curves.png")
        vals = {k: v for k, v in summary.items() if k.startswith("val_")}
        log(f"[train] step {summary.get('step')}: loss {summary.get('loss', math.nan):.4f} "
            + " ".join(f"{k} {v:.4f}" for k, v in vals.items())
            + f"; {summary.get('samples_per_s', 0):.0f} samples/s; wrote {out}")
    digest = weights_digest(mtm)
    if world > 1:
        print(f"[train] rank {rank}/{world} final weights sha256 {digest}", flush=True)
        dist.barrier()
        dist.destroy_process_group()
    return {**summary, "out": str(out), "spec": spec.describe(), "device": str(device), "world_size": world,
            "weights_sha256": digest}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.training.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    run(resolve_args(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
