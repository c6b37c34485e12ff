"""``mtm info CHECKPOINT``: print a checkpoint's (or .onnx / .engine sidecar's) metadata."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtm_runtime.checkpoint import CheckpointError, load_checkpoint
from mtm_runtime.model import count_parameters


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path)


def main(args: argparse.Namespace) -> int:
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        print(f"mtm info: refused: {e}", file=sys.stderr)
        return 2
    meta = ckpt.metadata()
    meta["parameters"] = count_parameters(ckpt.build_model())
    meta.pop("normaliser")
    fp = meta.pop("fingerprint", None)  # verified at load; its numbers are not for reading
    meta["fingerprint_modes"] = fp["modes"] if fp else None
    print(json.dumps(meta, indent=2))
    return 0
