"""Build TensorRT engines from the exported ONNX graph, with a JSON sidecar and a cache.

    build_engine("model.onnx", "model.engine", fp16=True)  ->  model.engine + model.engine.json

Works with TensorRT 10.x (JetPack 6 ships 10.3) and 11.x through the Python API:

* ``Builder`` -> network (strongly typed where ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  exists, i.e. TensorRT >= 10.0; weakly typed only for a TensorRT 10 fp16 build through the
  builder flag) -> ``OnnxParser`` (every parser error printed with node and op) -> builder
  config (workspace memory pool limit, one optimisation profile with min = opt = max = the
  graph's static shapes, timing cache loaded from / saved to ``timing_cache``, optional
  ``VERSION_COMPATIBLE``) -> ``build_serialized_network``.
* fp32 builds clear ``BuilderFlag.TF32`` (on by default on Ampere/Orin) so the engine keeps the
  1e-4 parity with ONNX Runtime.
* fp16 the way each version supports it: TensorRT 10 has ``BuilderFlag.FP16``; the network is
  weakly typed and every normalisation and softmax layer is pinned to fp32 with
  ``OBEY_PRECISION_CONSTRAINTS``. TensorRT 11 removed the precision flags: the ONNX graph itself
  is rewritten (``onnx_fp16_matmuls``) so that MatMul/Gemm run in fp16 between Casts while
  LayerNormalization, Softmax and everything else stay fp32, and the network is strongly typed.
* The sidecar ``model.engine.json`` (its content, reading and verification:
  ``mtm_runtime.engine_sidecar``) is written next to the engine, stamped over itself and the
  engine bytes (``mtm_runtime.integrity``).
* ``ensure_engine`` is the cache: it rebuilds only when the ONNX sha256, the TensorRT version,
  the GPU or the build options differ from the sidecar's (``engine_sidecar.stale_reason``).

Where ``tensorrt`` is not importable, ``trtexec_command`` gives the equivalent command line.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mtm_runtime.backends import backend_class
from mtm_runtime.checkpoint import parse_metadata
from mtm_runtime.engine_sidecar import (FP16_TOLERANCE, FP32_TOLERANCE, build_options, engine_section,
                                        read_engine_sidecar, sidecar_path, stale_reason)
from mtm_runtime.fileio import sha256_bytes
from mtm_runtime.integrity import Trust, stamp_json
from mtm_runtime.onnx_graph import parity_cases
from mtm_runtime.onnx_metadata import exported_chunk, read_onnx_metadata


class EngineError(RuntimeError):
    """Engine build, parse or parity failure; the message names the step and the cause."""


def tensorrt_status() -> tuple[bool, str]:
    """(importable, version or the reason it is not)."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return False, f"tensorrt is not importable here ({type(e).__name__}: {e})"
    return True, str(trt.__version__)


