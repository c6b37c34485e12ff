"""Model artefacts you can trust (issue 24): what is loaded is what was trained, or it is refused.

Each crafted file is written by the test. Two attackers are modelled: one who edits a file
(the integrity digest refuses it, naming the changed field) and one who also recomputes the
digest with the project's own code (then the bounds, the limits rule and the behavioural
fingerprint refuse it). Refusals are CheckpointErrors whose message names the file and field.
"""
from __future__ import annotations

import importlib.util
import json
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from export_fixtures import SPEC, make_checkpoint
from mtm_runtime import policy_params as pp
from mtm_runtime.checkpoint import CheckpointError, load_checkpoint, restamp_checkpoint
from mtm_runtime.engine_sidecar import read_engine_sidecar, sidecar_path
from mtm_runtime.export.onnx_export import export_onnx, restamp_onnx
from mtm_runtime.fileio import sha256_file
from mtm_runtime.integrity import ALLOW_UNSTAMPED_ENV, Trust, stamp_json
from mtm_runtime.model import MTM, PRESETS, count_parameters, memory_estimate, parameter_count
from mtm_runtime.onnx_metadata import INTEGRITY_KEY, METADATA_KEY, read_onnx_metadata, stamp_onnx
from mtm_runtime.policy import Policy
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec

REFUSED = CheckpointError


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trust")
    ck = make_checkpoint(d / "ck")
    export_onnx(load_checkpoint(ck), d / "model.onnx")
    return {"ckpt": ck, "onnx": d / "model.onnx"}


@pytest.fixture()
def ckpt(base: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(base["ckpt"], tmp_path / "ck"))


def _edit(d: Path, fn: Callable[[dict[str, Any]], None], restamp: bool) -> None:
    meta = json.loads((d / "mtm.json").read_text())
    fn(meta)
    (d / "mtm.json").write_text(json.dumps(stamp_json(meta) if restamp else meta, indent=1))


def _refused(path: Path, *needles: str, **load_kw: Any) -> str:
    """Policy.load refuses ``path``; the message names the file and every needle."""
    with pytest.raises(REFUSED) as e:
        Policy.load(path, **load_kw)
    msg = str(e.value)
    name = "mtm.json" if path.is_dir() else path.name
    assert name in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def _swap_actions_goals(m: dict[str, Any]) -> None:
    mods = m["spec"]["modalities"]
    i, j = [k for k, x in enumerate(mods) if x["name"] in ("actions", "goals")]
    mods[i]["name"], mods[j]["name"] = mods[j]["name"], mods[i]["name"]


# ---- mtm.json: each case of the issue, edited and edited + digest recomputed --------------------------------
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_swapped_modalities_refused(ckpt: Path, backend: str) -> None:
    assert SPEC.width("actions") == SPEC.width("goals")  # equal widths: the shapes cannot tell
    _edit(ckpt, _swap_actions_goals, restamp=False)
    _refused(ckpt, "spec: digest mismatch", backend=backend)
    _edit(ckpt, lambda m: None, restamp=True)
    _refused(ckpt, "fingerprint: outputs differ", backend=backend)


@pytest.mark.parametrize("heads", [1, 4, 8])
def test_changed_heads_refused(ckpt: Path, heads: int) -> None:
    _edit(ckpt, lambda m: m["model_config"].update(n_heads=heads), restamp=False)
    _refused(ckpt, "model_config: digest mismatch")
    _edit(ckpt, lambda m: None, restamp=True)
    _refused(ckpt, "fingerprint: outputs differ")


def test_normaliser_std_out_of_range_refused(ckpt: Path) -> None:
    _edit(ckpt, lambda m: m["normaliser"]["std"].update(actions=[1e30, 1.0]), restamp=False)
    _refused(ckpt, "normaliser: digest mismatch")
    _edit(ckpt, lambda m: None, restamp=True)
    _refused(ckpt, "normaliser.std.actions[0]", "outside [1e-08, 1e+08]")
    _edit(ckpt, lambda m: m["normaliser"]["std"].update(actions=[1e-12, 1.0]), restamp=True)
    _refused(ckpt, "normaliser.std.actions[0]")


