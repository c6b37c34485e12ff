"""Export a checkpoint to one static-shape ONNX graph that serves every mask mode.

    export_onnx(ckpt, "model.onnx")   ->  inputs  x    float32 [B, T, D]
                                                   mask float32 [B, T, M]   (1 visible, 0 hidden)
                                          output  y    float32 [B, T, D]

The checkpoint's metadata (``Checkpoint.metadata()``: spec, normaliser, model config, action
limits, provenance) travels as JSON in ``metadata_props["mtm_runtime"]`` together with an
``export`` record (opset, batch size, torch version, sha256 of the source weights, measured
parity). ``read_onnx_metadata`` returns it; ``checkpoint.parse_metadata`` validates it.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. On torch 2.13 it
emits opset 17 natively in ~0.7 s; the dynamo exporter only implements opset >= 18 and reaches
17 through a fallback version converter (and takes 2-4 s), for the same 147-node graph. The
result is tidied (``_clean``: Constant nodes -> initializers, Identity nodes bypassed), which
leaves the same ops as the dynamo graph.

Opset: 17 by default, 17..20 accepted. 17 is the first opset with a single
``LayerNormalization`` node (TensorRT maps it to its normalisation layer and can keep it in fp32
in fp16 engines; older opsets decompose it into ReduceMean/Pow/Sqrt chains that overflow in
fp16). 20 is the newest opset the parser bundled with TensorRT 10.0-10.3 (JetPack 6) accepts.

Nothing is written until every check passes (``validate_onnx``): onnx full check, strict shape
inference with static shapes, float32 graph inputs/outputs only (no INT64), an operator
allow-list of ops TensorRT's ONNX parser supports (``TRT_ALLOWED_OPS``), and parity against
PyTorch on random inputs under every mask mode plus random masks (max abs diff <= 1e-4).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mtm_runtime.checkpoint import WEIGHTS_FILE, Checkpoint, CheckpointError, parse_metadata
from mtm_runtime.fileio import atomic_write, sha256_bytes, sha256_file
from mtm_runtime.fingerprint import record_fingerprint, torch_runner
from mtm_runtime.integrity import (Trust, bytes_digest, check_stamp, json_sections, make_stamp, resolve_trust,
                                   sha256_hex)

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(17, 21)  # 17..20, see the module docstring
METADATA_KEY = "mtm_runtime"
WEIGHTS_SHA_KEY = "mtm_runtime.weights_sha256"
INTEGRITY_KEY = "mtm_runtime.integrity"  # the stamp (mtm_runtime.integrity): digest of everything else
INPUT_NAMES = ("x", "mask")
OUTPUT_NAME = "y"
PARITY_TOLERANCE = 1e-4  # fp32 max abs difference, normalised units

#: Operators the exported graph may use (default ONNX domain). Every one is in the TensorRT
#: 10.x ONNX parser's operator support matrix (onnx-tensorrt docs/operators.md) for the dtypes
#: the MTM graph feeds it. Add an op here only after checking that matrix; anything else is
#: refused at export time with the op and node named.
TRT_ALLOWED_OPS: dict[str, str] = {
    "Add": "elementwise", "Sub": "elementwise", "Mul": "elementwise", "Div": "elementwise",
    "Erf": "unary (exact GELU)", "Sqrt": "unary", "Pow": "elementwise", "Neg": "unary",
    "Tanh": "unary (tanh GELU)", "Gelu": "opset 20 GELU",
    "MatMul": "matrix multiply", "Gemm": "matrix multiply",
    "LayerNormalization": "opset 17 normalisation layer",
    "Softmax": "softmax", "ReduceMean": "reduce",
    "Where": "select", "Greater": "comparison", "Equal": "comparison", "Less": "comparison",
    "Not": "logical",
    "Reshape": "shuffle", "Transpose": "shuffle", "Squeeze": "shuffle", "Unsqueeze": "shuffle",
    "Flatten": "shuffle", "Concat": "concatenation", "Split": "slice", "Slice": "slice",
    "Gather": "gather", "Expand": "broadcast (slice)", "Shape": "shape", "Cast": "cast",
    "Constant": "constant", "ConstantOfShape": "fill", "Identity": "identity",
}


class ExportError(RuntimeError):
    """Export refused: unsupported opset, a failed graph check or a parity failure."""


# ---- export -----------------------------------------------------------------------------------
def export_onnx(ckpt: Checkpoint, path: str | os.PathLike | None = None, batch_size: int = 1,
                opset: int = DEFAULT_OPSET, trust: Trust | None = None) -> bytes:
    """Export, validate and (if ``path``) atomically write the graph; returns the model bytes.

    Static shapes: B = ``batch_size``, T and D/M from the checkpoint's spec. The metadata gets
    the model's behavioural fingerprint and the file an integrity stamp (signed if ``trust``
    names a signing key).
    """
    import onnx
    import torch

    if not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset!r} is not supported: choose {SUPPORTED_OPSETS.start}.."
                          f"{SUPPORTED_OPSETS.stop - 1} (17 has LayerNormalization; TensorRT 10.3 "
                          f"parses up to 20)")
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    spec = ckpt.spec
    model = ckpt.build_model()
    x = torch.zeros(batch_size, spec.horizon, spec.packed_width)
    m = torch.ones(batch_size, spec.horizon, spec.num_modalities)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation / tracer warnings
        torch.onnx.export(model, (x, m), buf, dynamo=False, opset_version=opset,  # type: ignore[arg-type]  # torch accepts a file object
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          do_constant_folding=True, export_params=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto = clean_graph(proto)
    proto.producer_name = "mtm_runtime.onnx_export"
    proto.doc_string = f"MTM {spec.describe()} batch {batch_size}: (x, mask) -> y; metadata in '{METADATA_KEY}'"

    meta = ckpt.metadata()
    weights_sha = weights_sha256(ckpt)
    meta["export"] = {"exporter": "torch.onnx.export(dynamo=False)", "torch_version": torch.__version__,
                      "opset": opset, "batch_size": batch_size, "source_weights_sha256": weights_sha,
                      "inputs": {"x": [batch_size, spec.horizon, spec.packed_width],
                                 "mask": [batch_size, spec.horizon, spec.num_modalities]},
                      "output": {"y": [batch_size, spec.horizon, spec.packed_width]}}
    validate_onnx(proto, batch_size, spec)
    meta["export"]["parity_max_abs_diff"] = check_parity(proto.SerializeToString(), model, batch_size)
    meta["fingerprint"] = record_fingerprint(torch_runner(model), spec, batch_size)
    set_metadata(proto, meta, weights_sha, trust)
    data = proto.SerializeToString()
    if path is not None:
        atomic_write(Path(path), data)
    return data


def clean_graph(proto: Any) -> Any:
    """Tidy the TorchScript export in place: ``Constant`` nodes become initializers and
    ``Identity`` nodes are bypassed (their consumers read the source tensor directly)."""
    g = proto.graph
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            t.name = node.output[0]
            g.initializer.append(t)
        elif node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return proto


def weights_sha256(ckpt: Checkpoint) -> str:
    """sha256 of the checkpoint's weights file, or of the tensors serialised as safetensors."""
    if ckpt.path is not None and (Path(ckpt.path) / WEIGHTS_FILE).is_file():
        return sha256_file(Path(ckpt.path) / WEIGHTS_FILE)
    from safetensors.torch import save as st_save
    return sha256_bytes(st_save({k: v.contiguous() for k, v in ckpt.state_dict.items()}))


