"""Opt-in int8 for ONNX Runtime: dynamic quantisation of an exported graph's MatMuls, checked.

    OrtBackend(onnx, spec, quantize="int8")   # quantize_int8 + check_int8_parity at load time

CPU-only and done in memory when the ONNX Runtime backend creates its session (``quantize=``), so
it is part of the runtime, not of export: no int8 file is written. Not a TensorRT graph (TensorRT
has its own int8 path). Why the weights are 7-bit and why that makes the result the same on every
CPU: ``quantize_int8``.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mtm_runtime.onnx_graph import ExportError, parity_cases
from mtm_runtime.onnx_metadata import INTEGRITY_KEY


#: Accepted error of the int8 graph: max abs diff vs the fp32 graph on ``parity_cases``, in
#: normalised units, i.e. a tenth of the training data's standard deviation of each output (the
#: fp32 graph itself matches PyTorch to 1e-4). The integer arithmetic is exact on every CPU (see
#: ``quantize_int8``), so the bound is an accuracy bar for the model, not a margin for CPU
#: differences. Measured with these settings (AMD EPYC with AVX-512 VNNI, ORT 1.32): the test
#: fixture 0.0064; the ``paper`` preset 0.063-0.085 (five seeded random draws); the bundled
#: ``models/reacher_embedded`` 0.106, refused (it runs fp32 in 0.15 ms and needs no int8).
INT8_TOLERANCE = 0.1
#: |quantised weight - zero point| <= this (7 bits, ``reduce_range``): see ``quantize_int8``
INT8_WEIGHT_LIMIT = 64
INT8_QUANTIZATION = ("onnxruntime dynamic int8: MatMul weights int8 symmetric per output channel, "
                     "7-bit (reduce_range); activations uint8 per tensor per call")


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime dynamic int8 quantisation of the MatMuls (MatMul -> DynamicQuantizeLinear +
    MatMulInteger): weights int8, symmetric, one scale per output channel, 7-bit
    (``reduce_range``); activations uint8, quantised per tensor on every call (the only type
    dynamic quantisation has). CPU-only, opt-in; not a TensorRT graph (TensorRT has its own int8
    path). Metadata is kept, plus ``mtm_runtime.quantization`` = ``INT8_QUANTIZATION``.

    Why 7-bit weights: x86 u8 x s8 kernels without VNNI (AVX2, AVX-512BW) multiply with
    ``vpmaddubsw``, which adds two u8*s8 products into a *saturating* int16. With 8-bit weights
    that pair sum reaches 2*255*127 = 64770 > 32767 and is clipped, so the result depended on the
    CPU (VNNI's ``vpdpbusd`` widens to int32 first): the test fixture's int8 error was 0.004 on a
    VNNI host and 0.103 on an AVX2 host. With |w| <= 64, any pair sum is at most 2*255*64 = 32640
    <= 32767: no kernel can saturate, whatever the input. Every kernel (AVX2, AVX-512, VNNI, ARM
    NEON / dot-product) then computes the exact integer dot product: exact products, int32
    accumulation (no overflow below K = 2**31 / (255*64) ~ 131000 inputs per output) and integer
    addition, whose order does not matter. What can still differ between CPUs is fp32 rounding in
    the float ops around the MatMuls (LayerNorm, Softmax, GELU, the scale multiplications), which
    can move an activation that sits on a rounding boundary by one quantisation step. Measured
    here by running the int8 graph with ORT's fused kernels and with unfused ones (other float
    code, same integers): the outputs move by 2e-7 to 0.017, the parity maximum by at most 0.002
    (``paper`` preset, five draws), against the 0.1 that saturation moved the fixture. So
    ``check_int8_parity`` gives the same verdict on every CPU unless a model lies within that of
    ``INT8_TOLERANCE``.
    Per-channel scales win back most of the bit ``reduce_range`` gives away (ONNX Runtime's
    quantisation guide recommends the pair on non-VNNI CPUs). u8 weights would use the u8 x u8
    kernels, which are exact too but half as fast here (the ``paper`` preset: 1.30 vs 0.63 ms).
    The produced graph is checked for the 7-bit bound (ExportError if a weight exceeds it).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = onnx.load_from_string(onnx_bytes)
    with tempfile.TemporaryDirectory() as d:
        fin, fout = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        fin.write_bytes(onnx_bytes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(fin), str(fout), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                             per_channel=True, reduce_range=True)
        out = onnx.load(str(fout))
    check_int8_weight_range(out)
    del out.metadata_props[:]
    for p in src.metadata_props:
        if p.key != INTEGRITY_KEY:  # the fp32 graph's stamp does not describe this one
            out.metadata_props.add().CopyFrom(p)
    q = out.metadata_props.add()
    q.key, q.value = "mtm_runtime.quantization", INT8_QUANTIZATION
    return out.SerializeToString()


def check_int8_weight_range(proto: Any, limit: int = INT8_WEIGHT_LIMIT) -> None:
    """ExportError unless every MatMulInteger weight (input B, an initializer) satisfies
    |w - zero point| <= ``limit`` and its zero point is 0 (the raw int8 values enter the kernel's
    pair sums), see ``quantize_int8``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.int32)
        zp = numpy_helper.to_array(inits[node.input[3]]).astype(np.int32) if len(node.input) > 3 else 0
        worst = int(np.max(np.abs(w))) if w.size else 0
        if np.any(zp != 0) or worst > limit:
            raise ExportError(f"int8 node {node.name!r}: weights reach {worst} (zero point max "
                              f"{int(np.max(np.abs(zp)))}), above the {limit} that keeps non-VNNI "
                              "kernels from saturating")


def check_int8_parity(fp32_bytes: bytes, int8_bytes: bytes, spec: Any, batch_size: int = 1,
                      tolerance: float = INT8_TOLERANCE) -> float:
    """Max abs diff of the int8 graph against the fp32 graph on ``parity_cases``; ExportError
    above ``tolerance``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    a = ort.InferenceSession(fp32_bytes, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(int8_bytes, so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for label, x, m in parity_cases(spec, batch_size):
        feed = {"x": x, "mask": m}
        diff = float(np.max(np.abs(a.run(None, feed)[0] - b.run(None, feed)[0])))
        if not diff <= tolerance:
            raise ExportError(f"int8 parity failed on {label}: max abs diff {diff:.3g} > {tolerance:g}")
        worst = max(worst, diff)
    return worst


__all__ = ["INT8_TOLERANCE", "INT8_WEIGHT_LIMIT", "INT8_QUANTIZATION", "quantize_int8", "check_int8_weight_range",
           "check_int8_parity"]
