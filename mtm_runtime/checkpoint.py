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
    fingerprint     outputs on fixed seeded inputs under every mask mode (``mtm_runtime.fingerprint``)
    integrity       the stamp: a digest over every other field (``mtm_runtime.integrity``)

Loading checks, in order: both files exist, the JSON parses, the integrity digest matches (and
the signature, where trusted keys are configured), format and version are known, every field
validates within bounds (``parse_metadata``: config integers in ``CONFIG_BOUNDS`` and the memory
estimate under ``MAX_MODEL_BYTES`` before anything is allocated, normaliser statistics, finite
limits with low < high), the weights' sha256 matches, the tensor names and shapes match the model
the spec + config build, and the rebuilt model reproduces the fingerprint. Every refusal is a
CheckpointError naming the file and the field.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mtm_runtime.fileio import atomic_write, sha256_bytes
from mtm_runtime.fingerprint import FP32_TOLERANCE, check_fingerprint, record_fingerprint, torch_runner
from mtm_runtime.integrity import (INTEGRITY_FIELD, CheckpointError, read_json_object, Trust, check_json_stamp, resolve_trust,
                                   stamp_json)
from mtm_runtime.model import MAX_MODEL_BYTES, MTM, MTMConfig, memory_estimate
from mtm_runtime.normalise import Normaliser
from mtm_runtime.robot import RobotError, robot_from_dict
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import SpecError, TrajectorySpec

