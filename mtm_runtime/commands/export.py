"""``mtm export onnx|trt``: checkpoint -> ONNX, ONNX -> TensorRT engine.

    mtm export onnx CHECKPOINT -o model.onnx [--batch-size 1] [--opset 17]
    mtm export trt model.onnx -o model.engine [--fp16] [--workspace MiB] [--timing-cache FILE]
                                              [--version-compatible] [--force]

Exit status: 0 done, 2 refused (bad input, failed check) or TensorRT not importable here (then
the equivalent ``trtexec`` command line is printed). The two commands are
``mtm_runtime.export.to_onnx`` and ``mtm_runtime.export.to_trt`` (also runnable with ``python -m``).
"""
from __future__ import annotations

import argparse

from mtm_runtime.export.to_onnx import add_onnx_arguments, run_onnx
from mtm_runtime.export.to_trt import add_trt_arguments, run_trt


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_onnx_arguments(sub.add_parser("onnx", help="checkpoint -> ONNX (validated, parity-checked)"))
    add_trt_arguments(sub.add_parser("trt", help="ONNX -> TensorRT engine + sidecar JSON"))


def main(args: argparse.Namespace) -> int:
    return run_onnx(args) if args.action == "onnx" else run_trt(args)
