"""How fast ``mtm import-bag`` turns a long rosbag2 of a 7-joint arm into training data.

    python benchmarks/import_bag.py [--minutes 60] [--rate 100] [--storage mcap] [--repeats 3] [--json out.json]

Writes one bag with the ``rosbags`` writer (``tests/dataset_writers.write_arm_bag``): ``/joint_states``
and ``/forward_position_controller/commands`` at ``--rate`` Hz for ``--minutes`` minutes (one
episode), then times, interleaved over ``--repeats`` rounds:
* ``baseline``: the ``rosbags`` reader alone, every message of the two topics read and
  deserialised, nothing else (the floor any importer built on this library pays);
* ``import``: ``read_bag`` + ``write_episodes_hdf5``, what ``mtm import-bag`` does.
Prints JSON: seconds per run (median, max), messages per second, ``ratio`` = import / baseline
(median), and the machine. Target (issue 21): a one-hour bag at 100 Hz in under 30 s.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import emit_json, machine  # noqa: E402
from dataset_writers import write_arm_bag, write_arm_robot  # noqa: E402
from mtm_runtime.robot import load_robot  # noqa: E402
from mtm_runtime.training.rosbag_import import BagImport, read_bag, write_episodes_hdf5  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402


def baseline(bag: Path) -> int:
    n = 0
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as r:
        conns = [c for c in r.connections if c.topic in ("/joint_states", "/forward_position_controller/commands")]
        for conn, _t, raw in r.messages(connections=conns):
            r.deserialize(raw, conn.msgtype)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=100.0, help="state and command rate (Hz); the robot's control rate")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="import_bag_"))
    try:
        t = time.perf_counter()
        bag = write_arm_bag(tmp / "bag", a.storage, episodes=1, seconds=60 * a.minutes, state_hz=a.rate,
                            forward_hz=a.rate, trajectory_hz=0.1)
        write_s = time.perf_counter() - t
        robot = load_robot(write_arm_robot(tmp / "arm.yaml", rate=a.rate))
        runs: dict[str, list[float]] = {"baseline": [], "import": []}
        steps = msgs = 0
        for _ in range(a.repeats):
            t = time.perf_counter()
            msgs = baseline(bag)
            runs["baseline"].append(time.perf_counter() - t)
            t = time.perf_counter()
            episodes, report = read_bag(bag, BagImport(robot))
            write_episodes_hdf5(tmp / "out.hdf5", episodes, robot, report)
            runs["import"].append(time.perf_counter() - t)
            steps = report.steps
        med = {k: float(np.median(v)) for k, v in runs.items()}
        emit_json({
            "benchmark": "import_bag", "bag": {"minutes": a.minutes, "rate_hz": a.rate, "joints": len(robot.joints),
                                                "storage": a.storage, "messages": msgs, "write_s": round(write_s, 2),
                                                "bytes": sum(f.stat().st_size for f in bag.iterdir())},
            "steps_imported": steps,
            "seconds": {k: {"median": round(med[k], 2), "max": round(max(v), 2), "runs": [round(x, 2) for x in v]}
                        for k, v in runs.items()},
            "messages_per_s": {k: round(msgs / med[k]) for k in runs},
            "ratio_import_to_baseline": round(med["import"] / med["baseline"], 2),
            "target_s": 30.0 * a.minutes / 60.0, "meets_target": med["import"] < 30.0 * a.minutes / 60.0,
            "machine": machine(),
        }, a.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
