"""``mtm compare-rollouts A.mcap B.mcap [--png out.png] [--json out.json]``: per-dimension state and
action divergence (RMSE, max, correlation) between two recordings, e.g. sim vs hardware with the
same policy and seeds (``training/rollout_compare.py``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, help="first recording (.mcap)")
    parser.add_argument("b", type=Path, help="second recording (.mcap)")
    parser.add_argument("--png", type=Path, default=None, help="plot (default: compare.png next to A)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    parser.add_argument("--model", default="", help="also the world-model residual per state dimension in A and B "
                        "(the runtime monitor's; a checkpoint of these widths): the sim-to-real gap")


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.recording import RecordingError
    from mtm_runtime.recording_loss import loss_note
    from mtm_runtime.integrity import CheckpointError
    from mtm_runtime.policy import Policy
    from mtm_runtime.training.rollout_compare import compare, format_table, model_gap

    png = args.png or args.a.with_name("compare.png")
    try:
        result = compare(args.a, args.b, png)
        if args.model:
            result["model"] = args.model
            result["model_gap"] = model_gap(Policy.load(args.model, mode="bc"), args.a, args.b)
    except (RecordingError, ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"mtm compare-rollouts: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    for name, report in result["recorded_loss"].items():
        if report and any(r["missed"] for r in report.values()):
            print(f"mtm compare-rollouts: WARNING: {name.upper()}: {loss_note(report)}", file=sys.stderr)
    print(f"plot: {result['png']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0
