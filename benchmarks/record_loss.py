"""Recording loss benchmark: ``mtm record`` beside ``mtm launch`` at 500 Hz on a busy machine (JSON out).

    python benchmarks/record_loss.py                 # 60 s at 500 Hz, a busy loop on every core
    python benchmarks/record_loss.py --quick         # 10 s
    python benchmarks/record_loss.py --rate 1000 --duration 30 --no-hog

What runs: ``benchmarks.common.CpuHog`` (one busy-loop process per core, ``os.cpu_count()``),
then ``mtm record -o FILE`` (default topics: every closed-loop topic), then ``mtm launch``
(policy node + MuJoCo sim bridge, realtime, ``--rate``), each as the user would start it. The
policy is the untrained ``embedded`` preset of ``benchmarks/closed_loop.py`` (reads
``joint_states``, publishes stamped JointState commands, ``trigger: state``); the bridge also
publishes ``observation``, so the recorder takes two 500 Hz state streams, the 500 Hz command
stream, rewards, goals, episode ends and diagnostics. Episodes last ``--episode-s`` (2 s); the
bridge stops after ``duration / episode_s`` of them, ``mtm launch`` then stops the policy, and the
recorder is stopped with SIGINT a second later.

Messages lost, per topic, counted two ways:
* by the recorder itself: gaps in each publisher's DDS publication sequence numbers (the
  ``mtm_record`` metadata of the file, ``mtm_runtime.recording_loss.LossCounter``);
* independently, from what the publishers say they published: the bridge's per-episode results
  file (an episode of L steps publishes L observations and joint states, L - 1 rewards, one goal
  and one ``episode_stats``) and the policy node's ``published`` counter in its last recorded
  /diagnostics (compared with the commands recorded with an earlier source timestamp).
Target: 0 lost on every topic. ``lost_total`` splits the recorder's count into gaps after a
publisher's first message and ``recorder_at_start_up`` (a publisher's first messages, sent
before its writer had matched the recorder's reader: DDS discovery, before the loop runs; seen
only on /diagnostics, whose publishers do not wait for subscribers, on a loaded machine).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.closed_loop import make_model, pick_backend  # noqa: E402
from benchmarks.common import CpuHog, emit_json, machine  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "record_loss.json"
#: The recorder gets this long to subscribe before the node set starts.
RECORDER_HEAD_START_S = 2.0


def _params(work: Path, rate: float, episodes: int, episode_s: float) -> Path:
    from mtm_runtime.ros_nodes.closed_loop import write_params

    policy = {"input_type": "joint_state", "joint_names": ["joint0", "joint1"], "state_fields": ["position", "velocity"],
              "command_type": "joint_state", "command_interface": "effort", "trigger": "state", "mask_mode": "goal",
              "warmup_iters": 200, "stale_timeout": 0.5, "inference_threads": 1}
    bridge = {"command_type": "joint_state", "reset_timeout_s": 30.0, "episodes": episodes,
              "max_episode_steps": max(1, round(rate * episode_s)), "results_path": str(work / "bridge_results.json"),
              "start_subscribers": 1, "start_wait_s": 30.0}  # 1: the recorder (the policy reads joint_states)
    return write_params(work / "params.yaml", policy, bridge)


def _cpu_s(pid: int) -> float | None:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return None


def _launch(argv: list[str], env: dict[str, str], log: Any, timeout_s: float) -> int:
    """Run ``mtm launch`` until its node set ends (the bridge's episodes); SIGINT it after ``timeout_s``."""
    launch = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        return launch.wait(timeout=timeout_s)
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            launch.wait(timeout=30)


def run(rate: float, duration: float, episode_s: float, work: Path, backend: str, env: dict[str, str]) -> dict[str, Any]:
    """Record beside the launched loop; returns the recorder's output and the two counts."""
    episodes = max(1, round(duration / episode_s))
    params = _params(work, rate, episodes, episode_s)
    model = make_model(work / "model")
    backend, why = pick_backend(model, backend)
    record_file = work / "loop.mcap"
    cli = [sys.executable, "-m", "mtm_runtime.cli"]
    recorder = subprocess.Popen(cli + ["record", "-o", str(record_file)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(RECORDER_HEAD_START_S)
        t0, cpu0 = time.monotonic(), _cpu_s(recorder.pid)
        with open(work / "launch.log", "w") as launch_log:
            launch_rc = _launch(cli + ["launch", "--model", str(model), "--backend", backend, "--rate", f"{rate:g}",
                                       "--params-file", str(params), "--target", "sim", "--task", "reacher",
                                       "--sim-mode", "realtime"], env, launch_log, timeout_s=duration * 3 + 120)
        wall = time.monotonic() - t0
        time.sleep(1.0)
        cpu1 = _cpu_s(recorder.pid)
    finally:
        recorder.send_signal(signal.SIGINT)
        out, err = recorder.communicate(timeout=60)
        (work / "record.log").write_text(out + err)
    if not record_file.exists():
        raise SystemExit(f"record_loss: mtm record wrote no file (exit {recorder.returncode}):\n{out}{err}")
    return {"episodes": episodes, "episode_steps": max(1, round(rate * episode_s)), "backend": backend,
            "backend_choice": why, "launch_exit_code": launch_rc, "loop_wall_s": round(wall, 2),
            "recorder": {"exit_code": recorder.returncode, "summary": out.strip().splitlines()[-1:],
                         "warnings": err.strip().splitlines(),
                         "cpu_cores": round((cpu1 - cpu0) / (wall + 1.0), 3) if cpu0 is not None and cpu1 else None},
            "file": str(record_file), "bridge_results": str(work / "bridge_results.json"), "logs": str(work)}


def _diag_values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def published_by_policy(record_file: Path) -> tuple[int, int] | None:
    """(commands the policy says it published by its last recorded /diagnostics, commands recorded
    with an earlier source timestamp); None if no policy diagnostics were recorded."""
    from mcap.reader import make_reader

    from mtm_runtime.recording import read_messages

    last: tuple[int, int] | None = None
    for rec in read_messages(record_file, ["/diagnostics"]):
        for st in rec.msg.status:
            if "policy loop" in st.name and "published" in _diag_values(st):
                last = (rec.publish_time_ns, int(_diag_values(st)["published"]))
    if last is None:
        return None
    with open(record_file, "rb") as f:
        recorded = sum(1 for _s, _c, m in make_reader(f).iter_messages(topics=["/commands"]) if m.publish_time <= last[0])
    return last[1], recorded


def published_by_bridge(results_file: Path) -> dict[str, int]:
    """Messages per topic the bridge published, from its per-episode results (see module docstring)."""
    eps = json.loads(results_file.read_text())["episodes"]
    steps = sum(int(e["steps"]) for e in eps)
    return {"/observation": steps, "/joint_states": steps, "/reward": steps - len(eps), "/goal": len(eps),
            "/episode_stats": len(eps)}


def stream_rate_hz(record_file: Path, topic: str = "/joint_states") -> float | None:
    """Messages per second of ``topic`` between its first and last source timestamp (episode resets included)."""
    from mcap.reader import make_reader

    with open(record_file, "rb") as f:
        t = [m.publish_time for _s, _c, m in make_reader(f).iter_messages(topics=[topic])]
    return round((len(t) - 1) / ((t[-1] - t[0]) * 1e-9), 1) if len(t) > 1 and t[-1] > t[0] else None


def loss_table(record_file: Path, results_file: Path) -> dict[str, dict[str, Any]]:
    """Per topic: the recorder's counts and the independent count (published vs received)."""
    from mtm_runtime.recording_loss import recorded_loss

    loss = recorded_loss(record_file) or {}
    table: dict[str, dict[str, Any]] = {}
    bridge = published_by_bridge(results_file) if results_file.exists() else {}
    for topic, r in loss.items():
        row: dict[str, Any] = {"received": r["received"], "missed_by_recorder": r["missed"],
                               "missed_at_start": r["missed_at_start"], "before_subscribed": r["before_subscribed"],
                               "publishers": r["publishers"]}
        if topic in bridge:
            row.update(published=bridge[topic], lost_independent=bridge[topic] - r["received"],
                       independent_count="bridge per-episode results")
        table[topic] = row
    policy = published_by_policy(record_file)
    if policy is not None and "/commands" in table:
        table["/commands"].update(published=policy[0], received_by_then=policy[1],
                                  lost_independent=policy[0] - policy[1],
                                  independent_count="policy /diagnostics 'published' (last recorded) vs commands "
                                                    "recorded before it")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="control rate in Hz (default 500)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of control (default 60, 10 with --quick)")
    ap.add_argument("--quick", action="store_true", help="10 s (unless --duration is given)")
    ap.add_argument("--episode-s", type=float, default=2.0, help="episode length in seconds of control")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"))
    ap.add_argument("--no-hog", action="store_true", help="no busy loops beside the run")
    ap.add_argument("--json", type=Path, default=RESULT, help=f"write the result here too (default {RESULT})")
    ap.add_argument("--work-dir", type=Path, default=None, help="recording, logs (default: a temp dir)")
    args = ap.parse_args(argv)
    duration = args.duration if args.duration is not None else (10.0 if args.quick else 60.0)
    os.environ.setdefault("ROS_DOMAIN_ID", str(140 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mtm_record_loss_"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    with nullcontext() if args.no_hog else CpuHog() as hog:
        res = run(args.rate, duration, args.episode_s, work, args.backend, env)
    topics = loss_table(Path(res["file"]), Path(res["bridge_results"]))
    lost_rec = sum(r["missed_by_recorder"] for r in topics.values())
    lost_ind = sum(r.get("lost_independent", 0) for r in topics.values())
    gaps = sum(r["missed_by_recorder"] - r["missed_at_start"] for r in topics.values())
    start = {t: r["missed_at_start"] for t, r in topics.items() if r["missed_at_start"]}
    result = {"benchmark": "record_loss", "machine": machine(), "loadavg_at_start": [round(x, 2) for x in load],
              "cpu_hog_processes": 0 if hog is None else hog.n, "rate_hz": args.rate, "duration_s": duration,
              "ros_domain_id": env["ROS_DOMAIN_ID"], "rmw": env["RMW_IMPLEMENTATION"], **res,
              "state_stream_hz": stream_rate_hz(Path(res["file"])), "topics": topics,
              "lost_total": {"recorder_count": lost_rec, "recorder_gaps_after_first_message": gaps,
                             "recorder_at_start_up": start, "independent": lost_ind},
              "target": {"lost_per_topic": 0, "met": lost_rec == 0 and lost_ind == 0,
                         "met_except_diagnostics_at_start_up": gaps == 0 and lost_ind == 0 and not set(start) - {
                             "/diagnostics"}}}
    print(f"[record_loss] {args.rate:g} Hz, {duration:g} s, hog {result['cpu_hog_processes']}: "
          + ", ".join(f"{t} {r['received']}/{r.get('published', '?')} (gaps {r['missed_by_recorder']})"
                      for t, r in topics.items()), file=sys.stderr, flush=True)
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
