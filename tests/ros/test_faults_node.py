"""Fault injection at the policy node (in-process node, real Fast DDS), an independent safety
monitor process watching ``commands``: malformed / mistimed / flooding inputs, a failing or slow
backend (through the public Backend interface), refused configurations, invalid parameters."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy")

from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from fault_helpers import FaultyBackend, record, tiny_checkpoint  # noqa: E402
from mtm_runtime import safety_contract as contract  # noqa: E402
from mtm_runtime.fileio import sha256_file  # noqa: E402
from mtm_runtime.integrity import stamp_json  # noqa: E402
from ros_harness import DiagnosticsLog, Graph, Parameter, ScriptedPolicy, obs  # noqa: E402
from mtm_runtime.ros_nodes.conversions import ns_to_stamp  # noqa: E402
from mtm_runtime.ros_nodes.policy_node import EXTERNAL_BACKENDS_ENV, PolicyNode  # noqa: E402
from safety_monitor import MonitorProcess  # noqa: E402

pytestmark = pytest.mark.ros
NODE = "mtm_policy"
RATE = 50.0
STALE = 0.3
MAX_RATE = 0.2


def Diags(g: Graph) -> DiagnosticsLog:
    """The policy node's /diagnostics status, timestamped on arrival."""
    return DiagnosticsLog(g, "policy loop")


def _node(g: Graph, loader: Any, **params: Any) -> PolicyNode:
    base = {"model_path": "scripted", "control_rate_hz": RATE, "stale_timeout": STALE, "warmup_iters": 0,
            "max_rate": MAX_RATE, "fault_action": "safe", "safe_action": [0.0, 0.0]}
    base.update(params)
    return g.add(PolicyNode(NODE, context=g.context, policy_loader=loader,
                            parameter_overrides=[Parameter(k, value=v) for k, v in base.items()]))


def _monitor(tmp: Path, name: str, **kw: Any) -> MonitorProcess:
    base = dict(low=[-1.0, -1.0], high=[1.0, 1.0], stale_timeout=STALE, max_rate=MAX_RATE,
                max_gap=contract.max_command_gap_s(STALE, RATE), assume_active=False)
    base.update(kw)
    return MonitorProcess(tmp / f"{name}.json", **base)


def _js(values: list[float], stamp_ns: int, names: tuple[str, ...] = ("a", "b")) -> JointState:
    n = len(names)
    return JointState(header=_hdr(stamp_ns), name=list(names), position=values[:n], velocity=values[n:])


def _hdr(stamp_ns: int) -> Any:
    from std_msgs.msg import Header
    return Header(stamp=ns_to_stamp(stamp_ns))


def _assert_safe(verdict: dict[str, Any]) -> None:
    assert verdict["unsafe"] == 0, json.dumps(verdict, indent=1)[:3000]


