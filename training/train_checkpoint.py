"""What a training run writes to ``--out`` and reads back on ``--resume`` (``training/train.py``).

    model.safetensors, mtm.json   the checkpoint (``mtm_runtime.checkpoint.save_checkpoint``) with
                                  the run's provenance: task, robot, dataset (path, sha256, tier,
                                  split sizes), resolved config, git commit, world size, step
    train_state.safetensors       optimizer tensors (AdamW moments, step counts)
    train_state.json              step, optimizer hyper-parameters, resolved run config and the
                                  sha256 of the tensors file (checked before a resume reads it)

Each file is written to a temporary name and then moved into place, so no reader sees a
half-written file. ``weights_digest`` is the one fingerprint of trained weights that
the tests (resume, DDP ranks) and the run's summary compare. No pickle: tensors in safetensors,
everything else in JSON.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from mtm_runtime.checkpoint import load_checkpoint, save_checkpoint
from mtm_runtime.fileio import sha256_file
from mtm_runtime.model import MTM, count_parameters
from mtm_runtime.normalise import Normaliser
from mtm_runtime.safety import ActionLimits
from mtm_runtime.sim.tasks import Task
from mtm_runtime.training.train_args import Args

TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"


def git_commit() -> str | None:
    """The commit of the checkout this file is in, or None (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_provenance(args: Args, task: Task, mtm: MTM, *, tier: Any, source: str | None, episodes: int,
                   train_episodes: int, val_episodes: int, world: int) -> dict[str, Any]:
    """The provenance every checkpoint of the run carries (``save_run_checkpoint`` adds the step and
    the time). Action limits travel in the checkpoint separately (the robot file's, or the env's
    actuator range)."""
    return {
        "task": task.key or task.name, "env_id": task.env_id or None,
        "robot": task.robot.to_dict() if task.robot is not None else None,
        "reference_returns": {k: v for k, v in task.reference_returns.items() if math.isfinite(v)} or None,
        "dataset": {"path": str(Path(args.data).resolve()) if args.data else None,
                    "sha256": sha256_file(args.data) if args.data and Path(args.data).is_file() else None,
                    "tier": tier, "format": source,
                    "episodes": episodes,
                    "train_episodes": train_episodes, "val_episodes": val_episodes},
        "config": dataclasses.asdict(args), "git_commit": git_commit(), "world_size": world,
        "parameters": count_parameters(mtm), "trainer": "training/train.py",
    }


def save_run_checkpoint(out: Path, step: int, mtm: MTM, norm: Normaliser, limits: ActionLimits | None,
                        provenance: dict[str, Any], opt: torch.optim.Optimizer, args: Args) -> None:
    """The checkpoint at ``step`` (model + mtm.json, then the train state); rank 0 only."""
    prov = {**provenance, "steps": step, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    save_checkpoint(out, mtm, norm, limits, prov)
    save_train_state(out, opt, step, args)


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


def load_model_weights(out: Path, mtm: MTM) -> None:
    """The weights of the checkpoint in ``out`` into ``mtm`` (its spec must be the run's)."""
    ckpt = load_checkpoint(out, expect_spec=mtm.spec)
    mtm.load_state_dict(ckpt.state_dict, strict=True)


def weights_digest(mtm: MTM) -> str:
    """sha256 over every parameter and buffer (float32 bytes, state_dict order)."""
    h = hashlib.sha256()
    for k, v in mtm.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
