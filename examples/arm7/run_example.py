"""Your robot, your data, end to end: a 7-joint arm that is not a benchmark task.

    python examples/arm7/run_example.py [-o runs/arm7] [--demos 12] [--episodes 10] [--steps 1000]

Each stage is a command a user types (printed before it runs):
 1. demonstrations through ROS 2: the sim bridge serves ``arm7.xml`` as described by ``arm7.yaml``
    (realtime, 50 Hz), ``demonstrator.py`` (a scripted ROS node) drives it, ``mtm record`` records
    the topics to MCAP;
 2. ``mtm import-bag demo.mcap --robot arm7.yaml`` -> ``demo.hdf5`` (JointState by joint name,
    commands at the control rate, one episode per ``/episode_stats``);
 3. ``mtm train --data demo.hdf5`` (the spec and limits from the data and the robot file);
 4. ``mtm export onnx``;
 5. ``mtm rollout`` (the ``mtm launch`` node set: policy node + sim bridge on the same MJCF, the
    policy reading ``/joint_states`` by joint name, as it would on the robot);
 6. ``mtm compare-rollouts demo.mcap rollout/rollout.mcap``.
Writes ``summary.json``: the demonstrator's and the policy's success rates and their ratio
(target: >= 0.9). Every process's log is under ``logs/``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROBOT = HERE / "arm7.yaml"
JOINTS = "[j1,j2,j3,j4,j5,j6,j7]"


def say(cmd: list[str]) -> None:
    shown = [Path(c).name if c == sys.executable else c for c in cmd]
    print("$ " + " ".join(shown), flush=True)


def mtm(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtm_runtime.cli", *args]


def run(cmd: list[str], log: Path) -> None:
    say(cmd)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    tail = log.read_text().strip().splitlines()[-3:]
    print("  " + "\n  ".join(tail), flush=True)
    if rc != 0:
        raise SystemExit(f"run_example: {cmd[3] if len(cmd) > 3 else cmd} failed (exit {rc}); see {log}")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    say(cmd)
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def demonstrations(out: Path, logs: Path, n: int) -> dict:
    """Stage 1: the scripted demonstrator drives the bridge; the recorder writes demo.mcap."""
    recorder = start(mtm("record", "-o", str(out / "demo.mcap")), logs / "record.log")
    demo = start([sys.executable, str(HERE / "demonstrator.py")], logs / "demonstrator.log")
    bridge_cmd = [sys.executable, "-m", "mtm_runtime.ros_nodes.sim_bridge", "--ros-args",
                  "-p", f"task:={ROBOT}", "-p", "mode:=realtime", "-p", f"episodes:={n}", "-p", "seed:=1000",
                  "-p", "policy_reset_service:=/arm7_demonstrator/reset", "-p", "start_subscribers:=1",
                  "-p", "start_wait_s:=30.0", "-p", "reset_timeout_s:=10.0",
                  "-p", f"results_path:={out / 'demo_results.json'}"]
    try:
        bridge = start(bridge_cmd, logs / "bridge.log")
        rc = bridge.wait(timeout=60 + 5 * n)
        if rc != 0:
            raise SystemExit(f"run_example: the sim bridge failed (exit {rc}); see {logs / 'bridge.log'}")
    finally:
        stop(demo)
        rc_rec = stop(recorder)
    print("  " + (logs / "record.log").read_text().strip().splitlines()[-1], flush=True)
    if rc_rec not in (0, 1):   # 1: some message was missed (counted in the file; the import says what it used)
        raise SystemExit(f"run_example: mtm record failed (exit {rc_rec}); see {logs / 'record.log'}")
    return json.loads((out / "demo_results.json").read_text())


def success_rate(episodes: list[dict]) -> float:
    return sum(float(e["success"]) for e in episodes) / max(len(episodes), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, default=Path("runs/arm7"))
    p.add_argument("--demos", type=int, default=12, help="demonstration episodes")
    p.add_argument("--episodes", type=int, default=10, help="policy rollout episodes")
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    a = p.parse_args(argv)
    out = a.output.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    t0 = time.monotonic()

    print("== 1. demonstrations through ROS 2 (scripted controller, recorded to MCAP)", flush=True)
    demo = demonstrations(out, logs, a.demos)
    print("== 2. the recording -> training data", flush=True)
    run(mtm("import-bag", str(out / "demo.mcap"), "--robot", str(ROBOT), "-o", str(out / "demo.hdf5"),
            "--episodes", "marker:/episode_stats", "--max-age", "0.05", "--report", str(out / "import_report.json")),
        logs / "import.log")
    print("== 3. train", flush=True)
    run(mtm("train", "--data", str(out / "demo.hdf5"), "--steps", str(a.steps), "--batch-size", "64",
            "--val-every", "0", "--val-fraction", "0", "--out", str(out / "model"), "--no-progress", "--no-plot"),
        logs / "train.log")
    print("== 4. export", flush=True)
    run(mtm("export", "onnx", str(out / "model"), "-o", str(out / "arm7.onnx")), logs / "export.log")
    print("== 5. the policy node drives the same MJCF over ROS 2", flush=True)
    params = out / "policy_params.yaml"
    params.write_text("mtm_policy:\n  ros__parameters:\n    input_type: joint_state\n"
                      f"    joint_names: {JOINTS}\n    state_fields: [position, velocity]\n    control_rate_hz: 50.0\n"
                      "mtm_sim_bridge:\n  ros__parameters:\n    seed: 1000\n")
    run(mtm("rollout", "--model", str(out / "arm7.onnx"), "--backend", "onnxruntime", "--task", str(ROBOT),
            "--episodes", str(a.episodes),
            "--sim-mode", "realtime", "--params-file", str(params), "-o", str(out / "rollout")), logs / "rollout.log")
    print("== 6. compare the policy's rollouts with the demonstrations", flush=True)
    run(mtm("compare-rollouts", str(out / "demo.mcap"), str(out / "rollout" / "rollout.mcap"),
            "--json", str(out / "compare.json"), "--png", str(out / "compare.png")), logs / "compare.log")

    rollout = json.loads((out / "rollout" / "summary.json").read_text())
    demo_success, policy_success = success_rate(demo["episodes"]), float(rollout["success_rate"])
    summary = {"demonstrator_success": demo_success, "policy_success": policy_success,
               "ratio": policy_success / demo_success if demo_success else float("nan"),
               "demo_episodes": len(demo["episodes"]), "policy_episodes": len(rollout["episodes"]),
               "import": json.loads((out / "import_report.json").read_text()), "wall_s": round(time.monotonic() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"demonstrator success {100 * demo_success:.0f}%, policy success {100 * policy_success:.0f}% "
          f"(ratio {summary['ratio']:.2f}); {out / 'summary.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
