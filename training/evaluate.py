"""Evaluation harness: simulator rollouts through ``mtm_runtime.Policy`` and held-out ID/FD errors.

    python -m mtm_runtime.training.evaluate models/reacher_embedded --mode goal --episodes 20 --seeds 0,1,2
    mtm eval models/reacher_embedded --mode rcbc --sweep
    mtm eval runs/reacher --mode bc --data reacher_expert.hdf5      # + ID/FD errors on the val split

Rollouts, vectorised over episodes: each worker process (spawned; one torch thread) runs up to
``--batch`` simulators in lockstep through a ``PolicyBatch``: every member is a ``Policy`` (the
per-step code the ROS policy node runs, selectable backend) and each step is one batched forward
pass; a member whose episode ends takes the next waiting episode. Baselines
(``training/baselines.py``) expose the same agent interface and run one episode at a time
(``SerialBatch``; ``load_agent_batch`` says why), as do .onnx/.engine files. Each episode has its
own reset seed, so results do not depend on the worker count or the batch size (tested).

Seeds: seed ``s`` runs episodes with reset seeds ``10_000 * (s + 1) + i`` (i = 0..N-1); the score
of a seed is the mean D4RL-normalised score of its episodes,
``100 * (R - R_random) / (R_expert - R_random)`` (reference returns in sim/reference_returns.json);
we report mean +- std (population std) over seeds, and for Reacher the success rate (fingertip
within 2 cm of the target at the end of the episode).

RCBC: the target return is given in raw reward units (``--target-return``) or, by default, the
expert reference return; ``--sweep`` evaluates the targets whose normalised scores would be
25, 50, 75, 100 and 110.

ID / FD held-out errors (on the validation split of the training data, windows of length T):
    ID  : predict every action a_t, t = 0..T-2, from all T states (mask ``id``);
    FD  : predict s_{T-1} from s_0..s_{T-2} and a_0..a_{T-2} (mask ``fd``);
    error = mean_i ||y_hat_i - y_i||^2 / mean_i ||y_i - y_i^prev||^2
where y is the target (a_t for ID, s_{T-1} for FD) in normalised units (z-scored per dimension
with the training normaliser), ||.||^2 is the mean over its dimensions, i runs over the scored
targets, and y^prev is the same quantity one step earlier (a_{t-1}, s_{T-2}) in the same episode.
So 1.0 means "as good as repeating the previous value"; smaller is better.
visible_state_error: under the FD mask, how far the model's output at the *visible* s_{T-2} is
from its input, in the FD error's units: the precision with which the model reproduces a state
it sees, a floor under what it can do on FD by copying s_{T-2} and adding a change (MTM only:
an MLP does not reproduce its inputs; NaN for the baselines).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtm_runtime.arg_types import at_least
from mtm_runtime.loop_types import Command, Fault, LoopConfig
from mtm_runtime.loop_batch import LoopBatch
from mtm_runtime.onnx_metadata import read_onnx_metadata
from mtm_runtime.policy_batch import PolicyBatch
from mtm_runtime.sim.tasks import Task, TaskError, get_task, task_for_provenance
from mtm_runtime.training.baselines import baseline_id_fd, load_baseline_agent
from mtm_runtime.training.id_fd import id_fd_errors, validation_windows

SWEEP_SCORES = (25.0, 50.0, 75.0, 100.0, 110.0)
#: episodes a worker steps together (one batched forward pass per step)
DEFAULT_BATCH = 16
#: the simulated clock of an evaluation's ControlLoop (only the saturation timer reads it)
DEFAULT_EVAL_RATE_HZ = 50.0


# ---- agents ----------------------------------------------------------------------------------------
class SerialBatch:
    """``PolicyBatch``'s interface over agents without a batched path (baselines, .onnx and
    .engine files, exported at batch 1): each member's own ``act``, one after the other."""

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)

    def __len__(self) -> int:
        return len(self.members)

    def act(self, rows: Sequence[int], states: np.ndarray, rewards: Sequence[float | None]) -> np.ndarray:
        return np.stack([self.members[i].act(states[k], rewards[k]) for k, i in enumerate(rows)])


def load_agent_batch(path: str | Path, size: int, backend: str = "torch") -> Any:
    """Agents that step together, from an MTM checkpoint directory (``mtm.json``), an .onnx or
    .engine file, or a baseline (``baseline.json``): a ``PolicyBatch`` of ``size`` (one batched
    forward pass per step) for a checkpoint directory; otherwise a ``SerialBatch`` of one agent.
    Baselines stay serial on purpose: an MLP's batch-1 forward (a matrix-vector product) rounds
    differently from its batched one, so batching would make their scores depend on the batch
    size; they are cheap anyway (Hopper: 3.5 s for 15 episodes of 1000 steps, simulator
    included). Torch threads are the caller's (a rollout worker sets one)."""
    p = Path(path)
    if (p / "baseline.json").exists():
        return SerialBatch([load_baseline_agent(p)])
    if (p / "mtm.json").exists():
        return PolicyBatch.load(p, size, backend)
    from mtm_runtime.policy import Policy

    return SerialBatch([Policy.load(p, backend=backend)])