FORMAT = "mtm_runtime.checkpoint"
FORMAT_VERSION = 1
META_FILE = "mtm.json"
WEIGHTS_FILE = "model.safetensors"
#: bounds on what a file may ask for (checked before anything is allocated)
MAX_HORIZON = 4096
MAX_MODALITY_WIDTH = 65536
STD_RANGE = (1e-8, 1e8)   # normaliser std, every dimension
MAX_ABS_MEAN = 1e8        # normaliser mean
MAX_ABS_LIMIT = 1e6       # action limits (no robot description to narrow them further yet)


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
    fingerprint: dict[str, Any] | None = None

    def build_model(self) -> MTM:
        """The network with these weights, in eval mode (fp32, CPU)."""
        model = MTM(self.spec, self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def metadata(self) -> dict[str, Any]:
        """The JSON-able metadata (what ONNX metadata_props and engine sidecars carry too)."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": self.spec.to_dict(),
                "model_config": self.config.to_dict(), "normaliser": self.normaliser.to_dict(),
                "action_limits": None if self.action_limits is None else self.action_limits.to_dict(),
                "provenance": self.provenance}
        if self.fingerprint is not None:
            meta["fingerprint"] = self.fingerprint
        return meta

    @property
    def meta_path(self) -> Path | str:
        """What refusals about this checkpoint name: its mtm.json, or "(checkpoint)" in memory."""
        return Path(self.path) / META_FILE if self.path is not None else "(checkpoint)"


def save_checkpoint(directory: str | os.PathLike, model: MTM, normaliser: Normaliser,
                    action_limits: ActionLimits | None = None,
                    provenance: Mapping[str, Any] | None = None, trust: Trust | None = None) -> Path:
    """Write ``model.safetensors`` then ``mtm.json`` (each atomically), with the behavioural
    fingerprint and the integrity stamp (signed if ``trust`` names a signing key). Returns the
    directory."""
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
    ckpt.fingerprint = record_fingerprint(torch_runner(ckpt.build_model()), ckpt.spec)
    meta = ckpt.metadata()
    meta["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_bytes(blob)}
    write_meta(d / META_FILE, meta, trust)
    return d


def write_meta(path: Path, meta: dict[str, Any], trust: Trust | None = None) -> None:
    """Stamp ``meta`` and write it as ``mtm.json`` (atomically)."""
    stamped = stamp_json(meta, trust=trust)
    atomic_write(path, (json.dumps(stamped, indent=2, sort_keys=True) + "\n").encode())


def parse_metadata(meta: Any, where: str | os.PathLike) -> tuple[TrajectorySpec, MTMConfig, Normaliser,
                                                                 ActionLimits | None, dict[str, Any]]:
    """Validate the metadata dict (from mtm.json, ONNX metadata or an engine sidecar), bounds
    included (module docstring); allocates nothing that the file's sizes decide."""
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
    spec = _parse_spec(meta["spec"], where)
    try:
        cfg = MTMConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(where, "model_config", str(e)) from None
    need = memory_estimate(spec, cfg)
    if need > MAX_MODEL_BYTES:
        raise CheckpointError(where, "model_config", f"the model would need about {need / 2**30:.3g} GiB "
                              f"(parameters x 4 bytes + activations for T={spec.horizon}), over the "
                              f"{MAX_MODEL_BYTES / 2**30:g} GiB limit: refused before allocating")
    try:
        norm = Normaliser.from_dict(spec, meta["normaliser"])
    except SpecError as e:
        raise CheckpointError(where, "normaliser", str(e)) from None
    _check_normaliser_bounds(norm, where)
    limits = None if meta.get("action_limits") is None else _parse_limits(meta["action_limits"], spec, where)
    prov = meta.get("provenance") or {}
    if not isinstance(prov, Mapping):
        raise CheckpointError(where, "provenance", "must be an object")
    _check_robot(prov.get("robot"), spec, where)
    return spec, cfg, norm, limits, dict(prov)


def _check_robot(d: Any, spec: TrajectorySpec, where: str | os.PathLike) -> None:
    """The robot the model was trained for (if named) must be a valid description whose widths are the spec's."""
    if d is None:
        return
    try:
        robot = robot_from_dict(d, "robot")
    except RobotError as e:
        raise CheckpointError(where, "provenance.robot", str(e)) from None
    for name in ("states", "actions"):
        want = robot.state_dim if name == "states" else robot.action_dim
        if name in spec and spec.width(name) != want:
            raise CheckpointError(where, "provenance.robot", f"robot {robot.name!r} has {name} of width {want}, "
                                  f"the spec {spec.width(name)}")


def _parse_spec(d: Any, where: str | os.PathLike) -> TrajectorySpec:
    try:
        spec = TrajectorySpec.from_dict(d, "spec")
    except SpecError as e:
        raise CheckpointError(where, "spec", str(e)) from None
    if spec.horizon > MAX_HORIZON:
        raise CheckpointError(where, "spec.horizon", f"{spec.horizon} is over the limit of {MAX_HORIZON}")
    for i, m in enumerate(spec.modalities):
        if m.width > MAX_MODALITY_WIDTH:
            raise CheckpointError(where, f"spec.modalities[{i}].width", f"{m.width} is over the limit of "
                                  f"{MAX_MODALITY_WIDTH}")
    return spec


def _check_normaliser_bounds(norm: Normaliser, where: str | os.PathLike) -> None:
    lo, hi = STD_RANGE
    for n in norm.spec.names:
        for stat, arr, ok in (("std", norm.std[n], lambda a: (a >= lo) & (a <= hi)),
                              ("mean", norm.mean[n], lambda a: np.abs(a) <= MAX_ABS_MEAN)):
            bad = ~ok(arr.astype(np.float64))
            if np.any(bad):
                i = int(np.argmax(bad))
                rng = f"[{lo:g}, {hi:g}]" if stat == "std" else f"[-{MAX_ABS_MEAN:g}, {MAX_ABS_MEAN:g}]"
                raise CheckpointError(where, f"normaliser.{stat}.{n}[{i}]", f"{float(arr[i]):g} is outside {rng}")


def _parse_limits(d: Any, spec: TrajectorySpec, where: str | os.PathLike) -> ActionLimits:
    if not isinstance(d, Mapping) or set(d) != {"low", "high"}:
        raise CheckpointError(where, "action_limits", "must be an object with exactly 'low' and 'high'")
    width = spec.width("actions") if "actions" in spec else None
    for key in ("low", "high"):
        v = d[key]
        if (not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                or (width is not None and len(v) != width)):
            raise CheckpointError(where, f"action_limits.{key}", f"must be a list of {width} numbers")
        for i, x in enumerate(v):
            if not (math.isfinite(x) and abs(x) <= MAX_ABS_LIMIT):
                raise CheckpointError(where, f"action_limits.{key}[{i}]", f"{x!r} is not finite within "
                                      f"+-{MAX_ABS_LIMIT:g}")
    for i, (a, b) in enumerate(zip(d["low"], d["high"])):
        if not a < b:
            raise CheckpointError(where, f"action_limits.low[{i}]", f"{a!r} must be below high[{i}] = {b!r}")
    return ActionLimits.from_dict(d)


def _read_meta(d: Path) -> tuple[Path, dict[str, Any]]:
    meta_path = d / META_FILE
    if not d.is_dir():
        raise CheckpointError(d, "(directory)", "not a checkpoint directory")
    return meta_path, read_json_object(meta_path, root="metadata must be a JSON object")


def _read_weights(d: Path, meta_path: Path, meta: Mapping[str, Any], spec: TrajectorySpec,
                  cfg: MTMConfig) -> dict[str, torch.Tensor]:
    """model.safetensors, checked against mtm.json's sha256 and the shapes spec + cfg build."""
    weights_path = d / WEIGHTS_FILE
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
    with torch.device("meta"):  # shapes only: nothing is allocated
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
    return tensors


def load_checkpoint(directory: str | os.PathLike, expect_spec: TrajectorySpec | None = None,
                    trust: Trust | None = None, verify_outputs: bool = True) -> Checkpoint:
    """Load and validate a checkpoint directory (see the module docstring for the checks).
    ``verify_outputs=False`` skips the fingerprint run (for callers that run it through their
    own backend: ``Policy.load``)."""
    d = Path(directory)
    meta_path, meta = _read_meta(d)
    stamped = check_json_stamp(meta, meta_path, trust=trust)
    spec, cfg, norm, limits, prov = parse_metadata(meta, meta_path)
    if expect_spec is not None:
        try:
            expect_spec.check_compatible(spec)
        except SpecError as e:
            raise CheckpointError(meta_path, "spec", str(e)) from None
    if stamped and meta.get("fingerprint") is None:
        raise CheckpointError(meta_path, "fingerprint", "missing from a stamped checkpoint")
    tensors = _read_weights(d, meta_path, meta, spec, cfg)
    ckpt = Checkpoint(spec, cfg, norm, tensors, limits, prov, d, meta.get("fingerprint"))
    if verify_outputs and ckpt.fingerprint is not None:
        check_fingerprint(torch_runner(ckpt.build_model()), spec, ckpt.fingerprint, FP32_TOLERANCE, meta_path)
    return ckpt


def restamp_checkpoint(directory: str | os.PathLike, trust: Trust | None = None) -> list[str]:
    """Vouch for a checkpoint as it is now: every check but the digest runs, then the
    fingerprint is recorded afresh and the stamp rewritten (weights untouched). Returns what the
    old stamp said had changed (``["(unstamped)"]`` for a legacy file, ``[]`` if nothing)."""
    d = Path(directory)
    meta_path, meta = _read_meta(d)
    try:
        check_json_stamp(meta, meta_path, trust=Trust(trusted_keys=resolve_trust(trust).trusted_keys))
        changed: list[str] = []
    except CheckpointError as e:
        changed = ["(unstamped)"] if INTEGRITY_FIELD not in meta else [e.field]
    meta.pop(INTEGRITY_FIELD, None)
    spec, cfg, norm, limits, prov = parse_metadata(meta, meta_path)
    tensors = _read_weights(d, meta_path, meta, spec, cfg)
    ckpt = Checkpoint(spec, cfg, norm, tensors, limits, prov, d)
    meta["fingerprint"] = record_fingerprint(torch_runner(ckpt.build_model()), spec)
    write_meta(meta_path, meta, trust)
    return changed
