#!/usr/bin/env python3
"""ONNX -> TensorRT engine + sidecar: ``python export/to_trt.py model.onnx -o model.engine [--fp16]
[--workspace MiB] [--timing-cache FILE] [--version-compatible] [--force]``.

Thin wrapper over ``mtm_runtime.trt_engine`` (same as ``mtm export trt``). Where ``tensorrt`` is
not importable it says so in one line, prints the equivalent ``trtexec`` command and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from mtm_runtime.commands.export import add_trt_arguments, run_trt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="to_trt.py", description=__doc__.splitlines()[0])
    add_trt_arguments(p)
    return run_trt(p.parse_args(argv), prog="to_trt.py")


if __name__ == "__main__":
    sys.exit(main())
