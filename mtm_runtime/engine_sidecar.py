"""A TensorRT engine's sidecar: reading and verifying it, the engine's tolerances, staleness.

    meta = read_engine_sidecar("model.engine")   # model.engine.json, stamp checked against both files

The sidecar ``model.engine.json`` (written by ``mtm_runtime.export.trt_engine.build_engine``) is
the checkpoint metadata from the ONNX file (its behavioural fingerprint included) plus an
``engine`` record: TensorRT version, GPU name, compute capability, sha256 of the source ONNX and
of the engine, build options (``build_options``), parity against ONNX Runtime; and an
``integrity`` stamp over all of it and the engine bytes (``mtm_runtime.integrity``), verified by
``read_engine_sidecar``. ``stale_reason`` says why a cached engine cannot be reused (the engine
cache, ``export.trt_engine.ensure_engine``, rebuilds only then). Nothing here needs TensorRT.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtm_runtime.checkpoint import CheckpointError
from mtm_runtime.fileio import sha256_file
from mtm_runtime.integrity import Trust, check_json_stamp, read_json_object
from mtm_runtime.onnx_graph import PARITY_TOLERANCE

SIDECAR_SUFFIX = ".json"
FP32_TOLERANCE = 1e-4  # engine vs ONNX Runtime, max abs diff, normalised units
FP16_TOLERANCE = 2e-2


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def build_options(fp16: bool, workspace_mib: int, version_compatible: bool) -> dict[str, Any]:
    """The ``engine.options`` record: the build options a cached engine must match."""
    return {"fp16": bool(fp16), "workspace_mib": int(workspace_mib), "version_compatible": bool(version_compatible)}


def engine_section(engine_path: str | os.PathLike) -> dict[str, str]:
    """The section the sidecar's stamp adds for the engine bytes."""
    return {"engine_file": sha256_file(engine_path)}


def engine_output_tolerance(sidecar: dict[str, Any]) -> float:
    """How far an engine's outputs may be from the PyTorch model's (its fingerprint check): the
    engine's parity bound against ONNX Runtime plus ONNX Runtime's against PyTorch."""
    fp16 = bool(sidecar.get("engine", {}).get("options", {}).get("fp16"))
    return (FP16_TOLERANCE if fp16 else FP32_TOLERANCE) + PARITY_TOLERANCE


def stale_reason(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, trt_version: str,
                 gpu: dict[str, Any], options: dict[str, Any]) -> str | None:
    """Why a cached engine cannot be reused (None if it can). Pure: no TensorRT needed."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return "no engine yet"
    try:
        eng = read_engine_sidecar(engine_path).get("engine", {})
    except CheckpointError as e:
        return f"sidecar unusable ({e})"
    if eng.get("source_onnx_sha256") != sha256_file(onnx_path):
        return "the ONNX file changed"
    if eng.get("engine_sha256") != sha256_file(engine_path):
        return "the engine file changed"
    if eng.get("tensorrt_version") != trt_version:
        return f"TensorRT changed ({eng.get('tensorrt_version')} -> {trt_version})"
    if eng.get("gpu") != gpu:
        return f"GPU changed ({eng.get('gpu')} -> {gpu})"
    if eng.get("options") != options:
        return f"build options changed ({eng.get('options')} -> {options})"
    return None


def read_engine_sidecar(path: str | os.PathLike, trust: Trust | None = None) -> dict[str, Any]:
    """The sidecar of ``model.engine`` (``model.engine.json``): checkpoint metadata + ``engine``.

    CheckpointError naming the file when the engine or sidecar is missing, the JSON is bad, or
    the stamp does not match the sidecar and the engine bytes.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "(file)", "missing")
    sp = sidecar_path(p)
    meta = read_json_object(sp, missing="missing: every engine needs its sidecar (built by `mtm export trt`)")
    if not isinstance(meta.get("engine"), dict):
        raise CheckpointError(sp, "engine", "missing: not an engine sidecar")
    check_json_stamp(meta, sp, engine_section(p), trust)
    return meta


__all__ = ["SIDECAR_SUFFIX", "FP32_TOLERANCE", "FP16_TOLERANCE", "sidecar_path", "build_options",
           "engine_section", "engine_output_tolerance", "stale_reason", "read_engine_sidecar"]
