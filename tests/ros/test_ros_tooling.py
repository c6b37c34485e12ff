"""The package as the real ROS 2 tools see it.

* Every YAML in ``config/`` goes through rcl's own parameter parser (``--params-file``) and brings
  its nodes up: the policy node reaches ``active``, the sim bridge publishes.
* ``colcon build`` (plain and ``--symlink-install``) of the package in a temporary workspace gives
  the install tree ``ros2 launch`` / ``ros2 run`` need, and the *installed* policy node reaches
  ``active`` with the *installed* config from another working directory (``package://`` model).
* Every node exits 0 without a traceback on two signals in quick succession (what ``ros2 launch``
  plus a terminal's Ctrl-C deliver), and its participant leaves the graph within 2 s.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy")

from fault_helpers import tiny_checkpoint  # noqa: E402
from ros_harness import Graph  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
BIN = Path(sys.executable).parent
GONE_WITHIN_S = 2.0


def _start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ.copy())


def _stop(p: subprocess.Popen, timeout: float = 15.0) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
    return p.returncode


def _wait_active(g: Graph, name: str, p: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    state = "not up"
    while time.monotonic() < deadline and p.poll() is None:
        if f"/{name}/get_state" in {n for n, _t in g.probe.get_service_names_and_types()}:
            state = g.get_state(name)
            if state == "active":
                return
        time.sleep(0.2)
    raise AssertionError(f"{name} is {state!r} (exit code {p.poll()}):\n{log.read_text()[-3000:]}")


def _params(g: Graph, node: str, names: list[str]) -> dict[str, object]:
    res = g.call(GetParameters, f"/{node}/get_parameters", GetParameters.Request(names=names))
    return dict(zip(names, (_value(v) for v in res.values)))


def _value(v: object) -> object:
    kinds = {1: "bool_value", 2: "integer_value", 3: "double_value", 4: "string_value", 5: "byte_array_value",
             6: "bool_array_value", 7: "integer_array_value", 8: "double_array_value", 9: "string_array_value"}
    field = kinds.get(v.type)  # type: ignore[attr-defined]
    if field is None:
        return None
    out = getattr(v, field)
    return list(out) if field.endswith("array_value") else out


# ---- the shipped configs --------------------------------------------------------------------------
def _empty_lists(tree: object, where: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [hit for k, v in tree.items() for hit in _empty_lists(v, f"{where}.{k}" if where else str(k))]
    return [where] if tree == [] else []


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_configs_write_no_empty_list(config: Path) -> None:
    """rcl's YAML parser cannot type ``[]`` (the parameter stays unset): a shipped config leaves the key out."""
    assert not _empty_lists(yaml.safe_load(config.read_text())), f"{config.name}: {_empty_lists(yaml.safe_load(config.read_text()))}"


def test_sim_config_brings_up_policy_and_bridge(ros_env, tmp_path: Path) -> None:
    """config/policy_sim.yaml as shipped (its model a package:// path), from a directory that is not the checkout."""
    cfg = REPO / "config" / "policy_sim.yaml"
    procs = {name: _start([sys.executable, "-m", module, "--ros-args", "-r", f"__node:={name}", "--params-file", str(cfg)],
                          tmp_path / f"{name}.log", tmp_path)
             for name, module in (("mtm_policy", "mtm_runtime.ros_nodes.policy_node"),
                                  ("mtm_sim_bridge", "mtm_runtime.ros_nodes.sim_bridge"))}
    commands: list[list[float]] = []
    try:
        with Graph() as g:
            g.probe.create_subscription(Float64MultiArray, "commands", lambda m: commands.append(list(m.data)), 100)
            g.start()
            _wait_active(g, "mtm_policy", procs["mtm_policy"], tmp_path / "mtm_policy.log")
            g.wait_for(lambda: len(commands) > 20, 30.0, "commands of the closed loop")
            assert _params(g, "mtm_sim_bridge", ["task", "mode"]) == {"task": "reacher", "mode": "lockstep"}
            assert _params(g, "mtm_policy", ["model_path", "control_rate_hz"]) == {
                "model_path": "package://mtm_runtime/models/reacher_embedded", "control_rate_hz": 50.0}
    finally:
        rcs = {name: _stop(p) for name, p in procs.items()}
    assert rcs == {"mtm_policy": 0, "mtm_sim_bridge": 0}, {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n in rcs}
    bridge_log = (tmp_path / "mtm_sim_bridge.log").read_text()
    assert "normalised score nan" not in bridge_log and "did not answer" not in bridge_log, bridge_log[-2000:]


