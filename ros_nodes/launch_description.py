"""The one description of the node set, as plain data (no ROS import).

Read by ``launch/policy.launch.py`` (``ros2 launch mtm_runtime policy.launch.py``) and by
``mtm launch`` (one process per node), so both start the same nodes with the same parameters:

* ``describe(**arguments) -> list[NodeSpec]``: the nodes for a target (``sim``: policy node +
  MuJoCo bridge, ``serial``: policy node + serial bridge, ``none``: the policy node alone).
* ``launch_node_kwargs(node)``: keyword arguments for ``launch_ros.actions.Node``.
* ``command_line(node)``: ``[python, -m, module, --ros-args, ...]`` for ``mtm launch``.

Parameter precedence in both: the params file first, then the explicit arguments that were
given (non-empty), so ``model:=...`` on the command line beats the file.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

PACKAGE = "mtm_runtime"
TARGETS = ("sim", "serial", "none")

#: launch argument -> (default, description). Defaults are strings (launch arguments are).
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "model": ("", "checkpoint directory, .onnx or .engine (policy node 'model_path')"),
    "backend": ("", "inference backend (torch, onnxruntime, tensorrt; empty = the params file's or torch)"),
    "rate": ("", "control rate in Hz (empty = the params file's or 50)"),
    "params_file": ("", "YAML params file applied to every node (sections by node name)"),
    "target": ("sim", "what the policy drives: sim | serial | none"),
    "enclave": ("", "SROS2 enclave for every node (empty = none)"),
    "task": ("", "sim target: task name from mtm_runtime.sim.tasks (empty = the params file's or reacher)"),
    "sim_mode": ("", "sim target: realtime | lockstep (empty = the params file's or lockstep)"),
    "autostart": ("true", "policy node configures and activates itself"),
}


@dataclass(frozen=True)
class NodeSpec:
    """One node: what to run, its name, parameters, remappings."""

    name: str
    executable: str              # console script (ament: lib/mtm_runtime/<executable>)
    module: str                  # python module with main(), used by `mtm launch`
    parameters: dict[str, Any] = field(default_factory=dict)
    params_files: tuple[str, ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    enclave: str = ""
    package: str = PACKAGE


def _truthy(v: str) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def describe(model: str = "", backend: str = "", rate: str = "", params_file: str = "", target: str = "sim",
             enclave: str = "", task: str = "", sim_mode: str = "", autostart: str = "true") -> list[NodeSpec]:
    """The node set for these (string) arguments; ValueError on an unknown target."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    files = (params_file,) if params_file else ()
    policy: dict[str, Any] = {"autostart": _truthy(autostart)}
    if model:
        policy["model_path"] = model
    if backend:
        policy["backend"] = backend
    if rate:
        policy["control_rate_hz"] = float(rate)
    if target == "sim" and (sim_mode == "lockstep" or not (sim_mode or params_file)):
        # the lockstep bridge (its default mode) sends the next state only after this one's
        # command: a dropped state would stall the episode for the bridge's lockstep_resend_s.
        # With the mode from a params file, that file sets the policy's state_qos too.
        policy["state_qos"] = "reliable"
    nodes = [NodeSpec("mtm_policy", "mtm_policy_node", "mtm_runtime.ros_nodes.policy_node", policy, files, enclave=enclave)]
    if target == "sim":
        sim: dict[str, Any] = {"policy_reset_service": "/mtm_policy/reset"}
        if task:
            sim["task"] = task
        if sim_mode:
            sim["mode"] = sim_mode
        if rate:
            sim["control_rate_hz"] = float(rate)
        nodes.append(NodeSpec("mtm_sim_bridge", "mtm_sim_bridge", "mtm_runtime.ros_nodes.sim_bridge", sim, files, enclave=enclave))
    elif target == "serial":
        nodes.append(NodeSpec("mtm_serial_bridge", "mtm_serial_bridge", "mtm_runtime.ros_nodes.serial_bridge", {}, files,
                              enclave=enclave))
    return nodes


def launch_node_kwargs(node: NodeSpec) -> dict[str, Any]:
    """Keyword arguments for ``launch_ros.actions.Node`` (params files first, then overrides)."""
    kw: dict[str, Any] = {"package": node.package, "executable": node.executable, "name": node.name,
                          "parameters": [*node.params_files, dict(node.parameters)],
                          "remappings": list(node.remappings), "output": "screen"}
    if node.namespace:
        kw["namespace"] = node.namespace
    if node.enclave:
        kw["arguments"] = ["--ros-args", "--enclave", node.enclave]
    return kw


def _param_value(v: Any) -> str:
    """A ``-p name:=value`` value in YAML syntax (JSON is a subset: strings quoted, lists in [])."""
    return json.dumps(v)


def command_line(node: NodeSpec, python: str = sys.executable) -> list[str]:
    """argv that starts ``node`` in its own process, equivalent to ``launch_node_kwargs(node)``."""
    argv = [python, "-m", node.module, "--ros-args", "-r", f"__node:={node.name}"]
    if node.namespace:
        argv += ["-r", f"__ns:={node.namespace}"]
    for f in node.params_files:
        argv += ["--params-file", f]
    for k, v in node.parameters.items():
        argv += ["-p", f"{k}:={_param_value(v)}"]
    for src, dst in node.remappings:
        argv += ["-r", f"{src}:={dst}"]
    if node.enclave:
        argv += ["--enclave", node.enclave]
    return argv


def parse_command_line(argv: list[str]) -> dict[str, Any]:
    """Inverse of :func:`command_line` (for tests and ``mtm launch --dry-run`` checks)."""
    out: dict[str, Any] = {"module": argv[2], "parameters": {}, "params_files": [], "remappings": [], "enclave": ""}
    i = argv.index("--ros-args") + 1
    while i < len(argv):
        flag, val = argv[i], argv[i + 1]
        if flag == "-p":
            k, v = val.split(":=", 1)
            out["parameters"][k] = json.loads(v)
        elif flag == "--params-file":
            out["params_files"].append(val)
        elif flag == "--enclave":
            out["enclave"] = val
        elif flag == "-r":
            src, dst = val.split(":=", 1)
            if src == "__node":
                out["name"] = dst
            elif src == "__ns":
                out["namespace"] = dst
            else:
                out["remappings"].append((src, dst))
        i += 2
    return out
