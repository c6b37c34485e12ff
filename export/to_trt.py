"""ONNX -> TensorRT engine + sidecar: ``mtm export trt model.onnx -o model.engine [--fp16]
[--workspace MiB] [--timing-cache FILE] [--version-compatible] [--force]``, or
``python -m mtm_runtime.export.to_trt`` (the same arguments).

The build is ``mtm_runtime.export.trt_engine``; this is its command line. Where ``tensorrt`` is not
importable it says so in one line, prints the equivalent ``trtexec`` command and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtm_runtime.checkpoint import CheckpointError
from mtm_runtime.engine_sidecar import sidecar_path
from mtm_runtime.export.trt_engine import EngineError, ensure_engine, tensorrt_status, trtexec_command
from mtm_runtime.onnx_metadata import read_onnx_metadata


def add_trt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", type=Path, help="ONNX file written by `mtm export onnx`")
    p.add_argument("-o", "--output", type=Path, required=True, help="engine file (sidecar: <output>.json)")
    p.add_argument("--fp16", action="store_true", help="fp16 matmuls; LayerNorm/Softmax stay fp32")
    p.add_argument("--workspace", type=int, default=1024, metavar="MiB", help="workspace pool limit (MiB)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache to load and update")
    p.add_argument("--version-compatible", action="store_true", help="build a version-compatible engine")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached engine is current")


def run_trt(args: argparse.Namespace, prog: str = "mtm export trt") -> int:
    try:
        read_onnx_metadata(args.onnx)
    except CheckpointError as e:
        print(f"{prog}: refused: {e}", file=sys.stderr)
        return 2
    ok, why = tensorrt_status()
    if not ok:
        print(f"{prog}: {why}; build on the target with:", file=sys.stderr)
        print(trtexec_command(args.onnx, args.output, args.fp16, args.workspace, args.timing_cache,
                              args.version_compatible))
        return 2
    try:
        if args.force and args.output.exists():
            args.output.unlink()
        path, rebuilt = ensure_engine(args.onnx, args.output, args.fp16, args.workspace, args.timing_cache,
                                      args.version_compatible)
    except (EngineError, CheckpointError) as e:
        print(f"{prog}: refused: {e}", file=sys.stderr)
        return 2
    print(f"{prog}: {'built' if rebuilt else 'cached, up to date'}: {path} (+ {sidecar_path(path).name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.export.to_trt", description=__doc__.splitlines()[0])
    add_trt_arguments(p)
    return run_trt(p.parse_args(argv), prog="to_trt")


if __name__ == "__main__":
    sys.exit(main())
