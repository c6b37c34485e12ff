"""Load-time cost of the artefact checks (issue 24): integrity digest and behavioural fingerprint.

    python benchmarks/artefact_trust.py [--rounds 5] [--out benchmarks/results/artefact_trust.json]

For the bundled ``models/reacher_embedded`` and a random-init ``paper`` preset checkpoint (and
their ONNX exports), per load, interleaved so machine noise hits every part alike:

* ``digest_mtm_json``: read mtm.json + verify its stamp (``check_json_stamp``);
* ``digest_onnx``: ``read_onnx_metadata`` (parse + verify) beside ``onnx_load`` (parse only);
* ``fingerprint_torch`` / ``fingerprint_ort``: ``check_fingerprint`` through a built backend;
* ``policy_load_torch`` / ``policy_load_onnx``: the whole ``Policy.load`` the checks are part of.

Prints JSON (medians, p90, machine info and load average, and the checks' share of a whole
load). torch runs ``--threads`` threads (default 1, as the policy node does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import emit_json, interleaved, machine, summarise  # noqa: E402
from mtm_runtime.backends.ort_backend import OrtBackend  # noqa: E402
from mtm_runtime.backends.torch_backend import TorchBackend  # noqa: E402
from mtm_runtime.checkpoint import load_checkpoint  # noqa: E402
from mtm_runtime.export.onnx_export import export_onnx  # noqa: E402
from mtm_runtime.fingerprint import FP32_TOLERANCE, check_fingerprint  # noqa: E402
from mtm_runtime.integrity import check_json_stamp  # noqa: E402
from mtm_runtime.onnx_metadata import read_onnx_metadata  # noqa: E402
from mtm_runtime.policy import Policy  # noqa: E402
from mtm_runtime.profiling import resolve_model  # noqa: E402


def _cases(ckpt_dir: Path, onnx_path: Path) -> dict[str, object]:
    ckpt = load_checkpoint(ckpt_dir)
    meta_path = ckpt_dir / "mtm.json"
    torch_be = TorchBackend(ckpt.build_model(), warmup=5)
    ort_be = OrtBackend(onnx_path, ckpt.spec, providers=["CPUExecutionProvider"], warmup=5)
    fp = ckpt.fingerprint
    return {
        "digest_mtm_json": lambda: check_json_stamp(json.loads(meta_path.read_text()), meta_path),
        "onnx_load": lambda: onnx.load(str(onnx_path), load_external_data=False),
        "digest_onnx": lambda: read_onnx_metadata(onnx_path),
        "fingerprint_torch": lambda: check_fingerprint(torch_be.run, ckpt.spec, fp, FP32_TOLERANCE, meta_path),
        "fingerprint_ort": lambda: check_fingerprint(ort_be.run, ckpt.spec, fp, FP32_TOLERANCE, onnx_path),
        "policy_load_torch": lambda: Policy.load(ckpt_dir, backend="torch", warmup=0),
        "policy_load_onnx": lambda: Policy.load(onnx_path, warmup=0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the policy node runs 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"benchmark": "artefact_trust", "machine": machine(), "models": {},
                                 "load_average_before": list(os.getloadavg()),
                                 "note": "stats in microseconds; checks_ms_* = medians of the check parts, in ms"}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"reacher_embedded": ROOT / "models" / "reacher_embedded",
                  "paper_random_init": resolve_model("preset:paper", tmp)}
        for name, ckpt_dir in models.items():
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_onnx(load_checkpoint(ckpt_dir), onnx_path)
            samples = interleaved(_cases(ckpt_dir, onnx_path), rounds=args.rounds, per_round=4, warmup=2)
            stats = {k: summarise(v) for k, v in samples.items()}
            ms = {k: s["p50_us"] / 1e3 for k, s in stats.items()}
            checks_torch = ms["digest_mtm_json"] + ms["fingerprint_torch"]
            checks_onnx = ms["digest_onnx"] - ms["onnx_load"] + ms["fingerprint_ort"]
            result["models"][name] = {
                "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2), "stats": stats,
                "checks_ms_torch_load": round(checks_torch, 3), "checks_ms_onnx_load": round(checks_onnx, 3),
                "checks_share_of_torch_load": round(checks_torch / ms["policy_load_torch"], 3),
                "checks_share_of_onnx_load": round(checks_onnx / ms["policy_load_onnx"], 3)}
    result["load_average_after"] = list(os.getloadavg())
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