def test_missing_limits_refused_unless_given(ckpt: Path) -> None:
    _edit(ckpt, lambda m: m.update(action_limits=None), restamp=False)
    _refused(ckpt, "action_limits: digest mismatch")
    _edit(ckpt, lambda m: None, restamp=True)
    _refused(ckpt, "action_limits: missing", "limits=")
    explicit = ActionLimits.symmetric(0.5, SPEC.width("actions"))
    p = Policy.load(ckpt, limits=explicit)
    assert p.limits is explicit


def test_node_parameters_supply_limits_for_a_model_without(ckpt: Path) -> None:
    """The policy node's action_low/action_high are the limits of a model that carries none; a
    model with limits keeps them, narrowed (never widened) by the parameters."""
    values = {name: prm.default for name, prm in pp.PARAMETERS.items()}
    with_limits = pp.load_policy(str(ckpt), "torch", "bc", 1, pp.configured_limits(
        {**values, "action_low": [-5.0, -0.2], "action_high": [5.0, 0.2]}))
    file_limits = load_checkpoint(ckpt).action_limits
    assert np.allclose(with_limits.limits.low, np.maximum(file_limits.low, [-5.0, -0.2]))
    assert np.allclose(with_limits.limits.high, np.minimum(file_limits.high, [5.0, 0.2]))
    _edit(ckpt, lambda m: m.update(action_limits=None), restamp=True)
    with pytest.raises(CheckpointError, match="action_limits: missing.*action_low and action_high"):
        pp.load_policy(str(ckpt), "torch", "bc", 1, pp.configured_limits(values))
    p = pp.load_policy(str(ckpt), "torch", "bc", 1, pp.configured_limits(
        {**values, "action_low": [-0.3, -0.3], "action_high": [0.3, 0.4]}))
    assert p.limits.high.tolist() == pytest.approx([0.3, 0.4])
    assert pp.configured_limits({**values, "action_low": [-0.3], "action_high": [0.3]}) is None  # a scalar narrows only


@pytest.mark.parametrize("limits, field", [
    ({"low": [-1e30, -1.0], "high": [1.0, 1.0]}, "action_limits.low[0]"),
    ({"low": [-1.0, -1.0], "high": [1.0, 1e30]}, "action_limits.high[1]"),
    ({"low": [-1.0, 0.5], "high": [1.0, 0.5]}, "action_limits.low[1]"),        # low == high
    ({"low": [-1.0, "NaN"], "high": [1.0, 1.0]}, "action_limits.low"),
    ({"low": [-1.0], "high": [1.0]}, "action_limits.low"),                      # wrong width
])
def test_bad_limits_refused(ckpt: Path, limits: dict[str, Any], field: str) -> None:
    _edit(ckpt, lambda m: m.update(action_limits=limits), restamp=True)
    _refused(ckpt, field)


def test_float_d_model_refused(ckpt: Path) -> None:
    _edit(ckpt, lambda m: m["model_config"].update(d_model=32.0), restamp=True)
    _refused(ckpt, "model_config", "model_config.d_model must be an integer")
    _edit(ckpt, lambda m: m["model_config"].update(d_model=True), restamp=True)
    _refused(ckpt, "model_config.d_model must be an integer")


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["model_config"].update(d_model=16384, n_heads=2), "GiB"),
    (lambda m: m["model_config"].update(d_model=4096, n_enc_layers=100), "GiB"),
    (lambda m: m["model_config"].update(n_enc_layers=10 ** 6), "model_config.n_enc_layers must be an integer in"),
    (lambda m: m["model_config"].update(d_model=10 ** 9), "model_config.d_model must be an integer in"),
    (lambda m: m["spec"].update(horizon=10 ** 6), "spec.horizon"),
    (lambda m: m["spec"].update(horizon=4000), "GiB"),                  # within bounds, over the memory limit
    (lambda m: m["spec"]["modalities"][0].update(width=10 ** 7), "spec.modalities[0].width"),
])
def test_huge_models_refused_fast_without_allocating(ckpt: Path, edit: Callable, needle: str) -> None:
    _edit(ckpt, edit, restamp=True)
    before = _max_rss_mb()
    t0 = time.perf_counter()
    _refused(ckpt, needle)
    assert time.perf_counter() - t0 < 1.0
    assert _max_rss_mb() - before < 200  # nothing the file's sizes decide was allocated


