"""ONNX Runtime backend: one static-shape session, IO binding, no per-step allocation.

``OrtBackend(onnx, spec)`` takes a path or the model bytes (``export_onnx`` returns them). Each
``run`` copies the inputs into preallocated numpy arrays that are bound once as OrtValues, runs
the session with the binding, and returns the preallocated output array (the same object every
call: copy what you keep). Providers default to TensorRT > CUDA > CPU, whichever the installed
onnxruntime offers; on a GPU provider the binding is to host memory (ORT copies), which keeps
the contract identical and is the right trade at batch 1.

Session defaults, measured for the ``embedded`` preset, batch 1, BC mask, on the 2-core AMD EPYC
dev VM (ORT 1.32, 2000 steps each, ``python -m mtm_runtime.backends.ort_backend`` reprints it;
load average ~1.3 from other work at the time)::

    intra_op  spinning  execution    p50 us   p99 us
    1         on        sequential     167      279    <- default
    1         off       sequential     168      306
    2         on        sequential     183      321    (the pool's 2nd thread competes with
    2         off       sequential     215      348     the control loop / ROS for 2 cores)
    1         on        parallel       167      242    (same within noise: one branch-free graph)

so: intra_op 1, inter_op 1, sequential execution, ORT_ENABLE_ALL. Spinning only matters with
intra_op > 1 (the pool's threads spin between runs), so it is off by default there to give the
other core back. For the ``paper`` preset intra_op 2 cuts p50 (2.8 vs 3.8-4.0 ms) when the second
core is idle; pass ``intra_op_threads=2`` if it is.

``quantize="int8"`` (opt-in) runs ONNX Runtime's dynamic int8 quantisation of the MatMuls
(``onnx_int8.quantize_int8``: 7-bit per-channel weights, so the integer MatMuls are exact and
the same on every CPU, VNNI or not) and refuses the result unless it stays within
``onnx_int8.INT8_TOLERANCE`` of the fp32 graph on the parity cases.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtm_runtime.backends.base import Backend, BackendError
from mtm_runtime.onnx_graph import ExportError
from mtm_runtime.onnx_int8 import INT8_TOLERANCE, check_int8_parity, quantize_int8
from mtm_runtime.spec import TrajectorySpec

#: provider preference, best first; only those the installed onnxruntime offers are used
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_providers() -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in have] or ["CPUExecutionProvider"]


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx: str | os.PathLike | bytes, spec: TrajectorySpec, batch_size: int = 1,
                 providers: Sequence[str] | None = None, intra_op_threads: int = 1,
                 inter_op_threads: int = 1, warmup: int = 10, spinning: bool | None = None,
                 parallel_execution: bool = False, optimization: str = "all",
                 quantize: str | None = None) -> None:
        super().__init__(spec, batch_size)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError(f"onnxruntime backend: onnxruntime is not installed ({e})") from None
        model = self._load_bytes(onnx)
        self.quantized = None
        if quantize is not None:
            if quantize != "int8":
                raise BackendError(f"onnxruntime backend: quantize must be None or 'int8', got {quantize!r}")
            q = quantize_int8(model)
            try:
                self.int8_max_abs_diff = check_int8_parity(model, q, spec, batch_size)
            except ExportError as e:
                raise BackendError(f"onnxruntime backend: {e}") from None
            model, self.quantized = q, "int8"
            self.output_tolerance = INT8_TOLERANCE + self.output_tolerance  # int8 vs fp32 graph vs torch

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if optimization not in levels:
            raise BackendError(f"onnxruntime backend: optimization must be one of {', '.join(levels)}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(intra_op_threads)
        so.inter_op_num_threads = int(inter_op_threads)
        so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if parallel_execution
                             else ort.ExecutionMode.ORT_SEQUENTIAL)
        so.graph_optimization_level = levels[optimization]
        so.log_severity_level = 3
        if spinning is None:
            spinning = int(intra_op_threads) <= 1  # see the module docstring
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        self.options = {"intra_op_threads": int(intra_op_threads), "inter_op_threads": int(inter_op_threads),
                        "spinning": bool(spinning), "parallel_execution": bool(parallel_execution),
                        "optimization": optimization, "quantize": quantize}

        want = list(providers) if providers else default_providers()
        missing = [p for p in want if p not in ort.get_available_providers()]
        if missing:
            raise BackendError(f"onnxruntime backend: providers {missing} are not available here "
                               f"(available: {', '.join(ort.get_available_providers())})")
        try:
            self.session = ort.InferenceSession(model, so, providers=want)
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime backend: could not create a session: {e}") from None
        self._check_io()

        # Preallocated host buffers bound once; run() copies into them and returns _y.
        self._x = np.zeros(self.input_shapes["x"], np.float32)
        self._m = np.ones(self.input_shapes["mask"], np.float32)
        self._y = np.zeros(self.output_shape, np.float32)
        self._binding = self.session.io_binding()
        for name, arr in (("x", self._x), ("mask", self._m)):
            self._binding.bind_input(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        self._y_ort = ort.OrtValue.ortvalue_from_numpy(self._y, "cpu", 0)
        self._binding.bind_ortvalue_output("y", self._y_ort)
        # "gpu_graph_id" set to its default (0) on purpose: onnxruntime's Python wrapper looks it up
        # on every run, and when unset pays a raised-and-caught RuntimeError (0.13 ms of a 0.4 ms
        # act() measured in the policy node at 500 Hz, onnxruntime 1.32).
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("gpu_graph_id", "0")
        self.warmup(warmup)

    @staticmethod
    def _load_bytes(onnx: str | os.PathLike | bytes) -> bytes:
        if isinstance(onnx, (bytes, bytearray)):
            return bytes(onnx)
        p = Path(onnx)
        if not p.is_file():
            raise BackendError(f"onnxruntime backend: {p}: no such ONNX file")
        return p.read_bytes()

    def _check_io(self) -> None:
        ins = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        outs = {o.name: tuple(o.shape) for o in self.session.get_outputs()}
        want_in = {k: tuple(v) for k, v in self.input_shapes.items()}
        if ins != want_in or outs != {"y": tuple(self.output_shape)}:
            raise BackendError(f"onnxruntime backend: graph IO {ins} -> {outs} does not match the spec "
                               f"and batch size ({want_in} -> y {self.output_shape}); re-export with "
                               f"--batch-size {self.batch_size}")

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Copy inputs into the bound buffers, run, return the bound output (reused each call)."""
        np.copyto(self._x, x, casting="same_kind")
        np.copyto(self._m, mask, casting="same_kind")
        self.session.run_with_iobinding(self._binding, self._run_options)
        return self._y

    def describe(self) -> dict[str, object]:
        import onnxruntime as ort

        return {**super().describe(), "providers": self.session.get_providers(),
                "onnxruntime": ort.__version__, **self.options}

    def close(self) -> None:
        self.__dict__.pop("session", None)
        self.__dict__.pop("_binding", None)


