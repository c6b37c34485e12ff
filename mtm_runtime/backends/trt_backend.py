"""TensorRT backend: deserialise an engine, enqueue with ``execute_async_v3``.

Memory and streams come from **torch's CUDA** (device tensors for the bindings, pinned host
tensors for the copies, a ``torch.cuda.Stream``): torch is already on every target (JetPack
ships a CUDA wheel) and this avoids a second CUDA binding (cuda-python) with its own error
handling. TensorRT only sees raw pointers (``set_tensor_address``) and the stream handle.

One step: numpy -> pinned host (memcpy) -> device (async H2D) -> enqueue (or replay the CUDA
graph that captured it) -> pinned host output (async D2H) -> stream sync -> the pinned output
viewed as numpy (the same array every call). With ``cuda_graph=True`` the enqueue is captured
once into a CUDA graph after one plain enqueue (TensorRT needs that to settle its deferred
state); the copies stay outside the graph.

TensorRT 10 API used: ``Runtime.deserialize_cuda_engine``, ``engine.num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_shape``, ``get_tensor_dtype``,
``create_execution_context``, ``context.set_input_shape``, ``context.set_tensor_address``,
``context.execute_async_v3``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorrt as trt  # ImportError here -> the registry reports "tensorrt is not available here"

from mtm_runtime.backends.base import Backend, BackendError
from mtm_runtime.spec import TrajectorySpec


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, spec: TrajectorySpec, batch_size: int = 1,
                 cuda_graph: bool = False, warmup: int = 10) -> None:
        super().__init__(spec, batch_size)
        import torch

        if not torch.cuda.is_available():
            raise BackendError("tensorrt backend: needs CUDA; torch.cuda.is_available() is False")
        p = Path(engine_path)
        if not p.is_file():
            raise BackendError(f"tensorrt backend: {p}: no such engine file")
        self._trt, self._torch = trt, torch
        self.engine_path = p
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(p.read_bytes())
        if self.engine is None:
            raise BackendError(f"tensorrt backend: {p}: TensorRT could not deserialise the engine "
                               "(built for another TensorRT version or GPU? rebuild with `mtm export trt`)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.device = torch.device("cuda")

        want = {"x": self.input_shapes["x"], "mask": self.input_shapes["mask"], "y": self.output_shape}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted(want):
            raise BackendError(f"tensorrt backend: engine IO tensors {names}, expected {sorted(want)}")
        self._dev: dict[str, torch.Tensor] = {}
        self._host: dict[str, torch.Tensor] = {}
        for n in names:
            shape = tuple(self.engine.get_tensor_shape(n))
            is_input = self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
            if self.engine.get_tensor_dtype(n) != trt.float32:
                raise BackendError(f"tensorrt backend: tensor {n!r} is {self.engine.get_tensor_dtype(n)}, expected float32")
            if any(d < 0 for d in shape):  # a dynamic engine: pin this backend's static shape
                if not is_input:
                    shape = want[n]
                else:
                    self.context.set_input_shape(n, want[n])
                    shape = want[n]
            if shape != tuple(want[n]):
                raise BackendError(f"tensorrt backend: tensor {n!r} has shape {shape}, expected {want[n]} "
                                   f"(engine built for another spec or batch size)")
            self._dev[n] = torch.zeros(shape, dtype=torch.float32, device=self.device)
            self._host[n] = torch.zeros(shape, dtype=torch.float32).pin_memory()
            self.context.set_tensor_address(n, self._dev[n].data_ptr())
        self._x_np = self._host["x"].numpy()
        self._m_np = self._host["mask"].numpy()
        self._y_np = self._host["y"].numpy()
        self.cuda_graph = None
        if cuda_graph:
            self._capture()
        self.warmup(warmup)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("tensorrt backend: execute_async_v3 failed")

    def _capture(self) -> None:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            self._enqueue()  # settle TensorRT's deferred state before capture
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._enqueue()
        self.cuda_graph = graph

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Inputs -> pinned -> device; enqueue (or graph replay); output -> pinned; sync."""
        torch = self._torch
        np.copyto(self._x_np, x, casting="same_kind")
        np.copyto(self._m_np, mask, casting="same_kind")
        with torch.cuda.stream(self.stream):
            self._dev["x"].copy_(self._host["x"], non_blocking=True)
            self._dev["mask"].copy_(self._host["mask"], non_blocking=True)
            if self.cuda_graph is not None:
                self.cuda_graph.replay()
            else:
                self._enqueue()
            self._host["y"].copy_(self._dev["y"], non_blocking=True)
        self.stream.synchronize()
        return self._y_np

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "device": self._torch.cuda.get_device_name(0),
                "tensorrt": str(self._trt.__version__), "cuda_graph": self.cuda_graph is not None,
                "engine": str(self.engine_path)}

    def close(self) -> None:
        for attr in ("cuda_graph", "context", "engine", "runtime"):
            self.__dict__.pop(attr, None)
