"""What the capability benchmark runs: the MTM's mask mix, the heteromodal settings, the ID/FD
target, the configs (``cpu``, ``full``, ``smoke``) and the per-job settings derived from a config.
Every model of a config gets the same step budget, batch and schedule (``mlp_budget``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The MTM's training masks, one kind drawn per sample (``goal`` is added on goal tasks). AUTO_MASK
#: alone never hides every action of a window while showing its states, nor shows every
#: return-to-go with the last action hidden, so the model learns to copy a visible neighbouring
#: action instead of inverse dynamics, and to lean on the returns little. The ablation
#: ``--config cpu --masks auto --only reacher:expert,inverted_double_pendulum:medium-replay``
#: (same 6000 steps) measured: Reacher expert ID error 0.386 (mix: 0.054), goal success 60%
#: (mix: 100%); InvertedDoublePendulum medium-replay RCBC 45.7 (mix: 100.0), BC 62.6 (mix: 86.8).
#: ``rcbc`` is listed twice (drawn for 2 of 5 samples): with one share of 4, Hopper medium-replay
#: (ARS expert, 1000 episodes, 6000 steps) gave MTM-RCBC 22.1 and the model hardly followed the
#: target (9.9 -> 16.4 from 0.1x to 0.6x the expert return, where MLP-RCBC went 10.0 -> 63.8);
#: with two shares, 67.9 (``--only hopper:medium-replay --masks auto,id,fd,rcbc,rcbc``). Chosen
#: after seeing that job, so the full table is the check on the other tasks. The other way, ID and
#: FD twice as often (``--masks auto,id,id,fd,fd,rcbc,rcbc``, six main jobs), cut the ID/FD error
#: ratios by less than 2x and dropped medium-replay RCBC (IDP 100 -> 6.4, Hopper 67.9 -> 25.5):
#: benchmarks/results/capabilities_masks_idfd_heavy.md, id_fd_note.md section 6.
MTM_MASKS: tuple[str, ...] = ("auto", "id", "fd", "rcbc", "rcbc")


#: Heteromodal datasets: the fractions of episodes that keep their actions (the brief's 1%, and
#: 5%). Reacher at 5% (20 episodes) gave MLP-BC 97 already. InvertedDoublePendulum and Hopper had
#: 5% of 40 episodes until 2026-11-25: only 38 state-only episodes, little for the state-only data
#: to add; now 1% of 200 (2 labelled, 198 state-only), the full config's episode count. The
#: locomotion tasks run at both 1% and 5% (2 and 10 of 200 expert episodes).
HETERO_FRACTION: dict[str, tuple[float, ...]] = {"reacher": (0.01,), "inverted_double_pendulum": (0.01,), "hopper": (0.01, 0.05),
                                                 "halfcheetah": (0.01, 0.05), "walker2d": (0.01, 0.05)}

#: The locomotion tasks: their tiers come from an ARS learning run (training/run_tiers.py), and
#: the suboptimal-data and heteromodal targets are read on them.
LOCOMOTION = ("halfcheetah", "walker2d", "hopper")

#: A cell whose best and worst method differ by less than this many points cannot tell a good
#: implementation from a poor one: the report marks it "not discriminating".
DISCRIMINATES = 5.0

#: Why a config's heteromodal experiment leaves a task out (printed in the report).
HETERO_LEFT_OUT = {"reacher": "left out to keep the cpu config under an hour: with 5% labelled its MLP-BC scored 97 "
                              "already, and the locomotion tasks are where the heteromodal target is read; the full "
                              "config keeps it",
                   "inverted_double_pendulum": "not in the cpu config (every model scored 100 on it); the full config keeps it"}


#: Heteromodal MTM: fraction of its steps after which it labels the action-free episodes with its
#: own inverse dynamics (``mtm_runtime.training.train --self-label-at``) and trains uniformly over all episodes.
#: On InvertedDoublePendulum, label draws 0-2 / 3-5: gap to MLP-BC +24.3 / +20.8 with it, +10.8 /
#: +14.1 without (README, "Self-labelling"; draws 3-5 drawn after the choice).
HETERO_SELF_LABEL = 0.5


#: The ID/FD target: the MTM's error at most this multiple of the specialised MLP's.
ID_FD_WITHIN = 1.1

#: Expert-tier episodes: InvertedDoublePendulum needs 100, not 24. With 24 (about 20 training
#: episodes, so ~400 steps of the large corrections right after a reset), 2 of 15 evaluation
#: episodes fell within ~10 steps (MTM BC/RCBC 86.7); with 100, 15 of 15 held (100.0 / 100.0,
#: ``--only inverted_double_pendulum:expert``, same 6000 steps).
#:
#: The cpu config (issue 23): the three locomotion tasks on the tiers of their learning runs
#: (medium and medium-replay, where BC and return conditioning part ways), Reacher on expert data
#: only (success is its headline), and the heteromodal experiment on locomotion at 1% and 5%.
#: InvertedDoublePendulum left the cpu config: every model scored 100.0 on every tier, so its
#: cells measured nothing (the full config keeps it). ``task_tiers`` narrows ``tiers`` per task.
CONFIGS: dict[str, dict[str, Any]] = {
    "cpu": {"tasks": ("reacher", "halfcheetah", "walker2d", "hopper"), "tiers": ("medium", "medium-replay"),
            "task_tiers": {"reacher": ("expert",)},
            "episodes": {"reacher": 400, "halfcheetah": 50, "walker2d": 50, "hopper": 50},
            "replay_episodes": {"reacher": 400},
            "hetero_episodes": {"halfcheetah": 200, "walker2d": 200, "hopper": 200},
            "hetero_tasks": LOCOMOTION, "hetero_self_label": HETERO_SELF_LABEL,
            "hetero_labelled_share": 0.5, "hetero_fraction": HETERO_FRACTION, "hetero_draws": (0,),
            "preset": "embedded", "steps": 6000, "batch_size": 128,
            "masks": MTM_MASKS, "eval_episodes": 5, "seeds": (0, 1, 2), "workers": 2},
    # a GPU machine: every task and tier, five evaluation seeds; expected about 3 h on one GPU
    # (the cpu config's jobs take 5-10 min each on a CPU core at 6000 steps; here 20000 steps at
    # batch 1024 of the paper preset, ~40 jobs, 4 in parallel)
    "full": {"tasks": ("reacher", "inverted_double_pendulum", "halfcheetah", "walker2d", "hopper"),
             "tiers": ("expert", "medium", "medium-replay", "medium-expert"),
             "episodes": {"reacher": 2000, "inverted_double_pendulum": 100, "halfcheetah": 200, "walker2d": 200,
                          "hopper": 200},
             "replay_episodes": {"reacher": 2000, "inverted_double_pendulum": 2000},
             "hetero_episodes": {"reacher": 2000, "inverted_double_pendulum": 200, "halfcheetah": 200, "walker2d": 200,
                                 "hopper": 200},
             "hetero_tasks": ("reacher", "inverted_double_pendulum") + LOCOMOTION, "hetero_self_label": HETERO_SELF_LABEL,
             "hetero_labelled_share": 0.5, "hetero_fraction": HETERO_FRACTION, "hetero_draws": (0, 1, 2),
             "preset": "paper", "steps": 20000, "batch_size": 1024,
             "masks": MTM_MASKS, "eval_episodes": 20, "seeds": (0, 1, 2, 3, 4), "workers": 4},
    # seconds-long plumbing check (tests); numbers are meaningless
    "smoke": {"tasks": ("reacher",), "tiers": ("expert",), "episodes": {"reacher": 20},
              "replay_episodes": {"reacher": 20}, "hetero_episodes": {"reacher": 40}, "hetero_labelled_share": 0.5,
              "hetero_tasks": ("reacher",), "hetero_self_label": HETERO_SELF_LABEL,
              "hetero_fraction": {"reacher": (0.1,)}, "hetero_draws": (0, 1),
              "preset": "embedded", "steps": 20, "batch_size": 32, "masks": MTM_MASKS, "eval_episodes": 1,
              "seeds": (0, 1, 2), "workers": 1},
}


def tiers_for(cfg: dict[str, Any], task: str) -> tuple[str, ...]:
    """The main-job tiers of ``task``: ``task_tiers[task]`` where the config narrows them, else ``tiers``."""
    return tuple(cfg.get("task_tiers", {}).get(task, cfg["tiers"]))


def episodes_for(cfg: dict[str, Any], task: str, tier: str) -> int:
    """Episodes to collect; a learning run's medium-replay tier has the run's own count and ignores it."""
    if tier in ("medium-replay", "random") and task in cfg["replay_episodes"]:
        return cfg["replay_episodes"][task]
    return cfg["episodes"][task]


def adds_goal(masks: tuple[str, ...]) -> bool:
    """Whether goal tasks also train on ``goal`` masks: yes, unless already listed or the run is
    the AUTO_MASK-only ablation."""
    return "goal" not in masks and masks != ("auto",)


def mtm_masks(cfg: dict[str, Any], task_name: str) -> tuple[str, ...]:
    """The config's MTM training masks, plus ``goal`` on a task with a goal modality (``adds_goal``)."""
    from mtm_runtime.sim.tasks import get_task

    kinds = tuple(cfg["masks"])
    return kinds + ("goal",) if adds_goal(kinds) and get_task(task_name).has_goal else kinds


def warmup_steps(cfg: dict[str, Any]) -> int:
    """Learning-rate warmup of every model of a config (MTM and MLPs alike)."""
    return min(200, cfg["steps"] // 10)


def mlp_budget(cfg: dict[str, Any]) -> dict[str, Any]:
    """``train_baseline`` keyword arguments giving an MLP the MTM's step budget, batch and schedule."""
    from mtm_runtime.training.pipeline import PRESET_LR

    return {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "lr": PRESET_LR[cfg["preset"]],
            "warmup_steps": warmup_steps(cfg)}


def config_digest(cfg: dict[str, Any]) -> str:
    """Short hash of what shapes a job's result: the config (not the worker count) and the git
    commit of the code (commit before rerunning: uncommitted edits do not change it)."""
    import hashlib

    from mtm_runtime.training.train_checkpoint import git_commit

    keep = {k: v for k, v in cfg.items() if k != "workers"}
    keep["git_commit"] = git_commit()
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=list).encode()).hexdigest()[:12]
