"""Closed-loop benchmark: policy node <-> MuJoCo sim bridge over Fast DDS on localhost (JSON out).

    python benchmarks/closed_loop.py                  # 60 s per setting (run on a quiet machine)
    python benchmarks/closed_loop.py --quick          # 5 s per setting
    python benchmarks/closed_loop.py --json out.json --rates 500,1000 --duration 60

One run measures, at each rate:
(a) the baseline: two minimal rclpy processes, a stamped JointState out and the same stamp back,
    once with the SingleThreadedExecutor and once with the EventsExecutor (spin_once loops);
(b) the policy node (``embedded`` preset, onnxruntime if ``mtm_runtime.backends.ort_backend``
    works here, else torch with 1 thread; the JSON says which) with ``trigger: state``,
    ``input_type: joint_state`` and stamped JointState commands (``command_type: joint_state``),
    against the sim bridge in realtime mode. Both nodes are started as ``mtm launch`` starts them
    (``launch_description.describe`` + ``command_line``: one process each; the bridge's module is
    swapped for ``benchmarks.loop_probe``, a subclass that adds timing probes).

Episodes last ``--episode-s`` seconds of control (default 2 s: Reacher's own 50 steps would reset
the world every 0.1 s at 500 Hz, and every reset is an env reset plus a service round trip to the
policy node).

Per setting: achieved rate (env steps/s at the bridge; episode resets pause stepping, reported
separately), deadline misses (a state whose command had not arrived by the next tick), latency
from just before the state's publication to the command's arrival at the bridge
(p50/p99/p99.9/max), the bridge's own tick callback time (env.step + 4 publishes: shows whether
the simulator itself can hold the rate), CPU use per process, and what the policy adds over
the echo baseline with the same executor.

The model is an untrained ``embedded`` MTM whose states are the Reacher joint positions and
velocities (4 values, so the policy can read ``joint_states`` and echo their stamps) plus the
goal (``goal`` mode, the bridge publishes the target); compute per step is that of the bundled
model (the state width only changes the first linear layer).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import add_wake_latency_option, emit_json, hold_wake_latency, machine  # noqa: E402

TARGETS = {500: {"achieved_rate_hz": 499.0, "miss_fraction": 0.001, "latency_p99_ms": 1.0, "beyond_act_p50_ms": 0.1},
           1000: {"miss_fraction": 0.005, "latency_p99_ms": 1.0}}


def make_model(directory: Path, horizon: int = 4) -> Path:
    """Untrained ``embedded`` MTM: states 4 (joint0/1 position, velocity), actions 2, returns 1, goals 2
    (the bridge's Reacher target, so the node runs in ``goal`` mode like the bundled model), T=4."""
    import torch

    from mtm_runtime.checkpoint import save_checkpoint
    from mtm_runtime.model import build_model
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.safety import ActionLimits
    from mtm_runtime.spec import TrajectorySpec

    torch.manual_seed(0)
    spec = TrajectorySpec.create(horizon, states=4, actions=2, returns=1, goals=2)
    model = build_model(spec, "embedded").eval()
    return save_checkpoint(directory, model, Normaliser.identity(spec), ActionLimits.symmetric(1.0, 2),
                           provenance={"note": "untrained embedded preset for benchmarks/closed_loop.py"})


def pick_backend(model: Path, wanted: str) -> tuple[str, str]:
    """(backend, why): onnxruntime when it loads and runs here, else torch with 1 thread."""
    import numpy as np

    from mtm_runtime.policy import Policy

    if wanted in ("auto", "onnxruntime"):
        try:
            p = Policy.load(model, backend="onnxruntime", mode="goal")
            p.set_goal(np.zeros(2, np.float32))
            p.act(np.zeros(4, np.float32))
            return "onnxruntime", "ort_backend works here"
        except Exception as e:  # noqa: BLE001 - any failure means "use torch", and say why
            if wanted == "onnxruntime":
                raise
            return "torch", f"onnxruntime failed ({type(e).__name__}: {e}); torch with 1 thread"
    return "torch", "asked for torch (1 thread)"


def _cpu(pids: dict[str, int]) -> dict[str, tuple[float, int] | None]:
    """name -> (CPU seconds (user + system), context switches (voluntary + involuntary)) so far."""
    import psutil

    out: dict[str, tuple[float, int] | None] = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            t, c = proc.cpu_times(), proc.num_ctx_switches()
            out[name] = (t.user + t.system, c.voluntary + c.involuntary)
        except psutil.Error:
            out[name] = None
    return out


def _cpu_in_window(samples: list[tuple[float, dict[str, Any]]], window: list[float],
                   ticks_per_s: float) -> dict[str, Any]:
    """CPU cores used by each sampled process between the wall times ``window`` (nearest samples
    inside), and its context switches per control tick (every thread of the process; a wake-up
    per tick shows as about 1: far less noisy on a shared VM than CPU time)."""
    inside = [s for s in samples if window[0] <= s[0] <= window[1]]
    if len(inside) < 2:
        return {}
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    both = [n for n in c0 if c0.get(n) is not None and c1.get(n) is not None]
    out: dict[str, Any] = {n: round((c1[n][0] - c0[n][0]) / (t1 - t0), 3) for n in both}
    if ticks_per_s > 0:
        out["context_switches_per_tick"] = {n: round((c1[n][1] - c0[n][1]) / (t1 - t0) / ticks_per_s, 2)
                                            for n in both}
    return out


def _run(nodes: list, log_dir: Path, env: dict[str, str], overrides: dict[str, str], result_file: Path,
         limit_s: float, finisher: str, monitor: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start ``nodes``, wait for ``finisher`` to exit (it writes ``result_file``), stop the rest.
    CPU use of the other processes is sampled every 0.1 s and read over the measured window."""
    from mtm_runtime.ros_nodes.node_processes import NodeFailure, NodeProcesses

    procs = NodeProcesses(nodes, log_dir, env=env, module_override=overrides)
    samples: list[tuple[float, dict[str, Any]]] = []
    diag: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        procs.start()
        while time.monotonic() - t0 < limit_s:
            time.sleep(0.1)
            samples.append((time.time(), _cpu(procs.pids())))
            if monitor is not None:
                with monitor.lock:
                    diag = dict(monitor.policy_diag) or diag
            if finisher in procs.exited():
                break
            procs.check()
        else:
            raise NodeFailure(f"{finisher} did not finish within {limit_s:.0f} s; logs in {log_dir}\n"
                              + procs.tail(finisher))
        procs.check(allowed_to_exit=(finisher,))
    finally:
        procs.stop()
    if not result_file.exists():
        raise NodeFailure(f"{finisher} wrote no results ({result_file}); logs in {log_dir}")
    res = json.loads(result_file.read_text())
    cpu = _cpu_in_window(samples, res.get("wall_window", [0, 0]), float(res.get("tick_rate_hz") or 0.0))
    switches = cpu.pop("context_switches_per_tick", {})
    cpu.pop(finisher, None)
    cpu[finisher] = res.get("process_cpu_cores")
    extra: dict[str, Any] = {"cpu_cores_used": cpu, "context_switches_per_tick": switches}
    if diag:
        extra["policy_node_diagnostics"] = {k: v for k, v in diag.items() if not k.startswith("_")}
    return res, extra


def echo_baseline(rate: float, executor: str, duration: float, work: Path, env: dict[str, str]) -> dict[str, Any]:
    from mtm_runtime.ros_nodes.launch_description import NodeSpec

    out = work / f"echo_{executor}_{int(rate)}.json"
    e = dict(env, MTM_EXECUTOR=executor, MTM_BENCH_RATE=str(rate), MTM_BENCH_DURATION=str(duration),
             MTM_BENCH_OUT=str(out))
    nodes = [NodeSpec("mtm_echo_server", "", "benchmarks.loop_probe"),
             NodeSpec("mtm_echo_client", "", "benchmarks.loop_probe")]
    env_server = dict(e, MTM_BENCH_ROLE="echo-server")
    # one env per process: run the server with its role, the client with its own
    from mtm_runtime.ros_nodes.node_processes import NodeProcesses

    server = NodeProcesses(nodes[:1], work / "logs" / f"echo_{executor}_{int(rate)}", env=env_server)
    server.start()
    try:
        res, extra = _run(nodes[1:], work / "logs" / f"echo_{executor}_{int(rate)}", dict(e, MTM_BENCH_ROLE="echo-client"),
                          {}, out, duration + 40, "mtm_echo_client")
    finally:
        server.stop()
    res.update(extra)
    server_out = Path(str(out) + ".server.json")   # the server's callback time (entry to after its publish)
    if server_out.exists():
        res["server_callback_ms"] = json.loads(server_out.read_text())["callback_ms"]
    return res


def policy_loop(rate: float, model: Path, backend: str, duration: float, work: Path, env: dict[str, str],
                episode_reset: bool, episode_s: float, chunked: dict[str, Any] | None = None,
                wake_latency_us: int = -1) -> dict[str, Any]:
    from mtm_runtime.ros_nodes.launch_description import describe
    from mtm_runtime.ros_nodes.closed_loop import write_params

    out = work / f"policy_{int(rate)}.json"
    policy = {"input_type": "joint_state", "joint_names": ["joint0", "joint1"], "state_fields": ["position", "velocity"],
              "command_type": "joint_state", "command_interface": "effort", "trigger": "state", "mask_mode": "goal",
              "warmup_iters": 200, "stale_timeout": 0.5, "inference_threads": 1,
              "cpu_wake_latency_us": wake_latency_us, **(chunked or {})}
    # the policy reads joint_states: the bridge skips the redundant observation topic (one
    # publish less between the state and the moment the bridge can take the command)
    bridge = {"command_type": "joint_state", "reset_timeout_s": 30.0, "publish_observation": False,
              "max_episode_steps": max(1, round(rate * episode_s)) if episode_s > 0 else 0}
    if not episode_reset:
        bridge["policy_reset_service"] = ""
    params = write_params(work / f"params_{int(rate)}.yaml", policy, bridge)
    nodes = describe(model=str(model), backend=backend, rate=f"{rate:g}", params_file=str(params), target="sim",
                     task="reacher", sim_mode="realtime")
    e = dict(env, MTM_BENCH_ROLE="bridge", MTM_BENCH_DURATION=str(duration), MTM_BENCH_OUT=str(out),
             MTM_BENCH_STREAM="1" if chunked and chunked.get("loop_mode") == "async" else "0")
    import threading

    import rclpy

    from mtm_runtime.ros_nodes.loop_monitor import LoopMonitor
    from mtm_runtime.ros_nodes.executors import spin_loop

    # the policy node's own /diagnostics (act and in-node latency), listened to from here
    ctx = rclpy.Context()
    rclpy.init(context=ctx)  # same ROS_DOMAIN_ID: main() put it into os.environ
    monitor = LoopMonitor({}, None, context=ctx, name="mtm_bench_monitor")
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(monitor)
    stop = threading.Event()
    th = threading.Thread(target=spin_loop, args=(ex, ctx, lambda: not stop.is_set(), 0.1), daemon=True)
    th.start()
    try:
        res, extra = _run(nodes, work / "logs" / f"policy_{int(rate)}", e, {"mtm_sim_bridge": "benchmarks.loop_probe"},
                          out, duration + 60, "mtm_sim_bridge", monitor)
    finally:
        stop.set()
        th.join(timeout=5)
        ex.shutdown(timeout_sec=1.0)
        monitor.destroy_node()
        rclpy.shutdown(context=ctx)
    res.update(extra)
    return res


def verdict(rate: int, pol: dict[str, Any]) -> dict[str, Any]:
    t = TARGETS.get(rate, {})
    diag = pol.get("policy_node_diagnostics", {})
    got = {"achieved_rate_hz": pol["achieved_rate_hz"], "miss_fraction": pol["miss_fraction"],
           "latency_p99_ms": pol["latency_ms"]["p99"],
           # the node's own time per step (e2e minus that step's act; the node's /diagnostics)
           "beyond_act_p50_ms": float(diag.get("beyond_act_p50_ms", "nan"))}
    out: dict[str, Any] = {}
    for k, limit in t.items():
        ok = got[k] >= limit if k == "achieved_rate_hz" else got[k] <= limit
        out[k] = {"target": limit, "measured": got[k], "met": bool(ok)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds measured per setting (default 60, or 5 with --quick)")
    ap.add_argument("--quick", action="store_true", help="5 s per setting (unless --duration is given)")
    ap.add_argument("--rates", default="500,1000", help="comma-separated control rates in Hz")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"))
    ap.add_argument("--no-echo", action="store_true", help="skip the echo baseline")
    ap.add_argument("--no-episode-reset", action="store_true",
                    help="the bridge does not call the policy's reset service between episodes")
    ap.add_argument("--episode-s", type=float, default=2.0,
                    help="episode length in seconds of control (Reacher's own 50 steps are 0.1 s at 500 Hz, "
                         "far shorter than any robot episode); 0 = the task's own length")
    ap.add_argument("--loop-mode", default="sync", choices=("sync", "async"),
                    help="async: the node's model thread replans at --model-rate, commands stream at the rate "
                         "(T = 8 model, chunk --chunk); a period without a command is the miss")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--model-rate", type=float, default=100.0)
    add_wake_latency_option(ap)  # system-wide while held: the echo baseline runs under it too
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--work-dir", type=Path, default=None, help="logs and intermediate files (default: a temp dir)")
    args = ap.parse_args(argv)
    duration = args.duration if args.duration is not None else (5.0 if args.quick else 60.0)
    rates = [int(float(r)) for r in args.rates.split(",") if r]
    os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env = dict(os.environ)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mtm_closed_loop_"))
    work.mkdir(parents=True, exist_ok=True)
    chunked = ({"loop_mode": "async", "chunk": args.chunk, "model_rate_hz": args.model_rate}
               if args.loop_mode == "async" else None)
    model = make_model(work / "model", horizon=8 if chunked else 4)
    backend, why = pick_backend(model, args.backend)
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    result: dict[str, Any] = {
        "benchmark": "closed_loop", "machine": machine(), "loadavg_at_start": [round(x, 2) for x in load],
        "duration_s_per_setting": duration, "ros_domain_id": env["ROS_DOMAIN_ID"],
        "rmw": env["RMW_IMPLEMENTATION"], "policy": {"model": "embedded preset (untrained), T=4, states 4, actions 2, goals 2; mode goal",
                                                     "backend": backend, "backend_choice": why,
                                                     "trigger": "state", "command_type": "joint_state",
                                                     "episode_reset_service": not args.no_episode_reset,
                                                     "episode_s": args.episode_s, "chunked": chunked},
        "work_dir": str(work), "settings": {}}
    # system-wide while held: the echo baseline runs under the same idle states as the policy
    wake, result["cpu_wake_latency"] = hold_wake_latency(args.cpu_wake_latency_us)
    for rate in rates:
        entry: dict[str, Any] = {}
        if not args.no_echo:
            entry["echo_baseline"] = {ex: echo_baseline(rate, ex, duration, work, env) for ex in ("single", "events")}
        pol = policy_loop(rate, model, backend, duration, work, env, not args.no_episode_reset, args.episode_s, chunked,
                          args.cpu_wake_latency_us)
        entry["policy_loop"] = pol
        ex = pol.get("executor", "events")
        ex_key = "events" if ex == "events" else "single"
        base = entry.get("echo_baseline", {}).get(ex_key)
        if base:
            bl, pl = base["latency_ms"], pol["latency_ms"]
            entry["policy_over_echo"] = {
                "executor_compared": ex_key,
                "latency_p50_added_ms": round(pl["p50"] - bl["p50"], 4),
                "latency_p99_added_ms": round(pl["p99"] - bl["p99"], 4),
                "latency_p50_ratio": round(pl["p50"] / bl["p50"], 2) if bl["p50"] else None,
                "latency_p99_ratio": round(pl["p99"] / bl["p99"], 2) if bl["p99"] else None,
                "miss_fraction_added": round(pol["miss_fraction"] - base["miss_fraction"], 6)}
            diag = pol.get("policy_node_diagnostics", {})
            if "server_callback_ms" in base and "beyond_act_p50_ms" in diag:
                # the policy node's time beyond act() minus what the echo server's callback (take a
                # JointState, publish one) costs in the same run: what the node adds over a bare node
                entry["policy_over_echo"]["beyond_act_over_echo_callback_p50_ms"] = round(
                    float(diag["beyond_act_p50_ms"]) - base["server_callback_ms"]["p50"], 4)
        entry["targets"] = verdict(rate, pol)
        result["settings"][f"{rate}hz"] = entry
        print(f"[closed_loop] {rate} Hz: achieved {pol['achieved_rate_hz']} Hz, misses {pol['miss_fraction']:.4%} "
              f"({pol.get('misses_after_reset', '?')} of {pol['deadline_misses']} within 10 periods of an episode start; "
              f"echo {base['miss_fraction'] if base else float('nan'):.4%}), "
              f"latency p50 {pol['latency_ms']['p50']} ms p99 {pol['latency_ms']['p99']} ms "
              f"max {pol['latency_ms']['max']} ms; bridge tick p99 {pol['tick_callback_ms']['p99']} ms",
              file=sys.stderr, flush=True)
    wake.release()
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
