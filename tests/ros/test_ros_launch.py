"""Launch: launch/policy.launch.py and `mtm launch` derive from one description; `mtm launch`
starts the node set over real ROS 2, reproduces the in-process rollout in lockstep, stops cleanly
on SIGINT and fails when a node dies."""
from __future__ import annotations

import ast
import importlib.util
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from mtm_runtime.ros_nodes.launch_description import (LAUNCH_ARGUMENTS, command_line, describe, launch_node_kwargs,
                                            parse_command_line)

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / "launch" / "policy.launch.py"


def _load_launch_file_with_recording_api() -> tuple[types.ModuleType, list]:
    """Import the launch file against minimal recording stand-ins for `launch`/`launch_ros`
    (not installable here); each records the keyword arguments it was given."""
    created: list = []

    class Rec:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs
            created.append(self)

    class LaunchConfiguration(Rec):
        values: dict = {}

        def perform(self, context):
            return context[self.args[0]]

    mods = {name: types.ModuleType(name) for name in
            ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions")}
    mods["launch"].LaunchDescription = type("LaunchDescription", (Rec,), {})
    mods["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (Rec,), {})
    mods["launch.actions"].OpaqueFunction = type("OpaqueFunction", (Rec,), {})
    mods["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (Rec,), {})
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        spec = importlib.util.spec_from_file_location("policy_launch", LAUNCH_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module, created


@pytest.mark.parametrize("target", ["sim", "serial", "none"])
def test_launch_file_and_mtm_launch_share_one_description(target: str) -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == "mtm_runtime.ros_nodes.launch_description" for a in n.names}
    assert {"describe", "launch_node_kwargs", "LAUNCH_ARGUMENTS"} <= imported

    module, created = _load_launch_file_with_recording_api()
    ld = module.generate_launch_description()
    declared = {r.args[0]: r.kwargs["default_value"] for r in created if type(r).__name__ == "DeclareLaunchArgument"}
    assert declared == {k: d for k, (d, _) in LAUNCH_ARGUMENTS.items()}
    opaque = ld.args[0][-1]
    args = dict(declared, model="/m/ckpt", backend="onnxruntime", rate="100", params_file="/p.yaml", target=target,
                enclave="/mtm/enclave")
    nodes = opaque.kwargs["function"](args)
    expected = describe(**args)
    assert [n.kwargs for n in nodes] == [launch_node_kwargs(s) for s in expected]
    for launch_node, spec in zip(nodes, expected):  # the `mtm launch` argv says the same
        argv = parse_command_line(command_line(spec))
        kw = launch_node.kwargs
        assert argv["name"] == kw["name"] and argv["module"] == spec.module
        assert argv["params_files"] == [p for p in kw["parameters"] if isinstance(p, str)]
        assert argv["parameters"] == kw["parameters"][-1]
        assert argv["remappings"] == kw["remappings"]
        assert ["--ros-args", "--enclave", argv["enclave"]] == kw["arguments"]
    assert [n.kwargs["executable"] for n in nodes][0] == "mtm_policy_node"


def _write_params(tmp_path: Path, bridge: dict, policy: dict | None = None) -> Path:
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"mtm_policy": {"ros__parameters": dict({"warmup_iters": 2, "stale_timeout": 5.0,
                                                                          "control_rate_hz": 5.0}, **(policy or {}))},
                                 "mtm_sim_bridge": {"ros__parameters": bridge}}))
    return p


def _children(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.ros
def test_mtm_launch_lockstep_reproduces_in_process_rollout(ros_env, tmp_path: Path) -> None:
    from ros_harness import make_tiny_checkpoint
    from test_ros_sim_bridge import in_process_returns

    from mtm_runtime.policy import Policy

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    results = tmp_path / "results.json"
    params = _write_params(tmp_path, {"mode": "lockstep", "seed": 11, "episodes": 1, "results_path": str(results)})
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "launch", "--model", str(ckpt), "--target", "sim",
                           "--params-file", str(params)], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results.read_text())
    ros = data["episodes"]
    assert data["lockstep_resends"] <= 1  # a first observation lost before discovery completed is resent
    import torch

    threads = torch.get_num_threads()
    try:  # the node's default loader runs torch with inference_threads=1: same numerics here
        reference = in_process_returns(Policy.load(ckpt, mode="bc", threads=1), "reacher", 11, 1)
    finally:
        torch.set_num_threads(threads)
    assert ros[0]["steps"] == 50
    assert ros[0]["return"] == pytest.approx(reference[0], abs=1e-9), (ros, reference)
    print(f"mtm launch lockstep episode wall time {time.monotonic() - t0:.1f} s")


@pytest.mark.ros
def test_mtm_launch_sigint_stops_every_node(ros_env, tmp_path: Path) -> None:
    from ros_harness import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    params = _write_params(tmp_path, {"mode": "realtime", "episodes": 0})
    proc = subprocess.Popen([sys.executable, "-m", "mtm_runtime.cli", "launch", "--model", str(ckpt),
                             "--target", "sim", "--params-file", str(params)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, lines = False, []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "episode 0: return" in line:  # the policy drove a whole realtime episode
                seen = True
                break
        assert seen, "".join(lines[-40:])
        kids = _children(proc.pid)
        assert len(kids) >= 2
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out[-3000:]
        assert not [k for k in kids if k.is_running() and k.status() != "zombie"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.ros
def test_mtm_launch_fails_when_a_node_dies(ros_env, tmp_path: Path) -> None:
    params = _write_params(tmp_path, {"task": "no_such_task"})
    proc = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "launch", "--model", "/nonexistent",
                           "--target", "sim", "--params-file", str(params), "--grace", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "mtm_sim_bridge died" in proc.stderr


def test_lockstep_sim_gets_a_reliable_state_subscription() -> None:
    """A lockstep bridge waits for the command of every state it sends: the policy's state
    subscription is reliable there (explicit lockstep, or the bridge's default without a params
    file); realtime and a mode left to a params file keep the sensor-data default."""
    def state_qos(**kw: str) -> object:
        return describe(model="m", target="sim", **kw)[0].parameters.get("state_qos")

    assert state_qos(sim_mode="lockstep") == state_qos() == "reliable"
    assert state_qos(sim_mode="lockstep", params_file="/p.yaml") == "reliable"
    assert state_qos(sim_mode="realtime") is None and state_qos(params_file="/p.yaml") is None
    assert "state_qos" not in describe(model="m", target="serial")[0].parameters