def test_input_faults_rejected_reported_and_flood_throttled(ros_env, tmp_path: Path) -> None:
    """NaN, Inf, wrong length, wrong joint names, stamps from the future / the past, duplicated
    stamps, then a 10x flood: none reaches the policy, each is in /diagnostics within 1 s."""
    policy = ScriptedPolicy(state_width=4, action_width=2, bound=1.0, gain=0.5)
    with Graph() as g:
        node = _node(g, lambda p, b, m: policy, input_type="joint_state", command_type="joint_state",
                     joint_names=["a", "b"], max_state_age=STALE, autostart=True)
        diags = Diags(g)
        g.start()
        mon = _monitor(tmp_path, "inputs", command_type="joint_state", wall_clock_stamps=True)
        try:
            pub = g.publisher(JointState, "joint_states")
            g.wait_for(lambda: node.lifecycle_state == "active" and g.probe.count_subscribers("/joint_states") >= 2
                       and node.count_subscribers("/commands") >= 1, 10.0, "node active, monitor matched")
            period = 1.0 / RATE
            good = lambda k: [0.1 * np.sin(0.1 * k), 0.2, 0.0, 0.0]  # noqa: E731

            def stream(seconds: float, rate: float = RATE) -> None:
                end = time.monotonic() + seconds
                k = 0
                while time.monotonic() < end:
                    pub.publish(_js(good(k), time.time_ns()))
                    k += 1
                    time.sleep(1.0 / rate)

            stream(1.0)
            bad_cases = {
                "nan": _js([np.nan, 0.0, 0.0, 0.0], time.time_ns()),
                "inf": _js([0.0, np.inf, 0.0, 0.0], time.time_ns()),
                "wrong_length": JointState(header=_hdr(time.time_ns()), name=["a", "b"], position=[0.1], velocity=[0.0]),
                "wrong_names": _js([0.0, 0.0, 0.0, 0.0], time.time_ns(), names=("x", "y")),
                "future_stamp": _js([0.0, 0.0, 0.0, 0.0], time.time_ns() + 5_000_000_000),
                "past_stamp": _js([0.0, 0.0, 0.0, 0.0], time.time_ns() - 5_000_000_000),
            }
            for name, msg in bad_cases.items():
                n_calls, rej = len(policy.calls), node.stats.rejected_inputs
                if name in ("future_stamp", "past_stamp"):
                    msg.header.stamp = ns_to_stamp(time.time_ns() + (5 if name == "future_stamp" else -5) * 10**9)
                t0 = time.monotonic()
                pub.publish(msg)
                g.wait_for(lambda: node.stats.rejected_inputs > rej, 2.0, f"{name} rejected")
                detected = time.monotonic() - t0
                reported = diags.wait(t0, lambda d: int(d.get("rejected_inputs", 0)) > rej and "rejected_input" in d["fault"])
                assert reported <= contract.row("rejected_input").report_s, (name, reported)
                assert len(policy.calls) == n_calls, f"{name} reached the policy"
                record(f"input: {name}", detected_s=detected, reported_s=reported, action="dropped",
                       recovered_s=0.0)
                stream(0.3)
            # duplicated stamp: the same state twice -> second dropped
            stamp = time.time_ns()
            rej = node.stats.rejected_inputs
            pub.publish(_js(good(0), stamp))
            time.sleep(0.05)
            pub.publish(_js(good(0), stamp))
            g.wait_for(lambda: node.stats.rejected_inputs > rej, 2.0, "duplicate stamp rejected")
            # only rejected inputs for > stale_timeout: the watchdog answers with the safe action
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.8:
                pub.publish(_js([np.nan, 0, 0, 0], time.time_ns()))
                time.sleep(period)
            stale_reported = diags.since(t0, lambda d: "stale_input" in d["fault"])
            assert stale_reported is not None and stale_reported <= STALE + contract.row("stale_input").detect_periods * period + 1.0
            record("input: only invalid states", detected_s=stale_reported, reported_s=stale_reported,
                   action="safe action every period", recovered_s=None)
            # flood: 10x the control rate for 1.5 s
            ticks0, t0 = node.stats.ticks, time.monotonic()
            stream(1.5, rate=10 * RATE)
            elapsed = time.monotonic() - t0
            steps = node.stats.ticks - ticks0
            assert steps <= contract.MAX_INPUT_RATE_FACTOR * RATE * elapsed * 1.1 + 5, (steps, elapsed)
            record("input: flood 10x rate", detected_s=0.0, reported_s=None,
                   action=f"{steps / elapsed:.0f} steps/s (<= {contract.MAX_INPUT_RATE_FACTOR:g}x rate)", recovered_s=0.0)
            stream(0.5)
        finally:
            verdict = mon.stop()
    _assert_safe(verdict)
    assert verdict["commands"] > 50 and verdict["stamps_matched"] > 20
    assert verdict["max_commands_per_s"] <= contract.MAX_INPUT_RATE_FACTOR * RATE * 1.1 + 5
    assert all(np.all(np.isfinite(s)) and s.shape == (4,) for s, _ in policy.calls)
    record("input faults (monitor)", unsafe=verdict["unsafe"], commands=verdict["commands"],
           max_gap_s=verdict["max_gap_s"])