def test_memory_estimate_counts_parameters() -> None:
    spec = TrajectorySpec.create(4, states=11, actions=3, returns=1, goals=2)
    for cfg in PRESETS.values():
        net = MTM(spec, cfg)
        assert parameter_count(spec, cfg) == count_parameters(net)
        assert memory_estimate(spec, cfg) > 4 * count_parameters(net)


def test_shapes_must_match_the_weights(ckpt: Path) -> None:
    _edit(ckpt, lambda m: m["model_config"].update(d_model=64, n_heads=2), restamp=True)
    with pytest.raises(REFUSED, match=r"model\.safetensors: enc_modality: shape \(4, 32\) != expected \(4, 64\)"):
        Policy.load(ckpt)


def test_policy_batch_load_refuses_alike(ckpt: Path) -> None:
    from mtm_runtime.policy_batch import PolicyBatch

    assert len(PolicyBatch.load(ckpt, 3, backend="onnxruntime")) == 3  # fingerprint through batch 3
    _edit(ckpt, _swap_actions_goals, restamp=True)
    with pytest.raises(REFUSED, match=r"mtm\.json: fingerprint: outputs differ"):
        PolicyBatch.load(ckpt, 3)
    _edit(ckpt, lambda m: (_swap_actions_goals(m), m.update(action_limits=None)), restamp=True)
    with pytest.raises(REFUSED, match=r"mtm\.json: action_limits: missing"):
        PolicyBatch.load(ckpt, 2)


# ---- unstamped (legacy) files, restamping -------------------------------------------------------------------
def test_unstamped_checkpoint_policy(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNSTAMPED_ENV, raising=False)
    _edit(ckpt, lambda m: (m.pop("integrity"), m.pop("fingerprint")), restamp=False)
    msg = _refused(ckpt, "integrity: missing", "mtm verify --restamp", ALLOW_UNSTAMPED_ENV)
    with pytest.raises(REFUSED, match="integrity: missing"):
        load_checkpoint(ckpt)
    with pytest.warns(UserWarning, match="UNSTAMPED"):
        Policy.load(ckpt, trust=Trust(allow_unstamped=True))
    monkeypatch.setenv(ALLOW_UNSTAMPED_ENV, "1")
    with pytest.warns(UserWarning, match="UNSTAMPED"):
        load_checkpoint(ckpt)
    monkeypatch.delenv(ALLOW_UNSTAMPED_ENV)
    weights = sha256_file(ckpt / "model.safetensors")
    assert restamp_checkpoint(ckpt) == ["(unstamped)"]
    assert sha256_file(ckpt / "model.safetensors") == weights
    Policy.load(ckpt)
    assert msg


def test_stamp_refuses_edited_stamp(ckpt: Path) -> None:
    meta = json.loads((ckpt / "mtm.json").read_text())
    meta["integrity"]["digest"] = "sha256:" + "0" * 64
    (ckpt / "mtm.json").write_text(json.dumps(meta))
    _refused(ckpt, "integrity.digest", "stamp itself was edited")


def test_reformatted_json_still_loads(ckpt: Path) -> None:
    meta = json.loads((ckpt / "mtm.json").read_text())
    (ckpt / "mtm.json").write_text(json.dumps(meta, indent=7, sort_keys=False))
    Policy.load(ckpt)


def test_bundled_model_is_stamped() -> None:
    from mtm_runtime.checkpoint import META_FILE

    root = Path(__file__).resolve().parents[2] / "models" / "reacher_embedded"
    meta = json.loads((root / META_FILE).read_text())
    assert meta["integrity"]["digest"].startswith("sha256:") and meta["fingerprint"]["modes"]
    assert meta["weights"]["sha256"] == sha256_file(root / "model.safetensors")
    Policy.load(root, mode="goal")


# ---- ONNX ---------------------------------------------------------------------------------------------------
def _onnx_copy(base: dict[str, Path], tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    p = tmp_path / "model.onnx"
    shutil.copy(base["onnx"], p)
    return p, onnx.load(str(p))


def _scale_first_matmul_weight(proto: onnx.ModelProto, factor: float) -> str:
    inits = {t.name: t for t in proto.graph.initializer}
    name = next(i for n in proto.graph.node if n.op_type == "MatMul" for i in n.input if i in inits)
    t = inits[name]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), name))
    return name


