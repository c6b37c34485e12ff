"""Batch-1 GPU latency: torch eager vs torch CUDA graph (vs TensorRT where importable).

    python benchmarks/gpu_latency.py [--steps 2000] [--json out.json]

Presets ``paper`` and ``embedded`` (T = 4, states 11 / actions 3 / returns 1), BC mask, random
weights, each backend timed through ``Backend.run`` (host numpy in, host numpy out: the copies
a control loop pays). p50/p99 in microseconds, JSON to stdout (and --json). On a machine without
CUDA it prints a JSON line with ``"status": "no CUDA"`` and exits 0; TensorRT rows say why they
were skipped when it is not importable.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit_json, machine, summarise, time_calls  # noqa: E402

PRESETS = ("paper", "embedded")


def bench_preset(preset: str, steps: int, workdir: Path) -> dict:
    import torch

    from mtm_runtime import masks as M
    from mtm_runtime.backends.torch_backend import CudaGraphBackend, TorchBackend
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.profiling import resolve_model
    from mtm_runtime.export.trt_engine import tensorrt_status

    torch.manual_seed(0)
    ckpt = load_checkpoint(resolve_model(f"preset:{preset}", workdir))
    spec = ckpt.spec
    x = np.random.default_rng(0).standard_normal((1, spec.horizon, spec.packed_width)).astype(np.float32)
    m = M.bc_mask(spec)[None].copy()
    rows: dict[str, dict] = {}
    backends = {
        "torch-eager": lambda: TorchBackend(ckpt.build_model(), device="cuda", packed_encoder=False),
        "torch-cudagraph": lambda: CudaGraphBackend(ckpt.build_model()),
    }
    ok, why = tensorrt_status()
    if ok:
        def make_trt():
            from mtm_runtime.backends.trt_backend import TrtBackend
            from mtm_runtime.export.onnx_export import export_onnx
            from mtm_runtime.export.trt_engine import build_engine

            onnx_path, engine = workdir / f"{preset}.onnx", workdir / f"{preset}.engine"
            export_onnx(ckpt, onnx_path)
            build_engine(onnx_path, engine)
            return TrtBackend(engine, spec, cuda_graph=True)
        backends["tensorrt"] = make_trt
    else:
        rows["tensorrt"] = {"skipped": why}
    for name, make in backends.items():
        try:
            be = make()
        except Exception as e:  # noqa: BLE001 - report and go on with the other backends
            rows[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        rows[name] = {**summarise(time_calls(lambda be=be: be.run(x, m), steps, warmup=100)), "describe": be.describe()}
        be.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        out = {"benchmark": "gpu_latency", "status": "no CUDA", "machine": machine(),
               "detail": "torch.cuda.is_available() is False: run this on a CUDA machine"}
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_latency_") as tmp:
            out = {"benchmark": "gpu_latency", "status": "ok", "machine": machine(), "batch_size": 1, "mask": "bc",
                   "results": {pr: bench_preset(pr, args.steps, Path(tmp)) for pr in PRESETS}}
    emit_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
