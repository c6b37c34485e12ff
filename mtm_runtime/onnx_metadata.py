"""What an exported ONNX model carries besides its graph, and how it is read back and verified.

    meta = read_onnx_metadata("model.onnx")   # stamp verified; validate with checkpoint.parse_metadata

``metadata_props`` of a model written by ``mtm_runtime.export.onnx_export``:

* ``mtm_runtime``: the checkpoint's metadata (``Checkpoint.metadata()``: spec, normaliser, model
  config, action limits, provenance) as JSON, plus the ``export`` record (opset, batch size,
  torch version, sha256 of the source weights, measured parity) and the behavioural
  ``fingerprint``;
* ``mtm_runtime.weights_sha256``: sha256 of the source weights;
* ``mtm_runtime.integrity``: the stamp (``mtm_runtime.integrity``), a digest of everything else,
  always the last entry. ``onnx_sections`` names what changed when it does not match.

The model is parsed without following external data (a path inside it is never opened). Writing
the entries in memory (``set_metadata``, ``stamp_onnx``) lives here too, next to their reader, so
the format has one home; writing a file is the export layer's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtm_runtime.checkpoint import WEIGHTS_FILE, Checkpoint, CheckpointError
from mtm_runtime.fileio import sha256_bytes, sha256_file
from mtm_runtime.integrity import Trust, bytes_digest, check_stamp, json_sections, make_stamp, sha256_hex

METADATA_KEY = "mtm_runtime"
WEIGHTS_SHA_KEY = "mtm_runtime.weights_sha256"
INTEGRITY_KEY = "mtm_runtime.integrity"  # the stamp (mtm_runtime.integrity): digest of everything else


# ---- writing the entries (in memory) ---------------------------------------------------------------
def weights_sha256(ckpt: Checkpoint) -> str:
    """sha256 of the checkpoint's weights file, or of the tensors serialised as safetensors."""
    if ckpt.path is not None and (Path(ckpt.path) / WEIGHTS_FILE).is_file():
        return sha256_file(Path(ckpt.path) / WEIGHTS_FILE)
    from safetensors.torch import save as st_save
    return sha256_bytes(st_save({k: v.contiguous() for k, v in ckpt.state_dict.items()}))


def set_metadata(proto: Any, meta: dict[str, Any], weights_sha: str, trust: Trust | None = None) -> None:
    """Replace the metadata entries with ``meta`` (+ the weights' sha256) and stamp the model."""
    del proto.metadata_props[:]
    for key, value in ((METADATA_KEY, json.dumps(meta, sort_keys=True)), (WEIGHTS_SHA_KEY, weights_sha)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    stamp_onnx(proto, trust)


# ---- integrity ------------------------------------------------------------------------------------
def pop_stamp(proto: Any) -> str | None:
    """Remove the stamp entry from ``proto`` (in place); returns its value, or None."""
    for i, e in enumerate(proto.metadata_props):
        if e.key == INTEGRITY_KEY:
            value = e.value
            del proto.metadata_props[i]
            return value
    return None


def onnx_digest(proto: Any) -> str:
    """The digest of a model without its stamp (the model must not carry one: ``pop_stamp``)."""
    return bytes_digest(proto.SerializeToString())


def onnx_sections(proto: Any) -> dict[str, str]:
    """Hashes that name what changed: the graph without initializers and metadata, each
    initializer, each metadata entry (the ``mtm_runtime`` JSON field by field)."""
    import onnx

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)
    del skeleton.metadata_props[:]
    del skeleton.graph.initializer[:]
    out = {"graph": sha256_hex(skeleton.SerializeToString())}
    for t in proto.graph.initializer:
        out[f"initializer:{t.name}"] = sha256_hex(t.SerializeToString())
    for e in proto.metadata_props:
        try:
            meta = json.loads(e.value) if e.key == METADATA_KEY else None
        except json.JSONDecodeError:
            meta = None
        if isinstance(meta, dict):
            out.update(json_sections(meta, prefix=f"{METADATA_KEY}."))
        else:
            out[f"metadata_props:{e.key}"] = sha256_hex(e.value.encode())
    return out


