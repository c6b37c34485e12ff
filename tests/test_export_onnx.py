"""ONNX export: graph checks, metadata round trip, refusals, CLI error paths (real ONNX Runtime)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mtm_runtime.checkpoint import CheckpointError, load_checkpoint, parse_metadata
from mtm_runtime.onnx_export import (DEFAULT_OPSET, METADATA_KEY, TRT_ALLOWED_OPS, ExportError, check_allowed_ops,
                                     check_int8_parity, check_parity, export_onnx, quantize_int8,
                                     read_onnx_metadata)
from tests.export_fixtures import SPEC, make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def exported(ckpt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    data = export_onnx(load_checkpoint(ckpt_dir), path)
    return path, data


def test_graph_is_static_float32_and_on_the_allow_list(exported: tuple[Path, bytes]) -> None:
    path, data = exported
    assert path.read_bytes() == data
    proto = onnx.load(str(path))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", DEFAULT_OPSET)]
    io = {v.name: v for v in list(proto.graph.input) + list(proto.graph.output)}
    T, D, M = SPEC.horizon, SPEC.packed_width, SPEC.num_modalities
    for name, shape in {"x": [1, T, D], "mask": [1, T, M], "y": [1, T, D]}.items():
        tt = io[name].type.tensor_type
        assert tt.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_value for d in tt.shape.dim] == shape
    assert {n.op_type for n in proto.graph.node} <= set(TRT_ALLOWED_OPS)
    onnx.checker.check_model(proto, full_check=True)


def test_metadata_round_trip(exported: tuple[Path, bytes], ckpt_dir: Path) -> None:
    meta = read_onnx_metadata(exported[0])
    ck = load_checkpoint(ckpt_dir)
    spec, cfg, norm, limits, prov = parse_metadata(meta, exported[0])
    assert spec == ck.spec and cfg == ck.config and prov == ck.provenance
    assert np.array_equal(norm.std["states"], ck.normaliser.std["states"])
    assert np.array_equal(limits.high, ck.action_limits.high)
    exp = meta["export"]
    assert exp["opset"] == DEFAULT_OPSET and exp["batch_size"] == 1
    assert exp["parity_max_abs_diff"] <= 1e-4
    from mtm_runtime.fileio import sha256_file
    assert exp["source_weights_sha256"] == sha256_file(ckpt_dir / "model.safetensors")
    props = {p.key: p.value for p in onnx.load(str(exported[0])).metadata_props}
    assert json.loads(props[METADATA_KEY])["spec"] == ck.spec.to_dict()


def test_batched_export(ckpt_dir: Path) -> None:
    proto = onnx.load_from_string(export_onnx(load_checkpoint(ckpt_dir), batch_size=3))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [3, SPEC.horizon, SPEC.packed_width]


def test_unsupported_opset_is_refused_before_writing(ckpt_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="opset 11 is not supported"):
        export_onnx(load_checkpoint(ckpt_dir), out, opset=11)
    assert not out.exists()


def test_op_outside_allow_list_is_refused_by_name(exported: tuple[Path, bytes]) -> None:
    proto = onnx.load_from_string(exported[1])
    proto.graph.node[0].op_type = "NonMaxSuppression"
    name = proto.graph.node[0].name
    with pytest.raises(ExportError, match=f"node '{name}' uses op 'NonMaxSuppression'"):
        check_allowed_ops(proto)


def test_parity_failure_is_refused(exported: tuple[Path, bytes], tmp_path: Path) -> None:
    other = load_checkpoint(make_checkpoint(tmp_path / "other", seed=1)).build_model()
    with pytest.raises(ExportError, match="parity check failed on mode:bc"):
        check_parity(exported[1], other, batch_size=1)


def test_int8_quantisation_keeps_metadata_and_stated_tolerance(exported: tuple[Path, bytes]) -> None:
    q = quantize_int8(exported[1])
    props = {p.key for p in onnx.load_from_string(q).metadata_props}
    assert METADATA_KEY in props
    assert check_int8_parity(exported[1], q, SPEC) <= 0.1


@pytest.mark.parametrize("content,match", [(None, "missing"), (b"not a model", "not an ONNX model")])
def test_read_metadata_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_onnx_metadata(p)


def test_read_metadata_without_mtm_metadata(exported: tuple[Path, bytes], tmp_path: Path) -> None:
    proto = onnx.load_from_string(exported[1])
    del proto.metadata_props[:]
    p = tmp_path / "bare.onnx"
    p.write_bytes(proto.SerializeToString())
    with pytest.raises(CheckpointError, match=r"metadata_props\[mtm_runtime\]: missing"):
        read_onnx_metadata(p)


# ---- CLI ------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    """``mtm ARGS`` in this process (no second torch import); stdout/stderr captured."""
    import contextlib
    import io

    from mtm_runtime.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def test_script_writes_a_loadable_model(ckpt_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.onnx"
    r = subprocess.run([PY, str(ROOT / "export" / "to_onnx.py"), str(ckpt_dir), "-o", str(out), "--opset", "18"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and read_onnx_metadata(out)["export"]["opset"] == 18


def test_cli_missing_checkpoint(tmp_path: Path) -> None:
    r = _cli("export", "onnx", str(tmp_path / "nope"), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "not a checkpoint directory" in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_cli_corrupt_weights(ckpt_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt_dir, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    r = _cli("export", "onnx", str(bad), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "sha256" in r.stderr and "model.safetensors" in r.stderr


def test_cli_wrong_spec(ckpt_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "badspec"
    shutil.copytree(ckpt_dir, bad)
    meta = json.loads((bad / "mtm.json").read_text())
    meta["spec"]["modalities"][0]["width"] = 0
    (bad / "mtm.json").write_text(json.dumps(meta))
    r = _cli("export", "onnx", str(bad), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "spec" in r.stderr and "width" in r.stderr


def test_cli_unsupported_opset(ckpt_dir: Path, tmp_path: Path) -> None:
    r = _cli("export", "onnx", str(ckpt_dir), "-o", str(tmp_path / "m.onnx"), "--opset", "9")
    assert r.returncode == 2 and "opset 9 is not supported" in r.stderr