def test_hardware_config_parses_and_activates(ros_env, tmp_path: Path) -> None:
    """config/policy_hardware.yaml through rcl's parser; only the model is overridden (no TensorRT engine here)."""
    ckpt = tiny_checkpoint(tmp_path / "arm", states=4, actions=2)  # joint0, joint1 x position, velocity
    log = tmp_path / "policy.log"
    p = _start([sys.executable, "-m", "mtm_runtime.ros_nodes.policy_node", "--ros-args", "-r", "__node:=mtm_policy",
                "--params-file", str(REPO / "config" / "policy_hardware.yaml"),
                "-p", f"model_path:={ckpt}", "-p", "backend:=torch"], log, tmp_path)
    try:
        with Graph() as g:
            g.start()
            _wait_active(g, "mtm_policy", p, log)
            got = _params(g, "mtm_policy", ["joint_names", "control_rate_hz", "trigger", "action_low", "safe_action",
                                            "cpu_wake_latency_us"])
            assert got == {"joint_names": ["joint0", "joint1"], "control_rate_hz": 200.0, "trigger": "timer",
                           "action_low": [-0.5, -0.5], "safe_action": [0.0, 0.0], "cpu_wake_latency_us": 0}
    finally:
        rc = _stop(p)
    assert rc == 0, log.read_text()[-2000:]


# ---- colcon ---------------------------------------------------------------------------------------
INSTALLED = ["share/mtm_runtime/launch/policy.launch.py", "share/mtm_runtime/package.xml",
             "share/mtm_runtime/config/policy_sim.yaml", "share/mtm_runtime/config/policy_hardware.yaml",
             "share/mtm_runtime/models/reacher_embedded/model.safetensors",
             "share/mtm_runtime/models/reacher_embedded/mtm.json",
             "share/ament_index/resource_index/packages/mtm_runtime",
             "lib/mtm_runtime/mtm_policy_node", "lib/mtm_runtime/mtm_sim_bridge", "lib/mtm_runtime/mtm_serial_bridge"]


