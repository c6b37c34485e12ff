"""Export a checkpoint to a ``model.onnx`` artefact: the checked graph plus what vouches for it.

    export_onnx(ckpt, "model.onnx")   ->  inputs  x    float32 [B, T, D]
                                                   mask float32 [B, T, M]   (1 visible, 0 hidden)
                                          output  y    float32 [B, T, D]

The graph and its checks are ``mtm_runtime.onnx_graph`` (``checked_graph``: the TorchScript
exporter, opset 17..20, the TensorRT operator allow-list, parity with PyTorch). This module adds
the artefact around it: the checkpoint's metadata (``Checkpoint.metadata()``: spec, normaliser,
model config, action limits, provenance) as JSON in ``metadata_props["mtm_runtime"]`` together
with an ``export`` record (opset, batch size, torch version, sha256 of the source weights,
measured parity), the behavioural fingerprint, and the integrity stamp (signed if ``trust`` names
a signing key); the format is ``mtm_runtime.onnx_metadata``, whose ``read_onnx_metadata`` reads it
back. Nothing is written until every check passes, and then atomically.

``restamp_onnx`` vouches for a model file as it is now (``mtm verify --restamp``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtm_runtime.checkpoint import Checkpoint, CheckpointError, parse_metadata
from mtm_runtime.fileio import atomic_write
from mtm_runtime.fingerprint import record_fingerprint, torch_runner
from mtm_runtime.integrity import Trust, resolve_trust
from mtm_runtime.onnx_graph import DEFAULT_OPSET, OUTPUT_NAME, checked_graph
from mtm_runtime.onnx_metadata import (WEIGHTS_SHA_KEY, load_proto, metadata_of, pop_stamp, set_metadata,
                                       verify_onnx_stamp, weights_sha256)


def export_onnx(ckpt: Checkpoint, path: str | os.PathLike | None = None, batch_size: int = 1,
                opset: int = DEFAULT_OPSET, trust: Trust | None = None, chunk: int = 1) -> bytes:
    """Export, validate and (if ``path``) atomically write the graph; returns the model bytes.

    Static shapes: B = ``batch_size``, T and D/M from the checkpoint's spec. ``chunk``: the action
    chunk length it is deployed with (parity checked on its masks too), recorded with the horizon
    as ``export.control`` (``onnx_metadata.control_record``; a TensorRT engine's sidecar carries
    it on). The metadata gets the model's behavioural fingerprint and the file an integrity stamp
    (signed if ``trust`` names a signing key). ExportError (``mtm_runtime.onnx_graph``) when a
    check fails.
    """
    import torch

    spec = ckpt.spec
    traced = checked_graph(ckpt, batch_size, opset, chunk=chunk)
    meta: dict[str, Any] = ckpt.metadata()
    weights_sha = weights_sha256(ckpt)
    meta["export"] = {"exporter": "torch.onnx.export(dynamo=False)", "torch_version": torch.__version__,
                      "opset": opset, "batch_size": batch_size, "source_weights_sha256": weights_sha,
                      "inputs": {"x": [batch_size, spec.horizon, spec.packed_width],
                                 "mask": [batch_size, spec.horizon, spec.num_modalities]},
                      "output": {"y": [batch_size, spec.horizon, spec.packed_width]},
                      "parity_max_abs_diff": traced.parity_max_abs_diff,
                      "control": {"horizon": spec.horizon, "chunk": int(chunk)}}
    meta["fingerprint"] = record_fingerprint(torch_runner(traced.model), spec, batch_size)
    set_metadata(traced.proto, meta, weights_sha, trust)
    data = traced.proto.SerializeToString()
    if path is not None:
        atomic_write(Path(path), data)
    return data


def restamp_onnx(path: str | os.PathLike, trust: Trust | None = None) -> list[str]:
    """Vouch for an ONNX model as it is now (``checkpoint.restamp_checkpoint``'s counterpart):
    the metadata is validated, the fingerprint recorded afresh by running the graph in ONNX
    Runtime (CPU), and the file rewritten with a new stamp. Returns what the old stamp said had
    changed."""
    import onnxruntime as ort

    p = Path(path)
    proto = load_proto(p)
    try:
        verify_onnx_stamp(proto, p, Trust(trusted_keys=resolve_trust(trust).trusted_keys))
        changed: list[str] = []
    except CheckpointError as e:
        changed = [e.field]
    pop_stamp(proto)
    meta = metadata_of(proto, p)
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


__all__ = ["export_onnx", "restamp_onnx"]
