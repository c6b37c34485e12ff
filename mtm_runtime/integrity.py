"""Integrity of model artefacts: one digest over everything that decides behaviour, and an
optional Ed25519 signature over that digest.

Every artefact carries a *stamp* (``mtm.json`` and engine sidecars: the ``integrity`` field; an
ONNX file: ``metadata_props["mtm_runtime.integrity"]``)::

    {"scheme": "mtm_runtime.integrity.v1",
     "digest": "sha256:<hex>",             # what is verified
     "sections": {"spec": "<hex16>", ...}, # hints: name what changed when the digest differs
     "signature": {"ed25519": "<base64>", "key_id": "<hex16>"}}   # optional

What the digest covers (section names in brackets):

* checkpoint ``mtm.json``: every top-level field except ``integrity`` itself — ``spec``,
  ``model_config``, ``normaliser``, ``action_limits``, ``fingerprint``, ``provenance`` (its
  timestamps included: nothing is treated as merely informational), ``format``, and ``weights``,
  whose ``sha256`` is checked against ``model.safetensors``, so the weights are covered too.
  Each field is hashed as canonical JSON (``canonical_json``: sorted keys, no whitespace, ASCII,
  no NaN), so re-indenting the file changes nothing; the digest is the sha256 of the canonical
  JSON of ``{"scheme", "sections": {field: sha256}}``.
* ONNX: the serialised ``ModelProto`` with the stamp's own metadata entry removed: the graph,
  every initializer, the opset imports and every other metadata entry (the ``mtm_runtime``
  metadata JSON included), byte for byte. Hints: ``graph``, ``initializer:<name>``,
  ``mtm_runtime.<field>``, ``metadata_props:<key>``.
* TensorRT engine sidecar: every top-level sidecar field (as for ``mtm.json``) plus
  ``engine_file``, the sha256 of the engine bytes.

A file without a stamp (written before stamping existed) is refused unless the caller opts in
(``Trust(allow_unstamped=True)`` or ``MTM_ALLOW_UNSTAMPED=1``): then it loads with a warning.
``mtm verify --restamp PATH`` stamps such a file after checking everything else about it.

Signing: with ``MTM_SIGNING_KEY`` (a PEM Ed25519 private key) set, every stamp written is
signed; with ``MTM_TRUSTED_KEYS`` (PEM public keys, ``os.pathsep``-separated paths) set, a file
whose stamp is unsigned or signed by another key is refused. See docs/safety.md (threat model).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mtm_runtime.fileio import atomic_write

SCHEME = "mtm_runtime.integrity.v1"
INTEGRITY_FIELD = "integrity"
ALLOW_UNSTAMPED_ENV = "MTM_ALLOW_UNSTAMPED"
TRUSTED_KEYS_ENV = "MTM_TRUSTED_KEYS"
SIGNING_KEY_ENV = "MTM_SIGNING_KEY"
HINT_CHARS = 16  # length of the per-section hints (the digest itself uses full sha256)
RESTAMP_HINT = "check the file, then run `mtm verify --restamp PATH` (or re-export it)"


class CheckpointError(ValueError):
    """A model artefact (checkpoint, ONNX file, engine sidecar) is missing, corrupt, tampered
    with or inconsistent; the message names the file and the field."""

    def __init__(self, path: str | os.PathLike, field_name: str, message: str) -> None:
        self.path, self.field = str(path), field_name
        super().__init__(f"{path}: {field_name}: {message}")


def read_json_object(path: Path, missing: str = "missing", root: str = "must be a JSON object") -> dict[str, Any]:
    """The JSON object in the metadata file ``path`` (``mtm.json``, an engine sidecar), or
    CheckpointError naming the file: absent (``missing``), not valid JSON, not an object (``root``)."""
    if not path.is_file():
        raise CheckpointError(path, "(file)", missing)
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, "(json)", f"not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "(root)", root)
    return meta


def canonical_json(obj: Any) -> bytes:
    """The one serialisation that is hashed: sorted keys, no whitespace, ASCII, no NaN/Inf."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sections(meta: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{prefix + field: sha256 of its canonical JSON} for every field but the stamp."""
    out = {}
    for key, value in meta.items():
        if key == INTEGRITY_FIELD:
            continue
        try:
            out[prefix + key] = sha256_hex(canonical_json(value))
        except ValueError:  # NaN/Inf inside: hash the lenient form so the digest still differs
            out[prefix + key] = sha256_hex(json.dumps(value, sort_keys=True).encode())
    return out


