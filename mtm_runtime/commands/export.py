"""``mtm export onnx|trt``: checkpoint -> ONNX, ONNX -> TensorRT engine.

    mtm export onnx CHECKPOINT -o model.onnx [--batch-size 1] [--opset 17]
    mtm export trt model.onnx -o model.engine [--fp16] [--workspace MiB] [--timing-cache FILE]
                                              [--version-compatible] [--force]

Exit status: 0 done, 2 refused (bad input, failed check) or TensorRT not importable here (then
the equivalent ``trtexec`` command line is printed). ``export/to_onnx.py`` and
``export/to_trt.py`` are the same commands as scripts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_onnx_arguments(p: argparse.ArgumentParser) -> None:
    from mtm_runtime.onnx_export import DEFAULT_OPSET

    p.add_argument("checkpoint", type=Path, help="checkpoint directory (model.safetensors + mtm.json)")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--batch-size", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; 17..20)")


def add_trt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", type=Path, help="ONNX file written by `mtm export onnx`")
    p.add_argument("-o", "--output", type=Path, required=True, help="engine file (sidecar: <output>.json)")
    p.add_argument("--fp16", action="store_true", help="fp16 matmuls; LayerNorm/Softmax stay fp32")
    p.add_argument("--workspace", type=int, default=1024, metavar="MiB", help="workspace pool limit (MiB)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache to load and update")
    p.add_argument("--version-compatible", action="store_true", help="build a version-compatible engine")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached engine is current")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_onnx_arguments(sub.add_parser("onnx", help="checkpoint -> ONNX (validated, parity-checked)"))
    add_trt_arguments(sub.add_parser("trt", help="ONNX -> TensorRT engine + sidecar JSON"))


def main(args: argparse.Namespace) -> int:
    return run_onnx(args) if args.action == "onnx" else run_trt(args)


def run_onnx(args: argparse.Namespace, prog: str = "mtm export onnx") -> int:
    from mtm_runtime.checkpoint import CheckpointError, load_checkpoint
    from mtm_runtime.onnx_export import ExportError, export_onnx, read_onnx_metadata

    try:
        ckpt = load_checkpoint(args.checkpoint)
        export_onnx(ckpt, args.output, batch_size=args.batch_size, opset=args.opset)
    except (CheckpointError, ExportError) as e:
        print(f"{prog}: refused: {e}", file=sys.stderr)
        return 2
    info = read_onnx_metadata(args.output)["export"]
    print(f"{prog}: wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, opset {info['opset']}, "
          f"batch {info['batch_size']}, {ckpt.spec.describe()}, parity max abs diff "
          f"{info['parity_max_abs_diff']:.2e})")
    return 0


def run_trt(args: argparse.Namespace, prog: str = "mtm export trt") -> int:
    from mtm_runtime.checkpoint import CheckpointError
    from mtm_runtime.onnx_export import read_onnx_metadata
    from mtm_runtime.trt_engine import EngineError, ensure_engine, sidecar_path, tensorrt_status, trtexec_command

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
