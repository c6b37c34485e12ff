"""Security basics: no code execution on load paths, no path from metadata followed, SROS2 enclaves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Everything that loads a model, a file or a message at run time.
LOAD_PATHS = ["mtm_runtime/checkpoint.py", "mtm_runtime/policy.py", "mtm_runtime/onnx_metadata.py",
              "mtm_runtime/onnx_graph.py", "mtm_runtime/onnx_int8.py", "mtm_runtime/engine_sidecar.py",
              "mtm_runtime/backends", "mtm_runtime/serial_framing.py", "mtm_runtime/serial_messages.py",
              "mtm_runtime/serial_protocol.py", "mtm_runtime/serial_link.py", "ros_nodes", "sim/ros_bridge.py",
              "sim/virtual_mcu.py"]
FORBIDDEN = re.compile(r"^\s*(import pickle|from pickle|import dill|import cloudpickle|import marshal)|"
                       r"torch\.load\(|pickle\.loads?\(|np\.load\([^)]*allow_pickle\s*=\s*True|(?<![.\w])eval\(|(?<![.\w])exec\(",
                       re.M)


def _files() -> list[Path]:
    out: list[Path] = []
    for p in LOAD_PATHS:
        q = REPO / p
        out += sorted(q.rglob("*.py")) if q.is_dir() else [q]
    return [f for f in out if f.exists()]


def test_no_pickle_or_torch_load_on_load_paths() -> None:
    hits = [f"{f.relative_to(REPO)}:{m.group(0).strip()}" for f in _files() for m in FORBIDDEN.finditer(f.read_text())]
    assert not hits, f"code-executing loaders on a load path: {hits}"
    # torch.load anywhere else must say weights_only=True
    for f in REPO.rglob("*.py"):
        if ".venv" in f.parts or f.name == Path(__file__).name:
            continue
        for m in re.finditer(r"torch\.load\(([^)]*)\)", f.read_text()):
            assert "weights_only=True" in m.group(1), f"{f}: torch.load without weights_only=True"


def test_onnx_is_read_without_external_data(tmp_path: Path) -> None:
    """An ONNX file is parsed with load_external_data=False: a path inside it is never opened."""
    src = (REPO / "mtm_runtime/onnx_metadata.py").read_text()
    assert "load_external_data=False" in src


def test_engine_sidecar_names_no_file(tmp_path: Path) -> None:
    """The sidecar is found by name next to the engine; a tampered one is refused with its field."""
    from mtm_runtime.checkpoint import CheckpointError
    from mtm_runtime.engine_sidecar import read_engine_sidecar, sidecar_path

    eng = tmp_path / "m.engine"
    eng.write_bytes(b"x")
    assert sidecar_path(eng) == tmp_path / "m.engine.json"
    sidecar_path(eng).write_text('{"format": "mtm_runtime.checkpoint"}')
    with pytest.raises(CheckpointError, match="engine"):
        read_engine_sidecar(eng)


def test_external_backends_need_the_environment_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    from mtm_runtime.ros_nodes.policy_node import EXTERNAL_BACKENDS_ENV, load_external_policy

    monkeypatch.delenv(EXTERNAL_BACKENDS_ENV, raising=False)
    with pytest.raises(ValueError, match=EXTERNAL_BACKENDS_ENV):
        load_external_policy(str(tmp_path), "external:os:system", "bc")
    monkeypatch.setenv(EXTERNAL_BACKENDS_ENV, "1")
    with pytest.raises(ValueError, match="not a mtm_runtime Backend"):
        load_external_policy(str(tmp_path), "external:os:system", "bc")


def test_serial_decoder_caps_buffer() -> None:
    from mtm_runtime import serial_framing as sf, serial_protocol as sp

    dec = sp.FrameDecoder()
    for _ in range(50):
        dec.feed(b"\x01" * 4096)
        assert dec.buffered <= sf.MAX_ENCODED
    assert dec.stats.oversize >= 1


def test_launch_accepts_enclave_and_readme_explains_sros2() -> None:
    from mtm_runtime.ros_nodes.launch_description import LAUNCH_ARGUMENTS, command_line, describe, launch_node_kwargs

    assert "enclave" in LAUNCH_ARGUMENTS
    for node in describe(model="m", target="serial", enclave="/mtm/policy"):
        assert command_line(node)[-2:] == ["--enclave", "/mtm/policy"]
        assert launch_node_kwargs(node)["arguments"] == ["--ros-args", "--enclave", "/mtm/policy"]
    readme = (REPO / "README.md").read_text()
    for word in ("ROS_SECURITY_KEYSTORE", "ROS_SECURITY_ENABLE", "ROS_SECURITY_STRATEGY", "--enclave"):
        assert word in readme, word