def trtexec_command(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = False,
                    workspace_mib: int = 1024, timing_cache: str | os.PathLike | None = None,
                    version_compatible: bool = False) -> str:
    """The ``trtexec`` line (TensorRT 10 syntax) that builds the same engine as ``build_engine``.

    Shapes are static in the graph, so no --shapes/--optShapes are needed. For TensorRT 11, drop
    --fp16 and pass an ONNX rewritten by ``onnx_fp16_matmuls`` with --stronglyTyped.
    """
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
            f"--memPoolSize=workspace:{int(workspace_mib)}M", "--skipInference"]
    if fp16:  # trtexec cannot pin layers by type; build_engine also pins norm/softmax to fp32
        args += ["--fp16"]
    else:
        args += ["--noTF32"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if version_compatible:
        args.append("--versionCompatible")
    return " ".join(shlex.quote(a) for a in args)


# ---- fp16 by graph rewrite (TensorRT 11, strongly typed) -------------------------------------------
FP16_OPS = ("MatMul", "Gemm")


def onnx_fp16_matmuls(onnx_bytes: bytes) -> bytes:
    """Run MatMul/Gemm in fp16: constant weight inputs are stored as fp16 initializers, other
    inputs get a Cast to fp16, and each output is cast back to fp32. LayerNormalization,
    Softmax, the attention bias and all elementwise ops stay fp32; graph IO stays fp32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    new_nodes = []
    converted: dict[str, str] = {}
    for node in g.node:
        if node.op_type not in FP16_OPS:
            new_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if not name:
                continue
            if name in inits and inits[name].data_type == TensorProto.FLOAT:
                if name not in converted:
                    arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                    new = f"{name}__fp16"
                    g.initializer.append(numpy_helper.from_array(arr, new))
                    converted[name] = new
                node.input[k] = converted[name]
            else:
                cast_out = f"{name}__to_fp16_{node.name}"
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=TensorProto.FLOAT16,
                                                  name=f"{node.name}/cast_in{k}"))
                node.input[k] = cast_out
        out = node.output[0]
        half = f"{out}__fp16"
        node.output[0] = half
        new_nodes.append(node)
        new_nodes.append(helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT, name=f"{node.name}/cast_out"))
    # drop fp32 initializers that only fed converted MatMuls
    still_used = {i for n in new_nodes for i in n.input}
    keep = [i for i in g.initializer if i.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale fp32 annotations on rewired tensors
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# ---- device identity -------------------------------------------------------------------------------
def gpu_identity() -> dict[str, Any]:
    """{"name", "compute_capability"} of CUDA device 0 (torch, else cuda-python), or {} without CUDA."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            return {}
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return {}
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


# ---- build -------------------------------------------------------------------------------------------
def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = False,
                 workspace_mib: int = 1024, timing_cache: str | os.PathLike | None = None,
                 version_compatible: bool = False, parity: bool = True,
                 log: Callable[[str], None] = print, trust: Trust | None = None) -> dict[str, Any]:
    """Build ``engine_path`` and its sidecar from ``onnx_path``; returns the sidecar dict.

    EngineError (after printing every parser error) if TensorRT cannot parse or build, or if
    the engine misses parity with ONNX Runtime (fp32 1e-4, fp16 2e-2 max abs diff).
    """
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_onnx_metadata(onnx_path, trust)  # refuses a graph not exported by mtm_runtime, or changed
    onnx_bytes = onnx_path.read_bytes()
    has_fp16_flag = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 10 yes, 11 no
    has_strong = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    fp16_by_flag = fp16 and has_fp16_flag
    graph = onnx_fp16_matmuls(onnx_bytes) if fp16 and not has_fp16_flag else onnx_bytes
    strongly_typed = has_strong and not fp16_by_flag

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph, str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        for e in errors:
            log(f"TensorRT ONNX parser: node {e.node()} ({e.node_name()}, op {e.node_operator()}): "
                f"{e.desc()} [{e.code()}]")
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser reported {len(errors)} error(s) (printed above)")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = tuple(t.shape)
        profile.set_shape(t.name, shape, shape, shape)  # static: min = opt = max
    config.add_optimization_profile(profile)
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if fp16_by_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in pinned:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build the engine (see the log above)")
    build_s = time.perf_counter() - t0
    engine_bytes = bytes(serialized)
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    tmp.write_bytes(engine_bytes)
    os.replace(tmp, engine_path)
    sidecar = dict(meta)
    sidecar["engine"] = {
        "tensorrt_version": str(trt.__version__), "gpu": gpu_identity(),
        "source_onnx_sha256": sha256_bytes(onnx_bytes), "engine_sha256": sha256_bytes(engine_bytes),
        "options": build_options(fp16, workspace_mib, version_compatible),
        "strongly_typed": strongly_typed, "fp16_method": ("builder flag" if fp16_by_flag else
                                                          "onnx casts" if fp16 else None),
        "build_s": round(build_s, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_sidecar(engine_path, sidecar, trust)
    if parity:
        sidecar["engine"]["parity_max_abs_diff"] = check_engine_parity(engine_path, onnx_bytes, fp16)
        write_sidecar(engine_path, sidecar, trust)
    return sidecar


def write_sidecar(engine_path: Path, sidecar: dict[str, Any], trust: Trust | None = None) -> None:
    """Write ``sidecar`` (stamped over itself and the engine bytes) next to ``engine_path``, atomically."""
    p = sidecar_path(engine_path)
    tmp = p.with_name(f".{p.name}.tmp")
    stamped = stamp_json(sidecar, engine_section(engine_path), trust)
    tmp.write_text(json.dumps(stamped, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


def check_engine_parity(engine_path: str | os.PathLike, onnx_bytes: bytes, fp16: bool = False) -> float:
    """Engine vs ONNX Runtime (CPU) on ``onnx_graph.parity_cases``; EngineError above tolerance."""
    meta = read_engine_sidecar(engine_path)
    spec = parse_metadata(meta, engine_path)[0]
    batch = int(meta.get("export", {}).get("batch_size", 1))
    tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    ref = backend_class("onnxruntime")(onnx_bytes, spec, batch_size=batch, providers=["CPUExecutionProvider"], warmup=0)
    eng = backend_class("tensorrt")(engine_path, spec, batch_size=batch, warmup=0)
    worst = 0.0
    try:
        for label, x, m in parity_cases(spec, batch, chunk=exported_chunk(meta) or 1):
            a = ref.run(x, m).copy()
            b = eng.run(x, m)
            diff = float(np.max(np.abs(a - b))) if np.all(np.isfinite(b)) else float("inf")
            if not diff <= tol:
                raise EngineError(f"{engine_path}: parity with ONNX Runtime failed on {label}: "
                                  f"max abs diff {diff:.3g} > {tol:g}")
            worst = max(worst, diff)
    finally:
        eng.close()
        ref.close()
    return worst


def ensure_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = False,
                  workspace_mib: int = 1024, timing_cache: str | os.PathLike | None = None,
                  version_compatible: bool = False, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Engine cache: (engine path, rebuilt?). Rebuilds only if the engine or sidecar is missing
    or the ONNX sha256, TensorRT version, GPU or build options changed."""
    import tensorrt as trt

    reason = stale_reason(onnx_path, engine_path, str(trt.__version__), gpu_identity(),
                          build_options(fp16, workspace_mib, version_compatible))
    if reason is None:
        return Path(engine_path), False
    log(f"building {engine_path}: {reason}")
    build_engine(onnx_path, engine_path, fp16, workspace_mib, timing_cache, version_compatible, log=log)
    return Path(engine_path), True


__all__ = ["EngineError", "tensorrt_status", "trtexec_command", "FP16_OPS", "onnx_fp16_matmuls", "gpu_identity",
           "build_engine", "write_sidecar", "check_engine_parity", "ensure_engine"]