@pytest.fixture
def external_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTERNAL_BACKENDS_ENV, "1")
    FaultyBackend.behaviour = {"raise": False, "delay_s": 0.0, "nan": False}


def test_backend_raising_overrunning_and_nan(ros_env, tmp_path: Path, external_backends) -> None:
    """The backend (loaded by name through the node's parameters) raises, overruns the period and
    returns NaN: each step is answered with the safe action, reported, and the loop recovers."""
    ckpt = tiny_checkpoint(tmp_path / "ck", states=3, actions=2)
    with Graph() as g:
        node = g.add(PolicyNode(NODE, context=g.context, parameter_overrides=[Parameter(k, value=v) for k, v in {
            "model_path": str(ckpt), "backend": "external:fault_helpers:FaultyBackend", "control_rate_hz": RATE,
            "stale_timeout": STALE, "max_rate": MAX_RATE, "fault_action": "safe", "safe_action": [0.05, -0.05],
            "trigger": "timer", "autostart": True, "warmup_iters": 2}.items()]))
        diags = Diags(g)
        g.start()
        mon = _monitor(tmp_path, "backend")
        stop = threading.Event()
        try:
            g.wait_for(lambda: node.lifecycle_state == "active" and node.count_subscribers("/commands") >= 1, 15.0,
                       "node active")
            assert node.policy.backend_name == "faulty-test"
            pub = g.publisher(Float64MultiArray, "observation")

            def feed() -> None:
                k = 0
                while not stop.is_set():
                    pub.publish(obs([0.3 * np.sin(0.05 * k), 0.2, -0.1]))
                    k += 1
                    time.sleep(1.0 / RATE)

            th = threading.Thread(target=feed, daemon=True)
            th.start()
            time.sleep(1.0)
            for fault, key, counter in (("raise", "act_error", "act_errors"), ("nan", "act_error", "act_errors"),
                                        ("delay_s", "overrun", "overruns")):
                before = getattr(node.stats, counter)
                FaultyBackend.behaviour = {"raise": False, "nan": False, "delay_s": 0.0,
                                           fault: (1.5 / RATE) if fault == "delay_s" else True}
                t0 = time.monotonic()
                g.wait_for(lambda: getattr(node.stats, counter) > before, 3.0, f"{fault} detected")
                detected = time.monotonic() - t0
                reported = diags.wait(t0, lambda d: key in d["fault"])
                time.sleep(0.5)
                FaultyBackend.behaviour = {"raise": False, "nan": False, "delay_s": 0.0}
                t1, ticks = time.monotonic(), node.stats.ticks
                g.wait_for(lambda: node.stats.ticks > ticks + 2, 3.0, f"recovery after {fault}")
                recovered = time.monotonic() - t1
                level = contract.LEVELS[contract.row(key).level]
                assert reported <= contract.row(key).report_s
                assert diags.since(t0, lambda d: int(d["_level"]) >= level) is not None  # worst active fault wins
                record(f"backend: {fault}", detected_s=detected, reported_s=reported,
                       action="safe action for the step", recovered_s=recovered)
                time.sleep(0.3)
        finally:
            stop.set()
            verdict = mon.stop()
    _assert_safe(verdict)
    assert verdict["commands"] > 100


def _engine_files(d: Path, meta: dict[str, Any]) -> Path:
    eng = d / "model.engine"
    eng.write_bytes(b"not really an engine")
    # stamped as a build would (digest over the sidecar + engine bytes): the field check refuses it
    (d / "model.engine.json").write_text(json.dumps(stamp_json(meta, {"engine_file": sha256_file(eng)})))
    return eng


