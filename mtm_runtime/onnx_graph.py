"""A checkpoint's network as one static-shape ONNX graph that serves every mask mode, checked.

    traced = checked_graph(ckpt)   ->  traced.proto: inputs  x    float32 [B, T, D]
                                                             mask float32 [B, T, M]   (1 visible, 0 hidden)
                                                     output  y    float32 [B, T, D]

This is the in-memory half of ONNX export: the runtime converts a checkpoint this way whenever it
runs one in ONNX Runtime (``Policy.load(directory, backend="onnxruntime")``, ``PolicyBatch``,
profiling), and ``mtm_runtime.export.onnx_export.export_onnx`` adds the metadata, fingerprint and
stamp that make the graph a ``model.onnx`` artefact. No file is written here.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. On torch 2.13 it
emits opset 17 natively in ~0.7 s; the dynamo exporter only implements opset >= 18 and reaches
17 through a fallback version converter (and takes 2-4 s), for the same 147-node graph. The
result is tidied (``clean_graph``: Constant nodes -> initializers, Identity nodes bypassed), which
leaves the same ops as the dynamo graph.

Opset: 17 by default, 17..20 accepted. 17 is the first opset with a single
``LayerNormalization`` node (TensorRT maps it to its normalisation layer and can keep it in fp32
in fp16 engines; older opsets decompose it into ReduceMean/Pow/Sqrt chains that overflow in
fp16). 20 is the newest opset the parser bundled with TensorRT 10.0-10.3 (JetPack 6) accepts.

A graph is refused unless every check passes (``validate_onnx``): onnx full check, strict shape
inference with static shapes, float32 graph inputs/outputs only (no INT64), an operator
allow-list of ops TensorRT's ONNX parser supports (``TRT_ALLOWED_OPS``), and parity against
PyTorch on random inputs under every mask mode plus random masks (max abs diff <= 1e-4).
"""
from __future__ import annotations

import io
import warnings
from typing import Any, NamedTuple

import numpy as np

from mtm_runtime import masks as mk
from mtm_runtime.checkpoint import Checkpoint
from mtm_runtime.onnx_metadata import METADATA_KEY

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(17, 21)  # 17..20, see the module docstring
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


class TracedGraph(NamedTuple):
    """What ``checked_graph`` returns: the graph (no metadata yet), the network it was traced
    from, and the worst parity difference measured against that network."""

    proto: Any  # onnx.ModelProto
    model: Any  # the MTM network (eval mode)
    parity_max_abs_diff: float


# ---- conversion ---------------------------------------------------------------------------------
def trace_graph(module: Any, x: Any, m: Any, output_name: str, opset: int) -> Any:
    """``module(x, mask)`` traced with the TorchScript exporter (constant folding, the weights
    inside) and cleaned (``clean_graph``): the one tracing step of the model and features graphs."""
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation / tracer warnings
        torch.onnx.export(module, (x, m), buf, dynamo=False, opset_version=opset,  # type: ignore[arg-type]  # torch accepts a file object
                          input_names=list(INPUT_NAMES), output_names=[output_name],
                          do_constant_folding=True, export_params=True)
    return clean_graph(onnx.load_from_string(buf.getvalue()))


def checked_graph(ckpt: Checkpoint, batch_size: int = 1, opset: int = DEFAULT_OPSET, chunk: int = 1) -> TracedGraph:
    """Trace ``ckpt``'s network into a static-shape graph and run every check on it.

    Static shapes: B = ``batch_size``, T and D/M from the checkpoint's spec. ``chunk`` > 1: the
    parity cases include that chunk length's masks (``parity_cases``). ExportError for an
    unsupported opset, batch size or chunk length, a failed graph check or a parity failure.
    """
    import torch

    if not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset!r} is not supported: choose {SUPPORTED_OPSETS.start}.."
                          f"{SUPPORTED_OPSETS.stop - 1} (17 has LayerNormalization; TensorRT 10.3 "
                          f"parses up to 20)")
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    spec = ckpt.spec
    if not 1 <= chunk <= spec.horizon or (chunk > 1 and "actions" not in spec):
        raise ExportError(f"chunk {chunk} does not fit this model: a chunk needs 1 <= chunk <= the horizon "
                          f"T = {spec.horizon} and an 'actions' modality")
    model = ckpt.build_model()
    x = torch.zeros(batch_size, spec.horizon, spec.packed_width)
    m = torch.ones(batch_size, spec.horizon, spec.num_modalities)
    proto = trace_graph(model, x, m, OUTPUT_NAME, opset)
    proto.producer_name = "mtm_runtime.onnx_graph"
    proto.doc_string = f"MTM {spec.describe()} batch {batch_size}: (x, mask) -> y; metadata in '{METADATA_KEY}'"
    validate_onnx(proto, batch_size, spec)
    parity = check_parity(proto.SerializeToString(), model, batch_size, chunk=chunk)
    return TracedGraph(proto, model, parity)


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
                              "allow-list (mtm_runtime.onnx_graph.TRT_ALLOWED_OPS)")


