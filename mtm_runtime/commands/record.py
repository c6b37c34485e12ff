"""``mtm record [--topics ...] -o FILE.mcap [--duration S]``: record the closed-loop topics to MCAP.

Thin wrapper over ``mtm_runtime.ros_nodes.recorder.record_main`` (rclpy is imported only here, when the
command runs). Default topics: ``mtm_runtime.recording.CLOSED_LOOP_TOPICS``. The file is
rosbag2-compatible MCAP (profile ``ros2``, ``ros2msg`` schemas, CDR messages).

Losses are counted from each publisher's DDS sequence numbers and written into the file
(metadata ``mtm_record``); the last line printed gives the counts, each topic that lost
messages gets a WARNING line on stderr, and the exit status is 1 (0 when nothing was missed).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtm_runtime.recording import CLOSED_LOOP_TOPICS

    parser.add_argument("--topics", nargs="+", default=None,
                        help=f"topics to record (default: {' '.join(CLOSED_LOOP_TOPICS)})")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .mcap file")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to record (0 = until Ctrl-C)")
    parser.epilog = "exit status: 0, or 1 if messages were missed (the file is written either way)"


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.ros_nodes.recorder import record_main

    return record_main(args.output, args.topics, args.duration)
