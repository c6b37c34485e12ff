"""MTM as a representation: encoder features of the current window, for downstream RL.

The feature of a window is the encoder output (``MTM.encode``, after the final LayerNorm) at the
newest step ``t = T-1`` ("now", the runtime's convention):

* ``kind="state"``: the states token at ``T-1`` -> ``[B, d]``;
* ``kind="state_action"``: states and actions tokens at ``T-1``, concatenated -> ``[B, 2d]``
  (the action at ``T-1`` must be visible in the mask, else its row is meaningless).

Which tokens the encoder reads is a mask, as everywhere in the runtime (``feature_mask``)::

    states   # # # #      every step of the window
    actions  # # # .      past (executed) actions; ``state_action`` also shows a[T-1]
    goals    # # # #      the goal, if the spec has one
    returns  . . . .      hidden: features must not depend on the reward that produced the data

ANDed with what the buffer holds (short history hidden, never zero-padded). Hidden token values
never reach the encoder (``MTM.embed_tokens`` zeroes them and the attention bias removes them),
so features depend only on visible tokens.

Three ways to get features:

* torch, batched: ``FeatureExtractor(mtm)(x [B,T,D], mask [B,T,M]) -> [B, F]``, an nn.Module
  usable frozen (``.freeze()``) or fine-tuned (gradients flow into the MTM encoder);
* offline data: ``episode_windows`` builds, for every step of every episode, the window ending at
  that step (runtime layout) and its availability; ``dataset_features`` runs the extractor on them;
* run time: ``RuntimeFeatures`` keeps a ``TrajectoryBuffer`` like ``Policy`` and returns the
  feature of the current step (``features(state)``, then ``record_action(a)``), through the
  torch module or an ONNX graph in ONNX Runtime (``export_features_onnx`` -> ``features.onnx``,
  inputs ``x``/``mask``, output ``features``, same metadata conventions as ``model.onnx``).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from mtm_runtime import masks as M
from mtm_runtime.buffer import TrajectoryBuffer
from mtm_runtime.checkpoint import Checkpoint, CheckpointError, load_checkpoint, parse_metadata
from mtm_runtime.fileio import atomic_write
from mtm_runtime.model import MTM
from mtm_runtime.normalise import Normaliser
from mtm_runtime.onnx_graph import SUPPORTED_OPSETS, ExportError, check_allowed_ops, trace_graph
from mtm_runtime.onnx_metadata import read_onnx_metadata, set_metadata, weights_sha256
from mtm_runtime.spec import ACTIONS, GOALS, STATES, TrajectorySpec

FEATURE_KINDS = ("state", "state_action")
FEATURES_OUTPUT = "features"
FEATURES_METADATA_KEY = "mtm_runtime.features"


def feature_mask(spec: TrajectorySpec, kind: str = "state") -> np.ndarray:
    """``[T, M]`` mask the features are computed under (see the module docstring)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
    m = np.zeros((spec.horizon, spec.num_modalities), np.float32)
    m[:, spec.index(STATES)] = 1.0
    if GOALS in spec:
        m[:, spec.index(GOALS)] = 1.0
    if ACTIONS in spec:
        m[:-1, spec.index(ACTIONS)] = 1.0
        if kind == "state_action":
            m[-1, spec.index(ACTIONS)] = 1.0
    elif kind == "state_action":
        raise ValueError("state_action features need an 'actions' modality in the spec")
    return m