def _measure(onnx_bytes: bytes, spec: TrajectorySpec, steps: int = 2000) -> list[dict[str, Any]]:
    """Time the session-option grid of the module docstring (batch 1, BC mask)."""
    import time

    from mtm_runtime.masks import bc_mask

    x = np.random.default_rng(0).standard_normal((1, spec.horizon, spec.packed_width)).astype(np.float32)
    m = bc_mask(spec)[None].copy()
    rows = []
    for intra, spin, par in [(1, True, False), (1, False, False), (2, True, False), (2, False, False), (1, True, True)]:
        be = OrtBackend(onnx_bytes, spec, intra_op_threads=intra, spinning=spin, parallel_execution=par, warmup=200)
        t = np.empty(steps)
        for i in range(steps):
            t0 = time.perf_counter()
            be.run(x, m)
            t[i] = time.perf_counter() - t0
        rows.append({"intra_op": intra, "spinning": spin, "parallel": par,
                     "p50_us": float(np.percentile(t, 50) * 1e6), "p99_us": float(np.percentile(t, 99) * 1e6)})
        be.close()
    return rows


if __name__ == "__main__":  # python -m mtm_runtime.backends.ort_backend [preset]
    import json
    import sys

    from mtm_runtime.checkpoint import Checkpoint
    from mtm_runtime.model import build_model
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.onnx_graph import checked_graph

    preset = sys.argv[1] if len(sys.argv) > 1 else "embedded"
    spec = TrajectorySpec.create(4, states=11, actions=3, returns=1)
    net = build_model(spec, preset)
    ck = Checkpoint(spec, net.cfg, Normaliser.identity(spec), dict(net.state_dict()))
    for row in _measure(checked_graph(ck).proto.SerializeToString(), spec):
        print(json.dumps(row))
