"""Checkpoint -> validated ONNX: ``mtm export onnx CHECKPOINT -o model.onnx [--batch-size N]
[--opset 17] [--chunk K]``, or ``python -m mtm_runtime.export.to_onnx`` (the same arguments).

The export itself is ``mtm_runtime.export.onnx_export.export_onnx``; this is its command line. Exit
status 0 written, 2 refused (the reason in one line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtm_runtime.arg_types import at_least
from mtm_runtime.checkpoint import CheckpointError, load_checkpoint
from mtm_runtime.export.onnx_export import export_onnx
from mtm_runtime.onnx_graph import DEFAULT_OPSET, ExportError
from mtm_runtime.onnx_metadata import read_onnx_metadata


def add_onnx_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (model.safetensors + mtm.json)")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--batch-size", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; 17..20)")
    p.add_argument("--chunk", type=at_least(1), default=1,
                   help="action chunk length it will run with (parity checked on its masks; recorded with the "
                        "horizon as export.control, and a chunked loop with another length is refused); default 1")


def run_onnx(args: argparse.Namespace, prog: str = "mtm export onnx") -> int:
    try:
        ckpt = load_checkpoint(args.checkpoint)
        export_onnx(ckpt, args.output, batch_size=args.batch_size, opset=args.opset, chunk=args.chunk)
    except (CheckpointError, ExportError) as e:
        print(f"{prog}: refused: {e}", file=sys.stderr)
        return 2
    info = read_onnx_metadata(args.output)["export"]
    print(f"{prog}: wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, opset {info['opset']}, "
          f"batch {info['batch_size']}, chunk {info['control']['chunk']} of horizon {info['control']['horizon']}, "
          f"{ckpt.spec.describe()}, parity max abs diff "
          f"{info['parity_max_abs_diff']:.2e})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.export.to_onnx", description=__doc__.splitlines()[0])
    add_onnx_arguments(p)
    return run_onnx(p.parse_args(argv), prog="to_onnx")


if __name__ == "__main__":
    sys.exit(main())
