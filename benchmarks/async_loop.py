"""Async chunked control at 500 Hz / 1 kHz, side by side with a bare loop in the same run (JSON out).

    python benchmarks/async_loop.py --duration 20 --rates 500,1000 --json out.json

What runs (no ROS: this measures the loop and the model thread, not DDS; ``closed_loop.py`` is
the ROS benchmark): a control thread ticks at the control rate on absolute deadlines
(``time.sleep`` to the next deadline); each tick offers a fresh state, which ``ChunkLoop``
answers from the stream (clip, rate limit, stale-chunk check). The model thread
(``AsyncPlanner``) replans at ``--model-rate`` Hz with an untrained ``embedded`` MTM at T = 8,
chunk 4, on ONNX Runtime (batch 1; with ``--monitor`` the batch-of-two graph). The baseline is
the same control thread with nothing behind the tick but a copy of a constant command (the
"bare echo": what the thread and the clock cost alone), run just before, same duration.

Reported per setting: deadline misses (a tick that started more than one period after its
deadline, i.e. a command slot skipped), tick start jitter p50/p99/max (start minus deadline),
time in ``on_tick`` p50/p99, commands, stale-chunk faults, the achieved replanning rate, the plan
latency p50/p99, and the miss fraction and jitter p99 over the bare loop.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import add_wake_latency_option, emit_json, hold_wake_latency, machine  # noqa: E402


def make_onnx(work: Path, batch: int) -> Path:
    import torch

    from mtm_runtime.checkpoint import load_checkpoint, save_checkpoint
    from mtm_runtime.model import build_model
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.export.onnx_export import export_onnx
    from mtm_runtime.safety import ActionLimits
    from mtm_runtime.spec import TrajectorySpec

    torch.manual_seed(0)
    spec = TrajectorySpec.create(8, states=4, actions=2, returns=1)
    ck = save_checkpoint(work / "model", build_model(spec, "embedded").eval(), Normaliser.identity(spec),
                         ActionLimits.symmetric(1.0, 2), provenance={"note": "untrained, benchmarks/async_loop.py"})
    out = work / f"model_b{batch}.onnx"
    export_onnx(load_checkpoint(ck), out, batch_size=batch)
    return out


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def run_ticks(rate: float, duration: float, tick: Callable[[float], Any]) -> dict[str, Any]:
    """The control thread: ``tick(now)`` at absolute deadlines; start jitter and misses."""
    period = 1.0 / rate
    n = int(duration * rate)
    late = np.zeros(n)
    busy = np.zeros(n)
    t0 = time.monotonic() + 0.05
    misses = 0
    k = 0
    while k < n:
        deadline = t0 + k * period
        wait = deadline - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        start = time.monotonic()
        late[k] = start - deadline
        tick(start)
        busy[k] = time.monotonic() - start
        skipped = int(late[k] // period)  # slots that passed while this tick was late
        if skipped:
            misses += skipped
            late[k + 1:k + 1 + skipped] = np.nan
            k += skipped
        k += 1
    late, busy = late[~np.isnan(late)], busy[busy > 0]
    return {"ticks": n, "deadline_misses": misses, "miss_fraction": round(misses / n, 6),
            "jitter_ms": {"p50": round(pct(late, 50) * 1e3, 4), "p99": round(pct(late, 99) * 1e3, 4),
                          "max": round(float(late.max()) * 1e3, 4) if len(late) else None},
            "tick_ms": {"p50": round(pct(busy, 50) * 1e3, 4), "p99": round(pct(busy, 99) * 1e3, 4)}}


def bare(rate: float, duration: float) -> dict[str, Any]:
    const, out = np.zeros(2, np.float32), np.zeros(2, np.float32)
    return run_ticks(rate, duration, lambda now: np.copyto(out, const))


def chunked(rate: float, model_rate: float, duration: float, onnx: Path, monitor: bool) -> dict[str, Any]:
    from mtm_runtime.chunk_loop import ChunkConfig, ChunkLoop
    from mtm_runtime.loop_types import Command, Fault, LoopConfig
    from mtm_runtime.policy import Policy

    pol = Policy.load(onnx, backend="onnxruntime", batch_size=2 if monitor else 1)
    loop = ChunkLoop(pol, LoopConfig(rate_hz=rate, stale_timeout=0.5, max_rate=0.5),
                     ChunkConfig(mode="async", chunk=4, model_rate_hz=model_rate, monitor=monitor))
    counts = {"commands": 0, "stale_chunk": 0, "other_faults": 0}
    state = np.zeros(4, np.float32)
    k = [0]

    def tick(now: float) -> None:
        k[0] += 1
        state[0] = np.sin(0.01 * k[0])
        out = loop.on_state(state, 0, now) or loop.on_tick(now)  # trigger: state answers from the stream
        if isinstance(out, Command):
            counts["commands"] += 1
        elif isinstance(out, Fault):
            counts["stale_chunk" if out.kind == "stale_chunk" else "other_faults"] += 1

    loop.activate(time.monotonic())
    time.sleep(0.5)  # warm: the model thread's first plans
    ap = loop.async_planner
    assert ap is not None
    plans0 = ap.plans
    t = time.monotonic()
    try:
        res = run_ticks(rate, duration, tick)
    finally:
        loop.deactivate()
    wall = time.monotonic() - t
    lat = loop.planner.latency.summary()
    res.update(counts, replan_hz=round((ap.plans - plans0) / wall, 2), late_plans=ap.late,
               plan_ms={"p50": round(lat.p50 * 1e3, 4), "p99": round(lat.p99 * 1e3, 4)},
               committed=ap.committed_steps(), threads=threading.active_count())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per setting")
    ap.add_argument("--rates", default="500,1000")
    ap.add_argument("--model-rate", type=float, default=100.0)
    ap.add_argument("--monitor", action="store_true", help="also run the batch-of-two graph (monitor on)")
    ap.add_argument("--json", type=Path, default=None)
    add_wake_latency_option(ap)
    args = ap.parse_args(argv)
    wake, wake_json = hold_wake_latency(args.cpu_wake_latency_us)  # for every setting, bare loop included
    work = Path(tempfile.mkdtemp(prefix="mtm_async_loop_"))
    models = {False: make_onnx(work, 1)}
    if args.monitor:
        models[True] = make_onnx(work, 2)
    result: dict[str, Any] = {"benchmark": "async_loop", "machine": machine(), "duration_s_per_setting": args.duration,
                              "model": "embedded preset (untrained), T=8, states 4, actions 2, returns 1; chunk 4; "
                                       "onnxruntime", "model_rate_hz": args.model_rate, "cpu_wake_latency": wake_json, "settings": {}}
    for rate in [float(r) for r in args.rates.split(",") if r]:
        entry: dict[str, Any] = {"bare_loop": bare(rate, args.duration)}
        for mon, path in models.items():
            entry["async_monitor" if mon else "async"] = chunked(rate, args.model_rate, args.duration, path, mon)
        b = entry["bare_loop"]
        for key in [k for k in entry if k.startswith("async")]:
            a = entry[key]
            entry[f"{key}_over_bare"] = {
                "miss_fraction_added_pp": round(100 * (a["miss_fraction"] - b["miss_fraction"]), 4),
                "jitter_p99_ms": a["jitter_ms"]["p99"], "jitter_p99_added_ms": round(a["jitter_ms"]["p99"] - b["jitter_ms"]["p99"], 4),
                "targets": {"misses <= bare + 0.1 pp": a["miss_fraction"] <= b["miss_fraction"] + 0.001,
                            "jitter p99 <= 0.2 ms": a["jitter_ms"]["p99"] <= 0.2, "replan >= 100 Hz": a["replan_hz"] >= 99.0}}
        result["settings"][f"{rate:g}hz"] = entry
        print(f"[async_loop] {rate:g} Hz: bare misses {b['miss_fraction']:.4%} jitter p99 {b['jitter_ms']['p99']} ms; "
              f"async misses {entry['async']['miss_fraction']:.4%} jitter p99 {entry['async']['jitter_ms']['p99']} ms "
              f"replan {entry['async']['replan_hz']} Hz", file=sys.stderr, flush=True)
    wake.release()
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