def set_metadata(proto: Any, meta: dict[str, Any], weights_sha: str, trust: Trust | None = None) -> None:
    """Replace the metadata entries with ``meta`` (+ the weights' sha256) and stamp the model."""
    del proto.metadata_props[:]
    for key, value in ((METADATA_KEY, json.dumps(meta, sort_keys=True)), (WEIGHTS_SHA_KEY, weights_sha)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    stamp_onnx(proto, trust)


# ---- integrity ------------------------------------------------------------------------------------
def _pop_stamp(proto: Any) -> str | None:
    """Remove the stamp entry from ``proto`` (in place); returns its value, or None."""
    for i, e in enumerate(proto.metadata_props):
        if e.key == INTEGRITY_KEY:
            value = e.value
            del proto.metadata_props[i]
            return value
    return None


def onnx_digest(proto: Any) -> str:
    """The digest of a model without its stamp (the model must not carry one: ``_pop_stamp``)."""
    return bytes_digest(proto.SerializeToString())


def onnx_sections(proto: Any) -> dict[str, str]:
    """Hashes that name what changed: the graph without initializers and metadata, each
    initializer, each metadata entry (the ``mtm_runtime`` JSON field by field)."""
    import onnx

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)
    del skeleton.metadata_props[:]
    del skeleton.graph.initializer[:]
    out = {"graph": sha256_hex(skeleton.SerializeToString())}
    for t in proto.graph.initializer:
        out[f"initializer:{t.name}"] = sha256_hex(t.SerializeToString())
    for e in proto.metadata_props:
        try:
            meta = json.loads(e.value) if e.key == METADATA_KEY else None
        except json.JSONDecodeError:
            meta = None
        if isinstance(meta, dict):
            out.update(json_sections(meta, prefix=f"{METADATA_KEY}."))
        else:
            out[f"metadata_props:{e.key}"] = sha256_hex(e.value.encode())
    return out


