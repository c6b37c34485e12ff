"""Offline TD3+BC (Fujimoto & Gu, 2021) on raw states or on MTM features, with relabelled rewards.

    python -m mtm_runtime.training.offline_rl --data reacher_medium.hdf5 --representation raw --steps 10000
    python -m mtm_runtime.training.offline_rl --data reacher_medium.hdf5 --representation frozen --checkpoint runs/mtm_reacher
    mtm offline-rl --data idp_medium.hdf5 --representation finetune --checkpoint runs/mtm_idp   # same

Read it top to bottom (CleanRL style; the parts it calls are the ``training/`` modules named):
 1. **rewards** (``offline_data``): the dataset's rewards are replaced by a task-specific function
    of ``(observation, action)`` from ``RELABELS`` (a new task on old data: the point of offline
    RL);
 2. **transitions** (``offline_data``) ``(o_t, a_t, r_t, o_{t+1}, done_t)`` inside episodes; the
    last step of a time-limited episode has no successor and is dropped; a terminated episode's
    last step has ``done = 1``;
 3. **observations** for the actor and critics (``offline_nets.ObsSource``, made by
    ``make_source`` here), one of
    * ``raw``: the environment observation (states + goal), z-scored on the dataset;
    * ``frozen``: the MTM feature (``mtm_runtime.features``) of the window ending at step t
      (states, past actions, goal; short history hidden), precomputed once, z-scored;
    * ``finetune``: the same feature computed on the fly by a trainable copy of the MTM encoder
      that the critic loss updates (the actor sees detached features; the target critics use a
      Polyak-averaged target encoder), z-scored with statistics fixed at the start;
 4. **TD3+BC** (the networks: ``offline_nets``; the updates: ``train`` here): actor + twin
    critics + target networks; clipped double-Q target with target policy smoothing (noise
    ``policy_noise``, clipped at ``noise_clip``, in units of the action bound); the actor and the
    targets update every ``policy_freq`` critic steps; actor loss
    ``-lambda * Q1(o, pi(o)).mean() + mean((pi(o) - a)^2)`` with ``lambda = alpha / mean|Q1|``
    (detached);
 5. **evaluation** (``offline_eval``) in the simulator every ``eval_every`` steps: the
    deterministic actor on ``eval_episodes`` episodes (fixed reset seeds), scored both by the
    relabelled reward (``new_return``) and by the task's D4RL-style ``normalised_score`` of the
    env's own reward.

Actions are in the env's units; every supported task has actions in [-1, 1] (``max_action`` 1).
No pickle: results are JSON; nothing here writes weights except ``--save`` (safetensors).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mtm_runtime.checkpoint import CheckpointError, load_checkpoint
from mtm_runtime.features import dataset_features, episode_windows, extractor_from_checkpoint
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.loaders import DatasetError, Episode, read_metadata
from mtm_runtime.training.offline_data import Transitions, build_transitions, get_relabel
from mtm_runtime.training.offline_eval import evaluate_actor
from mtm_runtime.training.offline_nets import Actor, ObsSource, TwinCritic, polyak_update
from mtm_runtime.training.sources import load_episodes

REPRESENTATIONS = ("raw", "frozen", "finetune")


# ---- the run ---------------------------------------------------------------------------------------
@dataclass
class Config:
    """Every knob. Steps are gradient steps of the critic; learning rates per Adam optimiser."""

    data: str = ""                 # HDF5 dataset (ours: the task comes from its metadata)
    task: str = ""
    relabel: str = ""              # RELABELS name; "" = the task's default
    representation: str = "raw"    # raw | frozen | finetune
    checkpoint: str = ""           # MTM checkpoint directory (frozen / finetune)
    feature_kind: str = "state"    # features.FEATURE_KINDS ("state": the states token at T-1)
    steps: int = 10000
    batch_size: int = 256
    hidden: int = 256
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    encoder_lr: float = 1e-4       # finetune only
    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    alpha: float = 2.5
    eval_every: int = 1000         # 0 = only at the end
    eval_episodes: int = 5
    eval_seed: int = 10_000        # reset seeds eval_seed + i
    seed: int = 0
    threads: int = 1               # torch CPU threads
    max_episode_steps: int = 0     # cap on evaluation episode length; 0 = the task's
    save: str = ""                 # directory for actor (+ encoder) weights, safetensors
    device: str = "cpu"            # cpu | cuda (networks, tables and windows live there)


def make_source(cfg: Config, task: Task, episodes: Sequence[Episode], tr: Transitions) -> tuple[ObsSource, Any]:
    """The observation source and (for features) the extractor the evaluation runs."""
    if cfg.representation == "raw":
        return ObsSource("raw", table=tr.observations), None
    if not cfg.checkpoint:
        raise ValueError(f"representation {cfg.representation!r} needs --checkpoint (an MTM checkpoint)")
    ckpt = load_checkpoint(cfg.checkpoint)
    eps = [ep for ep in episodes if ep.labelled]  # same order as build_transitions
    x, m = episode_windows(eps, ckpt.spec, ckpt.normaliser, cfg.feature_kind)
    if len(x) != len(tr.observations):
        raise RuntimeError("windows and transitions disagree on the number of steps")
    fx = extractor_from_checkpoint(ckpt, cfg.feature_kind, frozen=True)
    table = dataset_features(fx, x, m)
    if cfg.representation == "frozen":
        return ObsSource("frozen", table=table), fx
    if cfg.representation != "finetune":
        raise ValueError(f"representation must be one of {', '.join(REPRESENTATIONS)}")
    fx = extractor_from_checkpoint(ckpt, cfg.feature_kind, frozen=False, packed=True)
    for p in fx.mtm.parameters():
        p.requires_grad_(False)
    for p in fx.encoder_parameters():
        p.requires_grad_(True)
    return ObsSource("finetune", extractor=fx, windows=(x, m), stats_table=table), fx


def train(cfg: Config, episodes: Sequence[Episode] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run TD3+BC; returns ``{"config", "curve": [{step, score, new_return, ...}], "final"}``."""
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if episodes is None:
        meta = read_metadata(cfg.data)
        task = get_task(cfg.task or meta["task"])
        episodes = load_episodes(cfg.data, task)
    else:
        task = get_task(cfg.task)
    relabel = get_relabel(cfg.relabel, task)
    tr = build_transitions(episodes, task, relabel)
    src, eval_fx = make_source(cfg, task, episodes, tr)
    dev = torch.device(cfg.device)
    src.to(dev)
    if eval_fx is not None:
        eval_fx.to(dev)
    A, max_action = task.action_dim, 1.0

    actor = Actor(src.dim, A, cfg.hidden, max_action).to(dev)
    critic = TwinCritic(src.dim, A, cfg.hidden).to(dev)
    actor_t, critic_t = copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr)
    critic_params = [{"params": critic.parameters(), "lr": cfg.critic_lr}]
    if src.extractor is not None:
        critic_params.append({"params": [p for p in src.extractor.parameters() if p.requires_grad], "lr": cfg.encoder_lr})
        src.extractor.train()
    critic_opt = torch.optim.Adam(critic_params)

    actions = torch.from_numpy(tr.actions).to(dev)
    idx, nxt = torch.from_numpy(tr.idx).to(dev), torch.from_numpy(tr.next_idx).to(dev)
    rewards, dones = torch.from_numpy(tr.rewards)[:, None].to(dev), torch.from_numpy(tr.dones)[:, None].to(dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    log(f"[offline_rl] {task.name} {cfg.representation}: {len(idx)} transitions, obs dim {src.dim}, "
        f"reward {relabel.description} (mean {float(rewards.mean()):.3f})")

    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}

    def evaluate(step: int) -> None:
        res = evaluate_actor(task, relabel, actor, src, eval_fx, cfg.eval_episodes, cfg.eval_seed, cfg.max_episode_steps)
        row = {"step": step, **res, **metrics, "wall_s": time.perf_counter() - t0}
        curve.append(row)
        log(f"[offline_rl] step {step}: score {res['score']:.1f} new_return {res['new_return']:.2f} "
            f"critic {metrics.get('critic_loss', float('nan')):.3f} ({row['wall_s']:.0f} s)")

    if cfg.eval_every:
        evaluate(0)
    for step in range(1, cfg.steps + 1):
        b = torch.randint(0, len(idx), (cfg.batch_size,), generator=gen, device=dev)
        s, s2 = idx[b], nxt[b]
        a, r, d = actions[s], rewards[b], dones[b]
        with torch.no_grad():
            o2 = src.get(s2, target=True)
            noise = (torch.randn(a.shape, generator=gen, device=dev) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (actor_t(o2) + noise * max_action).clamp(-max_action, max_action)
            q1_t, q2_t = critic_t(o2, a2)
            y = r + cfg.gamma * (1.0 - d) * torch.min(q1_t, q2_t)
        o = src.get(s)
        q1, q2 = critic(o, a)
        critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()
        metrics["critic_loss"] = float(critic_loss.detach())

        if step % cfg.policy_freq == 0:
            o_d = o.detach()
            pi = actor(o_d)
            q = critic(o_d, pi)[0]
            lam = cfg.alpha / q.abs().mean().detach()
            actor_loss = -lam * q.mean() + F.mse_loss(pi, a)
            actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_opt.step()
            metrics["actor_loss"], metrics["q_mean"] = float(actor_loss.detach()), float(q.detach().mean())
            polyak_update(actor, actor_t, cfg.tau)
            polyak_update(critic, critic_t, cfg.tau)
            src.polyak(cfg.tau)
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            evaluate(step)
    if cfg.save:
        _save(cfg, actor, src)
    return {"config": dataclasses.asdict(cfg), "task": task.name, "relabel": relabel.description,
            "transitions": int(len(idx)), "curve": curve, "final": curve[-1] if curve else {},
            "train_s": time.perf_counter() - t0}


def _save(cfg: Config, actor: Actor, src: ObsSource) -> None:
    from safetensors.torch import save_file

    out = Path(cfg.save)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"actor.{k}": v.cpu().contiguous() for k, v in actor.state_dict().items()}
    tensors.update({f"obs_norm.{k}": v.cpu().contiguous() for k, v in src.norm.state_dict().items()})
    save_file(tensors, str(out / "td3bc.safetensors"))
    if src.extractor is not None:
        save_file({k: v.cpu().contiguous() for k, v in src.extractor.mtm.state_dict().items()}, str(out / "encoder.safetensors"))
    (out / "td3bc.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


# ---- CLI ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Config):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=f.default)
    p.add_argument("--json", default="", help="write the result (curve, config) to this JSON file")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(prog="python -m mtm_runtime.training.offline_rl", description=__doc__.split("\n\n")[0])
        add_arguments(p)
        args = p.parse_args(args)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    try:
        if not args.data:
            raise DatasetError("--data is required")
        if cfg.representation not in REPRESENTATIONS:
            raise ValueError(f"--representation must be one of {', '.join(REPRESENTATIONS)}")
        res = train(cfg)
    except (DatasetError, CheckpointError, KeyError, ValueError) as e:   # a user's input: one line, exit 2
        print(f"mtm offline-rl: {e}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
