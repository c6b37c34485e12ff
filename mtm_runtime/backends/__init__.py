"""Backends behind one interface (``base.Backend``), chosen by name.

The table is explicit (nothing registers itself on import) and modules are imported only when
their backend is asked for, so a machine without onnxruntime or TensorRT can still run torch.

    name               module                                class           model source
    torch              mtm_runtime.backends.torch_backend    TorchBackend    MTM module
    torch-cudagraph    mtm_runtime.backends.torch_backend    CudaGraphBackend MTM module
    onnxruntime        mtm_runtime.backends.ort_backend      OrtBackend      ONNX path or bytes
    tensorrt           mtm_runtime.backends.trt_backend      TrtBackend      engine path
"""
from __future__ import annotations

import importlib
from typing import Callable

from mtm_runtime.backends.base import Backend, BackendError

BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("mtm_runtime.backends.torch_backend", "TorchBackend", "torch"),
    "torch-cudagraph": ("mtm_runtime.backends.torch_backend", "CudaGraphBackend", "torch"),
    "onnxruntime": ("mtm_runtime.backends.ort_backend", "OrtBackend", "onnx"),
    "tensorrt": ("mtm_runtime.backends.trt_backend", "TrtBackend", "engine"),
}


def backend_class(name: str) -> Callable[..., Backend]:  # subclasses differ in their constructor
    """The class for a backend name; BackendError naming the choices or the missing dependency."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module, cls, _ = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise BackendError(f"backend {name!r} is not available here: {e}") from None


def source_kind(name: str) -> str:
    """What a backend loads from: "torch" (an MTM module), "onnx" or "engine"."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name][2]


def available_backends() -> dict[str, str]:
    """{name: "ok" | reason it cannot run here} — probes imports and devices, builds nothing."""
    out: dict[str, str] = {}
    for name in BACKENDS:
        try:
            backend_class(name)
            out[name] = "ok"
        except BackendError as e:
            out[name] = str(e)
            continue
        if name in ("torch-cudagraph",):
            import torch
            if not torch.cuda.is_available():
                out[name] = "needs CUDA (torch.cuda.is_available() is False)"
    return out


__all__ = ["BACKENDS", "Backend", "BackendError", "available_backends", "backend_class", "source_kind"]
