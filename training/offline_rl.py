"""Offline TD3+BC (Fujimoto & Gu, 2021) on raw states or on MTM features, with relabelled rewards.

    python -m mtm_runtime.training.offline_rl --data reacher_medium.hdf5 --representation raw --steps 10000
    python -m mtm_runtime.training.offline_rl --data reacher_medium.hdf5 --representation frozen --checkpoint runs/mtm_reacher
    mtm offline-rl --data idp_medium.hdf5 --representation finetune --checkpoint runs/mtm_idp   # same

Read it top to bottom (CleanRL style):
 1. **rewards**: the dataset's rewards are replaced by a task-specific function of
    ``(observation, action)`` from ``RELABELS`` (a new task on old data: the point of offline RL);
 2. **transitions** ``(o_t, a_t, r_t, o_{t+1}, done_t)`` inside episodes; the last step of a
    time-limited episode has no successor and is dropped; a terminated episode's last step has
    ``done = 1``;
 3. **observations** for the actor and critics, one of
    * ``raw``: the environment observation (states + goal), z-scored on the dataset;
    * ``frozen``: the MTM feature (``mtm_runtime.features``) of the window ending at step t
      (states, past actions, goal; short history hidden), precomputed once, z-scored;
    * ``finetune``: the same feature computed on the fly by a trainable copy of the MTM encoder
      that the critic loss updates (the actor sees detached features; the target critics use a
      Polyak-averaged target encoder), z-scored with statistics fixed at the start;
 4. **TD3+BC**: actor + twin critics + target networks; clipped double-Q target with target
    policy smoothing (noise ``policy_noise``, clipped at ``noise_clip``, in units of the action
    bound); the actor and the targets update every ``policy_freq`` critic steps; actor loss
    ``-lambda * Q1(o, pi(o)).mean() + mean((pi(o) - a)^2)`` with ``lambda = alpha / mean|Q1|``
    (detached);
 5. **evaluation** in the simulator every ``eval_every`` steps: the deterministic actor on
    ``eval_episodes`` episodes (fixed reset seeds), scored both by the relabelled reward
    (``new_return``) and by the task's D4RL-style ``normalised_score`` of the env's own reward.

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
import torch.nn as nn
import torch.nn.functional as F

from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.loaders import Episode, read_metadata
from mtm_runtime.training.sources import load_episodes

REPRESENTATIONS = ("raw", "frozen", "finetune")


# ---- 1. reward relabelling ----------------------------------------------------------------------
@dataclass(frozen=True)
class Relabel:
    """A new reward ``fn(obs [N, obs_dim], actions [N, A]) -> rewards [N]`` (float64) for ``task``,
    computed from the observation the action was chosen in (as gymnasium v5 does)."""

    task: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    description: str


def _reacher_exp_distance(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    # Reacher-v5 obs[8:10] = fingertip - target (x, y) in m; bounded, sharply peaked shaping
    d = np.linalg.norm(obs[:, 8:10], axis=-1)
    return np.exp(-d / 0.05) - 0.05 * np.sum(np.square(act), axis=-1)


def _reacher_sparse(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(obs[:, 8:10], axis=-1)
    return (d < 0.03).astype(np.float64) - 0.01 * np.sum(np.square(act), axis=-1)


def _idp_effort(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    # InvertedDoublePendulum-v5 obs[5:8] = joint velocities (slider, hinge, hinge2)
    return 1.0 - 0.5 * np.sum(np.square(act), axis=-1) - 0.01 * np.sum(np.square(obs[:, 5:8]), axis=-1)


RELABELS: dict[str, Relabel] = {
    "reacher_exp_distance": Relabel("reacher", _reacher_exp_distance,
                                    "exp(-|fingertip - target| / 5 cm) - 0.05 |a|^2"),
    "reacher_sparse": Relabel("reacher", _reacher_sparse, "1[|fingertip - target| < 3 cm] - 0.01 |a|^2"),
    "idp_effort": Relabel("inverted_double_pendulum", _idp_effort,
                          "1 (alive) - 0.5 a^2 (effort) - 0.01 |qvel|^2 (energy)"),
}
DEFAULT_RELABEL = {"reacher": "reacher_exp_distance", "inverted_double_pendulum": "idp_effort"}


def get_relabel(name: str, task: Task) -> Relabel:
    """Relabel by name ("" = the task's default); ValueError naming the choices."""
    name = name or DEFAULT_RELABEL.get(task.name, "")
    if name not in RELABELS:
        raise ValueError(f"no reward relabelling {name!r} for {task.name}; choose from "
                         f"{', '.join(k for k, v in RELABELS.items() if v.task == task.name) or '(none)'}")
    if RELABELS[name].task != task.name:
        raise ValueError(f"relabelling {name!r} is for task {RELABELS[name].task}, not {task.name}")
    return RELABELS[name]


# ---- 2. transitions ------------------------------------------------------------------------------
@dataclass
class Transitions:
    """Flat per-step tables (all episodes concatenated) and the transitions over them:
    ``obs[idx]``, ``actions[idx]``, ``rewards``, ``obs[next_idx]``, ``dones`` (float32 0/1)."""

    observations: np.ndarray   # [N, obs_dim] raw env observations
    actions: np.ndarray        # [N, A]
    idx: np.ndarray            # [K] int64 step of each transition
    next_idx: np.ndarray       # [K] int64 successor step (== idx where done)
    rewards: np.ndarray        # [K] float32 relabelled
    dones: np.ndarray          # [K] float32


def build_transitions(episodes: Sequence[Episode], task: Task, relabel: Relabel) -> Transitions:
    """See the module docstring, step 2. Episodes without actions are skipped."""
    obs, acts, idx, nxt, dones = [], [], [], [], []
    n = 0
    for ep in episodes:
        if not ep.labelled:
            continue
        o = task.join_observation(ep["states"], ep.get("goals"))
        L = len(o)
        obs.append(o)
        acts.append(ep["actions"])
        steps = np.arange(L - 1)
        idx.append(n + steps)
        nxt.append(n + steps + 1)
        dones.append(np.zeros(L - 1))
        if ep.terminated:
            idx.append(np.array([n + L - 1]))
            nxt.append(np.array([n + L - 1]))
            dones.append(np.ones(1))
        n += L
    observations = np.concatenate(obs).astype(np.float32)
    actions = np.concatenate(acts).astype(np.float32)
    i = np.concatenate(idx).astype(np.int64)
    r = relabel.fn(observations[i].astype(np.float64), actions[i].astype(np.float64)).astype(np.float32)
    return Transitions(observations, actions, i, np.concatenate(nxt).astype(np.int64), r,
                       np.concatenate(dones).astype(np.float32))


# ---- 3. observation sources -----------------------------------------------------------------------
class Standardise(nn.Module):
    """``(z - mean) / std`` with fixed statistics (std floored at 1e-3)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(table.mean(axis=0), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.maximum(table.std(axis=0), 1e-3), dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


class ObsSource:
    """``get(steps, target=False) -> [B, obs_dim]`` float32 tensor for the actor/critics.

    raw / frozen: a standardised lookup table. finetune: the trainable extractor on the stored
    windows (``target=True`` uses the Polyak target encoder, no grad)."""

    def __init__(self, kind: str, table: np.ndarray | None = None, extractor: Any = None,
                 windows: tuple[np.ndarray, np.ndarray] | None = None, stats_table: np.ndarray | None = None) -> None:
        self.kind = kind
        stats = table if table is not None else stats_table
        if stats is None:
            raise ValueError("ObsSource needs a table or a stats_table")
        self.norm = Standardise(stats)
        self.table = None if table is None else self.norm(torch.from_numpy(table)).contiguous()
        self.extractor: Any = extractor
        self.target_extractor: Any = None if extractor is None else copy.deepcopy(extractor).requires_grad_(False)
        self.x: Any = None if windows is None else torch.from_numpy(windows[0])
        self.m: Any = None if windows is None else torch.from_numpy(windows[1])
        self.dim = int(self.norm.mean.shape[0])

    def get(self, steps: torch.Tensor, target: bool = False) -> torch.Tensor:
        if self.table is not None:
            return self.table[steps]
        fx = self.target_extractor if target else self.extractor
        if target:
            with torch.no_grad():
                return self.norm(fx(self.x[steps], self.m[steps]))
        return self.norm(fx(self.x[steps], self.m[steps]))

    def to(self, device: torch.device) -> "ObsSource":
        self.norm = self.norm.to(device)
        for name in ("table", "x", "m"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        for fx in (self.extractor, self.target_extractor):
            if fx is not None:
                fx.to(device)
        return self

    def polyak(self, tau: float) -> None:
        if self.extractor is not None:
            _polyak(self.extractor, self.target_extractor, tau)


# ---- 4. TD3+BC ------------------------------------------------------------------------------------
def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, max_action: float) -> None:
        super().__init__()
        self.net, self.max_action = mlp(obs_dim, act_dim, hidden), max_action

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(o))


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, o: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        oa = torch.cat([o, a], dim=-1)
        return self.q1(oa), self.q2(oa)


def _polyak(net: nn.Module, target: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for p, tp in zip(net.parameters(), target.parameters()):
            tp.lerp_(p, tau)


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
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.features import dataset_features, episode_windows, extractor_from_checkpoint

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
            _polyak(actor, actor_t, cfg.tau)
            _polyak(critic, critic_t, cfg.tau)
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


# ---- 5. evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_actor(task: Task, relabel: Relabel, actor: Actor, src: ObsSource, extractor: Any,
                   episodes: int, seed: int, max_steps: int = 0) -> dict[str, float]:
    """Roll out ``episodes`` envs in lockstep (batched network calls). Features come from one
    ``TrajectoryBuffer`` per env with ``Policy``'s conventions (newest step at T-1, short history
    hidden, executed action written back as history). Returns means over episodes."""
    from mtm_runtime.buffer import TrajectoryBuffer
    from mtm_runtime.features import feature_mask

    was = actor.training
    actor.eval()
    dev = next(actor.parameters()).device
    fx = src.extractor if src.extractor is not None else extractor
    if fx is not None:
        fx_was = fx.training
        fx.eval()
        spec, norm = fx.spec, fx.normaliser
        if norm is None:
            raise ValueError("evaluate_actor: the feature extractor carries no normaliser")
    envs = [task.make_env() for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    ret, new_ret = np.zeros(episodes), np.zeros(episodes)
    alive = list(range(episodes))
    limit = max_steps or task.episode_steps
    if fx is not None:
        bufs = [TrajectoryBuffer(spec, norm) for _ in range(episodes)]
        base = torch.from_numpy(feature_mask(spec, fx.kind)).to(dev)
    for _t in range(limit):
        if not alive:
            break
        o = np.stack([obs[i] for i in alive]).astype(np.float32)
        if fx is None:
            inp = src.norm(torch.from_numpy(o).to(dev))
        else:
            xs, ms = [], []
            for i in alive:
                parts = task.split_observation(obs[i])
                bufs[i].begin_step()
                bufs[i].write("states", parts["states"].astype(np.float32))
                if "goals" in parts and "goals" in spec:
                    bufs[i].write("goals", parts["goals"].astype(np.float32))
                x, av = bufs[i].window()
                xs.append(x[0].copy())
                ms.append(av[0].copy())
            mask = torch.minimum(base, torch.from_numpy(np.stack(ms)).to(dev))
            inp = src.norm(fx(torch.from_numpy(np.stack(xs)).to(dev), mask))
        act = actor(inp).cpu().numpy().astype(np.float32)
        new_r = relabel.fn(o.astype(np.float64), act.astype(np.float64))
        still = []
        for j, i in enumerate(alive):
            if fx is not None:
                bufs[i].write("actions", act[j])
            obs[i], r, term, trunc, _ = envs[i].step(act[j])
            ret[i] += r
            new_ret[i] += new_r[j]
            if not (term or trunc):
                still.append(i)
        alive = still
    for env in envs:
        env.close()
    actor.train(was)
    if fx is not None:
        fx.train(fx_was)
    scores = [task.normalised_score(float(r)) for r in ret]
    return {"score": float(np.mean(scores)), "score_std": float(np.std(scores)), "return": float(np.mean(ret)),
            "new_return": float(np.mean(new_ret)), "new_return_std": float(np.std(new_ret))}


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
    if not args.data:
        raise SystemExit("offline_rl: --data is required")
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    if cfg.representation not in REPRESENTATIONS:
        raise SystemExit(f"offline_rl: --representation must be one of {', '.join(REPRESENTATIONS)}")
    res = train(cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
