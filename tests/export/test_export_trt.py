"""TensorRT export. Builds need tensorrt + CUDA (skipped here with the reason); the parts that do
not (trtexec fallback, sidecar, cache logic, fp16 graph rewrite) run everywhere."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mtm_runtime.checkpoint import CheckpointError, load_checkpoint
from mtm_runtime.fileio import sha256_file
from mtm_runtime.integrity import stamp_json
from mtm_runtime.engine_sidecar import read_engine_sidecar, sidecar_path, stale_reason
from mtm_runtime.export.onnx_export import export_onnx
from mtm_runtime.export.trt_engine import onnx_fp16_matmuls, tensorrt_status, trtexec_command
from mtm_runtime.onnx_graph import parity_cases
from tests.export_fixtures import SPEC, make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TRT_OK, TRT_WHY = tensorrt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=TRT_WHY)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trt")
    p = d / "model.onnx"
    export_onnx(load_checkpoint(make_checkpoint(d / "ck")), p)
    return p


@pytest.mark.skipif(TRT_OK, reason="tensorrt is importable: the fallback path is not taken")
def test_script_without_tensorrt_prints_trtexec_and_exits_2(onnx_path: Path, tmp_path: Path) -> None:
    eng = tmp_path / "m.engine"
    r = subprocess.run([sys.executable, "-m", "mtm_runtime.export.to_trt", str(onnx_path), "-o", str(eng),
                        "--fp16", "--workspace", "512", "--timing-cache", str(tmp_path / "t.cache")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "tensorrt is not importable" in r.stderr
    assert r.stdout.strip() == trtexec_command(onnx_path, eng, True, 512, tmp_path / "t.cache", False)
    assert "--fp16" in r.stdout and "--memPoolSize=workspace:512M" in r.stdout and not eng.exists()


def test_trtexec_fp32_disables_tf32() -> None:
    cmd = trtexec_command("m.onnx", "m.engine", version_compatible=True)
    assert "--noTF32" in cmd and "--versionCompatible" in cmd and "--fp16" not in cmd


def test_fp16_rewrite_keeps_norm_and_softmax_fp32(onnx_path: Path) -> None:
    fp32 = onnx_path.read_bytes()
    half = onnx_fp16_matmuls(fp32)
    proto = onnx.load_from_string(half)
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert casts and all(n.op_type != "MatMul" or n.output[0].endswith("__fp16") for n in proto.graph.node)
    for n in proto.graph.node:  # LayerNorm / Softmax never consume a fp16 tensor
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert not any(i.endswith("__fp16") for i in n.input)
    a, b = ort.InferenceSession(fp32), ort.InferenceSession(half)
    for _, x, m in parity_cases(SPEC, 1):
        feed = {"x": x, "mask": m}
        assert np.max(np.abs(a.run(None, feed)[0] - b.run(None, feed)[0])) < 2e-2


def test_sidecar_and_cache_logic(onnx_path: Path, tmp_path: Path) -> None:
    eng = tmp_path / "m.engine"
    with pytest.raises(CheckpointError, match="missing"):
        read_engine_sidecar(eng)
    eng.write_bytes(b"fake engine")
    with pytest.raises(CheckpointError, match="sidecar"):
        read_engine_sidecar(eng)
    assert sidecar_path(eng).name == "m.engine.json"
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    opts = {"fp16": True, "workspace_mib": 1024, "version_compatible": False}
    side = {"format": "x", "engine": {"source_onnx_sha256": sha256_file(onnx_path), "engine_sha256": sha256_file(eng),
                                      "tensorrt_version": "10.3.0", "gpu": gpu, "options": opts}}
    sidecar_path(eng).write_text(json.dumps(stamp_json(side, {"engine_file": sha256_file(eng)})))  # as built
    assert read_engine_sidecar(eng)["engine"]["gpu"] == gpu
    assert stale_reason(onnx_path, eng, "10.3.0", gpu, opts) is None
    assert "TensorRT changed" in stale_reason(onnx_path, eng, "10.4.0", gpu, opts)
    assert "GPU changed" in stale_reason(onnx_path, eng, "10.3.0", {**gpu, "name": "H100"}, opts)
    assert "options changed" in stale_reason(onnx_path, eng, "10.3.0", gpu, {**opts, "fp16": False})
    other = tmp_path / "other.onnx"
    other.write_bytes(onnx_path.read_bytes() + b"\0")
    assert "ONNX file changed" in stale_reason(other, eng, "10.3.0", gpu, opts)


@needs_trt
def test_build_engine_parity_and_cache(onnx_path: Path, tmp_path: Path) -> None:
    from mtm_runtime.export.trt_engine import ensure_engine

    eng = tmp_path / "m.engine"
    path, rebuilt = ensure_engine(onnx_path, eng, timing_cache=tmp_path / "t.cache")
    assert rebuilt and (tmp_path / "t.cache").is_file()
    side = read_engine_sidecar(path)
    assert side["engine"]["parity_max_abs_diff"] <= 1e-4
    assert ensure_engine(onnx_path, eng, timing_cache=tmp_path / "t.cache")[1] is False


@needs_trt
def test_build_engine_fp16(onnx_path: Path, tmp_path: Path) -> None:
    from mtm_runtime.export.trt_engine import build_engine

    side = build_engine(onnx_path, tmp_path / "h.engine", fp16=True)
    assert side["engine"]["parity_max_abs_diff"] <= 2e-2