class FeatureExtractor(nn.Module):
    """``forward(x [B, T, D] normalised, mask [B, T, M]) -> features [B, F]`` (float32).

    Wraps (shares, does not copy) ``mtm``'s embedding + encoder; the decoder is unused. Frozen:
    ``freeze()`` (no grad, eval mode). Fine-tuned: leave parameters trainable and put them in
    your optimiser (``encoder_parameters()``). ``packed=True`` runs the visible-tokens-only
    encoder (faster on CPU, data-dependent shapes); the export path always uses the static one.
    Invariant: the feature rows are always visible tokens for masks from ``feature_mask``.
    """

    def __init__(self, mtm: MTM, kind: str = "state", packed: bool = False,
                 normaliser: Normaliser | None = None) -> None:
        super().__init__()
        self.normaliser = normaliser  # the checkpoint's; run-time buffers normalise with it
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
        self.mtm, self.kind, self.packed = mtm, kind, packed
        spec = mtm.spec
        self.spec = spec
        last = spec.horizon - 1
        rows = [spec.token_index(last, STATES)]
        if kind == "state_action":
            rows.append(spec.token_index(last, ACTIONS))
        self.rows = tuple(rows)
        self.feature_dim = len(rows) * mtm.cfg.d_model

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters the features depend on (embeddings + encoder; not the decoder)."""
        m = self.mtm
        mods: list[Any] = [m.embed, m.encoder, m.enc_norm]
        params = [p for mod in mods for p in mod.parameters()]
        return params + [m.enc_modality, m.enc_time]

    def freeze(self) -> "FeatureExtractor":
        for p in self.mtm.parameters():
            p.requires_grad_(False)
        return self.eval()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        enc = self.mtm.encode_packed(x, mask) if self.packed else self.mtm.encode(x, mask)
        if len(self.rows) == 1:
            return enc[:, self.rows[0]]
        return torch.cat([enc[:, r] for r in self.rows], dim=-1)


def extractor_from_checkpoint(ckpt: Checkpoint | str | os.PathLike, kind: str = "state",
                              frozen: bool = True, packed: bool = False) -> FeatureExtractor:
    """A FeatureExtractor owning a fresh copy of the checkpoint's MTM (frozen by default)."""
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    fx = FeatureExtractor(ckpt.build_model(), kind, packed, ckpt.normaliser)
    return fx.freeze() if frozen else fx.train()


# ---- offline data: the window ending at every step -------------------------------------------
def episode_windows(episodes: Sequence[dict], spec: TrajectorySpec, normaliser: Normaliser,
                    kind: str = "state") -> tuple[np.ndarray, np.ndarray]:
    """For every step of every episode (concatenated in order), the runtime window ending there.

    Returns ``x [N, T, D]`` (normalised; hidden entries 0) and ``mask [N, T, M]`` =
    ``feature_mask(kind)`` AND availability (steps before the episode start are hidden, as in the
    runtime buffer). Episodes are dicts ``name -> [L, width]`` (``mtm_runtime.training.loaders.Episode``);
    modalities an episode lacks (``present[name]`` False, or absent) are hidden.
    """
    T, D = spec.horizon, spec.packed_width
    base = feature_mask(spec, kind)
    xs, ms = [], []
    for ep in episodes:
        L = len(ep[STATES])
        present = getattr(ep, "present", {})
        seq = np.zeros((L + T - 1, D), np.float32)          # T-1 empty rows, then the episode
        avail = np.zeros((L + T - 1, spec.num_modalities), np.float32)
        for m, name in enumerate(spec.names):
            if name in ep and present.get(name, True):
                seq[T - 1:, spec.slice(name)] = normaliser.normalise(name, ep[name])
                avail[T - 1:, m] = 1.0
        idx = np.arange(L)[:, None] + np.arange(T)[None, :]  # window ending at step t: rows t..t+T-1
        xs.append(seq[idx])
        ms.append(avail[idx] * base)
    x = np.concatenate(xs).astype(np.float32)
    mask = np.concatenate(ms).astype(np.float32)
    return x * np.repeat(mask, spec.widths, axis=-1), mask


@torch.no_grad()
def dataset_features(extractor: FeatureExtractor, x: np.ndarray, mask: np.ndarray,
                     batch_size: int = 4096) -> np.ndarray:
    """Run ``extractor`` over ``x [N, T, D]``, ``mask [N, T, M]`` in chunks -> ``[N, F]`` float32."""
    was = extractor.training
    extractor.eval()
    out = np.empty((len(x), extractor.feature_dim), np.float32)
    for i in range(0, len(x), batch_size):
        out[i:i + batch_size] = extractor(torch.from_numpy(x[i:i + batch_size]),
                                          torch.from_numpy(mask[i:i + batch_size])).numpy()
    extractor.train(was)
    return out