def test_onnx_initializer_scaled_refused(base: dict[str, Path], tmp_path: Path) -> None:
    p, proto = _onnx_copy(base, tmp_path)
    name = _scale_first_matmul_weight(proto, 10.0)
    onnx.save(proto, str(p))
    _refused(p, f"initializer:{name}: digest mismatch")
    stamp_onnx(proto)  # digest recomputed: the fingerprint still refuses it
    onnx.save(proto, str(p))
    _refused(p, "fingerprint: outputs differ")


def _meta_prop(base: dict[str, Path]) -> str:
    return {e.key: e.value for e in onnx.load(str(base["onnx"])).metadata_props}[METADATA_KEY]


def test_onnx_identity_graph_with_valid_metadata_refused(base: dict[str, Path], tmp_path: Path) -> None:
    """A hand-made ``y = x + 0`` carrying a real model's metadata (and a recomputed digest)."""
    T, D, M = SPEC.horizon, SPEC.packed_width, SPEC.num_modalities
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "zero"], ["y"])], "not_an_mtm",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, T, D]),
         helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [1, T, M])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, T, D])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, _meta_prop(base)
    p = tmp_path / "identity.onnx"
    onnx.save(proto, str(p))
    _refused(p, f"metadata_props[{INTEGRITY_KEY}]: missing")
    stamp_onnx(proto)
    onnx.save(proto, str(p))
    _refused(p, "fingerprint: outputs differ")


def test_onnx_output_plus_1e30_refused(base: dict[str, Path], tmp_path: Path) -> None:
    p, proto = _onnx_copy(base, tmp_path)
    g = proto.graph
    for n in g.node:
        for k, o in enumerate(n.output):
            if o == "y":
                n.output[k] = "y_model"
    g.initializer.append(numpy_helper.from_array(np.array([1e30], np.float32), "huge"))
    g.node.append(helper.make_node("Add", ["y_model", "huge"], ["y"], name="evil_add"))
    onnx.save(proto, str(p))
    _refused(p, "graph, initializer:huge: digest mismatch")
    stamp_onnx(proto)
    onnx.save(proto, str(p))
    _refused(p, "fingerprint: outputs differ")


def test_onnx_metadata_edit_refused(base: dict[str, Path], tmp_path: Path) -> None:
    p, proto = _onnx_copy(base, tmp_path)
    for e in proto.metadata_props:
        if e.key == METADATA_KEY:
            meta = json.loads(e.value)
            meta["action_limits"] = None
            e.value = json.dumps(meta)
    onnx.save(proto, str(p))
    _refused(p, f"{METADATA_KEY}.action_limits: digest mismatch")
    stamp_onnx(proto)
    onnx.save(proto, str(p))
    _refused(p, "action_limits: missing")
    Policy.load(p, limits=ActionLimits.symmetric(1.0, SPEC.width("actions")))


def test_onnx_restamp_and_int8(base: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNSTAMPED_ENV, raising=False)
    p, proto = _onnx_copy(base, tmp_path)
    keep = [e for e in proto.metadata_props if e.key != INTEGRITY_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(p))
    _refused(p, "missing")
    assert restamp_onnx(p) == [f"metadata_props[{INTEGRITY_KEY}]"]
    read_onnx_metadata(p)
    assert Policy.load(p, quantize="int8").backend.output_tolerance > 0.1  # int8 runs against its own bound


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_special_files_are_never_read(ckpt: Path, tmp_path: Path, kind: str) -> None:
    import os

    targets = [tmp_path / "model.onnx", ckpt / "mtm.json", ckpt / "model.safetensors"]
    for t in targets:
        t.unlink(missing_ok=True)
        os.mkfifo(t) if kind == "fifo" else t.symlink_to("/dev/zero")
    t0 = time.perf_counter()
    with pytest.raises(REFUSED, match=r"model\.onnx: \(file\)"):
        Policy.load(tmp_path / "model.onnx")
    with pytest.raises(REFUSED, match=r"mtm\.json: \(file\)"):
        Policy.load(ckpt)
    assert time.perf_counter() - t0 < 1.0


