"""Shared helpers for benchmark scripts: machine description and latency summaries (JSON)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mtm_runtime.cpu_latency import CpuLatencyRequest


def machine() -> dict[str, object]:
    """What ran the benchmark (one home: ``mtm_runtime.profiling.machine_info``)."""
    from mtm_runtime.profiling import machine_info

    return machine_info()


#: A busy loop that also ends when its parent is gone, so a killed run leaves no hog behind.
_HOG_LOOP = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
             "    for _ in range(1000000):\n        pass\n")


class CpuHog:
    """``n`` busy-loop processes (default: one per core, ``os.cpu_count()``) while in the ``with``
    block: the "busy machine" of the record tests' load mode and of ``benchmarks/record_loss.py``."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "CpuHog":
        self.procs = [subprocess.Popen([sys.executable, "-c", _HOG_LOOP], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(timeout=10)
        self.procs = []


def emit_json(result: dict, path: "Path | None" = None) -> None:
    """Print a benchmark's result as JSON (the scripts' contract) and write it to ``path`` too."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if path is not None:
        Path(path).write_text(text + "\n")


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


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, per_round: int, warmup: int = 20,
                period_s: float = 0.0, before: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Time several callables in alternating rounds so machine noise hits them alike. With
    ``period_s`` each call starts one period after the last, the process sleeping in between, as a
    control loop's step does (a paced call finds colder caches than a back-to-back one).
    ``before``: run (untimed) just before each timed call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                if before is not None:
                    before()
                t = time.perf_counter()
                fn()
                done = time.perf_counter()
                out[k].append(done - t)
                if period_s > 0:
                    time.sleep(max(0.0, period_s - (done - t)))
    return out


def add_wake_latency_option(parser) -> None:
    """``--cpu-wake-latency-us``: the PM QoS request of ``mtm_runtime/cpu_latency.py`` for the run."""
    parser.add_argument("--cpu-wake-latency-us", type=int, default=-1, metavar="US",
                        help="hold idle CPUs to this wake-up latency for the whole run (Linux PM QoS, system-wide: "
                             "the policy node's cpu_wake_latency_us); -1 = off (default)")


def hold_wake_latency(target_us: int) -> tuple[CpuLatencyRequest, dict[str, object]]:
    """Hold the request for a benchmark run (a failure is printed, and the run goes on without it);
    returns it (release it at the end) and what the JSON records of it."""
    req = CpuLatencyRequest()
    problem = req.hold(target_us)
    if problem:
        print(f"[benchmark] {problem}", file=sys.stderr, flush=True)
    return req, {"requested_us": target_us, "status": req.status}


def replace_section(path: Path, begin: str, end: str, body: Sequence[str]) -> None:
    """Write ``body`` (lines, markers excluded) between the ``begin`` and ``end`` markers of the
    markdown file ``path``, replacing what was there or appending; the rest of the file is kept."""
    block = "\n".join([begin, *body, end])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