# ---- ONNX: a second graph with output "features" ---------------------------------------------
def export_features_onnx(ckpt: Checkpoint, path: str | os.PathLike | None = None, kind: str = "state",
                         batch_size: int = 1, opset: int = 17, extractor: FeatureExtractor | None = None,
                         tolerance: float = 1e-4) -> bytes:
    """Export the feature function as ``(x [B,T,D], mask [B,T,M]) -> features [B, F]``.

    Uses the conventions of ``mtm_runtime.onnx_graph`` (TorchScript exporter, opset 17..20,
    onnxscript clean-up, TensorRT op allow-list, checkpoint metadata as JSON in
    ``metadata_props["mtm_runtime"]`` plus an ``export`` record with ``graph: "features"``,
    the kind and F), and refuses the graph unless ONNX Runtime matches torch within
    ``tolerance`` on every feature mask x history length and random inputs. ``extractor``
    overrides the checkpoint's weights (e.g. a fine-tuned encoder). Returns the model bytes.
    """
    import onnx

    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset!r} is not supported (17..20)")
    spec = ckpt.spec
    fx = extractor if extractor is not None else extractor_from_checkpoint(ckpt, kind)
    kind = fx.kind
    static = FeatureExtractor(fx.mtm, kind, packed=False).eval()
    x = torch.zeros(batch_size, spec.horizon, spec.packed_width)
    m = torch.from_numpy(np.broadcast_to(feature_mask(spec, kind), (batch_size, spec.horizon, spec.num_modalities)).copy())
    proto = trace_graph(static, x, m, FEATURES_OUTPUT, opset)
    proto.producer_name = "mtm_runtime.features"
    proto.doc_string = f"MTM features ({kind}) {spec.describe()} batch {batch_size}: (x, mask) -> features"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the features graph: {e}") from None
    check_allowed_ops(proto)
    outs = [(o.name, tuple(d.dim_value for d in o.type.tensor_type.shape.dim)) for o in proto.graph.output]
    if outs != [(FEATURES_OUTPUT, (batch_size, fx.feature_dim))]:
        raise ExportError(f"features graph outputs {outs}, expected [('features', {(batch_size, fx.feature_dim)})]")
    data = proto.SerializeToString()
    worst = features_parity(data, static, batch_size, tolerance)
    meta = ckpt.metadata()
    weights_sha = weights_sha256(ckpt) if extractor is None else "fine-tuned (not the checkpoint's weights)"
    meta["export"] = {"graph": "features", "feature_kind": kind, "feature_dim": fx.feature_dim,
                      "exporter": "torch.onnx.export(dynamo=False)", "torch_version": torch.__version__,
                      "opset": opset, "batch_size": batch_size, "source_weights_sha256": weights_sha,
                      "inputs": {"x": [batch_size, spec.horizon, spec.packed_width],
                                 "mask": [batch_size, spec.horizon, spec.num_modalities]},
                      "output": {FEATURES_OUTPUT: [batch_size, fx.feature_dim]},
                      "parity_max_abs_diff": worst}
    set_metadata(proto, meta, weights_sha)
    data = proto.SerializeToString()
    if path is not None:
        atomic_write(Path(path), data)
    return data


def features_parity_cases(spec: TrajectorySpec, kind: str, batch_size: int,
                          seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, x, mask): the feature mask with every history length 1..T, standard normal x."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(1, spec.horizon + 1):
        m = M.combine(feature_mask(spec, kind), M.history_mask(spec, k))
        x = rng.standard_normal((batch_size, spec.horizon, spec.packed_width)).astype(np.float32)
        cases.append((f"history:{k}", x, np.broadcast_to(m, (batch_size, *m.shape)).astype(np.float32)))
    return cases


