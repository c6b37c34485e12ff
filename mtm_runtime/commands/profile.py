"""``mtm profile MODEL``: latency of ``Policy.act`` per backend, paced or flat out.

    mtm profile models/hopper --backend onnxruntime --mode bc --rate 500 --steps 2000
    mtm profile preset:embedded --compare torch,onnxruntime --steps 2000 --json out.json --png out.png
    mtm profile preset:paper --compare torch,onnxruntime,onnxruntime+quantize=int8 --steps 500

MODEL: a checkpoint directory, an ``.onnx`` or ``.engine`` file, or ``preset:NAME`` (random
weights of a model preset, for latency only). A backend entry may carry options:
``onnxruntime+intra_op_threads=2``, ``torch+threads=1``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint dir, .onnx, .engine, or preset:NAME")
    p.add_argument("--backend", default="", help="backend entry (default: the model's natural backend)")
    p.add_argument("--compare", default="", help="comma-separated backend entries, profiled in turn; "
                                                  "ratios are to the first")
    p.add_argument("--mode", default="bc", help="mask mode (bc, rcbc, goal, id, fd ...)")
    p.add_argument("--rate", type=float, default=None, metavar="HZ", help="pace at this rate (default flat out)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--series", action="store_true", help="include raw per-step series in the JSON")
    p.add_argument("--png", type=Path, default=None, help="histogram + time series plot")
    p.add_argument("--chunk", type=int, default=0, help="also profile chunk planning with chunks of this length")
    p.add_argument("--monitor", action="store_true",
                   help="also profile the world-model monitor's batch-of-two pass (with --chunk, or chunk 1)")


def planner_rows(args: argparse.Namespace) -> list[dict]:
    """Plan latency without and (``--monitor``) with the monitor's row, same model and backend."""
    from mtm_runtime.policy import Policy
    from mtm_runtime.profiling import profile_planner

    if args.model.startswith("preset:"):
        raise ValueError("--chunk/--monitor need a checkpoint (a model trained with chunk masks)")
    rows = []
    for monitor in (False, True) if args.monitor else (False,):
        policy = Policy.load(args.model, backend=args.backend, batch_size=2 if monitor else 1)
        rows.append(profile_planner(policy, args.chunk or 1, monitor, args.steps, args.warmup))
    return rows


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.backends import BackendError
    from mtm_runtime.checkpoint import CheckpointError
    from mtm_runtime.profiling import format_table, profile_backends, save_png, to_json

    entries = [e for e in args.compare.split(",") if e.strip()] if args.compare else [args.backend]
    if not args.model.startswith("preset:") and not Path(args.model).exists():
        print(f"mtm profile: {args.model}: no such checkpoint directory, .onnx or .engine file", file=sys.stderr)
        return 2
    try:
        report = profile_backends(args.model, entries, args.mode, args.steps, args.rate, args.warmup)
    except (BackendError, CheckpointError, ValueError) as e:
        print(f"mtm profile: refused: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.chunk or args.monitor:
        try:
            report["planner"] = planner_rows(args)
        except (BackendError, CheckpointError, ValueError) as e:
            print(f"mtm profile: refused: {e}", file=sys.stderr)
            return 2
        for row in report["planner"]:
            print(f"plan chunk {row['chunk']} batch {row['batch']}{' (monitor)' if row['monitor'] else ''}: "
                  f"p50 {row['plan_ms']['p50']:.3f} ms, p99 {row['plan_ms']['p99']:.3f} ms")
    if args.json:
        args.json.write_text(to_json(report, include_series=args.series))
        print(f"wrote {args.json}")
    if args.png:
        save_png(report, args.png)
        print(f"wrote {args.png}")
    return 0