def sections_digest(sections: Mapping[str, str]) -> str:
    """The digest of a set of section hashes (checkpoints, sidecars)."""
    return "sha256:" + sha256_hex(canonical_json({"scheme": SCHEME, "sections": dict(sections)}))


def bytes_digest(data: bytes) -> str:
    """The digest of one byte string (ONNX: the model without its stamp)."""
    return "sha256:" + sha256_hex(SCHEME.encode() + b"\0" + data)


# ---- trust configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Trust:
    """What a loader accepts. ``trusted_keys``: PEM public key paths (non-empty: a valid
    signature by one of them is required); ``signing_key``: a PEM private key path used to sign
    the stamps this process writes; ``allow_unstamped``: load files without a stamp (warning)."""

    allow_unstamped: bool = False
    trusted_keys: tuple[str, ...] = ()
    signing_key: str | None = None

    @classmethod
    def from_env(cls) -> "Trust":
        keys = tuple(p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p)
        return cls(allow_unstamped=os.environ.get(ALLOW_UNSTAMPED_ENV, "") not in ("", "0"),
                   trusted_keys=keys, signing_key=os.environ.get(SIGNING_KEY_ENV) or None)


def resolve_trust(trust: Trust | None) -> Trust:
    return trust if trust is not None else Trust.from_env()


# ---- stamping and checking ----------------------------------------------------------------------------
def make_stamp(digest: str, sections: Mapping[str, str], trust: Trust | None = None) -> dict[str, Any]:
    """A stamp for ``digest`` (signed when the trust configuration names a signing key)."""
    stamp: dict[str, Any] = {"scheme": SCHEME, "digest": digest,
                             "sections": {k: v[:HINT_CHARS] for k, v in sorted(sections.items())}}
    key = resolve_trust(trust).signing_key
    if key:
        stamp["signature"] = sign_digest(digest, key)
    return stamp


def check_stamp(stamp: Any, digest: str, sections: Callable[[], Mapping[str, str]], path: str | os.PathLike,
                stamp_field: str, trust: Trust | None = None) -> bool:
    """Verify a stamp against the recomputed ``digest``; CheckpointError naming ``path`` and what
    changed (from ``sections()``, only computed on a mismatch). Returns False for an accepted
    unstamped legacy file (after a warning), True for a verified one."""
    trust = resolve_trust(trust)
    if stamp is None:
        if trust.trusted_keys:
            raise CheckpointError(path, stamp_field, f"missing, and {TRUSTED_KEYS_ENV} requires signed files")
        if not trust.allow_unstamped:
            raise CheckpointError(path, stamp_field, "missing: the file was written before artefacts were stamped "
                                  f"or had its stamp removed; {RESTAMP_HINT}, or set {ALLOW_UNSTAMPED_ENV}=1 "
                                  "to load unstamped files with a warning")
        warnings.warn(f"{path}: {stamp_field}: missing: loading an UNSTAMPED file because "
                      f"{ALLOW_UNSTAMPED_ENV} is set; nothing checks that it is what was trained", stacklevel=3)
        return False
    if not isinstance(stamp, Mapping) or stamp.get("scheme") != SCHEME or not isinstance(stamp.get("digest"), str):
        raise CheckpointError(path, stamp_field, f"not a {SCHEME} stamp")
    if stamp["digest"] != digest:
        changed = changed_sections(stamp.get("sections"), sections())
        if changed:
            raise CheckpointError(path, ", ".join(changed), "digest mismatch: changed since the file was written "
                                  f"(refused; {RESTAMP_HINT} if the change was intended)")
        raise CheckpointError(path, f"{stamp_field}.digest", "mismatch: the stamp itself was edited")
    if trust.trusted_keys:
        verify_signature(stamp.get("signature"), digest, trust.trusted_keys, path, stamp_field)
    return True


