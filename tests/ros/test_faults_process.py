"""Process-level faults, monitor watching: the simulator killed mid-episode and restarted, and
SIGINT/SIGTERM to the policy node in each lifecycle state."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

from std_msgs.msg import Float64MultiArray  # noqa: E402

from fault_helpers import kill_group, popen_logged, record, tiny_checkpoint  # noqa: E402
from mtm_runtime import safety_contract as contract  # noqa: E402
from ros_harness import Graph, Parameter, Transition, obs  # noqa: E402
from mtm_runtime.ros_nodes.policy_node import PolicyNode  # noqa: E402
from safety_monitor import MonitorProcess  # noqa: E402
from test_faults_node import Diags  # noqa: E402

pytestmark = pytest.mark.ros
RATE, STALE, MAX_RATE = 50.0, 0.3, 0.2


def _sim(log: Path) -> subprocess.Popen:
    return popen_logged(["-m", "mtm_runtime.ros_nodes.sim_bridge", "--ros-args", "-p", "mode:=realtime", "-p", f"control_rate_hz:={RATE}",
                   "-p", "command_type:=joint_state", "-p", "stamp_clock:=ros", "-p", "publish_observation:=false",
                   "-p", "command_timeout_s:=0.3"], log)


def test_sim_killed_and_restarted(ros_env, tmp_path: Path) -> None:
    """SIGKILL the sim bridge mid-episode: the node answers with the safe action after
    stale_timeout, reports stale_input, and when a new sim starts the episode restarts with an
    empty history, without restarting the policy node."""
    from mtm_runtime.sim.tasks import get_task

    joints = list(get_task("reacher").joint_names)
    ckpt = tiny_checkpoint(tmp_path / "ck", states=2 * len(joints), actions=2)
    log = tmp_path / "sim.log"
    sim = None
    with Graph() as g:
        node = g.add(PolicyNode("mtm_policy", context=g.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in {
                "model_path": str(ckpt), "control_rate_hz": RATE, "stale_timeout": STALE, "stale_reset_s": 1.0,
                "max_rate": MAX_RATE, "fault_action": "safe", "safe_action": [0.0, 0.0], "input_type": "joint_state",
                "command_type": "joint_state", "joint_names": joints, "max_state_age": STALE,
                "autostart": True, "warmup_iters": 2}.items()]))
        diags = Diags(g)
        g.start()
        mon = MonitorProcess(tmp_path / "sim.json", low=[-1, -1], high=[1, 1], stale_timeout=STALE, max_rate=MAX_RATE,
                             max_gap=contract.max_command_gap_s(STALE, RATE), command_type="joint_state",
                             wall_clock_stamps=True, assume_active=True)
        try:
            g.wait_for(lambda: node.lifecycle_state == "active", 20.0, "node active")
            sim = _sim(log)
            g.wait_for(lambda: node.stats.ticks > 50, 30.0, "closed loop running")
            time.sleep(1.0)
            resets, ticks = node.stats.episode_resets, node.stats.ticks
            stale0 = node.stats.stale_ticks  # (the node was stale before the sim first started)
            t_kill = time.monotonic()
            kill_group(sim, signal.SIGKILL)
            g.wait_for(lambda: node.stats.stale_ticks > stale0, 3.0, "stale detected")
            detected = time.monotonic() - t_kill
            reported = diags.wait(t_kill, lambda d: "stale_input" in d["fault"] and d["_level"] == "1")
            ticks = node.stats.ticks
            assert detected <= STALE + contract.row("stale_input").detect_periods / RATE + 0.3, detected
            assert reported - detected <= contract.row("stale_input").report_s
            time.sleep(1.5)  # > stale_reset_s: the old history is void
            assert node.stats.ticks == ticks  # nothing computed from old states meanwhile
            stale_before = node.stats.stale_ticks
            assert stale_before - stale0 >= 0.8 * 1.5 * RATE  # the safe action every period
            t_restart = time.monotonic()
            sim = _sim(log)
            g.wait_for(lambda: node.stats.ticks > ticks, 30.0, "control resumed")
            recovered = time.monotonic() - t_restart
            assert node.stats.episode_resets > resets  # fresh buffer
            assert node.policy.buffer.steps <= node.stats.ticks - ticks + 1
            g.wait_for(lambda: node.stats.ticks > ticks + 50, 10.0, "steady again")
            record("sim killed + restarted", detected_s=detected, reported_s=reported, action="safe action every period",
                   recovered_s=recovered, note="recovered = sim process restart (mujoco import) to first policy command")
        finally:
            if sim is not None:
                kill_group(sim, signal.SIGINT)
                kill_group(sim)
            verdict = mon.stop()
    assert verdict["unsafe"] == 0, verdict
    assert verdict["stamps_matched"] > 10  # the monitor's state subscription is best effort
    record("sim killed (monitor)", unsafe=verdict["unsafe"], commands=verdict["commands"], max_gap_s=verdict["max_gap_s"])


SAFE = [0.1, -0.1]


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "active"])
def test_signals_in_each_lifecycle_state(ros_env, tmp_path: Path, state: str) -> None:
    """SIGINT and SIGTERM (two node processes per state): exit 0, and while active the last
    command is the safe action; nothing unsafe on the way."""
    ckpt = tiny_checkpoint(tmp_path / "ck", states=3, actions=2)
    procs: dict[int, subprocess.Popen] = {}
    with Graph() as g:
        mons: dict[int, MonitorProcess] = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                name = f"pol_{sig.name.lower()}"
                args = ["-m", "mtm_runtime.ros_nodes.policy_node", "--ros-args", "-r", f"__node:={name}",
                        "-r", f"commands:=cmd_{name}", "-r", f"observation:=obs_{name}",
                        "-p", f"model_path:={ckpt}", "-p", f"control_rate_hz:={RATE}", "-p", f"stale_timeout:={STALE}",
                        "-p", f"max_rate:={MAX_RATE}", "-p", "fault_action:=safe", "-p", f"safe_action:={SAFE}",
                        "-p", f"autostart:={'true' if state == 'active' else 'false'}", "-p", "warmup_iters:=2"]
                procs[sig] = popen_logged(args, tmp_path / f"{name}.log")
                if state == "active":
                    mons[sig] = MonitorProcess(tmp_path / f"{name}.json", low=[-1, -1], high=[1, 1], stale_timeout=STALE,
                                               max_rate=MAX_RATE, max_gap=contract.max_command_gap_s(STALE, RATE),
                                               assume_active=True, node=name,
                                               extra=["--commands-topic", f"cmd_{name}"])
            cmds: dict[int, list[Any]] = {s: [] for s in procs}
            for sig in procs:
                name = f"pol_{sig.name.lower()}"
                g.probe.create_subscription(Float64MultiArray, f"cmd_{name}",
                                            lambda m, s=sig: cmds[s].append(list(m.data)), 100)
            g.start()
            for sig in procs:
                name = f"pol_{sig.name.lower()}"
                g.wait_for(lambda: g.probe.count_publishers(f"/{name}/transition_event") > 0
                           and g.probe.count_subscribers(f"/cmd_{name}") >= 0, 30.0, f"{name} up")
                if state == "inactive":
                    from lifecycle_msgs.srv import ChangeState
                    res = g.call(ChangeState, f"/{name}/change_state", ChangeState.Request(
                        transition=Transition(id=Transition.TRANSITION_CONFIGURE)), timeout=30.0)
                    assert res.success
                if state == "active":
                    pub = g.publisher(Float64MultiArray, f"obs_{name}")
                    g.wait_for(lambda: len(cmds[sig]) > 0, 30.0, f"{name} commands")
                    for _ in range(30):  # drive it away from the safe action
                        pub.publish(obs([0.9, 0.9, 0.0]))
                        time.sleep(1.0 / RATE)
                assert g.get_state(name) == state
            for sig, p in procs.items():
                t0 = time.monotonic()
                p.send_signal(sig)
                rc = p.wait(10)
                name = f"pol_{sig.name.lower()}"
                assert rc == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
                exit_s = time.monotonic() - t0
                if state == "active":
                    time.sleep(0.3)
                    np.testing.assert_allclose(cmds[sig][-1], SAFE, atol=1e-6)
                    verdict = mons[sig].stop()
                    assert verdict["unsafe"] == 0, verdict
                    np.testing.assert_allclose(verdict["last_command"], SAFE, atol=1e-6)
                record(f"{sig.name} while {state}", detected_s=0.0, reported_s=None,
                       action="safe action ramp, exit 0" if state == "active" else "exit 0",
                       recovered_s=None, exit_s=exit_s)
        finally:
            for p in procs.values():
                kill_group(p)
            for m in mons.values():
                m.kill()