def target_for_score(task: Task, score: float) -> float:
    """Raw return whose normalised score is ``score``."""
    lo, hi = task.reference_returns["random"], task.reference_returns["expert"]
    return lo + score / 100.0 * (hi - lo)


def reset_seed(seed: int, episode: int) -> int:
    return 10_000 * (seed + 1) + episode


# ---- episodes, vectorised ----------------------------------------------------------------------------
def start_episode(agent: Any, task: Task, env: Any, mode: str, seed: int, target_return: float | None) -> np.ndarray:
    """Reset ``env`` with ``seed`` and ``agent`` for a new episode in ``mode``; returns the first state."""
    obs, _ = env.reset(seed=seed)
    parts = task.split_observation(obs)
    if mode == "goal":
        agent.set_goal(parts["goals"])
    if mode == "rcbc":
        assert target_return is not None, "rcbc needs a target return"
        agent.set_target_return(float(target_return))
    agent.set_mode(mode)
    agent.reset()
    return parts["states"]


class _LoopAgents:
    """A ``PolicyBatch`` behind the robot's control loop (``LoopBatch``): what the simulator
    gets is each member's ControlLoop output (command, or fault action; a rejected state holds
    the last command). With the default ``LoopConfig`` (no rate limit, the checkpoint's limits)
    the commands equal the policies' actions, so scores are unchanged; pass the deployment's
    config to score what the robot would get."""

    def __init__(self, batch: PolicyBatch, config: LoopConfig) -> None:
        self.members, self.loops = batch.members, LoopBatch(batch, config)
        self.loops.activate()

    def __len__(self) -> int:
        return len(self.members)

    def reset(self, i: int) -> None:
        self.loops.reset(i)

    def act(self, rows: Sequence[int], states: np.ndarray, rewards: Sequence[float | None]) -> np.ndarray:
        for i, r in zip(rows, rewards):
            if r is not None:
                self.loops.on_reward(i, r)
        outs = self.loops.step(rows, states)
        return np.stack([o.action if isinstance(o, (Command, Fault)) else self.loops.loops[i].held_command()
                         for o, i in zip(outs, rows)])


def run_episodes(batch: Any, task: Task, mode: str, pairs: Sequence[tuple[int, int]],
                 target_return: float | None, loop_config: LoopConfig | None = None) -> list[dict[str, Any]]:
    """Rollouts of the ``(seed, episode)`` pairs, ``len(batch)`` at a time: one simulator per
    member, all stepping together (one batched ``act`` per step); a member whose episode ends
    starts the next waiting pair. A ``PolicyBatch`` runs behind the robot's ControlLoop
    (``_LoopAgents``, ``loop_config`` or the default). Each result: ``{"seed", "episode",
    "return", "score", "success", "length"}`` (success None off Reacher), in the order the
    episodes ended."""
    if isinstance(batch, PolicyBatch):
        batch = _LoopAgents(batch, loop_config or LoopConfig(rate_hz=DEFAULT_EVAL_RATE_HZ))
    waiting = list(pairs)[::-1]
    envs = [task.make_env() for _ in range(min(len(batch), len(waiting)))]
    live: dict[int, dict[str, Any]] = {}   # member -> its episode's running totals
    results: list[dict[str, Any]] = []

    def start(i: int) -> None:
        seed, episode = waiting.pop()
        state = start_episode(batch.members[i], task, envs[i], mode, reset_seed(seed, episode), target_return)
        if callable(getattr(batch, "reset", None)):  # agents behind a control loop (_LoopAgents, ChunkAgents)
            batch.reset(i)
        live[i] = {"seed": seed, "episode": episode, "state": state, "reward": None, "return": 0.0, "length": 0}

    try:
        for i in range(len(envs)):
            start(i)
        while live:
            rows = sorted(live)
            actions = batch.act(rows, np.stack([live[i]["state"] for i in rows]), [live[i]["reward"] for i in rows])
            for k, i in enumerate(rows):
                ep = live[i]
                obs, r, terminated, truncated, _ = envs[i].step(np.array(actions[k], dtype=np.float32))
                ep["return"] += float(r)
                ep["reward"] = float(r)
                ep["length"] += 1
                if not (terminated or truncated):
                    ep["state"] = task.split_observation(obs)["states"]
                    continue
                results.append({"seed": ep["seed"], "episode": ep["episode"], "return": ep["return"],
                                "score": task.score_or_none(ep["return"]), "success": task.success(envs[i]),
                                "length": ep["length"]})
                del live[i]
                if waiting:
                    start(i)
    finally:
        for env in envs:
            env.close()
    return results


