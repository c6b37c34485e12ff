"""MLP baselines trained on exactly the data, normalisation, steps and batch size of an MTM run.

    python -m mtm_runtime.training.baselines --data reacher_expert.hdf5 --kinds bc,rcbc,gcbc,id,fd --steps 6000 --out runs/base

Kinds (inputs -> output, one time step; all in the MTM run's normalised units):

=====  ==============================  =========  ==========================================
kind   inputs                          output     evaluated as
=====  ==============================  =========  ==========================================
bc     s_t                             a_t        rollouts, mode ``bc``
rcbc   s_t, rtg_t                      a_t        rollouts, mode ``rcbc`` (same RTG bookkeeping)
gcbc   s_t, g                          a_t        rollouts, mode ``goal`` (goal tasks only)
id     s_t, s_{t+1}                    a_t        held-out ID error (training/evaluate.py)
fd     s_t, a_t                        s_{t+1}    held-out FD error
=====  ==============================  =========  ==========================================

Network: Linear(in, 256) - ReLU - Linear(256, 256) - ReLU - Linear(256, out); AdamW with the
MTM run's learning-rate schedule (warmup + cosine, ``mtm_runtime.trainer.lr_at``), weight decay
and gradient clipping; MSE loss. Only episodes that have every needed modality are used (an
unlabelled episode of a heteromodal set has no actions, so BC/ID/FD never see it).

A baseline directory holds ``model.safetensors`` and ``baseline.json`` (kind, spec, normaliser,
limits, provenance); no pickle. ``load_baseline_agent`` gives the ``Policy``-like agent the
evaluation harness drives.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from mtm_runtime.fileio import sha256_bytes, sha256_file
from mtm_runtime.normalise import Normaliser
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import ACTIONS, GOALS, RETURNS, STATES, TrajectorySpec
from mtm_runtime.trainer import TrainConfig, lr_at, resolve_device
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.id_fd import id_fd_errors, validation_windows
from mtm_runtime.training.pipeline import PRESET_LR, NormalisedSampler, fit_normaliser, step_rng

#: kind -> (inputs as (modality, time offset), output (modality, offset), evaluation mode or None)
KINDS: dict[str, tuple[tuple[tuple[str, int], ...], tuple[str, int], str | None]] = {
    "bc": (((STATES, 0),), (ACTIONS, 0), "bc"),
    "rcbc": (((STATES, 0), (RETURNS, 0)), (ACTIONS, 0), "rcbc"),
    "gcbc": (((STATES, 0), (GOALS, 0)), (ACTIONS, 0), "goal"),
    "id": (((STATES, 0), (STATES, 1)), (ACTIONS, 0), None),
    "fd": (((STATES, 0), (ACTIONS, 0)), (STATES, 1), None),
}
HIDDEN = 256


def mlp(n_in: int, n_out: int, hidden: int = HIDDEN) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def kind_widths(kind: str, spec: TrajectorySpec) -> tuple[int, int]:
    ins, (out, _), _ = KINDS[kind]
    return sum(spec.width(n) for n, _ in ins), spec.width(out)


def gather(kind: str, spec: TrajectorySpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-step windows ``x [B, 2, D]`` (normalised) -> (inputs [B, in], target [B, out])."""
    ins, (out, dt), _ = KINDS[kind]
    inp = np.concatenate([x[:, t, spec.slice(n)] for n, t in ins], axis=-1)
    return inp.astype(np.float32), x[:, dt, spec.slice(out)].astype(np.float32)


def needed(kind: str) -> set[str]:
    ins, (out, _), _ = KINDS[kind]
    return {n for n, _ in ins} | {out}



