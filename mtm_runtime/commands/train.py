"""``mtm train --data FILE [--config YAML] [--preset embedded|paper] ...``: a thin wrapper over
``training/train.py`` (same flags; for several GPUs or hosts run that script under torchrun)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtm_runtime.training.train import add_arguments as train_arguments

    train_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.training.train import resolve_args, run

    run(resolve_args(args))
    return 0
