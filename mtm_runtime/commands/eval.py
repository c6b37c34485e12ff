"""``mtm eval CHECKPOINT --mode bc|rcbc|goal [--episodes N] [--seeds ...] [--target-return R | --sweep]``:
simulator rollouts through ``mtm_runtime.Policy`` (wrapper over ``training/evaluate.py``)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtm_runtime.training.evaluate import add_arguments as eval_arguments

    eval_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.training.evaluate import main as eval_main

    return eval_main(args)
