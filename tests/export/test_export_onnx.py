"""ONNX export: graph checks, metadata round trip, refusals, CLI error paths (real ONNX Runtime)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from mtm_runtime.checkpoint import CheckpointError, load_checkpoint, parse_metadata
from mtm_runtime.export.onnx_export import export_onnx
from mtm_runtime.integrity import stamp_json
from mtm_runtime.onnx_graph import DEFAULT_OPSET, TRT_ALLOWED_OPS, ExportError, check_allowed_ops, check_parity
from mtm_runtime.onnx_int8 import (INT8_QUANTIZATION, INT8_TOLERANCE, INT8_WEIGHT_LIMIT, check_int8_parity,
                                   check_int8_weight_range, quantize_int8)
from mtm_runtime.onnx_metadata import METADATA_KEY, read_onnx_metadata
from tests.export_fixtures import SPEC, make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
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
    props = {p.key: p.value for p in onnx.load_from_string(q).metadata_props}
    assert METADATA_KEY in props
    assert props["mtm_runtime.quantization"] == INT8_QUANTIZATION
    assert "per output channel" in INT8_QUANTIZATION and "7-bit" in INT8_QUANTIZATION
    assert check_int8_parity(exported[1], q, SPEC) <= INT8_TOLERANCE


@pytest.fixture(scope="module")
def int8_graph(exported: tuple[Path, bytes]) -> onnx.ModelProto:
    return onnx.load_from_string(quantize_int8(exported[1]))


def _int8_matmuls(proto: onnx.ModelProto) -> list[tuple[onnx.NodeProto, np.ndarray, np.ndarray]]:
    """(node, raw int8 weights B [K, N], B zero point) of every MatMulInteger."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    return [(n, inits[n.input[1]], inits[n.input[3]]) for n in nodes]


def test_int8_pair_sums_cannot_saturate_int16(int8_graph: onnx.ModelProto) -> None:
    """The no-saturation property itself, on any host: activations are uint8 (0..255) from
    DynamicQuantizeLinear, weights int8 with zero point 0 and |w| <= 64, so the sum of any two
    products (what AVX2 / AVX-512BW ``vpmaddubsw`` keeps in int16) fits in int16."""
    producers = {o: n.op_type for n in int8_graph.graph.node for o in n.output}
    matmuls = _int8_matmuls(int8_graph)
    assert matmuls, "no MatMul was quantised"
    for node, w, zp in matmuls:
        assert producers[node.input[0]] == "DynamicQuantizeLinear", node.name
        assert w.dtype == np.int8 and not np.any(zp), node.name
        worst = int(np.abs(w.astype(np.int32)).max())
        assert worst <= INT8_WEIGHT_LIMIT, f"{node.name}: |w| reaches {worst}"
    assert 2 * 255 * INT8_WEIGHT_LIMIT <= np.iinfo(np.int16).max


def _matmul_integer_session(w: np.ndarray, zp: np.ndarray) -> ort.InferenceSession:
    """One MatMulInteger node: A uint8 [R, K] (zero point 0) times the constant int8 weights."""
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("MatMulInteger", ["a", "w", "a_zp", "w_zp"], ["y"])], "mmi",
        [h.make_tensor_value_info("a", onnx.TensorProto.UINT8, [None, w.shape[0]])],
        [h.make_tensor_value_info("y", onnx.TensorProto.INT32, [None, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(zp, "w_zp"),
         numpy_helper.from_array(np.array(0, np.uint8), "a_zp")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", DEFAULT_OPSET)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_int8_matmuls_are_exact_integer_arithmetic(int8_graph: onnx.ModelProto) -> None:
    """ONNX Runtime's integer kernel equals an exact int64 numpy product for every quantised
    weight, on the activations that drive the pair sums to their extremes (255 where a column's
    weight is positive, or negative, 0 elsewhere) and on random ones. A saturating kernel fails
    this with 8-bit weights (on a non-VNNI CPU); exact kernels pass on any CPU."""
    rng = np.random.default_rng(0)
    for node, w, zp in _int8_matmuls(int8_graph):
        a = np.concatenate([np.where(w.T > 0, 255, 0), np.where(w.T < 0, 255, 0),
                            np.full((1, w.shape[0]), 255), rng.integers(0, 256, (8, w.shape[0]))]).astype(np.uint8)
        exact = a.astype(np.int64) @ w.astype(np.int64)
        sess = _matmul_integer_session(w, zp)
        for rows in (a, a[:SPEC.horizon]):  # a batch, and the graph's own M = T rows
            got = sess.run(None, {"a": rows})[0]
            assert np.array_equal(got, exact[:len(rows)]), node.name


def test_int8_weights_above_seven_bits_are_refused(int8_graph: onnx.ModelProto) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(int8_graph)
    node, w, _ = _int8_matmuls(proto)[0]
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    w = w.copy()
    w.flat[0] = 127
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    with pytest.raises(ExportError, match=f"int8 node '{node.name}': weights reach 127"):
        check_int8_weight_range(proto)
    check_int8_weight_range(int8_graph)


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
    r = subprocess.run([PY, "-m", "mtm_runtime.export.to_onnx", str(ckpt_dir), "-o", str(out), "--opset", "18"],
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
    (bad / "mtm.json").write_text(json.dumps(stamp_json(meta)))  # digest recomputed: validation refuses
    r = _cli("export", "onnx", str(bad), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "spec" in r.stderr and "width" in r.stderr


def test_cli_unsupported_opset(ckpt_dir: Path, tmp_path: Path) -> None:
    r = _cli("export", "onnx", str(ckpt_dir), "-o", str(tmp_path / "m.onnx"), "--opset", "9")
    assert r.returncode == 2 and "opset 9 is not supported" in r.stderr


def test_the_chunk_length_and_horizon_are_recorded_and_enforced(ckpt_dir: Path, tmp_path: Path) -> None:
    """``--chunk K``: parity is checked on that chunk's masks (and the monitor's batch at B = 2), the
    metadata records {horizon, chunk} (a TensorRT sidecar copies it), and a chunk planner asking
    another length of that file is refused; chunk 1 (the plain loop) always runs."""
    from mtm_runtime.chunking import ChunkPlanner
    from mtm_runtime.onnx_graph import parity_cases
    from mtm_runtime.onnx_metadata import exported_chunk
    from mtm_runtime.policy import InputError, Policy

    labels = [label for label, *_ in parity_cases(SPEC, 2, chunk=2)]
    assert {"chunk:2:committed 0", "chunk:2:committed 1", "chunk:2+monitor"} <= set(labels)
    out = tmp_path / "chunk2.onnx"
    r = _cli("export", "onnx", str(ckpt_dir), "-o", str(out), "--chunk", "2", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "chunk 2 of horizon 3" in r.stdout
    meta = read_onnx_metadata(out)
    assert meta["export"]["control"] == {"horizon": SPEC.horizon, "chunk": 2} and exported_chunk(meta) == 2
    policy = Policy.load(out, backend="onnxruntime", batch_size=2)
    assert ChunkPlanner(policy, 2, monitor=True).chunk == 2
    with pytest.raises(InputError, match="exported for chunk 2"):
        ChunkPlanner(policy, 3)
    assert exported_chunk(load_checkpoint(ckpt_dir).metadata()) is None   # a checkpoint runs any chunk
    r = _cli("export", "onnx", str(ckpt_dir), "-o", str(tmp_path / "bad.onnx"), "--chunk", "4")
    assert r.returncode == 2 and "chunk 4 does not fit" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.onnx").exists()
