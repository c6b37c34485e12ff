"""Serial faults in closed loop: virtual MCU (pty) <-> serial bridge (subprocess) <-> policy node
(in-process), monitor watching: garbage, truncated frames, a CRC burst, duplicated and
out-of-order sequence numbers, then the port vanishes and returns."""
from __future__ import annotations

import time
from pathlib import Path


import numpy as np
import pytest

pytest.importorskip("serial")
pytest.importorskip("rclpy")
pytest.importorskip("mujoco")


from fault_helpers import record  # noqa: E402
from mtm_runtime import safety_contract as contract  # noqa: E402
from mtm_runtime import serial_framing as sf, serial_messages as sm  # noqa: E402
from ros_harness import DiagnosticsLog, Graph, Parameter, ScriptedPolicy  # noqa: E402
from mtm_runtime.ros_nodes.policy_node import PolicyNode  # noqa: E402
from safety_monitor import MonitorProcess  # noqa: E402
from mtm_runtime.sim.virtual_mcu import VirtualMCU  # noqa: E402
from fault_helpers import kill_group, popen_logged  # noqa: E402

pytestmark = pytest.mark.ros
RATE, STALE, MAX_RATE = 50.0, 0.3, 0.2


def BridgeDiags(g: Graph) -> DiagnosticsLog:
    """The serial bridge's /diagnostics status, timestamped on arrival."""
    return DiagnosticsLog(g, "serial link")


def _inject(mcu: VirtualMCU, data: bytes) -> None:
    with mcu._lock:  # the device end of the pty (test-only access to the simulator's port)
        mcu._write(data)


def test_serial_faults_closed_loop(ros_env, tmp_path: Path) -> None:
    link = str(tmp_path / "ttyMTM")
    mcu = VirtualMCU("reacher", RATE, heartbeat_hz=20.0, heartbeat_timeout=0.3, link_path=link).start()
    policy = ScriptedPolicy(state_width=mcu.state_width, action_width=mcu.command_width, gain=0.5)
    bridge = popen_logged(["-m", "mtm_runtime.ros_nodes.serial_bridge", "--ros-args", "-p", f"port:={link}",
                     "-p", f"state_width:={mcu.state_width}", "-p", f"command_width:={mcu.command_width}",
                     "-p", "command_limit:=1.0", "-p", "reconnect_backoff_min:=0.02",
                     "-p", "reconnect_backoff_max:=0.2"], tmp_path / "bridge.log")
    try:
        with Graph() as g:
            node = g.add(PolicyNode("mtm_policy", context=g.context, policy_loader=lambda p, b, m: policy,
                                    parameter_overrides=[Parameter(k, value=v) for k, v in {
                                        "model_path": "scripted", "control_rate_hz": RATE, "stale_timeout": STALE,
                                        "stale_reset_s": 0.8, "max_rate": MAX_RATE, "fault_action": "zeros",
                                        "autostart": True, "warmup_iters": 0}.items()]))
            diags = BridgeDiags(g)
            g.start()
            mon = MonitorProcess(tmp_path / "serial.json", low=[-1, -1], high=[1, 1], stale_timeout=STALE,
                                 max_rate=MAX_RATE, max_gap=contract.max_command_gap_s(STALE, RATE), assume_active=True)
            try:
                g.wait_for(lambda: node.stats.ticks > 50 and mcu.snapshot()["commands_applied"] > 20, 30.0,
                           "closed loop over the serial link")
                good = sm.encode_state(0, 0, np.zeros(mcu.state_width))
                with mcu._lock:
                    last = (mcu._seq._next - 1) % sf.SEQ_MOD
                injections = {
                    "garbage bytes": (bytes(np.random.default_rng(0).integers(1, 256, 3000, dtype=np.uint8)) + b"\x00",
                                      "corrupt_frames"),
                    "truncated frames": (b"".join(good[: k] + b"\x00" for k in (3, 7, 15)), "corrupt_frames"),
                    "crc error burst": (b"".join(bytes([good[0]]) + bytes([good[1] ^ 0x55]) + good[2:] for _ in range(20)),
                                        "corrupt_frames"),
                    "duplicated + out-of-order seq": (
                        sm.encode_state(last, 0, np.full(mcu.state_width, 1234.5))
                        + sm.encode_state((last - 3) % sf.SEQ_MOD, 0, np.full(mcu.state_width, 1234.5)), "sequence"),
                }
                for name, (data, kind) in injections.items():
                    if name.startswith("duplicated"):
                        with mcu._lock:
                            last = (mcu._seq._next - 1) % sf.SEQ_MOD
                        data = (sm.encode_state(last, 0, np.full(mcu.state_width, 1234.5))
                                + sm.encode_state((last - 3) % sf.SEQ_MOD, 0, np.full(mcu.state_width, 1234.5)))
                    time.sleep(contract.FAULT_HOLD_S + 0.3)  # the previous fault cleared
                    ticks = node.stats.ticks
                    t0 = time.monotonic()
                    _inject(mcu, data)
                    reported = diags.wait(t0, lambda d: kind in d["fault"])
                    assert reported <= 1.0, (name, reported)
                    g.wait_for(lambda: node.stats.ticks > ticks + 10, 3.0, f"loop continues after {name}")
                    record(f"serial: {name}", detected_s=reported, reported_s=reported, action="frames dropped",
                           recovered_s=0.0)
                assert not any(np.any(np.isclose(s, 1234.5)) for s, _ in policy.calls)  # injected frames never used
                # the port vanishes, then returns
                ticks, resets = node.stats.ticks, node.stats.episode_resets
                t0 = time.monotonic()
                mcu.close_port()
                down = diags.wait(t0, lambda d: "link_down" in d["fault"] and d["_level"] == "2")
                g.wait_for(lambda: node.stats.stale_ticks > 0 and node.watchdog.stale(), 3.0, "policy stale")
                stale_after = time.monotonic() - t0
                time.sleep(1.0)
                assert mcu.snapshot()["status"] == "SAFE"  # device zeroed its actuators on its own
                t1 = time.monotonic()
                mcu.open_port()
                g.wait_for(lambda: node.stats.ticks > ticks + 20, 10.0, "control resumed after reconnect")
                recovered = time.monotonic() - t1
                assert node.stats.episode_resets > resets
                g.wait_for(lambda: mcu.snapshot()["status"] == "OK", 3.0, "device OK again")
                record("serial: port vanished + returned", detected_s=stale_after, reported_s=down,
                       action="bridge: link down, reconnect; node: safe action; device: SAFE",
                       recovered_s=recovered)
            finally:
                verdict = mon.stop()
    finally:
        kill_group(bridge, 2)
        kill_group(bridge)
        mcu.stop()
    assert verdict["unsafe"] == 0, verdict
    record("serial faults (monitor)", unsafe=verdict["unsafe"], commands=verdict["commands"],
           max_gap_s=verdict["max_gap_s"])
