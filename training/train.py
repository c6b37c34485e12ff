"""Train a Masked Trajectory Model on an offline dataset (CleanRL-style: read it top to bottom).

    python -m mtm_runtime.training.train --data reacher_expert.hdf5 --preset embedded --steps 6000 --out runs/reacher
    mtm train --data reacher_expert.hdf5 --out runs/reacher                        # same thing
    torchrun --nproc_per_node=2 -m mtm_runtime.training.train --data ... --out ...             # DDP (gloo/nccl)
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d \
             --rdzv_endpoint=HOST:29500 -m mtm_runtime.training.train ...                       # several hosts
(with several hosts, ``--data`` must exist on every host and ``--out`` be on a shared filesystem
for ``--resume``: every rank reads the train state, only rank 0 writes.)

What one run does (the parts it calls are the ``training/`` modules named here):
 1. arguments (``train_args``): dataclass defaults < ``--config`` YAML/JSON < explicit
    command-line flags;
 2. distributed setup from torchrun's environment (``RANK``/``WORLD_SIZE``; ``distributed``);
    gloo on CPU, nccl on CUDA; only rank 0 writes files or prints;
 3. data: load episodes (``train_data``: a dataset file, or episodes handed over in memory), split
    train/validation by episode (seeded), build the spec from the data's modality widths and
    horizon T, fit the normaliser on the training split only (returns are scale-only: the RTG
    scale is ``max |return of an episode|`` in the training split, so normalised returns-to-go
    lie in [-1, 1] on the data, unless ``--rtg-scale`` is given);
 4. model (``--preset``) and AdamW; learning rate: linear warmup then cosine to 10 %
    (``mtm_runtime.trainer.lr_at``); bf16 autocast on CUDA; gradient clipping;
 5. loop: per step, windows + per-sample training masks (``--masks``, AUTO_MASK by default)
    ANDed with data availability, packed-encoder forward, ``mtm_runtime.loss.mtm_loss``;
    periodic validation loss (+ per-mode errors) and optional periodic policy evaluation in the
    simulator (``train_metrics``), checkpoints every ``--ckpt-every`` steps (``train_checkpoint``);
    with ``--self-label-at N``, at step N the action-free episodes get the model's own
    inverse-dynamics estimates as actions (``self_label``) and count as labelled from then on;
    the per-step scalars stay on the device and are read in groups (``FLUSH_STEPS``), never once
    a step;
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
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from mtm_runtime import masks as M
from mtm_runtime.model import PRESETS, build_model
from mtm_runtime.spec import TrajectorySpec
from mtm_runtime.trainer import TrainConfig, lr_at, optimiser_step
from mtm_runtime.training import distributed
from mtm_runtime.training.loaders import Episode, split_episodes
from mtm_runtime.training.pipeline import PRESET_LR, NormalisedSampler, fit_normaliser, step_rng
from mtm_runtime.training.self_label import load_self_labels, self_label
from mtm_runtime.training.train_args import Args, add_arguments, resolve_args
from mtm_runtime.training.train_checkpoint import (TRAIN_STATE_JSON, load_model_weights, load_train_state,
                                                   run_provenance, save_run_checkpoint, weights_digest)
from mtm_runtime.training.train_data import load_run_data
from mtm_runtime.training.train_metrics import (evaluate_modes, plot_curves, read_scalars, validate,
                                                validation_windows, write_scalars)

#: The training loop reads its per-step scalars (loss, grad norm, per-modality losses) from the
#: device every FLUSH_STEPS steps or FLUSH_S seconds, and at every validation, evaluation and
#: checkpoint, so that a GPU never waits on the host between steps.
FLUSH_STEPS, FLUSH_S = 50, 1.0


def run(args: Args, episodes: list[Episode] | None = None) -> dict[str, Any]:
    """Train; returns a summary (final val metrics, samples/s, out dir). ``episodes`` replaces
    loading ``args.data`` (the benchmark passes subsets in memory; provenance still names data)."""
    if args.lr <= 0:  # 0 = the preset's default (resolved here so Args built in code get it too)
        args = dataclasses.replace(args, lr=PRESET_LR[args.preset])
    # 2. distributed setup (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR ...)
    ranks = distributed.setup(args.device, args.threads)
    world, rank, device, is_main = ranks.world, ranks.rank, ranks.device, ranks.is_main
    if args.batch_size % world:
        raise SystemExit(f"train: --batch-size {args.batch_size} must divide evenly over {world} ranks")
    local_batch = args.batch_size // world
    out = Path(args.out)
    log = print if is_main else (lambda *a, **k: None)

    # 3. data, spec, normaliser
    data = load_run_data(args, episodes, log)
    episodes, task, limits = data.episodes, data.task, data.limits
    train_eps, val_eps = split_episodes(episodes, args.val_fraction, seed=args.seed, labelled_only=args.labelled_only)
    if not train_eps:
        raise ValueError(f"{args.data}: --labelled-only left no training episode (no action-labelled episode in "
                         f"the training split of {len(episodes)} episodes; val_fraction {args.val_fraction}, seed {args.seed})")
    spec = TrajectorySpec.create(args.horizon, **data.widths)   # the spec comes from the data
    norm = fit_normaliser(spec, train_eps, args.rtg_scale)
    sampler = NormalisedSampler(train_eps, spec, norm, start_windows=args.start_windows,
                                labelled_share=args.labelled_share)
    val = validation_windows(val_eps, spec, norm, args.val_windows, args.seed)
    n_labelled = sum(ep.labelled for ep in train_eps)
    log(f"[train] {task.name}: {len(train_eps)} train episodes ({n_labelled} with actions), {len(val_eps)} val; "
        f"spec {spec.describe()}; world {world} on {device}")

    # 4. model, optimiser, schedule
    torch.manual_seed(args.seed)
    model_cfg = PRESETS[args.preset]
    if args.dropout >= 0:
        model_cfg = dataclasses.replace(model_cfg, dropout=args.dropout)
    mtm = build_model(spec, model_cfg).to(device)
    net = distributed.training_module(mtm, ranks)
    opt = torch.optim.AdamW(mtm.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=args.warmup_steps)
    start = 0
    if args.resume and (out / TRAIN_STATE_JSON).exists():   # every rank reads the train state
        load_model_weights(out, mtm)
        start = load_train_state(out, opt)
        log(f"[train] resumed from {out} at step {start}")
    elif args.resume:
        log(f"[train] --resume: no train state in {out}, starting from scratch")
    distributed.broadcast_parameters(mtm, ranks)   # every rank starts from rank 0's weights
    if task.robot is not None and limits is not None and task.robot.limits is None:
        task = dataclasses.replace(task, robot=dataclasses.replace(task.robot, limits=limits))
    provenance = run_provenance(args, task, mtm, tier=data.meta.get("tier"), source=data.source,
                                episodes=len(episodes), train_episodes=len(train_eps),
                                val_episodes=len(val_eps), world=world)

    # 5. the loop
    rows: list[dict[str, float]] = []
    csv_path = out / "scalars.csv"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")
        if start > 0:
            rows = read_scalars(csv_path, start)
    stop = min(args.until or args.steps, args.steps)
    bar = None
    if is_main and args.progress and stop > start:
        from tqdm import tqdm
        bar = tqdm(total=stop - start, initial=0, desc="train", unit="step", dynamic_ncols=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ranks.use_cuda else torch.autocast("cpu", enabled=False)
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
            row.update(evaluate_modes(mtm, norm, limits, task, args.eval_modes, args.eval_episodes))
        if saving and is_main:
            save_run_checkpoint(out, done, mtm, norm, limits, provenance, opt, args)
        summary = row
    if bar is not None:
        bar.close()

    # 6. the end: scalars + curves (rank 0)
    if is_main and rows:
        write_scalars(rows, csv_path)
        if args.plot:
            plot_curves(rows, out / "curves.png")
        vals = {k: v for k, v in summary.items() if k.startswith("val_")}
        log(f"[train] step {summary.get('step')}: loss {summary.get('loss', math.nan):.4f} "
            + " ".join(f"{k} {v:.4f}" for k, v in vals.items())
            + f"; {summary.get('samples_per_s', 0):.0f} samples/s; wrote {out}")
    digest = weights_digest(mtm)
    if world > 1:
        print(f"[train] rank {rank}/{world} final weights sha256 {digest}", flush=True)
    distributed.shutdown(ranks)
    return {**summary, "out": str(out), "spec": spec.describe(), "device": str(device), "world_size": world,
            "weights_sha256": digest}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.training.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    run(resolve_args(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
