"""Latency profiling of ``Policy.act`` per backend, paced at a control rate or flat out.

    res = profile_policy(policy, steps=2000, rate_hz=500)      # one backend
    report = profile_backends("preset:embedded", ["torch", "onnxruntime"], mode="bc", steps=2000)

Per step it records the wall time of ``act()`` and of the backend alone
(``policy.last_backend_s``). Paced loops wait for each deadline ``t0 + i / rate`` by sleeping
until ``SPIN_MARGIN_S`` before it and spinning the rest; ``jitter`` is how late ``act`` started
after its deadline, and a *deadline miss* is a step whose ``act`` finished after the next
deadline. Flat out (``rate_hz=None``) runs back to back (no jitter, no misses).
Also reported: CPU utilisation (process CPU time / wall time; 1.0 = one core busy) and RSS.
All durations in the JSON are milliseconds.
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtm_runtime.chunking import ChunkPlanner

SCHEMA = "mtm_runtime.profile/1"
SPIN_MARGIN_S = 0.0005
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
#: the spec of ``preset:NAME`` models (the paper's D4RL hopper-like setting)
PRESET_WIDTHS = {"states": 11, "actions": 3, "returns": 1}


def latency_stats_ms(samples_s: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean (ms) of samples in seconds (nearest-rank-free: numpy linear)."""
    s = np.asarray(samples_s, dtype=np.float64) * 1e3
    if s.size == 0:
        return {k: math.nan for k in (*PERCENTILES, "max", "mean")}
    out = {k: float(np.percentile(s, q)) for k, q in PERCENTILES.items()}
    out["max"] = float(s.max())
    out["mean"] = float(s.mean())
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS, python/numpy/torch/onnxruntime versions (what the numbers ran on)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
                            "os": platform.platform(), "python": platform.python_version(),
                            "numpy": np.__version__}
    for mod in ("torch", "onnxruntime", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken optional dependency
            info[mod] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    return info


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, KiB on Linux


def prepare_mode(policy: Any, mode: str) -> None:
    """Switch ``policy`` to ``mode`` with the conditioning it needs (target return 1.0, zero goal)."""
    kw: dict[str, Any] = {}
    if mode == "rcbc":
        kw["target_return"] = 1.0
    if mode == "goal" and "goals" in policy.spec:
        kw["goal"] = np.zeros(policy.spec.width("goals"), np.float32)
    policy.set_mode(mode, **kw)


def profile_planner(policy: Any, chunk: int, monitor: bool, steps: int = 1000, warmup: int = 50,
                    seed: int = 0) -> dict[str, Any]:
    """``steps`` plans of a ``ChunkPlanner`` (chunk ``chunk``; ``monitor``: the batch-of-two pass
    with the forward-dynamics row) on random states, each plan's first action fed back as the
    executed one; plan latency in ms (p50/p99/max)."""
    planner = ChunkPlanner(policy, chunk, monitor)
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((steps + warmup, policy.spec.width("states"))).astype(np.float32)
    executed = None
    for i in range(warmup):
        executed = planner.plan(states[i], executed=executed).actions[0]
    planner.latency.clear()
    times = np.empty(steps)
    for i in range(steps):
        t0 = time.perf_counter()
        executed = planner.plan(states[warmup + i], executed=executed).actions[0]
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {"chunk": chunk, "monitor": monitor, "batch": 2 if monitor else 1, "steps": steps,
            "plan_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}}


def profile_policy(policy: Any, steps: int, rate_hz: float | None = None, warmup: int = 50,
                   seed: int = 0, episode_len: int = 0) -> dict[str, Any]:
    """Run ``steps`` act() calls on random states; returns stats (ms) and the raw series (s).

    ``episode_len`` > 0 resets the policy every that many steps (exercises short history).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rate_hz is not None and rate_hz <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    rng = np.random.default_rng(seed)
    sw = policy.spec.width("states")
    states = rng.standard_normal((steps + warmup, sw)).astype(np.float32)
    reward = 0.0 if policy.mode == "rcbc" else None
    for i in range(warmup):
        policy.act(states[i], reward)
    policy.reset()
    act = np.empty(steps)
    backend = np.empty(steps)
    late = np.empty(steps) if rate_hz else None
    misses = 0
    period = 1.0 / rate_hz if rate_hz else 0.0
    clock = time.perf_counter
    cpu0, wall0 = time.process_time(), clock()
    t0 = wall0 + period
    for i in range(steps):
        if episode_len and i and i % episode_len == 0:
            policy.reset()
        if rate_hz:
            deadline = t0 + i * period
            pause = deadline - clock() - SPIN_MARGIN_S
            if pause > 0:
                time.sleep(pause)
            while clock() < deadline:
                pass
        start = clock()
        policy.act(states[warmup + i], reward)
        end = clock()
        act[i] = end - start
        backend[i] = policy.last_backend_s
        if late is not None:
            late[i] = start - deadline
            if end > deadline + period:
                misses += 1
    wall = clock() - wall0
    cpu = time.process_time() - cpu0
    return {
        "backend": policy.backend.name, "describe": _jsonable(policy.backend.describe()),
        "mode": policy.mode, "steps": steps, "rate_hz": rate_hz,
        "act_ms": latency_stats_ms(act), "backend_ms": latency_stats_ms(backend),
        "jitter_ms": latency_stats_ms(late) if late is not None else None,
        "deadline_misses": misses if rate_hz else None,
        "miss_rate": misses / steps if rate_hz else None,
        "achieved_hz": steps / wall, "cpu_utilisation": cpu / wall, "rss_mb": _rss_mb(), "wall_s": wall,
        "series_s": {"act": act, "backend": backend},
    }


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


def parse_backend_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """``onnxruntime+quantize=int8+intra_op_threads=2`` -> ("onnxruntime", {...}); values
    parsed as JSON where they parse (ints, floats, true/false), else kept as strings."""
    name, *opts = entry.strip().split("+")
    options: dict[str, Any] = {}
    for o in opts:
        if "=" not in o:
            raise ValueError(f"backend option {o!r} in {entry!r} must be KEY=VALUE")
        k, v = o.split("=", 1)
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    return name, options


def resolve_model(model: str, workdir: str | os.PathLike | None = None) -> Path:
    """A checkpoint dir / .onnx / .engine path, or ``preset:NAME``: a random-weight checkpoint
    of that preset (spec T=4, states 11, actions 3, returns 1) written under ``workdir``."""
    if not model.startswith("preset:"):
        return Path(model)
    from mtm_runtime.checkpoint import save_checkpoint
    from mtm_runtime.model import PRESET_HORIZON, build_model
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.safety import ActionLimits
    from mtm_runtime.spec import TrajectorySpec

    preset = model.split(":", 1)[1]
    spec = TrajectorySpec.create(PRESET_HORIZON.get(preset, 4), **PRESET_WIDTHS)
    net = build_model(spec, preset)
    out = Path(workdir or tempfile.mkdtemp(prefix="mtm_profile_")) / f"preset_{preset}"
    return save_checkpoint(out, net, Normaliser.identity(spec), ActionLimits.symmetric(1.0, spec.width("actions")),
                           provenance={"preset": preset, "weights": "random init"})


def profile_backends(model: str, backends: Sequence[str], mode: str = "bc", steps: int = 1000,
                     rate_hz: float | None = None, warmup: int = 50) -> dict[str, Any]:
    """Profile each backend entry (see ``parse_backend_entry``) in turn on the same model;
    returns the report dict (``SCHEMA``) with ``ratio_p50``/``ratio_p99`` to the first entry."""
    from mtm_runtime.policy import Policy

    with tempfile.TemporaryDirectory(prefix="mtm_profile_") as tmp:
        path = resolve_model(model, tmp)
        results = []
        for entry in backends:
            name, options = parse_backend_entry(entry)
            t = time.perf_counter()
            policy = Policy.load(path, backend=name, **options)
            load_s = time.perf_counter() - t
            prepare_mode(policy, mode)
            r = profile_policy(policy, steps, rate_hz, warmup)
            r["label"], r["options"], r["load_s"] = entry or r["backend"], options, load_s
            results.append(r)
            policy.backend.close()
    first = results[0]
    for r in results:
        r["ratio_p50"] = r["act_ms"]["p50"] / first["act_ms"]["p50"]
        r["ratio_p99"] = r["act_ms"]["p99"] / first["act_ms"]["p99"]
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
            "model": model, "mode": mode, "steps": steps, "rate_hz": rate_hz, "results": results}


def to_json(report: dict[str, Any], include_series: bool = False) -> str:
    """The report as JSON; raw series (seconds) only if ``include_series``."""
    def strip(r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        series = r.pop("series_s")
        if include_series:
            r["series_s"] = {k: v.tolist() for k, v in series.items()}
        return r

    return json.dumps({**report, "results": [strip(r) for r in report["results"]]}, indent=2, default=str)


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table: one row per backend, act and backend percentiles, ratios to the first."""
    head = (f"{'backend':<34} {'act p50':>8} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7} "
            f"{'bknd p50':>8} {'p99':>7} {'misses':>6} {'cpu':>5} {'rss MB':>7} {'x p50':>6} {'x p99':>6}")
    rows = [f"mode {report['mode']}, {report['steps']} steps, "
            f"{'flat out' if not report['rate_hz'] else str(report['rate_hz']) + ' Hz'}, times in ms; "
            f"ratios = this / first", head, "-" * len(head)]
    for r in report["results"]:
        a, b = r["act_ms"], r["backend_ms"]
        misses = "-" if r["deadline_misses"] is None else str(r["deadline_misses"])
        rows.append(f"{r['label'][:34]:<34} {a['p50']:8.3f} {a['p90']:7.3f} {a['p99']:7.3f} {a['p99_9']:7.3f} "
                    f"{a['max']:7.3f} {b['p50']:8.3f} {b['p99']:7.3f} {misses:>6} {r['cpu_utilisation']:5.2f} "
                    f"{r['rss_mb']:7.0f} {r['ratio_p50']:6.2f} {r['ratio_p99']:6.2f}")
    return "\n".join(rows)


def save_png(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Histogram of act() latency per backend (log x) and the act() time series (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_h, ax_t) = plt.subplots(2, 1, figsize=(9, 7))
    all_ms = np.concatenate([r["series_s"]["act"] * 1e3 for r in report["results"]])
    lo, hi = max(all_ms.min(), 1e-3), max(all_ms.max(), 2e-3)
    bins = np.logspace(np.log10(lo), np.log10(hi), 60)
    for r in report["results"]:
        ms = r["series_s"]["act"] * 1e3
        ax_h.hist(ms, bins=bins, histtype="step", label=f"{r['label']} (p50 {np.median(ms):.3f} ms)")
        ax_t.plot(ms, lw=0.6, label=r["label"])
    if report["rate_hz"]:
        for fn in (ax_h.axvline, ax_t.axhline):
            fn(1e3 / report["rate_hz"], color="k", ls="--", lw=0.8, label="period")
    ax_h.set_xscale("log")
    ax_h.set_xlabel("act() latency (ms)")
    ax_h.set_ylabel("steps")
    ax_h.legend(fontsize=8)
    ax_t.set_yscale("log")
    ax_t.set_xlabel("step")
    ax_t.set_ylabel("act() latency (ms)")
    ax_t.legend(fontsize=8)
    fig.suptitle(f"mtm profile: {report['model']} mode {report['mode']} "
                 f"({'flat out' if not report['rate_hz'] else str(report['rate_hz']) + ' Hz'})")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
