"""PyTorch backends: eager (CPU or CUDA) and CUDA-graph replay.

``torch``: eager inference with preallocated host output. By default it runs the static graph
(``MTM.forward``); ``packed_encoder=True`` gathers the visible tokens into the encoder instead
(same result, fewer FLOPs) — measured slower at batch 1 on 2 CPU cores, where reading the
weights dominates (benchmarks/results/model_forward.json: paper preset p50 7.6 ms packed vs
7.0 ms static), so it is meant for large batches.
``torch-cudagraph``: static device buffers, the forward captured once into a CUDA graph and
replayed each step (needs CUDA; refused with a clear error elsewhere).
"""
from __future__ import annotations

import numpy as np
import torch

from mtm_runtime.backends.base import Backend, BackendError
from mtm_runtime.model import MTM


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: MTM, batch_size: int = 1, device: str = "cpu", threads: int | None = None,
                 packed_encoder: bool = False, warmup: int = 10) -> None:
        super().__init__(model.spec, batch_size)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: device 'cuda' requested but torch.cuda.is_available() is False")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.packed_encoder = packed_encoder
        self._out = np.zeros(self.output_shape, np.float32)
        self._out_t = torch.from_numpy(self._out)
        self.warmup(warmup)

    @torch.inference_mode()
    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x).to(self.device, non_blocking=True)
        mt = torch.from_numpy(mask).to(self.device, non_blocking=True)
        y = self.model.forward_train(xt, mt) if self.packed_encoder else self.model(xt, mt)
        self._out_t.copy_(y)
        return self._out

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "device": str(self.device), "threads": torch.get_num_threads(),
                "packed_encoder": self.packed_encoder}


class CudaGraphBackend(Backend):
    """Captures ``model(x, mask)`` into a CUDA graph once; each ``run`` copies the inputs into the
    static device buffers, replays, and copies the output into pinned host memory."""

    name = "torch-cudagraph"

    def __init__(self, model: MTM, batch_size: int = 1, device: str = "cuda", warmup: int = 10) -> None:
        super().__init__(model.spec, batch_size)
        if not torch.cuda.is_available():
            raise BackendError("torch-cudagraph backend needs CUDA; torch.cuda.is_available() is False here")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._x = torch.zeros(self.input_shapes["x"], device=self.device)
        self._m = torch.ones(self.input_shapes["mask"], device=self.device)
        self._x_host = torch.zeros(self.input_shapes["x"]).pin_memory()
        self._m_host = torch.zeros(self.input_shapes["mask"]).pin_memory()
        self._out_host = torch.zeros(self.output_shape).pin_memory()
        self._out = self._out_host.numpy()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels/allocator on a side stream before capture
                self.model(self._x, self._m)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self._y = self.model(self._x, self._m)
        self.warmup(warmup)

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self._x_host.numpy()[...] = x
        self._m_host.numpy()[...] = mask
        self._x.copy_(self._x_host, non_blocking=True)
        self._m.copy_(self._m_host, non_blocking=True)
        self.graph.replay()
        self._out_host.copy_(self._y, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return self._out

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "device": torch.cuda.get_device_name(self.device)}