def stamp_json(meta: Mapping[str, Any], extra: Mapping[str, str] | None = None,
               trust: Trust | None = None) -> dict[str, Any]:
    """``meta`` with a fresh ``integrity`` stamp over its fields (+ ``extra`` section hashes,
    e.g. the engine file's)."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY_FIELD}
    sections = {**json_sections(body), **dict(extra or {})}
    body[INTEGRITY_FIELD] = make_stamp(sections_digest(sections), sections, trust)
    return body


def check_json_stamp(meta: Mapping[str, Any], path: str | os.PathLike, extra: Mapping[str, str] | None = None,
                     trust: Trust | None = None) -> bool:
    """``check_stamp`` for a JSON artefact (mtm.json, engine sidecar)."""
    sections = {**json_sections(meta), **dict(extra or {})}
    return check_stamp(meta.get(INTEGRITY_FIELD), sections_digest(sections), lambda: sections, path,
                       INTEGRITY_FIELD, trust)


def changed_sections(hints: Any, actual: Mapping[str, str]) -> list[str]:
    """Names of the sections whose hash differs from the stamp's hints (added/removed included)."""
    if not isinstance(hints, Mapping):
        return []
    names = sorted(set(hints) | set(actual))
    return [n for n in names if n not in hints or n not in actual
            or not isinstance(hints[n], str) or not actual[n].startswith(hints[n])]


# ---- Ed25519 ------------------------------------------------------------------------------------------
def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives import serialization
    except ImportError as e:
        raise CheckpointError("(signing)", "cryptography", f"signing needs the 'cryptography' package: {e}") from None
    return ed25519, serialization


def _public_raw(public_key: Any) -> bytes:
    _, ser = _ed25519()
    return public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    return sha256_hex(_public_raw(public_key))[:HINT_CHARS]


def load_private_key(path: str | os.PathLike) -> Any:
    ed, ser = _ed25519()
    try:
        key = ser.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(path, "(signing key)", f"unreadable: {e}") from None
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise CheckpointError(path, "(signing key)", "not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> Any:
    ed, ser = _ed25519()
    try:
        key = ser.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(path, "(trusted key)", f"unreadable: {e}") from None
    if not isinstance(key, ed.Ed25519PublicKey):
        raise CheckpointError(path, "(trusted key)", "not an Ed25519 public key")
    return key


def sign_digest(digest: str, private_key_path: str | os.PathLike) -> dict[str, str]:
    key = load_private_key(private_key_path)
    return {"ed25519": base64.b64encode(key.sign(digest.encode())).decode(), "key_id": key_id(key.public_key())}


def verify_signature(signature: Any, digest: str, trusted_keys: tuple[str, ...], path: str | os.PathLike,
                     stamp_field: str) -> None:
    """CheckpointError unless ``signature`` is a valid Ed25519 signature of ``digest`` by one of
    ``trusted_keys``."""
    where = f"{stamp_field}.signature"
    if not isinstance(signature, Mapping) or not isinstance(signature.get("ed25519"), str):
        raise CheckpointError(path, where, f"missing: {TRUSTED_KEYS_ENV} requires files signed by a trusted key")
    try:
        raw = base64.b64decode(signature["ed25519"], validate=True)
    except ValueError:
        raise CheckpointError(path, where, "not base64") from None
    for key_path in trusted_keys:
        key = load_public_key(key_path)
        try:
            key.verify(raw, digest.encode())
            return
        except Exception:  # noqa: BLE001 - InvalidSignature
            continue
    raise CheckpointError(path, where, f"not signed by any trusted key (key_id {signature.get('key_id')!r}; "
                          f"trusted: {', '.join(trusted_keys)})")


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> str:
    """Write a new Ed25519 key pair as PEM files (private 0600); returns the key id."""
    ed, ser = _ed25519()
    key = ed.Ed25519PrivateKey.generate()
    atomic_write(private_path, key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                                 ser.NoEncryption()), mode=0o600)
    atomic_write(public_path, key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


__all__ = ["SCHEME", "INTEGRITY_FIELD", "ALLOW_UNSTAMPED_ENV", "TRUSTED_KEYS_ENV", "SIGNING_KEY_ENV",
           "CheckpointError", "Trust", "canonical_json", "json_sections", "sections_digest", "bytes_digest",
           "make_stamp", "check_stamp", "stamp_json", "check_json_stamp", "changed_sections", "sign_digest",
           "verify_signature",
           "generate_keypair", "load_private_key", "load_public_key", "resolve_trust"]
