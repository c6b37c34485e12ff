#!/usr/bin/env python3
"""Checkpoint -> validated ONNX: ``python export/to_onnx.py CHECKPOINT -o model.onnx [--batch-size N] [--opset 17]``.

Thin wrapper over ``mtm_runtime.onnx_export.export_onnx`` (same as ``mtm export onnx``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from mtm_runtime.commands.export import add_onnx_arguments, run_onnx  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="to_onnx.py", description=__doc__.splitlines()[0])
    add_onnx_arguments(p)
    return run_onnx(p.parse_args(argv), prog="to_onnx.py")


if __name__ == "__main__":
    sys.exit(main())
