"""Same skill in chunked and async mode? Scores and action jumps side by side with sync (JSON out).

    python benchmarks/chunked_skill.py MODEL --task hopper --mode bc --episodes 5 --seeds 0,1 --json out.json

MODEL: a checkpoint of horizon T >= 4 trained with chunk masks (``mtm train --horizon 8 --masks
auto,chunk,chunk,bc``). Every setting runs the same episodes (same reset seeds) through
``training/chunk_eval.py`` (``ChunkLoop`` on a simulated clock; async with a fixed number of
committed steps, i.e. a plan lands one model step after its state): ``sync`` (one plan per
step, the plain BC / goal mask), ``sync_chunk2`` (chunk mask, replanned every step), ``async_k``
for chunks of 2, 3 and 4 with the committed action shown (real-time chunking by masks), and
``async_2_no_prefix`` (the committed action played but not shown to the model). Jumps: the
largest and p99 step-to-step change of the played commands per action dimension, against the
same of the demonstrations in ``--data`` (if given).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import emit_json, machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--task", default="hopper")
    ap.add_argument("--mode", default="bc")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--data", default="", help="the training data: its step-to-step action changes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    from mtm_runtime.chunk_loop import ChunkConfig
    from mtm_runtime.training.chunk_eval import evaluate_chunked, jump_summary, step_changes

    torch.set_num_threads(1)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    settings = {"sync": ChunkConfig(), "sync_chunk2": ChunkConfig(chunk=2),
                **{f"async_{k}": ChunkConfig(mode="async", chunk=k, committed=1) for k in (2, 3, 4)},
                "async_2_no_prefix": ChunkConfig(mode="async", chunk=2, committed=1, prefix=False)}
    result: dict[str, Any] = {"benchmark": "chunked_skill", "machine": machine(), "model": args.model, "task": args.task,
                              "mode": args.mode, "episodes_per_seed": args.episodes, "seeds": list(seeds), "settings": {}}
    if args.data:
        from mtm_runtime.training.sources import load_episodes

        eps = load_episodes(args.data)
        result["demonstrations_jumps"] = jump_summary(step_changes([e["actions"] for e in eps if e.present.get("actions")]))
    for name, cfg in settings.items():
        t = time.time()
        r = evaluate_chunked(args.model, args.task, cfg, mode=args.mode, episodes=args.episodes, seeds=seeds)
        result["settings"][name] = {k: r[k] for k in ("score_mean", "score_std", "success_mean", "jumps", "faults")}
        result["settings"][name]["wall_s"] = round(time.time() - t, 1)
        print(f"[chunked_skill] {name}: score {r['score_mean']:.1f} success {r['success_mean']} jumps max {r['jumps']['max']}",
              file=sys.stderr, flush=True)
    base = result["settings"]["sync"]
    result["vs_sync"] = {n: {"score_delta": round(s["score_mean"] - base["score_mean"], 2),
                             "success_delta": (round(s["success_mean"] - base["success_mean"], 3)
                                               if s["success_mean"] is not None else None)}
                         for n, s in result["settings"].items() if n != "sync"}
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
