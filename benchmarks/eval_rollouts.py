"""Evaluation throughput: episodes one at a time vs vectorised (``PolicyBatch``), same run.

    python benchmarks/eval_rollouts.py [--checkpoint models/reacher_embedded] [--mode goal]
                                       [--episodes 16] [--batch 16] [--rounds 5] [--json out.json]

Each round evaluates the same ``--episodes`` episodes (one seed, one worker process, one torch
thread) with ``--batch 1`` and with ``--batch N``, alternating so machine noise hits both alike.
Reports per configuration the wall time of a round (median, p90, max), simulator steps per
second, and the ratio batched / serial of the medians; checks that both gave the same scores.
JSON to stdout (and ``--json``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit_json, machine  # noqa: E402
from mtm_runtime.training.evaluate import task_of, evaluate_agent_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "models" / "reacher_embedded"))
    p.add_argument("--task", default="", help="default: the checkpoint's task")
    p.add_argument("--mode", default="goal")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    task = a.task or task_of(a.checkpoint)
    walls: dict[int, list[float]] = {1: [], a.batch: []}
    scores: dict[int, list[float]] = {}
    steps = 0
    for _ in range(a.rounds):
        for b in walls:
            t0 = time.perf_counter()
            res = evaluate_agent_path(a.checkpoint, task, a.mode, a.episodes, (0,), workers=1, batch=b)
            walls[b].append(time.perf_counter() - t0)
            scores[b] = res["score_per_seed"]
            steps = res["steps_total"]
    out = {"benchmark": "eval_rollouts", "machine": machine(), "checkpoint": a.checkpoint, "task": task,
           "mode": a.mode, "episodes": a.episodes, "rounds": a.rounds, "simulator_steps_per_round": steps,
           "same_scores": scores[1] == scores[a.batch], "score": scores[1][0], "configs": {}}
    for b, w in walls.items():
        arr = np.asarray(w)
        out["configs"][f"batch_{b}"] = {"round_s_p50": round(float(np.median(arr)), 3),
                                        "round_s_p90": round(float(np.percentile(arr, 90)), 3),
                                        "round_s_max": round(float(arr.max()), 3),
                                        "steps_per_s_p50": round(steps / float(np.median(arr)), 1)}
    out["ratio_batched_over_serial_p50"] = round(float(np.median(walls[a.batch]) / np.median(walls[1])), 3)
    emit_json(out, Path(a.json) if a.json else None)
    return 0 if out["same_scores"] else 1


if __name__ == "__main__":
    sys.exit(main())
