"""``mtm train --data PATH [--env GYM_ID | --robot robot.yaml] [--config YAML] ...``: a thin wrapper
over ``training/train.py`` (same flags; for several GPUs or hosts run that script under torchrun).

``--data`` takes any source ``training/sources.py`` reads: our HDF5 or a D4RL-layout file, a Minari
dataset directory, a LeRobotDataset directory or a rosbag2 (with ``--robot``). Bad input (a missing
file or key, an unknown environment, widths that disagree) is one line on stderr and exit code 2,
with nothing written.
"""
from __future__ import annotations

import argparse
import sys

from mtm_runtime.robot import RobotError
from mtm_runtime.sim.tasks import TaskError
from mtm_runtime.training.loaders import DatasetError
from mtm_runtime.training.train import run
from mtm_runtime.training.train_args import add_arguments as train_arguments
from mtm_runtime.training.train_args import resolve_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        run(resolve_args(args))
    except (DatasetError, TaskError, RobotError) as e:
        print(f"mtm train: {e}", file=sys.stderr)
        return 2
    return 0
