"""``mtm import-bag BAG --robot robot.yaml -o data.hdf5``: a rosbag2 of any robot -> our HDF5 layout.

States from ``JointState`` by joint name (or ``--state TOPIC:FIELD``), actions from the robot's
command topic (``--actions topic``), derived from the next measured state (``derive``) or left
missing (``missing``: state-only episodes for heteromodal training); streams resampled to the
robot's control rate by zero-order hold; episodes cut by ``--episodes bag|gap:S|length:N|marker:TOPIC``.
``--relabel-actions MODEL`` fills action-free episodes with the model's inverse dynamics
(``training/relabel.py``), marked as inferred in the file.
The rules and the counts in the report: ``training/rosbag_import.py``. The output trains with
``mtm train --data data.hdf5`` (the robot file travels inside it). Bad input is one line and exit
code 2; the output is written whole or not at all.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtm_runtime.arg_types import at_least
from mtm_runtime.integrity import CheckpointError
from mtm_runtime.robot import RobotError, load_robot
from mtm_runtime.training.loaders import DatasetError
from mtm_runtime.training.relabel import load_labeller, relabel_actions
from mtm_runtime.training.rosbag_import import ACTION_SOURCES, BagImport, read_bag, write_episodes_hdf5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 directory (MCAP or sqlite3), or one .mcap/.db3 file")
    parser.add_argument("--robot", required=True, help="robot file (joints, state fields, command topic, rate)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .hdf5 path")
    parser.add_argument("--state-topic", default="/joint_states", help="JointState topic (default /joint_states)")
    parser.add_argument("--state", action="append", default=[], metavar="TOPIC:FIELD",
                        help="numeric state field instead of JointState (repeat; concatenated in order)")
    parser.add_argument("--actions", default="topic", choices=ACTION_SOURCES,
                        help="topic: the command topic; derive: next measured value; missing: none (default topic)")
    parser.add_argument("--action-topic", default="", help="command topic (default: the robot file's action.topic)")
    parser.add_argument("--goal", default="", metavar="TOPIC:FIELD", help="goal vector (robots with goals)")
    parser.add_argument("--reward", default="", metavar="TOPIC:FIELD", help="per-step reward, if the log has one")
    parser.add_argument("--episodes", default="bag", help="bag | gap:SECONDS | length:STEPS | marker:TOPIC (default bag)")
    parser.add_argument("--max-age", type=float, default=0.0,
                        help="a sample older than this (s) at a tick makes the tick stale (default 1.25 control periods)")
    parser.add_argument("--time", default="log", choices=("log", "header"), help="message time: bag receive time or header.stamp")
    parser.add_argument("--min-length", type=at_least(1), default=2, help="drop episodes shorter than this many steps")
    parser.add_argument("--report", type=Path, default=None, help="also write the import report as JSON")
    parser.add_argument("--relabel-actions", default="", metavar="MODEL",
                        help="fill the actions of action-free episodes with MODEL's inverse dynamics "
                             "(checkpoint or .onnx; marked infos/action_inferred in the file)")


def main(args: argparse.Namespace) -> int:
    try:
        robot = load_robot(args.robot)
        cfg = BagImport(robot, state_topic=args.state_topic, state_paths=tuple(args.state), action_source=args.actions,
                        action_topic=args.action_topic, goal_path=args.goal, reward_path=args.reward,
                        episodes=args.episodes, max_age_s=args.max_age, time=args.time, min_length=args.min_length)
        episodes, report = read_bag(args.bag, cfg)
        inferred: list[int] = []
        if args.relabel_actions:
            inferred = relabel_actions(episodes, load_labeller(args.relabel_actions), args.relabel_actions)
        path = write_episodes_hdf5(args.output, episodes, robot, report, inferred, args.relabel_actions)
    except (DatasetError, RobotError, CheckpointError, FileNotFoundError) as e:
        print(f"mtm import-bag: {e}", file=sys.stderr)
        return 2
    if args.report:
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"wrote {path}: {report.summary()}" + (f"; actions inferred by {args.relabel_actions} for "
                                                  f"{len(inferred)} episode(s)" if args.relabel_actions else ""))
    return 0