# ---- training ----------------------------------------------------------------------------------
def train_baseline(kind: str, task: Task, train_eps: Sequence[Any], norm: Normaliser, steps: int,
                   batch_size: int, lr: float, out: str | Path, weight_decay: float = 0.01,
                   warmup_steps: int = 200, grad_clip: float = 1.0, seed: int = 0,
                   provenance: dict[str, Any] | None = None, device: str = "auto") -> dict[str, Any]:
    """Train one MLP baseline on ``train_eps`` (normalised with ``norm``) on ``device`` (``auto``:
    CUDA when available, as ``mtm train``); writes ``out`` (weights saved from the CPU)."""

    spec2 = TrajectorySpec.create(2, **{n: norm.spec.width(n) for n in norm.spec.names})
    norm2 = Normaliser(spec2, dict(norm.mean), dict(norm.std), norm.std_floor)
    eps = [ep for ep in train_eps if all(ep.present.get(n, True) for n in needed(kind)) and ep.length >= 2]
    if not eps:
        raise ValueError(f"baseline {kind}: no training episode has {sorted(needed(kind))}")
    if GOALS in needed(kind) and GOALS not in spec2:
        raise ValueError(f"baseline {kind}: task {task.name} has no goals")
    sampler = NormalisedSampler(eps, spec2, norm2)
    torch.manual_seed(seed)
    n_in, n_out = kind_widths(kind, spec2)
    dev = resolve_device(device)
    net = mlp(n_in, n_out).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps)
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in range(steps):
        x, _ = sampler.sample(batch_size, step_rng(seed, 0, step))
        inp, tgt = (torch.from_numpy(a).to(dev) for a in gather(kind, spec2, x))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, sched)
        loss = (net(inp) - tgt).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
    net = net.cpu()
    elapsed = time.perf_counter() - t0
    env = task.make_env()
    limits = ActionLimits(env.action_space.low, env.action_space.high)
    env.close()
    save_baseline(out, kind, task, norm, net, limits, {
        **(provenance or {}), "task": task.name, "steps": steps, "batch_size": batch_size, "lr": lr,
        "train_episodes": len(eps), "final_loss": float(loss.detach()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return {"kind": kind, "out": str(out), "final_loss": float(loss.detach()),
            "samples_per_s": steps * batch_size / max(elapsed, 1e-9)}


def save_baseline(out: str | Path, kind: str, task: Task, norm: Normaliser, net: nn.Sequential,
                  limits: ActionLimits, provenance: dict[str, Any]) -> Path:
    from safetensors.torch import save

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().contiguous() for k, v in net.state_dict().items()})
    (d / "model.safetensors").write_bytes(blob)
    meta = {"format": "mtm_runtime.baseline", "kind": kind, "task": task.name, "hidden": HIDDEN,
            "spec": norm.spec.to_dict(), "normaliser": norm.to_dict(), "action_limits": limits.to_dict(),
            "provenance": provenance, "weights_sha256": sha256_bytes(blob)}
    (d / "baseline.json").write_text(json.dumps(meta, indent=2) + "\n")
    return d


def load_baseline(path: str | Path) -> tuple[dict[str, Any], TrajectorySpec, Normaliser, nn.Sequential]:
    """(metadata, spec, normaliser, network in eval mode); refuses a checksum mismatch."""
    from safetensors.torch import load

    d = Path(path)
    meta = json.loads((d / "baseline.json").read_text())
    if meta.get("format") != "mtm_runtime.baseline" or meta.get("kind") not in KINDS:
        raise ValueError(f"{d / 'baseline.json'}: format/kind: not an MLP baseline")
    blob = (d / "model.safetensors").read_bytes()
    if sha256_bytes(blob) != meta["weights_sha256"]:
        raise ValueError(f"{d / 'model.safetensors'}: sha256 does not match baseline.json")
    spec = TrajectorySpec.from_dict(meta["spec"])
    norm = Normaliser.from_dict(spec, meta["normaliser"])
    n_in, n_out = kind_widths(meta["kind"], spec)
    net = mlp(n_in, n_out, int(meta["hidden"]))
    net.load_state_dict(load(blob))
    return meta, spec, norm, net.eval()


# ---- the agent the evaluation harness drives -------------------------------------------------------
class BaselineAgent:
    """Policy-like: ``set_mode``, ``set_goal``, ``set_target_return``, ``reset``, ``act``.
    Return-to-go bookkeeping is the Policy's: rtg_0 = target; rtg_t = rtg_{t-1} - r_{t-1}."""

    def __init__(self, kind: str, spec: TrajectorySpec, norm: Normaliser, net: nn.Sequential, limits: ActionLimits) -> None:
        self.kind, self.spec, self.norm, self.net, self.limits = kind, spec, norm, net, limits
        mode = KINDS[kind][2]
        if mode is None:
            raise ValueError(f"baseline {kind} is not a control policy")
        self.modes = (mode,)
        self.goal: np.ndarray | None = None
        self.target = 0.0
        self.rtg = 0.0
        self.steps = 0

    def set_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(f"baseline {self.kind} runs mode {self.modes[0]!r}, not {mode!r}")

    def set_goal(self, goal: np.ndarray) -> None:
        self.goal = np.asarray(goal, np.float32).copy()

    def set_target_return(self, target: float) -> None:
        self.target = float(target)

    def reset(self) -> None:
        self.rtg, self.steps = self.target, 0

    @torch.no_grad()
    def act(self, state: np.ndarray, reward: float | None = None) -> np.ndarray:
        if reward is not None and self.steps > 0:
            self.rtg -= float(reward)
        self.steps += 1
        parts = [self.norm.normalise(STATES, state)]
        if self.kind == "rcbc":
            parts.append(np.array([self.rtg / self.norm.std[RETURNS][0]], np.float32))
        if self.kind == "gcbc":
            if self.goal is None:
                raise ValueError("gcbc: set_goal() before act()")
            parts.append(self.norm.normalise(GOALS, self.goal))
        y = self.net(torch.from_numpy(np.concatenate(parts)[None])).numpy()[0]
        return self.limits.clip(self.norm.denormalise(ACTIONS, y))


def load_baseline_agent(path: str | Path) -> BaselineAgent:
    meta, spec, norm, net = load_baseline(path)
    return BaselineAgent(meta["kind"], spec, norm, net, ActionLimits.from_dict(meta["action_limits"]))


def baseline_id_fd(path: str | Path, data: str | Path, n: int = 4096) -> dict[str, float]:
    """Held-out ID or FD error of an ``id``/``fd`` baseline (the other is NaN) on the validation
    split recorded in its provenance, with the windows and formula MTM is scored with."""
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes

    meta, spec, norm, net = load_baseline(path)
    prov = meta["provenance"]
    episodes = load_episodes(data, meta["task"])
    _, val = split_episodes(episodes, float(prov.get("val_fraction", 0.1)), seed=int(prov.get("seed", 0)))
    specT = TrajectorySpec.create(int(prov.get("horizon", 4)), **{k: spec.width(k) for k in spec.names})
    normT = Normaliser(specT, dict(norm.mean), dict(norm.std), norm.std_floor)
    x, _ = validation_windows(val, specT, normT, n)
    return baseline_errors(meta["kind"], net, specT, x)


@torch.no_grad()
def baseline_errors(kind: str, net: nn.Sequential, spec: TrajectorySpec, x: np.ndarray) -> dict[str, float]:
    """ID/FD errors of an MLP on T-step windows: its predictions placed where MTM's would be."""

    T = spec.horizon
    s_sl, a_sl = spec.slice(STATES), spec.slice(ACTIONS)

    def predict(xb: np.ndarray, mb: np.ndarray) -> np.ndarray:
        pred = np.zeros_like(xb)
        if kind == "id":
            for t in range(T - 1):
                inp = np.concatenate([xb[:, t, s_sl], xb[:, t + 1, s_sl]], -1)
                pred[:, t, a_sl] = net(torch.from_numpy(inp)).numpy()
        if kind == "fd":
            inp = np.concatenate([xb[:, T - 2, s_sl], xb[:, T - 2, a_sl]], -1)
            pred[:, T - 1, s_sl] = net(torch.from_numpy(inp)).numpy()
        return pred

    errs = id_fd_errors(predict, spec, x)
    keep = "id" if kind == "id" else "fd"
    return {k: (v if k.startswith(keep) else math.nan) for k, v in errs.items()}


# ---- command line ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    from mtm_runtime.training.loaders import read_metadata, split_episodes
    from mtm_runtime.training.sources import load_episodes

    p = argparse.ArgumentParser(prog="python -m mtm_runtime.training.baselines", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--task", default="")
    p.add_argument("--kinds", default="bc,rcbc,id,fd", help=f"comma list from {', '.join(KINDS)}")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=PRESET_LR["embedded"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--horizon", type=int, default=4, help="window length used to score ID/FD (as the MTM run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory; each kind goes to OUT/mlp_<kind>")
    a = p.parse_args(argv)
    task = get_task(a.task or read_metadata(a.data)["task"])
    episodes = load_episodes(a.data, task)
    train_eps, _ = split_episodes(episodes, a.val_fraction, seed=a.seed)
    spec = TrajectorySpec.create(a.horizon, **task.modality_widths())
    norm = fit_normaliser(spec, train_eps)
    prov = {"dataset": {"path": str(Path(a.data).resolve()), "sha256": sha256_file(a.data)},
            "val_fraction": a.val_fraction, "seed": a.seed, "horizon": a.horizon}
    for kind in a.kinds.split(","):
        res = train_baseline(kind, task, train_eps, norm, a.steps, a.batch_size, a.lr, Path(a.out) / f"mlp_{kind}",
                             seed=a.seed, provenance=prov)
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