def stamp_onnx(proto: Any, trust: Trust | None = None) -> None:
    """(Re)stamp ``proto`` in place: the stamp entry goes last in ``metadata_props``."""
    pop_stamp(proto)
    stamp = make_stamp(onnx_digest(proto), onnx_sections(proto), trust)
    entry = proto.metadata_props.add()
    entry.key, entry.value = INTEGRITY_KEY, json.dumps(stamp, sort_keys=True)


def verify_onnx_stamp(proto: Any, path: str | os.PathLike, trust: Trust | None = None) -> bool:
    """Check (and remove from ``proto``) its stamp; CheckpointError naming what changed.
    False for an accepted unstamped legacy file."""
    field = f"metadata_props[{INTEGRITY_KEY}]"
    raw = pop_stamp(proto)
    try:
        stamp = None if raw is None else json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, field, f"not valid JSON: {e}") from None
    return check_stamp(stamp, onnx_digest(proto), lambda: onnx_sections(proto), path, field, trust)


# ---- reading ---------------------------------------------------------------------------------------
def load_proto(p: Path, data: bytes | None = None) -> Any:
    """Parse ``p`` (or ``data``, its bytes already read) without following external data."""
    import onnx

    if data is None and not p.is_file():
        raise CheckpointError(p, "(file)", "missing")
    try:
        proto = onnx.load(str(p), load_external_data=False) if data is None else onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise CheckpointError(p, "(onnx)", f"not an ONNX model: {type(e).__name__}: {e}") from None
    if not proto.graph.node:
        raise CheckpointError(p, "(onnx)", "not an ONNX model (no graph nodes)")
    return proto


def metadata_of(proto: Any, p: Path) -> dict[str, Any]:
    """The parsed ``mtm_runtime`` entry of ``proto`` (no stamp check); CheckpointError naming
    ``p`` when it is missing or not a JSON object."""
    props = {e.key: e.value for e in proto.metadata_props}
    if METADATA_KEY not in props:
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}]",
                              "missing: not exported by mtm_runtime (run `mtm export onnx CHECKPOINT`)")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}]", f"not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}]", "must be a JSON object")
    return meta


def read_onnx_metadata(path: str | os.PathLike, trust: Trust | None = None,
                       data: bytes | None = None) -> dict[str, Any]:
    """The metadata dict stored by ``export_onnx`` (validate with ``checkpoint.parse_metadata``),
    after verifying the file's integrity stamp (``verify_onnx_stamp``). ``data``: the file's
    bytes, if the caller has read them (and will run exactly these: ``Policy.load``).

    CheckpointError naming the file when it is missing, not an ONNX model, fails its stamp, or
    carries no (or unparsable) ``mtm_runtime`` metadata.
    """
    p = Path(path)
    proto = load_proto(p, data)
    meta = metadata_of(proto, p)  # first: a graph from elsewhere is named as such
    stamped = verify_onnx_stamp(proto, p, trust)
    if stamped and meta.get("fingerprint") is None and meta.get("export", {}).get("graph") != "features":
        raise CheckpointError(p, f"metadata_props[{METADATA_KEY}].fingerprint", "missing from a stamped model")
    return meta


def onnx_sha256(onnx_bytes_or_path: bytes | str | os.PathLike) -> str:
    """sha256 of a model given as bytes or a path."""
    if isinstance(onnx_bytes_or_path, (bytes, bytearray)):
        return sha256_bytes(bytes(onnx_bytes_or_path))
    return sha256_file(onnx_bytes_or_path)


__all__ = ["METADATA_KEY", "WEIGHTS_SHA_KEY", "INTEGRITY_KEY", "weights_sha256", "set_metadata", "pop_stamp",
           "onnx_digest", "onnx_sections", "stamp_onnx", "verify_onnx_stamp", "load_proto", "metadata_of",
           "read_onnx_metadata", "onnx_sha256"]


def exported_chunk(meta: Any) -> int | None:
    """The action chunk length an exported graph was checked for (``export.control.chunk``, which
    a TensorRT engine's sidecar carries on), or None for a checkpoint or an older export."""
    control = (meta or {}).get("export", {}).get("control") if isinstance(meta, dict) else None
    return int(control["chunk"]) if isinstance(control, dict) and "chunk" in control else None
