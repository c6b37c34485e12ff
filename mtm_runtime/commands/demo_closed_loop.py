"""The closed-loop step of ``mtm demo``: the Reacher model against the MuJoCo bridge over ROS 2.

Both nodes come from the shared launch description (``mtm_runtime.ros_nodes.launch_description``), each
in its own process, exactly as ``mtm launch --target sim`` starts them; this process only
watches (and, with ``record``, records MCAP). Model: the bundled ``models/reacher_embedded``
when present, else a checkpoint trained for a few seconds here (``mtm_runtime.training.quick``) and cached
under the demo's output directory.

Printed: episodes with normalised scores, the achieved rate (env steps per second between the
first and last episode end; with one episode, NaN) and the policy node's latency (state arrival
-> command publication, and act()) from its /diagnostics.
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

BUNDLED_MODEL = Path(__file__).resolve().parents[2] / "models" / "reacher_embedded"


def pick_model(out: Path, model: str = "") -> tuple[str, str]:
    """(checkpoint path, where it came from)."""
    if model:
        return model, "given"
    if (BUNDLED_MODEL / "mtm.json").is_file():
        return str(BUNDLED_MODEL), "bundled"
    cached = out / "quick_reacher"
    if (cached / "mtm.json").is_file():
        return str(cached), "quickly trained (cached; no bundled model yet)"
    from mtm_runtime.training.quick import quick_checkpoint

    t0 = time.monotonic()
    print(f"  no bundled model at {BUNDLED_MODEL}: training a quick one ({cached}) ...", flush=True)
    path = quick_checkpoint(cached)
    print(f"  trained in {time.monotonic() - t0:.0f} s", flush=True)
    return str(path), "quickly trained (no bundled model yet)"


def default_backend() -> str:
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"


def run(out: Path, episodes: int = 4, record: bool = False, model: str = "", backend: str = "",
        startup_timeout_s: float = 45.0) -> dict[str, Any]:
    """Run ``episodes`` realtime Reacher episodes; returns the summary. Raises NodeFailure on a node failure."""
    from mtm_runtime.ros_nodes.closed_loop import run_closed_loop

    path, origin = pick_model(out, model)
    backend = backend or default_backend()
    print(f"  model: {path} ({origin}), backend {backend}, mode goal, realtime 50 Hz, {episodes} episodes", flush=True)
    res = run_closed_loop(path, log_dir=out / "closed_loop_logs", backend=backend, task="reacher", sim_mode="realtime",
                          episodes=episodes, record=(out / "closed_loop.mcap") if record else None,
                          policy_params={"mask_mode": "goal", "stale_timeout": 1.0, "warmup_iters": 20},
                          bridge_params={"seed": 0, "reset_timeout_s": 30.0},
                          startup_timeout_s=startup_timeout_s, progress=True)
    d = res.policy_diagnostics

    def num(key: str) -> float:
        try:
            return float(d.get(key, "nan"))
        except ValueError:
            return math.nan
    summary: dict[str, Any] = {"model": path, "model_origin": origin, "backend": d.get("backend", backend),
               "executor": d.get("executor", "?"), "episodes": res.episodes,
               "mean_normalised_score": res.mean_score(), "success_rate": res.success_rate(), "rate_hz": num("rate_hz"),
               "step_rate_hz": res.step_rate_hz(),
               "e2e_ms": {k: num(f"e2e_{k}_ms") for k in ("p50", "p99", "max")},
               "act_ms": {k: num(f"act_{k}_ms") for k in ("p50", "p99", "max")},
               "faults": d.get("faults", "?"), "overruns": d.get("overruns", "?"),
               "stale_ticks": d.get("stale_ticks", "?"), "last_fault_reason": d.get("last_fault_reason", ""),
               "faults_after_bridge_end": res.faults_after_bridge_end(),
               "wall_s": round(res.wall_s, 1),
               "recording": res.record_path, "recorded_messages": res.recorded, "logs": res.log_dir}
    e2e, act = summary["e2e_ms"], summary["act_ms"]
    print(f"  achieved rate {summary['step_rate_hz']:.1f} Hz (env steps/s between episode ends, resets "
          f"included; policy node's meter {summary['rate_hz']:.1f} Hz, {summary['executor']} executor, "
          f"backend {summary['backend']})", flush=True)
    print(f"  latency state arrival -> command published: p50 {e2e['p50']:.3f} ms, p99 {e2e['p99']:.3f} ms, "
          f"max {e2e['max']:.3f} ms; act(): p50 {act['p50']:.3f} ms, p99 {act['p99']:.3f} ms", flush=True)
    print(f"  normalised score {summary['mean_normalised_score']:.1f} (mean of {len(res.episodes)} episodes; "
          f"0 = random, 100 = scripted expert); faults {summary['faults']}"
          + (f" (overruns {summary['overruns']}, stale ticks {summary['stale_ticks']}; last: "
             f"{summary['last_fault_reason']})" if summary["faults"] not in ("0", "?") else ""), flush=True)
    if summary["faults_after_bridge_end"]:
        print(f"  of these, {summary['faults_after_bridge_end']} came after the bridge finished its episodes: the "
              f"stale-input watchdog answering the silence with the safe action, as it should", flush=True)
    if math.isfinite(summary["success_rate"]):  # Reacher: doing nothing already scores ~90, so show this too
        print(f"  success rate {summary['success_rate']:.0%} (fingertip within 2 cm of the target at the "
              f"episode's end; doing nothing: 0%)", flush=True)
    if record:
        print(f"  recorded {sum(res.recorded.values())} messages to {res.record_path} "
              f"(mtm import-mcap {res.record_path} --task reacher -o data.hdf5)", flush=True)
    return summary