def _ort_session(onnx_bytes: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def features_parity(onnx_bytes: bytes, extractor: FeatureExtractor, batch_size: int,
                    tolerance: float = 1e-4) -> float:
    """Worst max abs diff ONNX Runtime vs torch on ``features_parity_cases``; ExportError above
    ``tolerance``."""
    sess = _ort_session(onnx_bytes)
    worst = 0.0
    for label, x, m in features_parity_cases(extractor.spec, extractor.kind, batch_size):
        with torch.no_grad():
            ref = extractor(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        got = sess.run([FEATURES_OUTPUT], {"x": x, "mask": m})[0]
        diff = float(np.max(np.abs(got - ref))) if np.all(np.isfinite(got)) else float("inf")
        if not diff <= tolerance:
            raise ExportError(f"features parity failed on {label}: max abs diff {diff:.3g} > {tolerance:g}")
        worst = max(worst, diff)
    return worst


class OrtFeatures:
    """ONNX Runtime runner for a ``features.onnx`` graph: ``run(x, mask) -> [B, F]`` float32.
    Static batch from the graph (``input_shapes``)."""

    def __init__(self, onnx: str | os.PathLike | bytes, threads: int = 1) -> None:
        data = bytes(onnx) if isinstance(onnx, (bytes, bytearray)) else Path(onnx).read_bytes()
        self.session = _ort_session(data, threads)
        outs = self.session.get_outputs()
        if [o.name for o in outs] != [FEATURES_OUTPUT]:
            raise ValueError(f"not a features graph: outputs {[o.name for o in outs]}")
        self.output_shape = tuple(outs[0].shape)
        self.input_shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([FEATURES_OUTPUT], {"x": np.ascontiguousarray(x, np.float32),
                                                    "mask": np.ascontiguousarray(mask, np.float32)})[0]


def read_features_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a ``features.onnx`` (checkpoint metadata + ``export`` record)."""
    meta = read_onnx_metadata(path)
    if meta.get("export", {}).get("graph") != "features":
        raise CheckpointError(path, "export.graph", "not a features graph (export.graph != 'features')")
    return meta


# ---- run time: Policy's buffer conventions -----------------------------------------------------
class RuntimeFeatures:
    """Features of the current step with ``Policy``'s window conventions.

        rf = RuntimeFeatures.load("models/reacher_embedded", backend="onnxruntime")
        rf.reset()
        while running:
            phi = rf.features(state, goal=goal)   # float32 [F]; newest step at t = T-1
            a = my_policy(phi)
            rf.record_action(a)                  # executed action -> history of the next step

    ``state_action`` features need the candidate action: ``features(state, action=a)``.
    The returned array may be reused by the next call: copy what you keep.
    """

    def __init__(self, spec: TrajectorySpec, normaliser: Normaliser,
                 run: Callable[[np.ndarray, np.ndarray], np.ndarray], kind: str = "state",
                 metadata: dict[str, Any] | None = None) -> None:
        self.spec, self.normaliser, self._run, self.kind = spec, normaliser, run, kind
        self.metadata = dict(metadata or {})
        self.buffer = TrajectoryBuffer(spec, normaliser)
        self._base = feature_mask(spec, kind)[None]
        self._mask = np.zeros_like(self._base)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "torch", kind: str = "state") -> "RuntimeFeatures":
        """From a checkpoint directory (torch, or onnxruntime via an in-memory export) or a
        ``features.onnx`` file (onnxruntime; its kind comes from the metadata)."""
        p = Path(path)
        if p.is_dir():
            ckpt = load_checkpoint(p)
            if backend == "torch":
                fx = extractor_from_checkpoint(ckpt, kind)
                return cls(ckpt.spec, ckpt.normaliser, _torch_runner(fx), kind, ckpt.metadata())
            if backend == "onnxruntime":
                ort = OrtFeatures(export_features_onnx(ckpt, kind=kind))
                return cls(ckpt.spec, ckpt.normaliser, ort.run, kind, ckpt.metadata())
            raise ValueError(f"RuntimeFeatures: backend must be 'torch' or 'onnxruntime', got {backend!r}")
        meta = read_features_metadata(p)
        spec, _cfg, norm, _lim, _prov = parse_metadata(meta, p)
        return cls(spec, norm, OrtFeatures(p).run, meta["export"]["feature_kind"], meta)

    def reset(self) -> None:
        self.buffer.reset()

    def features(self, state: np.ndarray, goal: np.ndarray | None = None,
                 action: np.ndarray | None = None) -> np.ndarray:
        """Begin a step with ``state`` (raw units; + ``goal``), return the feature ``[F]``."""
        b = self.buffer
        b.begin_step()
        b.write(STATES, np.asarray(state, np.float32))
        if goal is not None:
            b.write(GOALS, np.asarray(goal, np.float32))
        if action is not None:
            b.write(ACTIONS, np.asarray(action, np.float32))
        x, avail = b.window()
        np.minimum(self._base, avail, out=self._mask)
        return self._run(x, self._mask)[0]

    def record_action(self, action: np.ndarray) -> None:
        """The action executed at the current step (raw units): history for the next one."""
        self.buffer.write(ACTIONS, np.asarray(action, np.float32))


def _torch_runner(fx: FeatureExtractor) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    fx = fx.eval()

    def run(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return fx(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    return run


def save_extractor(fx: FeatureExtractor, ckpt: Checkpoint, directory: str | os.PathLike,
                   provenance: dict[str, Any] | None = None) -> Path:
    """Write a (fine-tuned) extractor's MTM as a normal checkpoint directory (safetensors + JSON)."""
    from mtm_runtime.checkpoint import save_checkpoint

    prov = {**ckpt.provenance, **(provenance or {}), "features": {"kind": fx.kind}}
    return save_checkpoint(directory, copy.deepcopy(fx.mtm).cpu(), ckpt.normaliser, ckpt.action_limits, prov)


__all__ = ["FEATURE_KINDS", "FEATURES_OUTPUT", "FeatureExtractor", "OrtFeatures", "RuntimeFeatures",
           "dataset_features", "episode_windows", "export_features_onnx", "extractor_from_checkpoint",
           "feature_mask", "features_parity", "features_parity_cases", "read_features_metadata",
           "save_extractor"]