def stamp_onnx(proto: Any, trust: Trust | None = None) -> None:
    """(Re)stamp ``proto`` in place: the stamp entry goes last in ``metadata_props``."""
    _pop_stamp(proto)
    stamp = make_stamp(onnx_digest(proto), onnx_sections(proto), trust)
    entry = proto.metadata_props.add()
    entry.key, entry.value = INTEGRITY_KEY, json.dumps(stamp, sort_keys=True)


def verify_onnx_stamp(proto: Any, path: str | os.PathLike, trust: Trust | None = None) -> bool:
    """Check (and remove from ``proto``) its stamp; CheckpointError naming what changed.
    False for an accepted unstamped legacy file."""
    field = f"metadata_props[{INTEGRITY_KEY}]"
    raw = _pop_stamp(proto)
    try:
        stamp = None if raw is None else json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, field, f"not valid JSON: {e}") from None
    return check_stamp(stamp, onnx_digest(proto), lambda: onnx_sections(proto), path, field, trust)


# ---- validation ---------------------------------------------------------------------------------
def validate_onnx(proto: Any, batch_size: int, spec: Any) -> None:
    """Graph checks (no numerics): onnx full check, strict static shape inference, float32 IO,
    operator allow-list. Raises ExportError naming what failed."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the graph: {e}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - InferenceError and friends
        raise ExportError(f"strict shape inference failed: {e}") from None
    B, T, D, M = batch_size, spec.horizon, spec.packed_width, spec.num_modalities
    want = {"x": (B, T, D), "mask": (B, T, M)}
    got_in = {i.name: i for i in inferred.graph.input}
    if set(got_in) != set(want):
        raise ExportError(f"graph inputs are {sorted(got_in)}, expected {sorted(want)}")
    outs = list(inferred.graph.output)
    if [o.name for o in outs] != [OUTPUT_NAME]:
        raise ExportError(f"graph outputs are {[o.name for o in outs]}, expected ['{OUTPUT_NAME}']")
    for vi, shape in [(got_in["x"], want["x"]), (got_in["mask"], want["mask"]), (outs[0], (B, T, D))]:
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"graph {vi.name!r} has dtype {onnx.TensorProto.DataType.Name(tt.elem_type)}, "
                              "expected FLOAT (no INT64 graph inputs/outputs)")
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        if dims != shape:
            raise ExportError(f"graph {vi.name!r} has shape {dims}, expected static {shape}")
    check_allowed_ops(proto)


def check_allowed_ops(proto: Any, allowed: dict[str, str] = TRT_ALLOWED_OPS) -> None:
    """Refuse any node whose op is outside ``allowed`` (or outside the default ONNX domain)."""
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ExportError(f"node {node.name!r} uses op {node.domain}::{node.op_type}, a custom domain "
                              "TensorRT's ONNX parser does not support")
        if node.op_type not in allowed:
            raise ExportError(f"node {node.name!r} uses op {node.op_type!r}, which is not on the TensorRT "
                              "allow-list (mtm_runtime.onnx_export.TRT_ALLOWED_OPS)")


def parity_cases(spec: Any, batch_size: int, seed: int = 0, n_random: int = 4) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, x, mask) cases: every mode of ``available_modes(spec)``, an all-visible mask, a
    short-history mask, and ``n_random`` random masks; x is standard normal. Shapes [B, T, *]."""
    from mtm_runtime import masks as mk

    rng = np.random.default_rng(seed)
    B, T, D = batch_size, spec.horizon, spec.packed_width
    named = [(f"mode:{m}", mk.mode_mask(spec, m)) for m in mk.available_modes(spec)]
    named.append(("full", mk.full_mask(spec)))
    named.append(("history:1+bc", mk.combine(mk.bc_mask(spec), mk.history_mask(spec, 1))))
    cases = []
    for label, m in named:
        x = rng.standard_normal((B, T, D)).astype(np.float32)
        cases.append((label, x, np.array(np.broadcast_to(m, (B, T, spec.num_modalities)), np.float32)))
    for i in range(n_random):
        x = rng.standard_normal((B, T, D)).astype(np.float32)
        m = np.stack([mk.random_mask(spec, rng, 0.5) for _ in range(B)]).astype(np.float32)
        cases.append((f"random:{i}", x, m))
    return cases


