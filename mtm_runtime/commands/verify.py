"""``mtm verify PATH``: check a checkpoint directory, ``.onnx`` or ``.engine`` the way loading does.

    mtm verify models/reacher_embedded           # digest (+ signature), bounds, weights, fingerprint
    mtm verify model.onnx --restamp              # vouch for the file as it is now: new stamp + fingerprint
    mtm verify CKPT --restamp --sign key.pem     # ... signed with an Ed25519 key
    mtm verify --keygen key.pem key.pub          # make a key pair (MTM_SIGNING_KEY / MTM_TRUSTED_KEYS)

``--restamp`` is for files written before stamping existed, or changed on purpose: every other
check still runs, and the behavioural fingerprint is recorded from the file's own outputs (so
only restamp a file you trust). Engines are not restamped: rebuild them from a stamped ONNX.
Exit status: 0 accepted, 2 refused (one line naming the file and field).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtm_runtime.checkpoint import CheckpointError, load_checkpoint, parse_metadata, restamp_checkpoint
from mtm_runtime.fingerprint import FP32_TOLERANCE, check_fingerprint
from mtm_runtime.integrity import Trust, generate_keypair


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, nargs="?", help="checkpoint directory, .onnx or .engine file")
    p.add_argument("--restamp", action="store_true", help="write a new stamp and fingerprint (see the docstring)")
    p.add_argument("--sign", type=Path, default=None, metavar="KEY.pem", help="sign the new stamp with this key")
    p.add_argument("--keygen", type=Path, nargs=2, metavar=("PRIVATE.pem", "PUBLIC.pem"),
                   help="write a new Ed25519 key pair and exit")


def main(args: argparse.Namespace) -> int:
    try:
        if args.keygen:
            print(f"mtm verify: wrote {args.keygen[0]} (private, 0600) and {args.keygen[1]}, key id "
                  f"{generate_keypair(*args.keygen)}")
            return 0
        if args.path is None:
            print("mtm verify: refused: give a checkpoint directory, .onnx or .engine file", file=sys.stderr)
            return 2
        base = Trust.from_env()
        trust = Trust(base.allow_unstamped, base.trusted_keys, str(args.sign) if args.sign else base.signing_key)
        if args.restamp:
            print(f"mtm verify: restamped {args.path} (was: {', '.join(restamp(args.path, trust)) or 'unchanged'})")
        print(f"mtm verify: ok: {args.path} ({verify(args.path, trust)})")
        return 0
    except CheckpointError as e:
        print(f"mtm verify: refused: {e}", file=sys.stderr)
        return 2


def restamp(path: Path, trust: Trust) -> list[str]:
    if path.is_dir():
        return restamp_checkpoint(path, trust)
    if path.suffix == ".onnx":
        from mtm_runtime.export.onnx_export import restamp_onnx

        return restamp_onnx(path, trust)
    raise CheckpointError(path, "(file)", "only checkpoint directories and .onnx files are restamped "
                          "(rebuild an engine from a stamped ONNX with `mtm export trt`)")


def verify(path: Path, trust: Trust) -> str:
    """Every load-time check; returns a summary of what was verified."""
    if not path.exists():
        raise CheckpointError(path, "(file)", "missing")
    if path.is_dir():
        ckpt = load_checkpoint(path, trust=trust)
        return f"checkpoint {ckpt.spec.describe()}, fingerprint reproduced by torch"
    if path.suffix == ".onnx":
        from mtm_runtime.backends.ort_backend import OrtBackend
        from mtm_runtime.onnx_metadata import read_onnx_metadata

        meta = read_onnx_metadata(path, trust)
        spec = parse_metadata(meta, path)[0]
        if meta.get("fingerprint") is None:
            return f"UNSTAMPED ONNX {spec.describe()}: no fingerprint to run"
        be = OrtBackend(path, spec, batch_size=int(meta.get("export", {}).get("batch_size", 1)),
                        providers=["CPUExecutionProvider"], warmup=0)
        worst = check_fingerprint(be.run, spec, meta.get("fingerprint"), FP32_TOLERANCE, path, be.batch_size)
        return f"ONNX {spec.describe()}, fingerprint max abs diff {worst:.2e} (onnxruntime CPU)"
    if path.suffix == ".engine":
        from mtm_runtime.engine_sidecar import read_engine_sidecar

        spec = parse_metadata(read_engine_sidecar(path, trust), path)[0]
        return f"engine sidecar {spec.describe()} (its fingerprint runs when Policy.load builds the TensorRT backend)"
    raise CheckpointError(path, "(file)", "expected a checkpoint directory, a .onnx or a .engine file")
