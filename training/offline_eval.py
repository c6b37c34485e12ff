"""Evaluation of an offline TD3+BC actor in the simulator (``training/offline_rl.py``, step 5).

The deterministic actor runs ``episodes`` episodes in lockstep (fixed reset seeds), scored both
by the relabelled reward (``new_return``) and by the task's D4RL-style ``normalised_score`` of the
env's own reward. With MTM features the actor sees what it was trained on: one
``TrajectoryBuffer`` per env laid out with ``Policy``'s conventions, through the same extractor.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtm_runtime.buffer import TrajectoryBuffer
from mtm_runtime.features import feature_mask
from mtm_runtime.sim.tasks import Task
from mtm_runtime.training.offline_data import Relabel
from mtm_runtime.training.offline_nets import Actor, ObsSource


@torch.no_grad()
def evaluate_actor(task: Task, relabel: Relabel, actor: Actor, src: ObsSource, extractor: Any,
                   episodes: int, seed: int, max_steps: int = 0) -> dict[str, float]:
    """Roll out ``episodes`` envs in lockstep (batched network calls). Features come from one
    ``TrajectoryBuffer`` per env with ``Policy``'s conventions (newest step at T-1, short history
    hidden, executed action written back as history). Returns means over episodes."""
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
