"""``mtm demo``: the quick start that ``make demo`` runs.

Step 1 trains on the toy sinusoid set (under a minute on CPU) and prints reconstructions under
BC, FD, ID and random masks. Later steps (closed loop against MuJoCo over ROS 2) run when their
parts are installed.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"))


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.commands import toy

    print("== mtm demo: step 1/1: MTM on a toy sinusoid set ==")
    r = toy.run(out=args.out / "toy")
    print(f"BC held-out error fell {r['improvement']['bc']}x; plot: {r.get('plot')}")
    return 0
