"""The ``mtm`` command. Each subcommand lives in its own module with two functions:

    add_arguments(parser: argparse.ArgumentParser) -> None
    main(args: argparse.Namespace) -> int

and is listed in COMMANDS below (an explicit table: nothing registers itself on import).
Modules are imported only when their subcommand runs, so ``mtm --help`` stays fast and a
missing optional dependency only affects the subcommand that needs it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mtm_runtime.commands.demo", "the quick-start demo that `make demo` runs"),
    "toy": ("mtm_runtime.commands.toy", "train on a toy sinusoid set and show reconstructions"),
    "info": ("mtm_runtime.commands.info", "print a checkpoint's spec, config and provenance"),
    "verify": ("mtm_runtime.commands.verify", "check a checkpoint / .onnx / .engine as loading does; --restamp, --keygen"),
    "export": ("mtm_runtime.commands.export", "export a checkpoint to ONNX (onnx) or an ONNX file to a TensorRT engine (trt)"),
    "profile": ("mtm_runtime.commands.profile", "latency profile of Policy.act per backend (paced or flat out)"),
    "launch": ("mtm_runtime.commands.launch", "start the ROS 2 node set of launch/policy.launch.py (one process per node)"),
    "collect": ("mtm_runtime.commands.collect", "roll out a scripted expert into a D4RL-style HDF5 dataset"),
    "offline-rl": ("mtm_runtime.training.offline_rl", "offline TD3+BC on raw states or MTM features, with a relabelled reward"),
    "train": ("mtm_runtime.commands.train", "train an MTM on a dataset (training/train.py; torchrun for DDP)"),
    "eval": ("mtm_runtime.commands.eval", "evaluate a checkpoint in the simulator (bc/rcbc/goal; ID/FD errors)"),
    "record": ("mtm_runtime.commands.record", "record the closed-loop ROS 2 topics to an MCAP file (rosbag2-compatible)"),
    "import-mcap": ("mtm_runtime.commands.import_mcap", "turn recorded rollouts (MCAP) into an HDF5 training dataset"),
    "import-bag": ("mtm_runtime.commands.import_bag", "turn a rosbag2 of any robot (MCAP/sqlite3) into an HDF5 training dataset"),
    "rollout": ("mtm_runtime.commands.rollout", "run N episodes through the launch node set (sim or serial) and record them"),
    "compare-rollouts": ("mtm_runtime.commands.compare_rollouts", "per-dimension state/action divergence of two recordings (table + PNG)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtm", description="Masked Trajectory Model runtime")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"mtm: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"mtm {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
