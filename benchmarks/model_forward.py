"""Batch-1 forward latency and training throughput: our MTM vs the reference design, same run.

    python benchmarks/model_forward.py [--quick] [--json out.json]

Shapes: T = 4, states 11 / actions 3 / returns 1 (a Hopper-sized spec), presets ``paper`` and
``embedded``. Latency: BC mask, batch 1, eval mode, measured in interleaved rounds with the
reference so noise hits all alike: the reference forward, our torch eager forward (packed and
static encoder), and the full runtime step ``Policy.act`` on ONNX Runtime (fp32 and opt-in int8). Throughput: forward + backward +
AdamW step at batch 256; ours with per-sample AUTO_MASKs (packed encoder), the reference with one
random mask per batch (its design). ``--device cuda``: throughput only, at batch 256 and 1024 with
bf16 autocast. JSON to stdout (and --json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit_json, interleaved, machine, summarise  # noqa: E402
from benchmarks.reference_mae import ReferenceMAE  # noqa: E402
from mtm_runtime import masks as M  # noqa: E402
from mtm_runtime.backends.ort_backend import OrtBackend  # noqa: E402
from mtm_runtime.backends.torch_backend import TorchBackend  # noqa: E402
from mtm_runtime.checkpoint import Checkpoint  # noqa: E402
from mtm_runtime.export.onnx_export import export_onnx  # noqa: E402
from mtm_runtime.model import PRESETS, build_model  # noqa: E402
from mtm_runtime.normalise import Normaliser  # noqa: E402
from mtm_runtime.policy import Policy  # noqa: E402
from mtm_runtime.spec import TrajectorySpec  # noqa: E402

SPEC = TrajectorySpec.create(4, states=11, actions=3, returns=1)


def latency(preset: str, rounds: int, per_round: int) -> dict:
    torch.manual_seed(0)
    cfg = PRESETS[preset]
    ours = build_model(SPEC, cfg).eval()
    ref = ReferenceMAE(SPEC, cfg).eval()
    x = np.random.default_rng(0).standard_normal((1, 4, SPEC.packed_width)).astype(np.float32)
    bc = M.bc_mask(SPEC)
    mask = bc[None].copy()
    backend = TorchBackend(ours, packed_encoder=True, warmup=5)
    static = TorchBackend(ours, packed_encoder=False, warmup=5)
    xt, mt = torch.from_numpy(x), torch.from_numpy(bc)

    def ref_call():
        with torch.inference_mode():
            ref(xt, mt)

    # the runtime path: Policy.act (buffer, mask, normalisation, limits) on ONNX Runtime, fp32 and
    # opt-in int8 (dynamic quantisation of the MatMuls, parity-checked by the backend)
    ckpt = Checkpoint(SPEC, cfg, Normaliser.identity(SPEC), ours.state_dict())
    onnx = export_onnx(ckpt)
    state = x[0, -1, SPEC.slice("states")].copy()
    policies = {"ours_policy_act_ort": Policy(SPEC, ckpt.normaliser, OrtBackend(onnx, SPEC)),
                "ours_policy_act_ort_int8": Policy(SPEC, ckpt.normaliser, OrtBackend(onnx, SPEC, quantize="int8"))}
    calls = {"reference": ref_call, "ours_torch_packed": lambda: backend.run(x, mask),
             "ours_torch_static": lambda: static.run(x, mask)}
    calls.update({k: (lambda p=p: p.act(state)) for k, p in policies.items()})
    t = interleaved(calls, rounds, per_round)
    out = {k: summarise(v) for k, v in t.items()}
    for k in calls:
        if k == "reference":
            continue
        out[k]["speedup_p50_vs_reference"] = round(out["reference"]["p50_us"] / out[k]["p50_us"], 2)
    return out


def throughput(preset: str, steps: int, batch: int = 256, device: str = "cpu") -> dict:
    """Training steps per second (median over ``steps``): masks drawn on the host each step (as
    ``mtm train`` does), bf16 autocast on CUDA (as ``mtm train``), a device sync ends each step."""
    torch.manual_seed(0)
    cfg = PRESETS[preset]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 4, SPEC.packed_width)).astype(np.float32)).to(device)
    cuda = device.startswith("cuda")
    res = {}
    for name in ("reference", "ours"):
        model = (ReferenceMAE if name == "reference" else build_model)(SPEC, cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            if name == "reference":
                m = torch.from_numpy(M.random_mask(SPEC, rng, float(rng.choice([0.15, 0.35, 0.55, 0.75, 0.85, 0.95]))))
            else:
                m = torch.from_numpy(M.sample_training_masks(SPEC, batch, rng))
            m = m.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                y = model(x, m) if name == "reference" else model.forward_train(x, m)
                loss = (y.float() - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        res[name] = {"samples_per_s_median": round(batch / float(np.median(times)), 1),
                     "step_ms_p90": round(1e3 * float(np.percentile(times, 90)), 2), "steps": steps}
    res["ratio_ours_vs_reference"] = round(res["ours"]["samples_per_s_median"] / res["reference"]["samples_per_s_median"], 2)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cpu", help="cuda: training throughput only, bf16 autocast, batch 256 "
                    "and 1024 (batch-1 GPU latency is benchmarks/gpu_latency.py)")
    args = ap.parse_args()
    rounds, per_round, steps = (3, 20, 3) if args.quick else (10, 100, 12)
    result = {"benchmark": "model_forward", "machine": machine(), "spec": SPEC.describe()}
    if args.device.startswith("cuda"):
        result["device"] = torch.cuda.get_device_name(torch.device(args.device))
        for batch in (256, 1024):
            result[f"train_throughput_batch{batch}"] = {p: throughput(p, 10 * steps, batch, args.device)
                                                        for p in ("paper", "embedded")}
    else:
        result["latency_batch1_bc"] = {p: latency(p, rounds, per_round) for p in ("paper", "embedded")}
        result["train_throughput_batch256"] = {p: throughput(p, steps) for p in ("paper", "embedded")}
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