def _episodes_job(job: tuple) -> list[dict[str, Any]]:
    """Worker: (agent path, backend, task, mode, target, batch, [(seed, episode), ...]) -> results."""
    import torch

    torch.set_num_threads(1)
    path, backend, task, mode, target, batch_size, pairs = job
    batch = load_agent_batch(path, max(1, min(batch_size, len(pairs))), backend)
    return run_episodes(batch, task, mode, pairs, target)


def _summarise(results: list[dict[str, Any]], seeds: Sequence[int], task: Task, mode: str,
               target: float | None) -> dict[str, Any]:
    scored = all(r["score"] is not None for r in results)   # False: no reference returns (report returns)
    per_seed = [float(np.mean([r["score"] for r in results if r["seed"] == s])) for s in seeds] if scored else []
    succ = [r["success"] for r in results if r["success"] is not None]
    per_seed_succ = [float(np.mean([r["success"] for r in results if r["seed"] == s])) for s in seeds] if succ else []
    return {"task": task.name, "mode": mode, "target_return": target, "episodes_per_seed": len(results) // max(len(seeds), 1),
            "seeds": list(seeds), "score_per_seed": per_seed or None,
            "score_mean": float(np.mean(per_seed)) if scored else None, "score_std": float(np.std(per_seed)) if scored else None,
            "return_mean": float(np.mean([r["return"] for r in results])),
            "return_std": float(np.std([np.mean([r["return"] for r in results if r["seed"] == s]) for s in seeds])),
            "steps_total": int(sum(r["length"] for r in results)),
            "success_per_seed": per_seed_succ or None,
            "success_mean": float(np.mean(per_seed_succ)) if succ else None,
            "success_std": float(np.std(per_seed_succ)) if succ else None}