# ---- engine sidecar (no TensorRT needed: the stamp is checked before any engine is deserialised) ------------
def test_engine_sidecar_stamp(base: dict[str, Path], tmp_path: Path) -> None:
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"engine bytes")
    meta = {**read_onnx_metadata(base["onnx"]), "engine": {"options": {"fp16": False}}}
    sidecar_path(eng).write_text(json.dumps(stamp_json(meta, {"engine_file": sha256_file(eng)})))
    assert read_engine_sidecar(eng)["engine"]["options"] == {"fp16": False}
    eng.write_bytes(b"other engine")
    with pytest.raises(REFUSED, match=r"m\.engine\.json: engine_file: digest mismatch"):
        read_engine_sidecar(eng)
    eng.write_bytes(b"engine bytes")
    side = json.loads(sidecar_path(eng).read_text())
    side["normaliser"]["std"]["actions"] = [1e30, 1.0]
    sidecar_path(eng).write_text(json.dumps(side))
    with pytest.raises(REFUSED, match=r"m\.engine\.json: normaliser: digest mismatch"):
        read_engine_sidecar(eng)


# ---- signing ------------------------------------------------------------------------------------------------
def test_signed_files_with_trusted_keys(ckpt: Path, base: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from mtm_runtime.integrity import generate_keypair

    generate_keypair(tmp_path / "a.pem", tmp_path / "a.pub")
    generate_keypair(tmp_path / "b.pem", tmp_path / "b.pub")
    trust_a = Trust(trusted_keys=(str(tmp_path / "a.pub"),))
    _refused(ckpt, "integrity.signature: missing", trust=trust_a)  # unsigned
    restamp_checkpoint(ckpt, trust=Trust(signing_key=str(tmp_path / "b.pem")))
    _refused(ckpt, "not signed by any trusted key", trust=trust_a)  # signed by another key
    restamp_checkpoint(ckpt, trust=Trust(signing_key=str(tmp_path / "a.pem")))
    Policy.load(ckpt, trust=trust_a)
    Policy.load(ckpt)  # no trusted keys configured: the digest alone is checked
    # an attacker who edits the file and recomputes the digest cannot re-sign it
    _edit(ckpt, lambda m: m["normaliser"]["mean"].update(actions=[0.5, 0.5]), restamp=True)
    _refused(ckpt, "integrity.signature: missing", trust=trust_a)
    p = tmp_path / "signed.onnx"
    export_onnx(load_checkpoint(base["ckpt"]), p, trust=Trust(signing_key=str(tmp_path / "a.pem")))
    Policy.load(p, trust=trust_a)
    with pytest.raises(REFUSED, match="not signed by any trusted key"):
        Policy.load(p, trust=Trust(trusted_keys=(str(tmp_path / "b.pub"),)))


# ---- fuzz: every mutation is refused, or loads with bit-identical behaviour --------------------------------
def _behaviour(path: Path) -> np.ndarray:
    p = Policy.load(path, backend="torch", warmup=0)
    rng = np.random.default_rng(7)
    out = []
    p.set_goal(np.zeros(SPEC.width("goals")))
    p.set_target_return(1.0)
    for mode in p.modes:
        p.set_mode(mode)
        p.reset()
        for _ in range(4):
            out.append(p.act(rng.standard_normal(SPEC.width("states"))).copy())
    return np.stack(out)


def _leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        return [path] + [leaf for k, v in obj.items() for leaf in _leaves(v, path + (k,))]
    if isinstance(obj, list):
        return [path] + [leaf for i, v in enumerate(obj) for leaf in _leaves(v, path + (i,))]
    return [path]


def _mutate(rng: random.Random, value: Any) -> Any:
    choices: list[Any] = [None, "x", True, 0, -1, 1e30, float("nan"), [], {}]
    if isinstance(value, bool):
        choices.append(not value)
    elif isinstance(value, (int, float)):
        choices += [value * 10, value + 1, float(value) + 1e-6, -value,
                    int(value) if value == int(value) else value * 2]
    elif isinstance(value, str):
        choices += [value + "x", value.upper()]
    elif isinstance(value, list) and value:
        choices += [value[:-1], value + value[-1:], list(reversed(value))]
    return rng.choice(choices)


def _set(meta: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        meta = meta[k]
    meta[path[-1]] = value


def test_fuzz_mtm_json_mutations(ckpt: Path) -> None:
    reference = _behaviour(ckpt)
    original = json.loads((ckpt / "mtm.json").read_text())
    rng = random.Random(24)
    leaves = [p for p in _leaves(original) if p and p[0] != "integrity"]
    outcomes = {"refused": 0, "identical": 0}
    deadline = time.monotonic() + 4.0
    n = 0
    while n < 40 or (time.monotonic() < deadline and n < 400):
        n += 1
        meta = json.loads(json.dumps(original))
        kind = rng.random()
        if kind < 0.7:
            path = rng.choice(leaves)
            _set(meta, path, _mutate(rng, json.loads(json.dumps(_get(meta, path)))))
            text = json.dumps(meta)
        elif kind < 0.85:  # byte flip anywhere in the file
            raw = bytearray(json.dumps(meta, indent=2).encode())
            raw[rng.randrange(len(raw))] = rng.randrange(256)
            text = raw.decode("latin-1")
        else:  # reformatting only: must load the same
            text = json.dumps(meta, indent=rng.choice([None, 0, 3]), sort_keys=rng.random() < 0.5)
        (ckpt / "mtm.json").write_text(text, encoding="latin-1")
        try:
            got = _behaviour(ckpt)
        except CheckpointError as e:
            assert "mtm.json" in str(e)
            outcomes["refused"] += 1
            continue
        assert np.array_equal(got, reference), text[:200]
        outcomes["identical"] += 1
    assert outcomes["refused"] > 0 and outcomes["identical"] > 0, outcomes


def _get(meta: Any, path: tuple) -> Any:
    for k in path:
        meta = meta[k]
    return meta


def test_fuzz_onnx_initializer_mutations(base: dict[str, Path], tmp_path: Path) -> None:
    p, proto = _onnx_copy(base, tmp_path)
    sess_ref = Policy.load(p, warmup=0)
    x = np.random.default_rng(3).standard_normal((1, SPEC.horizon, SPEC.packed_width)).astype(np.float32)
    m = np.ones((1, SPEC.horizon, SPEC.num_modalities), np.float32)
    reference = sess_ref.backend.run(x, m).copy()
    floats = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    rng = np.random.default_rng(24)
    refused = identical = 0
    deadline = time.monotonic() + 4.0
    n = 0
    while n < 20 or (time.monotonic() < deadline and n < 200):
        n += 1
        mutated = onnx.ModelProto()
        mutated.CopyFrom(proto)
        name = floats[int(rng.integers(len(floats)))]
        t = next(t for t in mutated.graph.initializer if t.name == name)
        a = numpy_helper.to_array(t).copy()
        i = int(rng.integers(a.size)) if a.size else 0
        if a.size:
            a.flat[i] = rng.choice([a.flat[i] * 10, a.flat[i] + 1e-3, -a.flat[i], 0.0, a.flat[i]])
        t.CopyFrom(numpy_helper.from_array(a, t.name))
        onnx.save(mutated, str(p))
        try:
            pol = Policy.load(p, warmup=0)
        except CheckpointError as e:
            assert f"initializer:{t.name}" in str(e) and "model.onnx" in str(e), str(e)
            refused += 1
            continue
        assert np.array_equal(pol.backend.run(x, m), reference)
        identical += 1
    assert refused > 0, (refused, identical)


# ---- the `mtm verify` command -------------------------------------------------------------------------------
def _mtm(*args: str) -> tuple[int, str, str]:
    """``mtm ARGS`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from mtm_runtime.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_mtm_verify_restamp_and_sign(ckpt: Path, base: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNSTAMPED_ENV, raising=False)
    _edit(ckpt, lambda m: m.pop("integrity"), restamp=False)
    rc, out, err = _mtm("verify", str(ckpt))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "mtm.json: integrity: missing" in err
    rc, out, err = _mtm("verify", str(ckpt), "--restamp")
    assert rc == 0 and "(unstamped)" in out and "ok:" in out, (out, err)
    rc, out, err = _mtm("verify", str(base["onnx"]))
    assert rc == 0 and "fingerprint max abs diff" in out, err
    if importlib.util.find_spec("cryptography") is None:
        return
    rc, out, _ = _mtm("verify", "--keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    assert rc == 0 and "key id" in out
    monkeypatch.setenv("MTM_TRUSTED_KEYS", str(tmp_path / "k.pub"))
    assert _mtm("verify", str(ckpt))[0] == 2
    rc, out, err = _mtm("verify", str(ckpt), "--restamp", "--sign", str(tmp_path / "k.pem"))
    assert rc == 0, err
    Policy.load(ckpt)  # trusted keys from the environment
