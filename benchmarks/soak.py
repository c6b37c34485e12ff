"""Soak: policy node + MuJoCo sim bridge in closed loop (realtime) for a long time.

    python benchmarks/soak.py                     # 30 minutes at 500 Hz
    python benchmarks/soak.py --duration 60       # a short one
    python benchmarks/soak.py --model models/reacher_embedded --out soak.json --plot soak.png

Every ``--sample`` seconds (10): RSS of each process (/proc), the node's /diagnostics (achieved
rate, act / end-to-end latency p50/p99/max, overruns, faults, stale ticks). Verdict: RSS growth
after warm-up (first 20% of samples) <= 2% per process, p99 latency drift (last third vs first
third after warm-up) < 10%. Prints JSON (also written to ``--out``) and a PNG plot.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _median(v: list[float]) -> float:
    s = sorted(x for x in v if x == x)
    return s[len(s) // 2] if s else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 min)")
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--model", default="", help="checkpoint dir (default: a tiny untrained reacher model)")
    ap.add_argument("--out", default="soak.json")
    ap.add_argument("--plot", default="soak.png")
    a = ap.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    tmp = Path(tempfile.mkdtemp(prefix="mtm_soak_"))
    model = a.model
    if not model:
        from ros_harness import make_tiny_checkpoint
        model = str(make_tiny_checkpoint(tmp / "ck", "reacher"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = dict(cwd=REPO, env=env, start_new_session=True, stderr=subprocess.STDOUT)
    procs = {
        "policy_node": subprocess.Popen([sys.executable, "-m", "mtm_runtime.ros_nodes.policy_node", "--ros-args",
                                         "-p", f"model_path:={model}", "-p", f"control_rate_hz:={a.rate}",
                                         "-p", "autostart:=true", "-p", "stale_timeout:=0.1",
                                         "-p", "fault_action:=zeros"], stdout=(tmp / "node.log").open("w"), **common),
        "sim_bridge": subprocess.Popen([sys.executable, "-m", "mtm_runtime.ros_nodes.sim_bridge", "--ros-args", "-p", "mode:=realtime",
                                        "-p", f"control_rate_hz:={a.rate}", "-p", "publish_joint_states:=false"],
                                       stdout=(tmp / "sim.log").open("w"), **common),
    }
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from mtm_runtime.ros_nodes.conversions import diagnostic_values

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("soak_probe", context=ctx)
    last: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if "policy loop" in st.name:
                last.clear()
                last.update(diagnostic_values(st))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    next_sample = t0 + a.sample
    try:
        while time.monotonic() - t0 < a.duration:
            ex.spin_once(timeout_sec=0.1)
            if any(p.poll() is not None for p in procs.values()):
                break
            if time.monotonic() >= next_sample:
                next_sample += a.sample
                f = lambda k: float(last.get(k, "nan"))  # noqa: E731
                samples.append({"t_s": round(time.monotonic() - t0, 1),
                                **{f"rss_mb_{n}": rss_mb(p.pid) for n, p in procs.items()},
                                "rate_hz": f("rate_hz"), "act_p50_ms": f("act_p50_ms"), "act_p99_ms": f("act_p99_ms"),
                                "e2e_p50_ms": f("e2e_p50_ms"), "e2e_p99_ms": f("e2e_p99_ms"),
                                "e2e_max_ms": f("e2e_max_ms"), "ticks": f("ticks"), "overruns": f("overruns"),
                                "faults": f("faults"), "stale_ticks": f("stale_ticks"),
                                "rejected_inputs": f("rejected_inputs"), "fault": last.get("fault", "?")})
                print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
    finally:
        died = {n: p.poll() for n, p in procs.items() if p.poll() is not None}
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    warm = max(1, len(samples) // 5)
    steady = samples[warm:]
    out: dict[str, Any] = {"duration_s": a.duration, "rate_hz_target": a.rate, "samples": samples,
                           "processes_died": died, "model": model}
    if len(steady) >= 3:
        third = max(1, len(steady) // 3)
        out["rss_growth_pct"] = {n: 100.0 * (steady[-1][f"rss_mb_{n}"] / steady[0][f"rss_mb_{n}"] - 1.0) for n in procs}
        p99a, p99b = _median([s["e2e_p99_ms"] for s in steady[:third]]), _median([s["e2e_p99_ms"] for s in steady[-third:]])
        out["e2e_p99_drift_pct"] = 100.0 * (p99b / p99a - 1.0) if p99a == p99a and p99a > 0 else None
        out["achieved_rate_hz_median"] = _median([s["rate_hz"] for s in steady])
        ticks = samples[-1]["ticks"]
        out["deadline_misses"] = {"overruns": samples[-1]["overruns"], "stale_ticks": samples[-1]["stale_ticks"],
                                  "ticks": ticks}
        out["faults_seen"] = samples[-1]["faults"]
        out["pass"] = {"rss_growth_le_2pct": all(v <= 2.0 for v in out["rss_growth_pct"].values()),
                       "p99_drift_lt_10pct": out["e2e_p99_drift_pct"] is not None and abs(out["e2e_p99_drift_pct"]) < 10.0}
    Path(a.out).write_text(json.dumps(out, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        t = [s["t_s"] for s in samples]
        fig, ax = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
        for n in procs:
            ax[0].plot(t, [s[f"rss_mb_{n}"] for s in samples], label=n)
        ax[0].set_ylabel("RSS (MB)")
        ax[0].legend()
        for k in ("act_p99_ms", "e2e_p50_ms", "e2e_p99_ms"):
            ax[1].plot(t, [s[k] for s in samples], label=k)
        ax[1].set_ylabel("latency (ms)")
        ax[1].legend()
        ax[2].plot(t, [s["rate_hz"] for s in samples])
        ax[2].set_ylabel("achieved rate (Hz)")
        ax[2].set_xlabel("time (s)")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=80)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=1))
    return 0 if not died else 1


if __name__ == "__main__":
    sys.exit(main())