def test_configure_refuses_corrupt_tampered_and_wrong_spec(ros_env, tmp_path: Path) -> None:
    """Each bad model leaves the node unconfigured, with a precise reason in /diagnostics, and
    nothing is ever published on ``commands``."""
    import shutil

    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.export.onnx_export import export_onnx

    good = tiny_checkpoint(tmp_path / "good", states=3, actions=2)
    cases: dict[str, tuple[Path, dict[str, Any], str]] = {}

    def variant(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    d = variant("flipped_byte")
    b = bytearray((d / "model.safetensors").read_bytes())
    b[len(b) // 2] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(b))
    cases["weights corrupted"] = (d, {}, "model.safetensors: sha256")
    d = variant("truncated")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100])
    cases["weights truncated"] = (d, {}, "model.safetensors: sha256")
    d = variant("json_truncated")
    (d / "mtm.json").write_text((d / "mtm.json").read_text()[:50])
    cases["metadata truncated"] = (d, {}, "mtm.json: (json)")
    d = variant("path_in_meta")
    m = json.loads((d / "mtm.json").read_text())
    m["weights"]["file"] = "../../etc/passwd"
    (d / "mtm.json").write_text(json.dumps(m))
    cases["weights path from metadata (digest)"] = (d, {}, "mtm.json: weights: digest mismatch")
    d = variant("path_in_meta_restamped")
    (d / "mtm.json").write_text(json.dumps(stamp_json(m)))  # digest recomputed: the path is still refused
    cases["weights path from metadata"] = (d, {}, "weights.file")
    d = variant("tampered_spec")
    m = json.loads((d / "mtm.json").read_text())
    for mod in m["spec"]["modalities"]:
        if mod["name"] == "states":
            mod["width"] += 1  # the weights no longer fit the spec
    (d / "mtm.json").write_text(json.dumps(m))
    cases["metadata tampered (spec)"] = (d, {}, "mtm.json")
    cases["wrong spec (state_width)"] = (good, {"state_width": 7}, "state_width is 7")
    cases["wrong spec (joint_names)"] = (good, {"input_type": "joint_state", "joint_names": ["a", "b", "c"]},
                                         "3 joint_names x 2 state_fields")
    d = variant("robot_joints")   # a model trained for a robot: the node's joints must be the robot's, in order
    m = json.loads((d / "mtm.json").read_text())
    m["provenance"]["robot"] = {"name": "arm2", "joints": ["joint0", "joint1"], "rate_hz": 50, "state": {"observation": 3}}
    (d / "mtm.json").write_text(json.dumps(stamp_json(m)))
    cases["robot joints do not match"] = (d, {"input_type": "joint_state", "joint_names": ["joint1", "joint0"]},
                                          "joint 0 is 'joint1', robot 'arm2' has 'joint0' there")
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    onnx_bytes = export_onnx(load_checkpoint(good))
    (onnx_dir / "trunc.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    cases["onnx truncated"] = (onnx_dir / "trunc.onnx", {"backend": "onnxruntime"}, "trunc.onnx: (onnx)")
    meta = load_checkpoint(good).metadata()
    sub = tmp_path / "eng1"
    sub.mkdir()
    (sub / "model.engine").write_bytes(b"x")
    (sub / "model.engine.json").write_text("{ not json")
    cases["engine sidecar corrupt"] = (sub / "model.engine", {"backend": "tensorrt"}, "model.engine.json: (json)")
    sub = tmp_path / "eng2"
    sub.mkdir()
    cases["engine sidecar tampered (format)"] = (_engine_files(sub, {**meta, "format": "evil", "engine": {}}),
                                                 {"backend": "tensorrt"}, "format")
    for name, (path, params, expect) in cases.items():
        with Graph() as g:
            node = g.add(PolicyNode(NODE, context=g.context, parameter_overrides=[Parameter(k, value=v) for k, v in {
                "model_path": str(path), "warmup_iters": 0, **params}.items()]))
            diags = Diags(g)
            g.listen_commands()
            g.start()
            t0 = time.monotonic()
            node.trigger_configure()
            assert node.lifecycle_state == "unconfigured" and node.policy is None, name
            assert expect in node._config_error, (name, node._config_error)
            reported = diags.wait(t0, lambda d: d["_level"] == "2" and expect in d["_message"])
            assert reported <= contract.row("configure_failed").report_s + 0.2, (name, reported)
            assert not g.commands
            record(f"configure: {name}", detected_s=0.0, reported_s=reported, action="stays unconfigured",
                   recovered_s=None, error=node._config_error[:160])


def test_invalid_parameter_updates_while_running(ros_env, tmp_path: Path) -> None:
    """Invalid values are refused with a reason, the old value stays, the loop never stops."""
    policy = ScriptedPolicy(state_width=3, action_width=2, gain=0.5)
    with Graph() as g:
        node = _node(g, lambda p, b, m: policy, autostart=True, trigger="timer")
        diags = Diags(g)
        g.start()
        mon = _monitor(tmp_path, "params")
        stop = threading.Event()
        try:
            g.wait_for(lambda: node.lifecycle_state == "active" and node.count_subscribers("/commands") >= 1, 10.0,
                       "node active")
            pub = g.publisher(Float64MultiArray, "observation")

            def feed() -> None:
                while not stop.is_set():
                    pub.publish(obs([0.4, -0.3, 0.0]))
                    time.sleep(1.0 / RATE)

            threading.Thread(target=feed, daemon=True).start()
            time.sleep(0.5)
            bad = [("control_rate_hz", -5.0), ("control_rate_hz", float("nan")), ("stale_timeout", 0.5),
                   ("mask_mode", "nope"), ("target_return", float("inf")), ("fault_action", "explode"),
                   ("goal", [float("nan")]), ("max_rate", -1.0), ("safe_action", [5.0, 5.0]), ("backend", "evil")]
            for name, value in bad:
                before = node.get_parameter(name).value
                n = node.param_refusals
                t0 = time.monotonic()
                res = g.set_param(NODE, name, value)
                assert not res.successful and res.reason, (name, value)
                assert node.get_parameter(name).value == before or (before != before), name
                reported = diags.wait(t0, lambda d: int(d["param_refusals"]) > n)
                assert reported <= contract.row("param_refused").report_s
                record(f"param: {name}={value!r}", detected_s=0.0, reported_s=reported, action="refused",
                       recovered_s=0.0, reason=res.reason[:120])
            assert node.policy.mode == "bc" and node.lifecycle_state == "active"
            ticks = node.stats.ticks
            time.sleep(0.3)
            assert node.stats.ticks > ticks  # never stopped
        finally:
            stop.set()
            verdict = mon.stop()
    _assert_safe(verdict)


def test_saturated_commands_are_a_fault(ros_env, tmp_path: Path) -> None:
    """A policy whose commands sit at the limits (here: a gain of 50 on its input) is reported in
    /diagnostics after ``saturation_s``; with ``saturation_fault`` those steps get the safe action.
    The independent monitor sees nothing out of limits either way."""
    for answer in (False, True):
        policy = ScriptedPolicy(state_width=3, action_width=2, bound=1.0, gain=50.0)
        with Graph() as g:
            node = _node(g, lambda p, b, m: policy, autostart=True, saturation_s=0.2, saturation_fault=answer)
            diags = Diags(g)
            g.listen_commands()
            g.start()
            mon = _monitor(tmp_path, f"saturation_{answer}")
            try:
                pub = g.publisher(Float64MultiArray, "observation")
                g.wait_for(lambda: node.lifecycle_state == "active" and node.count_subscribers("/commands") >= 1,
                           10.0, "node active")
                t0, end = time.monotonic(), time.monotonic() + 2.0
                reported = None
                while time.monotonic() < end:
                    pub.publish(obs([0.5, -0.5, 0.0]))
                    reported = reported or diags.since(t0, lambda d: "saturated" in d["fault"])
                    time.sleep(1.0 / RATE)
                assert reported is not None and reported - t0 <= 0.2 + 1.0 + 0.5, "saturation not reported"
                d = diags.wait(t0, lambda d: int(d.get("saturated_steps", 0)) > 0)
                assert d is not None and node.stats.saturated_steps > 0
                last = g.command_values()[-5:]
                safe = [np.allclose(c, [0.0, 0.0], atol=MAX_RATE) for c in last]
                assert all(safe) if answer else not any(safe), (answer, last)
                record(f"saturation (fault action: {answer})", detected_s=reported - t0,
                       saturated_steps=node.stats.saturated_steps)
            finally:
                verdict = mon.stop()
        _assert_safe(verdict)
