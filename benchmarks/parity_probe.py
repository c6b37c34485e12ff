"""Probe for the reference-parity misses of RESULTS.md: our MTM trained on one capability cell
with AUTO_MASK alone, once with one ingredient of training swapped for the reference job's
(benchmarks/reference_mtm.py), scored as the benchmark scores it (BC and RCBC rollouts).

    python benchmarks/parity_probe.py halfcheetah medium-replay reference_auto_mask
    python benchmarks/parity_probe.py walker2d medium-replay constant_lr --json /tmp/p.json
    python benchmarks/parity_probe.py walker2d medium-replay ours --train-seed 1   # the spread of one cell

Variants (``VARIANTS``):
- ``ours``: AUTO_MASK as ``mtm train`` draws it (keep ratios 0.15-0.95; the cut's modality drawn
  uniformly in the spec's order states, actions, returns);
- ``reference_auto_mask``: the reference's AUTO_MASK parameters (research/mtm/config.yaml and
  masks.py): keep ratios 0.5-1.0, cut order states, returns, actions with weights 0.2/0.1/0.7
  (a goal, which the reference never cuts at, sits beside the return);
- ``constant_lr``: the reference job's schedule (linear warmup, then constant; ours decays by
  cosine to 10 %) and its weight decay 0.005 (ours 0.01).

A probe, not a feature: it swaps the ingredient by replacing the training code's function for the
length of this process (``mtm_runtime.masks.sample_training_masks``, ``training.train.lr_at``).
Data, split, budget and evaluation are the cpu config's (``benchmarks/capability_jobs``), in its
own work directory (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import capability_jobs as jobs  # noqa: E402
from benchmarks.capability_config import CONFIGS, episodes_for  # noqa: E402
from benchmarks.reference_mtm import MASK_RATIOS, MODE_WEIGHTS, WEIGHT_DECAY  # noqa: E402

VARIANTS = ("ours", "reference_auto_mask", "constant_lr")


def swap_ingredient(variant: str) -> dict[str, Any]:
    """Replace the training code's function for ``variant``; returns what was swapped."""
    import mtm_runtime.training.train as train_module
    from mtm_runtime import masks

    if variant == "reference_auto_mask":
        weights = dict(zip(("states", "returns", "actions"), MODE_WEIGHTS))
        draw = masks.sample_training_masks

        def reference_auto(spec: Any, batch: int, rng: Any, kinds: Any = ("auto",), *a: Any, **k: Any) -> Any:
            if tuple(kinds) != ("auto",):
                return draw(spec, batch, rng, kinds, *a, **k)
            # the reference cuts only states, returns, actions; a goal sits with the return (never cut at)
            order = [n for n in ("states", "returns", "goals", "actions") if n in spec.names]
            return draw(spec, batch, rng, kinds, keep_ratios=MASK_RATIOS, modality_order=order,
                        modality_weights=[weights.get(n, 0.0) for n in order])

        masks.sample_training_masks = reference_auto
        return {"keep_ratios": list(MASK_RATIOS), "modality_order": ["states", "returns", "(goals)", "actions"],
                "modality_weights": list(MODE_WEIGHTS)}
    if variant == "constant_lr":
        train_module.lr_at = lambda step, c: c.lr * min((step + 1) / max(1, c.warmup_steps), 1.0)
        run = train_module.run
        train_module.run = functools.wraps(run)(lambda args, *a, **k: run(dataclasses.replace(args, weight_decay=WEIGHT_DECAY), *a, **k))
        return {"lr": "linear warmup, then constant", "weight_decay": WEIGHT_DECAY}
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("tier")
    p.add_argument("variant", choices=VARIANTS)
    p.add_argument("--config", default="cpu", choices=tuple(CONFIGS), help="data, budget and evaluation (default cpu)")
    p.add_argument("--out", type=Path, default=Path("/tmp/mtm_parity_probe"))
    p.add_argument("--train-seed", type=int, default=0, help="seed of the MTM's training run (default 0, the benchmark's)")
    p.add_argument("--json", default="", help="also write the result here")
    a = p.parse_args(argv)
    import torch

    from mtm_runtime.sim.tasks import get_task

    torch.set_num_threads(1)   # as a parallel benchmark job
    cfg = dict(CONFIGS[a.config], masks=("auto",))
    swapped = swap_ingredient(a.variant)
    if a.train_seed:   # the training run's seed (data, split and evaluation seeds stay the config's)
        import mtm_runtime.training.train as train_module

        run = train_module.run
        train_module.run = functools.wraps(run)(lambda args, *x, **k: run(dataclasses.replace(args, seed=a.train_seed), *x, **k))
        swapped["train_seed"] = a.train_seed
    t0 = time.perf_counter()
    data = jobs.dataset(a.out, cfg, a.task, a.tier, episodes_for(cfg, a.task, a.tier))
    run_dir = a.out / "runs" / f"{a.task}_{a.tier}_{a.variant}_seed{a.train_seed}"
    jobs.train_mtm(cfg, data, run_dir, a.task)
    expert = get_task(a.task).reference_returns["expert"]
    res = {"task": a.task, "tier": a.tier, "variant": a.variant, "train_seed": a.train_seed, "swapped": swapped,
           "bc": jobs.eval_policy(run_dir, a.task, "bc", cfg)["score_mean"],
           "rcbc": jobs.eval_policy(run_dir, a.task, "rcbc", cfg, expert)["score_mean"],
           "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
