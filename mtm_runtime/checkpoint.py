"""Checkpoint directory I/O: ``model.safetensors`` + ``mtm.json``. No pickle anywhere.

``mtm.json`` holds::

    format          "mtm_runtime.checkpoint"
    format_version  1
    spec            TrajectorySpec.to_dict()
    model_config    MTMConfig.to_dict()
    normaliser      Normaliser.to_dict()
    action_limits   {"low": [...], "high": [...]} or null
    provenance      free-form: task, dataset sha256, steps, git commit, created ...
    weights         {"file": "model.safetensors", "sha256": "..."}

Loading checks, in order: both files exist, the JSON parses, format and version are known, every
field validates, the weights' sha256 matches, the tensor names and shapes match the model the
spec + config build. Every refusal is a CheckpointError naming the file and the field.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mtm_runtime.fileio import atomic_write, sha256_bytes
from mtm_runtime.model import MTM, MTMConfig
from mtm_runtime.normalise import Normaliser
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import SpecError, TrajectorySpec

FORMAT = "mtm_runtime.checkpoint"
FORMAT_VERSION = 1
META_FILE = "mtm.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, tampered with or inconsistent."""

    def __init__(self, path: str | os.PathLike, field_name: str, message: str) -> None:
        self.path, self.field = str(path), field_name
        super().__init__(f"{path}: {field_name}: {message}")


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, loaded and validated."""

    spec: TrajectorySpec
    config: MTMConfig
    normaliser: Normaliser
    state_dict: dict[str, torch.Tensor]
    action_limits: ActionLimits | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def build_model(self) -> MTM:
        """The network with these weights, in eval mode (fp32, CPU)."""
        model = MTM(self.spec, self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def metadata(self) -> dict[str, Any]:
        """The JSON-able metadata (what ONNX metadata_props and engine sidecars carry too)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": self.spec.to_dict(),
                "model_config": self.config.to_dict(), "normaliser": self.normaliser.to_dict(),
                "action_limits": None if self.action_limits is None else self.action_limits.to_dict(),
                "provenance": self.provenance}


def save_checkpoint(directory: str | os.PathLike, model: MTM, normaliser: Normaliser,
                    action_limits: ActionLimits | None = None,
                    provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` then ``mtm.json`` (each atomically). Returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if normaliser.spec != model.spec:
        raise SpecError("save_checkpoint: the normaliser's spec differs from the model's")
    if action_limits is not None and action_limits.width != model.spec.width("actions"):
        raise SpecError("save_checkpoint: action_limits width differs from the spec's actions width")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    blob = st_save(tensors, metadata={"format": FORMAT})
    atomic_write(d / WEIGHTS_FILE, blob)
    ckpt = Checkpoint(model.spec, model.cfg, normaliser, tensors, action_limits, dict(provenance or {}))
    meta = ckpt.metadata()
    meta["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_bytes(blob)}
    atomic_write(d / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return d


def parse_metadata(meta: Any, where: str | os.PathLike) -> tuple[TrajectorySpec, MTMConfig, Normaliser,
                                                                 ActionLimits | None, dict[str, Any]]:
    """Validate the metadata dict (from mtm.json, ONNX metadata or an engine sidecar)."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(where, "(root)", "metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(where, "format", f"expected {FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(where, "format_version",
                              f"unknown version {meta.get('format_version')!r} (this runtime reads {FORMAT_VERSION})")
    for key in ("spec", "model_config", "normaliser"):
        if key not in meta:
            raise CheckpointError(where, key, "missing")
    try:
        spec = TrajectorySpec.from_dict(meta["spec"], "spec")
    except SpecError as e:
        raise CheckpointError(where, "spec", str(e)) from None
    try:
        cfg = MTMConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(where, "model_config", str(e)) from None
    try:
        norm = Normaliser.from_dict(spec, meta["normaliser"])
    except SpecError as e:
        raise CheckpointError(where, "normaliser", str(e)) from None
    limits = None
    if meta.get("action_limits") is not None:
        try:
            limits = ActionLimits.from_dict(meta["action_limits"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(where, "action_limits", str(e)) from None
        if "actions" in spec and limits.width != spec.width("actions"):
            raise CheckpointError(where, "action_limits", f"width {limits.width} != spec actions width {spec.width('actions')}")
    prov = meta.get("provenance") or {}
    if not isinstance(prov, Mapping):
        raise CheckpointError(where, "provenance", "must be an object")
    return spec, cfg, norm, limits, dict(prov)


def load_checkpoint(directory: str | os.PathLike, expect_spec: TrajectorySpec | None = None) -> Checkpoint:
    """Load and validate a checkpoint directory (see the module docstring for the checks)."""
    d = Path(directory)
    meta_path, weights_path = d / META_FILE, d / WEIGHTS_FILE
    if not d.is_dir():
        raise CheckpointError(d, "(directory)", "not a checkpoint directory")
    if not meta_path.is_file():
        raise CheckpointError(meta_path, "(file)", "missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(meta_path, "(json)", f"not valid JSON: {e}") from None
    spec, cfg, norm, limits, prov = parse_metadata(meta, meta_path)
    if expect_spec is not None:
        try:
            expect_spec.check_compatible(spec)
        except SpecError as e:
            raise CheckpointError(meta_path, "spec", str(e)) from None
    wmeta = meta.get("weights")
    if not isinstance(wmeta, Mapping) or "sha256" not in wmeta:
        raise CheckpointError(meta_path, "weights.sha256", "missing")
    if wmeta.get("file", WEIGHTS_FILE) != WEIGHTS_FILE:  # never follow a path from metadata
        raise CheckpointError(meta_path, "weights.file", f"must be {WEIGHTS_FILE!r}")
    if not weights_path.is_file():
        raise CheckpointError(weights_path, "(file)", "missing")
    blob = weights_path.read_bytes()
    if sha256_bytes(blob) != wmeta["sha256"]:
        raise CheckpointError(weights_path, "sha256", "does not match mtm.json weights.sha256 (corrupt or changed)")
    try:
        tensors = st_load(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(weights_path, "(safetensors)", f"unreadable: {e}") from None
    expected = {k: tuple(v.shape) for k, v in MTM(spec, cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    for k, shape in expected.items():
        if k not in got:
            raise CheckpointError(weights_path, k, "tensor missing")
        if got[k] != shape:
            raise CheckpointError(weights_path, k, f"shape {got[k]} != expected {shape}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise CheckpointError(weights_path, extra[0], "unexpected tensor")
    return Checkpoint(spec, cfg, norm, tensors, limits, prov, d)