def evaluate_agent_path(path: str | Path, task: Task | str, mode: str, episodes: int = 10,
                        seeds: Sequence[int] = (0, 1, 2), target_return: float | None = None,
                        workers: int = 2, backend: str = "torch", batch: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Rollouts of the agent stored at ``path`` over ``seeds`` x ``episodes`` in ``workers``
    processes, each stepping up to ``batch`` episodes together; returns the summary (see ``_summarise``)."""
    task = get_task(task) if isinstance(task, str) else task
    if mode == "rcbc" and target_return is None:
        target_return = task.reference_returns["expert"]
    pairs = [(s, i) for s in seeds for i in range(episodes)]
    workers = max(1, min(workers, len(pairs)))
    chunks = [pairs[k::workers] for k in range(workers)]
    jobs = [(str(path), backend, task, mode, target_return, batch, c) for c in chunks if c]
    if workers == 1:
        results = _episodes_job(jobs[0])
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = [r for chunk in pool.map(_episodes_job, jobs) for r in chunk]
    results.sort(key=lambda r: (r["seed"], r["episode"]))
    return _summarise(results, seeds, task, mode, target_return)


def evaluate_checkpoint_object(mtm: Any, norm: Any, limits: Any, task: Task, mode: str, episodes: int = 10,
                               seeds: Sequence[int] = (0,), target_return: float | None = None) -> dict[str, Any]:
    """In-process rollouts of an in-memory MTM (periodic evaluation during training)."""
    from mtm_runtime.backends.torch_backend import TorchBackend

    model = copy.deepcopy(mtm).to("cpu").float().eval()
    pairs = [(s, i) for s in seeds for i in range(episodes)]
    batch = PolicyBatch(model.spec, norm, TorchBackend(model, batch_size=max(1, min(DEFAULT_BATCH, len(pairs)))), limits)
    if mode == "rcbc" and target_return is None:
        target_return = task.reference_returns["expert"]
    results = sorted(run_episodes(batch, task, mode, pairs, target_return), key=lambda r: (r["seed"], r["episode"]))
    return _summarise(results, seeds, task, mode, target_return)


# ---- ID / FD held-out errors (the windows and the metric: training/id_fd.py) --------------------------
def mtm_id_fd(ckpt_path: str | Path, data: str | Path, n: int = 4096) -> dict[str, float]:
    """ID/FD errors of an MTM checkpoint on the validation split its training run held out
    (re-derived from ``provenance.config``: val_fraction and seed)."""
    import torch

    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.training.loaders import split_episodes
    from mtm_runtime.training.sources import load_episodes

    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt.provenance.get("config", {})
    episodes = load_episodes(data, ckpt.provenance.get("task"))
    _, val = split_episodes(episodes, float(cfg.get("val_fraction", 0.1)), seed=int(cfg.get("seed", 0)))
    x, _ = validation_windows(val, ckpt.spec, ckpt.normaliser, n)
    model = ckpt.build_model()

    def predict(xb: np.ndarray, mb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(xb), torch.from_numpy(mb)).numpy()

    return id_fd_errors(predict, ckpt.spec, x)


# ---- command line ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory, .onnx / .engine file, or baseline directory")
    p.add_argument("--env", default="", help="simulator: benchmark task, any Gymnasium id or a robot file "
                   "(default: what the checkpoint was trained on)")
    p.add_argument("--task", default="", help="older name of --env")
    p.add_argument("--mode", default="bc", choices=("bc", "rcbc", "goal"))
    p.add_argument("--episodes", type=at_least(0), default=10,
                   help="episodes per seed (0: no rollouts, only the ID/FD errors of --data)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of evaluation seeds")
    p.add_argument("--target-return", type=float, default=None, help="rcbc target (raw return); default expert reference")
    p.add_argument("--sweep", action="store_true", help="rcbc: sweep targets at normalised scores 25..110")
    p.add_argument("--backend", default="torch", help="torch | onnxruntime | torch-cudagraph | tensorrt")
    p.add_argument("--workers", type=at_least(1), default=2, help="rollout worker processes")
    p.add_argument("--batch", type=at_least(1), default=DEFAULT_BATCH,
                   help="episodes each worker steps together (one batched forward pass per step; 1 = one at a time)")
    p.add_argument("--data", default="", help="dataset the model was trained on: adds ID/FD errors on its val split")
    p.add_argument("--json", default="", help="also write the results to this JSON file")


def provenance_of(path: str) -> dict[str, Any]:
    """The training record of a checkpoint or baseline directory, or of an ONNX / engine file ({} if none)."""
    p = Path(path)
    for name in ("mtm.json", "baseline.json"):
        if (p / name).exists():
            meta = json.loads((p / name).read_text())
            return meta.get("provenance") or ({"task": meta["task"]} if meta.get("task") else {})
    if p.suffix == ".onnx" and p.is_file():   # the metadata travels in the graph, under its integrity stamp
        return read_onnx_metadata(p).get("provenance") or {}
    return {}


def task_of(path: str) -> str:
    """The task a checkpoint or baseline directory was trained on ("" if it names none)."""
    return str(provenance_of(path).get("task") or "")


def main(args: argparse.Namespace) -> int:
    if args.episodes == 0 and not args.data:
        print("mtm eval: nothing to do: --episodes 0 runs no rollouts, and without --data there are no ID/FD errors",
              file=sys.stderr)
        return 2
    what = Path(args.checkpoint)
    if not what.exists() or not (what.is_dir() or what.suffix in (".onnx", ".engine")):
        print(f"mtm eval: {what}: " + ("no such file or directory" if not what.exists() else
                                       "expected a checkpoint or baseline directory, a .onnx or a .engine file"),
              file=sys.stderr)
        return 2
    try:
        task = task_for_provenance(provenance_of(args.checkpoint), args.env or args.task)
    except TaskError as e:
        print(f"mtm eval: {e}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    targets: list[float | None] = [args.target_return]
    if args.mode == "rcbc" and args.sweep:
        targets = [target_for_score(task, s) for s in SWEEP_SCORES]
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "task": task.name, "results": []}
    for target in (targets if args.episodes > 0 else []):
        res = evaluate_agent_path(args.checkpoint, task, args.mode, args.episodes, seeds, target, args.workers, args.backend,
                                  args.batch)
        report["results"].append(res)
        line = f"{task.name} {args.mode}"
        if res["target_return"] is not None:
            line += f" target {res['target_return']:.2f}"
        if res["score_mean"] is not None:
            line += f": normalised score {res['score_mean']:.1f} +- {res['score_std']:.1f}"
        else:   # no reference returns for this environment: the raw return
            line += f": return {res['return_mean']:.2f} +- {res['return_std']:.2f} (no reference returns, so no normalised score)"
        line += f" over {len(seeds)} seeds x {args.episodes} episodes"
        if res["success_mean"] is not None:
            line += f"; success {100 * res['success_mean']:.0f}% +- {100 * res['success_std']:.0f}%"
        print(line, flush=True)
    if args.data:
        if (Path(args.checkpoint) / "baseline.json").exists():

            errs = baseline_id_fd(args.checkpoint, args.data)
        else:
            errs = mtm_id_fd(args.checkpoint, args.data)
        report["id_fd"] = errs
        print("held-out " + ", ".join(f"{k} {v:.4f}" for k, v in errs.items() if not math.isnan(v)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m mtm_runtime.training.evaluate", description=__doc__.split("\n\n")[0])
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