def check_parity(onnx_bytes: bytes, model: Any, batch_size: int, tolerance: float = PARITY_TOLERANCE,
                 seed: int = 0) -> float:
    """Run the graph in ONNX Runtime (CPU) and the torch static path on ``parity_cases``;
    ExportError on any case above ``tolerance``. Returns the worst max abs difference."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for label, x, m in parity_cases(model.spec, batch_size, seed):
        with torch.inference_mode():
            ref = model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        got = sess.run([OUTPUT_NAME], {"x": x, "mask": m})[0]
        diff = float(np.max(np.abs(got - ref))) if np.all(np.isfinite(got)) else float("inf")
        if not diff <= tolerance:
            raise ExportError(f"parity check failed on {label}: max abs diff {diff:.3g} > {tolerance:g} "
                              "(ONNX Runtime vs PyTorch)")
        worst = max(worst, diff)
    return worst


# ---- int8 (opt-in) ---------------------------------------------------------------------------------
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


# ---- reading ---------------------------------------------------------------------------------------
def _load_proto(p: Path, data: bytes | None = None) -> Any:
    """Parse ``p`` (or ``data``, its bytes already read) without following external data."""
    import onnx

    if data is None and not p.is_file():
        raise CheckpointError(p, "(file)", "missing")
    try:
        proto = onnx.load(str(p), load_external_data=False) if data is None else onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise CheckpointError(p, "(onnx)", f"not an ONNX model: {type(e).__name__}: {e}") from None
    if not proto.graph.node:
        raise CheckpointError(p, "(onnx)", "not an ONNX model (no graph nodes)")
    return proto


def _metadata_of(proto: Any, p: Path) -> dict[str, Any]:
    props = {e.key: e.value for e in proto.metadata_props}
    if METADATA_KEY not in props:
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}]",
                              "missing: not exported by mtm_runtime (run `mtm export onnx CHECKPOINT`)")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}]", f"not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}]", "must be a JSON object")
    return meta


def read_onnx_metadata(path: str | os.PathLike, trust: Trust | None = None,
                       data: bytes | None = None) -> dict[str, Any]:
    """The metadata dict stored by ``export_onnx`` (validate with ``checkpoint.parse_metadata``),
    after verifying the file's integrity stamp (``verify_onnx_stamp``). ``data``: the file's
    bytes, if the caller has read them (and will run exactly these: ``Policy.load``).

    CheckpointError naming the file when it is missing, not an ONNX model, fails its stamp, or
    carries no (or unparsable) ``mtm_runtime`` metadata.
    """
    p = Path(path)
    proto = _load_proto(p, data)
    meta = _metadata_of(proto, p)  # first: a graph from elsewhere is named as such
    stamped = verify_onnx_stamp(proto, p, trust)
    if stamped and meta.get("fingerprint") is None and meta.get("export", {}).get("graph") != "features":
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}].fingerprint", "missing from a stamped model")
    return meta


def restamp_onnx(path: str | os.PathLike, trust: Trust | None = None) -> list[str]:
    """Vouch for an ONNX model as it is now (``checkpoint.restamp_checkpoint``'s counterpart):
    the metadata is validated, the fingerprint recorded afresh by running the graph in ONNX
    Runtime (CPU), and the file rewritten with a new stamp. Returns what the old stamp said had
    changed."""
    import onnxruntime as ort

    p = Path(path)
    proto = _load_proto(p)
    try:
        verify_onnx_stamp(proto, p, Trust(trusted_keys=resolve_trust(trust).trusted_keys))
        changed: list[str] = []
    except CheckpointError as e:
        changed = [e.field]
    _pop_stamp(proto)
    meta = _metadata_of(proto, p)
    spec = parse_metadata(meta, p)[0]
    batch = int(meta.get("export", {}).get("batch_size", 1))
    if meta.get("export", {}).get("graph") != "features":
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        meta["fingerprint"] = record_fingerprint(lambda x, m: sess.run([OUTPUT_NAME], {"x": x, "mask": m})[0],
                                                 spec, batch)
    props = {e.key: e.value for e in proto.metadata_props}
    set_metadata(proto, meta, props.get(WEIGHTS_SHA_KEY, ""), trust)
    atomic_write(p, proto.SerializeToString())
    return changed


def onnx_sha256(onnx_bytes_or_path: bytes | str | os.PathLike) -> str:
    """sha256 of a model given as bytes or a path."""
    if isinstance(onnx_bytes_or_path, (bytes, bytearray)):
        return sha256_bytes(bytes(onnx_bytes_or_path))
    return sha256_file(onnx_bytes_or_path)


__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "METADATA_KEY", "TRT_ALLOWED_OPS", "ExportError",
           "export_onnx", "validate_onnx", "check_allowed_ops", "check_parity", "parity_cases",
           "quantize_int8", "check_int8_parity", "check_int8_weight_range", "read_onnx_metadata", "onnx_sha256",
           "INTEGRITY_KEY", "onnx_digest", "onnx_sections", "stamp_onnx", "verify_onnx_stamp", "restamp_onnx",
           "INT8_TOLERANCE", "INT8_WEIGHT_LIMIT", "INT8_QUANTIZATION"]