# ---- parity -------------------------------------------------------------------------------------
def parity_cases(spec: Any, batch_size: int, seed: int = 0, n_random: int = 4,
                 chunk: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, x, mask) cases: every mode of ``available_modes(spec)``, an all-visible mask, a
    short-history mask, and ``n_random`` random masks; with ``chunk`` > 1 also the chunk masks of
    that length (no action committed, and all but the last), and with B >= 2 the monitor's batch
    (chunk mask, forward-dynamics mask) when the chunk leaves room for it; x is standard
    normal. Shapes [B, T, *]."""
    rng = np.random.default_rng(seed)
    B, T, D = batch_size, spec.horizon, spec.packed_width
    named = [(f"mode:{m}", mk.mode_mask(spec, m)) for m in mk.available_modes(spec)]
    named.append(("full", mk.full_mask(spec)))
    named.append(("history:1+bc", mk.combine(mk.bc_mask(spec), mk.history_mask(spec, 1))))
    if chunk > 1:
        named += [(f"chunk:{chunk}:committed {d}", mk.chunk_mask(spec, chunk, d)) for d in sorted({0, chunk - 1})]
    cases = []
    for label, m in named:
        x = rng.standard_normal((B, T, D)).astype(np.float32)
        cases.append((label, x, np.array(np.broadcast_to(m, (B, T, spec.num_modalities)), np.float32)))
    if B >= 2 and chunk < T:
        pair = [mk.chunk_mask(spec, chunk), mk.fd_mask(spec, T - chunk)]
        m = np.stack([pair[min(b, 1)] for b in range(B)]).astype(np.float32)
        cases.append((f"chunk:{chunk}+monitor", rng.standard_normal((B, T, D)).astype(np.float32), m))
    for i in range(n_random):
        x = rng.standard_normal((B, T, D)).astype(np.float32)
        m = np.stack([mk.random_mask(spec, rng, 0.5) for _ in range(B)]).astype(np.float32)
        cases.append((f"random:{i}", x, m))
    return cases


def check_parity(onnx_bytes: bytes, model: Any, batch_size: int, tolerance: float = PARITY_TOLERANCE,
                 seed: int = 0, chunk: int = 1) -> float:
    """Run the graph in ONNX Runtime (CPU) and the torch static path on ``parity_cases``;
    ExportError on any case above ``tolerance``. Returns the worst max abs difference."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for label, x, m in parity_cases(model.spec, batch_size, seed, chunk=chunk):
        with torch.inference_mode():
            ref = model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        got = sess.run([OUTPUT_NAME], {"x": x, "mask": m})[0]
        diff = float(np.max(np.abs(got - ref))) if np.all(np.isfinite(got)) else float("inf")
        if not diff <= tolerance:
            raise ExportError(f"parity check failed on {label}: max abs diff {diff:.3g} > {tolerance:g} "
                              "(ONNX Runtime vs PyTorch)")
        worst = max(worst, diff)
    return worst


__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "INPUT_NAMES", "OUTPUT_NAME", "PARITY_TOLERANCE",
           "TRT_ALLOWED_OPS", "ExportError", "TracedGraph", "checked_graph", "clean_graph", "validate_onnx",
           "check_allowed_ops", "parity_cases", "check_parity"]
