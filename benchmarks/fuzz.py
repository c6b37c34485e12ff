"""Fuzz the serial frame decoder and every message-to-array conversion; report cases/s.

    python benchmarks/fuzz.py                 # 10^5 cases per target
    python benchmarks/fuzz.py --cases 2000    # quick

Targets: ``FrameDecoder.feed`` on random bytes, mutated valid frames (bit flips, truncation,
duplication, splicing) and random chunking; ``conversions.multiarray_to_array`` /
``joint_state_to_array`` (+ ``state_rejection_reason``, the node's gate) on random messages.
"Nothing unsafe": the decoder never raises, never buffers more than MAX_ENCODED bytes, and every
STATE it accepts has <= MAX_STATE_VALUES float32 values; a conversion either raises
ConversionError or returns a float64 vector, and any vector the gate passes is finite and of the
expected width. Prints JSON. (atheris is not used: see the report in docs/safety.md.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtm_runtime import serial_framing as sf, serial_messages as sm, serial_protocol as sp  # noqa: E402
from mtm_runtime.safety import state_rejection_reason  # noqa: E402


def decoder_case(rng: np.random.Generator) -> None:
    dec = sp.FrameDecoder()
    kind = rng.integers(4)
    if kind == 0:
        data = rng.integers(0, 256, rng.integers(0, 3000), dtype=np.uint8).tobytes()
    else:
        n = int(rng.integers(0, 40))
        frames = [sm.encode_state(int(rng.integers(0, 65536)), int(rng.integers(0, 2**63)),
                                  rng.normal(size=n).astype(np.float32)),
                  sm.encode_command(int(rng.integers(0, 65536)), rng.normal(size=int(rng.integers(0, 10)))),
                  sm.encode_heartbeat(int(rng.integers(0, 65536)), int(rng.integers(0, 3)), int(rng.integers(0, 2**32))),
                  sm.encode_fault(int(rng.integers(0, 65536)), int(rng.integers(0, 65536)), "x" * int(rng.integers(0, 80)))]
        buf = bytearray(b"".join(frames[int(i)] for i in rng.integers(0, 4, rng.integers(1, 8))))
        for _ in range(int(rng.integers(0, 6))):  # bit flips
            if buf:
                buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
        if kind == 2 and buf:  # truncate / splice
            cut = int(rng.integers(len(buf)))
            buf = buf[:cut] + buf[cut + int(rng.integers(0, 20)):]
        if kind == 3:  # duplicate a region, long zero-free run
            buf += buf[: int(rng.integers(0, len(buf) + 1))] + bytes([0x7F]) * int(rng.integers(0, 2500))
        data = bytes(buf)
    pos = 0
    while pos < len(data):
        step = int(rng.integers(1, 600))
        for m in dec.feed(data[pos:pos + step]):
            if isinstance(m, sm.State):
                assert m.values.dtype == np.float32 and m.values.size <= sm.MAX_STATE_VALUES
        assert dec.buffered <= sf.MAX_ENCODED
        pos += step


def _weird_floats(rng: np.random.Generator, n: int) -> list[float]:
    pool = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324, 1.0], dtype=np.float64)
    v = rng.normal(size=n) * 10.0 ** float(rng.integers(-5, 6))
    mask = rng.random(n) < 0.2
    v[mask] = pool[rng.integers(0, pool.size, int(mask.sum()))]
    return v.tolist()


def conversion_case(rng: np.random.Generator) -> None:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from mtm_runtime.ros_nodes import conversions as conv

    width = int(rng.integers(1, 8))
    msg = Float64MultiArray(data=_weird_floats(rng, int(rng.integers(0, 12))))
    msg.layout.data_offset = int(rng.integers(0, 4))
    _check(lambda: conv.multiarray_to_array(msg), width)
    names = [f"j{i}" for i in range(int(rng.integers(0, 5)))]
    js = JointState(name=names, position=_weird_floats(rng, int(rng.integers(0, 6))),
                    velocity=_weird_floats(rng, int(rng.integers(0, 6))), effort=_weird_floats(rng, int(rng.integers(0, 3))))
    want = [f"j{i}" for i in rng.permutation(6)[: int(rng.integers(0, 4))]]
    fields = [["position", "velocity"], ["position"], ["effort"], ["bogus"]][int(rng.integers(4))]
    _check(lambda: conv.joint_state_to_array(js, want, fields), width)
    stamp = int(rng.integers(0, 2**62))
    assert conv.stamp_to_ns(conv.ns_to_stamp(stamp)) == stamp


def _check(fn: Callable[[], np.ndarray], width: int) -> None:
    from mtm_runtime.ros_nodes.conversions import ConversionError

    try:
        a = fn()
    except ConversionError:
        return
    assert isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype == np.float64
    if state_rejection_reason(a, width) is None:
        assert a.size == width and np.all(np.isfinite(a))


def run(name: str, case: Callable[[np.random.Generator], None], n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    t0 = time.perf_counter()
    for i in range(n):
        try:
            case(rng)
        except Exception as e:  # noqa: BLE001 - any escape is a finding
            if len(failures) < 5:
                failures.append(f"case {i}: {type(e).__name__}: {e}")
    dt = time.perf_counter() - t0
    return {"target": name, "cases": n, "seconds": round(dt, 2), "cases_per_s": round(n / dt, 1), "failures": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="per target")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    results = [run("serial FrameDecoder", decoder_case, a.cases, a.seed)]
    try:
        import rclpy  # noqa: F401
        results.append(run("ros conversions", conversion_case, a.cases, a.seed + 1))
    except ImportError:
        results.append({"target": "ros conversions", "skipped": "rclpy not importable"})
    out = {"results": results, "ok": all(not r.get("failures") for r in results)}
    print(json.dumps(out, indent=1))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
