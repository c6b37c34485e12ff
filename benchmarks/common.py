"""Shared helpers for benchmark scripts: machine description and latency summaries (JSON)."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Sequence

import numpy as np


def machine() -> dict[str, object]:
    """What ran the benchmark: CPU model, cores, Python and library versions."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                               "platform": platform.platform()}
    for mod in ("torch", "numpy", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return info


def summarise(samples_s: Sequence[float]) -> dict[str, float]:
    """Percentiles in microseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e6
    return {"n": int(a.size), "p50_us": round(float(np.percentile(a, 50)), 1),
            "p90_us": round(float(np.percentile(a, 90)), 1), "p99_us": round(float(np.percentile(a, 99)), 1),
            "max_us": round(float(a.max()), 1), "mean_us": round(float(a.mean()), 1)}


def time_calls(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, per_round: int, warmup: int = 20) -> dict[str, list[float]]:
    """Time several callables in alternating rounds so machine noise hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                out[k].append(time.perf_counter() - t)
    return out