def _copy_checkout(dest: Path) -> None:
    """The files git would hand a colcon user (tracked and not ignored), not the venv or build outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_symlink():  # as a clone has them (mtm_runtime/training -> ../training, ...)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / rel)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--symlink-install"]], ids=["plain", "symlink"])
def test_colcon_build_installed_node_runs_the_installed_config(ros_env, tmp_path: Path, flags: list[str]) -> None:
    ws = tmp_path / "ws"
    _copy_checkout(ws / "src" / "mtm_runtime")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", AMENT_PREFIX_PATH=sys.prefix)
    build = subprocess.run([str(BIN / "colcon"), "build", *flags], cwd=ws, env=env, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    prefix = ws / "install" / "mtm_runtime"
    assert [f for f in INSTALLED if not (prefix / f).exists()] == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # one installed namespace: the repository's training/, sim/, export/, ros_nodes/ are only
    # mtm_runtime.<name> in the workspace (no generic top-level package to collide with)
    probe = ("import importlib.util as u, mtm_runtime.training.loaders as m, mtm_runtime.sim.tasks, "
             "mtm_runtime.export, mtm_runtime.ros_nodes.policy_node; "
             "print([n for n in ('training', 'sim', 'export', 'ros_nodes') if u.find_spec(n)], m.__file__)")
    ns = subprocess.run(["bash", "-c", f'source "{ws}/install/setup.bash" && exec "{sys.executable}" -c "{probe}"'],
                        cwd=elsewhere, capture_output=True, text=True, timeout=120, env=dict(env, PYTHONPATH=""))
    assert ns.returncode == 0 and ns.stdout.startswith("[] "), ns.stdout + ns.stderr[-2000:]
    assert str(ws) in ns.stdout.split(" ", 1)[1], ns.stdout  # the workspace's copy, not the checkout's
    log = tmp_path / "installed_policy.log"
    cfg = prefix / "share" / "mtm_runtime" / "config" / "policy_sim.yaml"
    node = prefix / "lib" / "mtm_runtime" / "mtm_policy_node"
    script = f'source "{ws}/install/setup.bash" && exec "{node}" --ros-args -r __node:=mtm_policy --params-file "{cfg}"'
    p = subprocess.Popen(["bash", "-c", script], cwd=elsewhere, stdout=log.open("w"), stderr=subprocess.STDOUT,
                         start_new_session=True, env=dict(env, PYTHONPATH=""))
    try:
        with Graph() as g:
            g.start()
            _wait_active(g, "mtm_policy", p, log)
    finally:
        rc = _stop(p)
    text = log.read_text()
    assert rc == 0, text[-2000:]
    assert f"configured: {prefix}/share/mtm_runtime/models/reacher_embedded" in text, text[-2000:]


# ---- signals and teardown ---------------------------------------------------------------------------
def _node_argv(kind: str, tmp_path: Path, port: str) -> tuple[str, list[str]]:
    if kind == "policy":
        ckpt = tiny_checkpoint(tmp_path / "ck", states=3, actions=2)
        return "sig_policy", ["-m", "mtm_runtime.ros_nodes.policy_node", "--ros-args", "-r", "__node:=sig_policy",
                              "-p", f"model_path:={ckpt}", "-p", "autostart:=true", "-p", "warmup_iters:=1"]
    if kind == "sim_bridge":
        return "sig_sim", ["-m", "mtm_runtime.ros_nodes.sim_bridge", "--ros-args", "-r", "__node:=sig_sim", "-p", "mode:=realtime"]
    return "sig_serial", ["-m", "mtm_runtime.ros_nodes.serial_bridge", "--ros-args", "-r", "__node:=sig_serial",
                          "-p", f"port:={port}"]


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)],
                         ids=["INT-INT", "TERM-INT"])
@pytest.mark.parametrize("kind", ["policy", "sim_bridge", "serial_bridge"])
def test_two_signals_exit_0_and_the_participant_leaves(ros_env, tmp_path: Path, kind: str,
                                                       signals: tuple[int, int]) -> None:
    master, slave = os.openpty()  # a real serial port for the serial bridge
    name, args = _node_argv(kind, tmp_path, os.ttyname(slave))
    log = tmp_path / f"{name}.log"
    p = _start([sys.executable, *args], log, REPO)
    try:
        with Graph() as g:
            g.start()
            if kind == "policy":
                _wait_active(g, name, p, log)
            else:
                g.wait_for(lambda: name in g.probe.get_node_names() or p.poll() is not None, 60.0, f"{name} up")
                time.sleep(1.0)  # past start-up: timers and the first episode / link attempts are running
            assert p.poll() is None, log.read_text()[-2000:]
            for sig in signals:
                p.send_signal(sig)
                time.sleep(0.02)
            rc = p.wait(15)
            t_exit = time.monotonic()
            while name in g.probe.get_node_names() and time.monotonic() - t_exit < 10.0:
                time.sleep(0.05)
            gone_s = time.monotonic() - t_exit
    finally:
        _stop(p)
        os.close(master)
        os.close(slave)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text[-3000:]
    assert gone_s < GONE_WITHIN_S, f"{name} stayed in the graph {gone_s:.1f} s after it exited"
