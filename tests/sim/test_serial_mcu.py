"""Virtual microcontroller over a real pty with real pyserial, and the host SerialLink against it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

serial = pytest.importorskip("serial")
pytest.importorskip("mujoco")

from mtm_runtime import serial_messages as sm, serial_protocol as sp  # noqa: E402
from mtm_runtime.safety import ActionLimits  # noqa: E402
from mtm_runtime.serial_link import Backoff, LinkState, SerialLink  # noqa: E402
from mtm_runtime.sim.virtual_mcu import VirtualMCU  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class Host:
    """Minimal host: pyserial + FrameDecoder, heartbeats and commands sent by `pump`."""

    def __init__(self, path: str) -> None:
        self.ser = serial.Serial(path, 115200, timeout=0.01)
        self.dec = sp.FrameDecoder()
        self.seq = sp.Sequencer()
        self.msgs: list[sm.Message] = []

    def send(self, build: Callable[[int], bytes]) -> None:
        self.ser.write(build(self.seq.next()))

    def pump(self, secs: float, heartbeat: bool = True, command: list[float] | None = None,
             until: Callable[[], bool] | None = None) -> list[sm.Message]:
        got: list[sm.Message] = []
        t_end = time.monotonic() + secs
        next_hb = 0.0
        while time.monotonic() < t_end:
            now = time.monotonic()
            if heartbeat and now >= next_hb:
                self.send(lambda s: sm.encode_heartbeat(s))
                if command is not None:
                    self.send(lambda s: sm.encode_command(s, command))
                next_hb = now + 0.02
            got += self.dec.feed(self.ser.read(max(1, self.ser.in_waiting)))
            if until is not None and until():
                break
        self.msgs += got
        return got

    def close(self) -> None:
        self.ser.close()


@pytest.fixture
def mcu(tmp_path: Path):
    m = VirtualMCU("reacher", 100.0, heartbeat_hz=20.0, heartbeat_timeout=0.15,
                   link_path=str(tmp_path / "ttyMTM"))
    m.start()
    yield m
    m.stop()


def of(msgs: list[sm.Message], kind: type) -> list:
    return [m for m in msgs if isinstance(m, kind)]


def test_states_arrive_and_device_starts_safe(mcu: VirtualMCU) -> None:
    assert os.path.realpath(mcu.link_path) == mcu.slave_path
    host = Host(mcu.port)
    try:
        got = host.pump(0.5, heartbeat=False)
        states = of(got, sm.State)
        assert 30 <= len(states) <= 70, len(states)  # 100 Hz for 0.5 s, generous for a busy VM
        assert all(s.values.shape == (mcu.state_width,) for s in states)
        ts = [s.timestamp_us for s in states]
        assert all(b - a >= 10_000 for a, b in zip(ts, ts[1:]))  # 10 ms of sim time per state
        hbs = of(got, sm.Heartbeat)
        assert hbs and all(h.status == sm.DeviceStatus.SAFE for h in hbs)  # no host yet
        assert host.dec.stats.corrupt == 0
        # Commands before any host heartbeat are ignored.
        host.send(lambda s: sm.encode_command(s, [1.0, 1.0]))
        host.pump(0.05, heartbeat=False)
        assert mcu.snapshot()["commands_ignored"] >= 1
    finally:
        host.close()


def test_commands_move_the_arm_and_are_clipped(mcu: VirtualMCU) -> None:
    host = Host(mcu.port)
    try:
        host.pump(0.1)
        q0 = mcu.snapshot()["qpos"][:2].copy()
        host.pump(0.4, command=[5.0, -5.0])  # beyond the [-1, 1] ctrl range
        snap = mcu.snapshot()
        assert snap["status"] == "OK"
        np.testing.assert_allclose(snap["ctrl"], [1.0, -1.0])  # clipped by the device
        assert snap["commands_applied"] > 5
        dq = snap["qpos"][:2] - q0
        assert dq[0] > 0.3 and dq[1] < -0.3, dq  # joints driven in the commanded directions
        # Wrong width: rejected with a FAULT, never applied.
        host.send(lambda s: sm.encode_command(s, [0.1, 0.2, 0.3]))
        got = host.pump(0.1, until=lambda: bool(of(host.msgs, sm.Fault)))
        faults = of(host.msgs + got, sm.Fault)
        assert faults and faults[-1].code == sm.FaultCode.COMMAND_WIDTH
    finally:
        host.close()


def test_heartbeat_loss_safe_state_fault_and_recovery(mcu: VirtualMCU) -> None:
    host = Host(mcu.port)
    try:
        host.pump(0.2, command=[1.0, 1.0])
        assert mcu.snapshot()["status"] == "OK"
        got = host.pump(0.5, heartbeat=False)  # host goes silent
        snap = mcu.snapshot()
        assert snap["status"] == "SAFE" and snap["heartbeat_losses"] == 1
        np.testing.assert_array_equal(snap["ctrl"], [0.0, 0.0])
        faults = of(got, sm.Fault)
        assert [f.code for f in faults] == [sm.FaultCode.HEARTBEAT_TIMEOUT]
        assert of(got, sm.Heartbeat)[-1].status == sm.DeviceStatus.SAFE
        # Commands while safe are ignored.
        n_applied = snap["commands_applied"]
        host.send(lambda s: sm.encode_command(s, [1.0, 1.0]))
        host.pump(0.05, heartbeat=False)
        assert mcu.snapshot()["commands_applied"] == n_applied
        # Heartbeat returns: OK again, FAULT CLEARED, commands applied again.
        got = host.pump(0.3, command=[0.5, 0.5])
        snap = mcu.snapshot()
        assert snap["status"] == "OK"
        assert sm.FaultCode.CLEARED in [f.code for f in of(got, sm.Fault)]
        assert snap["commands_applied"] > n_applied
        np.testing.assert_allclose(snap["ctrl"], [0.5, 0.5])
    finally:
        host.close()


def test_lockstep_one_step_per_command(tmp_path: Path) -> None:
    with VirtualMCU("reacher", 100.0, lockstep=True, heartbeat_hz=20.0,
                    heartbeat_timeout=0.5) as m:
        host = Host(m.slave_path)
        try:
            host.pump(0.1)  # heartbeat: device OK; it re-sends its state while waiting
            steps0 = m.snapshot()["steps"]
            assert steps0 == 0
            host.dec.feed(host.ser.read(4096))
            stamps = []
            for _ in range(10):
                host.send(lambda s: sm.encode_command(s, [0.2, 0.2]))
                t_end = time.monotonic() + 1.0
                while time.monotonic() < t_end:
                    new = of(host.dec.feed(host.ser.read(max(1, host.ser.in_waiting))), sm.State)
                    fresh = [s for s in new if not stamps or s.timestamp_us > stamps[-1]]
                    if fresh:
                        stamps.append(fresh[0].timestamp_us)
                        break
            assert m.snapshot()["steps"] == 10
            assert np.all(np.diff(stamps) == 10_000)  # exactly one 10 ms step per command
        finally:
            host.close()


def test_cli_prints_pty_path() -> None:
    p = subprocess.run([sys.executable, "-m", "mtm_runtime.sim.virtual_mcu", "--task", "reacher",
                        "--rate", "100", "--duration", "0.3"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("pty: /dev/pts/"), p.stdout


# ------------------------------------------------------------------------ host SerialLink
def test_backoff_sequence() -> None:
    b = Backoff(0.05, 0.3)
    assert [round(b.next(), 3) for _ in range(6)] == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]
    b.reset()
    assert b.next() == 0.05
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_link_rejects_bad_commands_and_reconnects(mcu: VirtualMCU) -> None:
    states: list[sm.State] = []
    link = SerialLink(mcu.link_path, on_message=lambda m, t: states.append(m)
                      if isinstance(m, sm.State) else None,
                      command_limits=ActionLimits.symmetric(0.5, 2),
                      backoff_min=0.02, backoff_max=0.2)
    link.start()
    try:
        assert wait_for(lambda: link.state is LinkState.UP and len(states) > 5, 3.0)
        for _ in range(5):
            link.send_heartbeat()
            time.sleep(0.02)
        assert not link.send_command([np.nan, 0.0])
        assert not link.send_command([0.1, 0.2, 0.3])
        assert link.snapshot()["rejected_commands"] == 2
        assert link.send_command([2.0, -2.0])  # clipped to the host-side limit
        assert wait_for(lambda: mcu.snapshot()["commands_applied"] >= 1, 1.0)
        np.testing.assert_allclose(mcu.snapshot()["ctrl"], [0.5, -0.5])

        # The port vanishes: the link notices, retries with backoff, comes back on the new pty.
        mcu.close_port()
        assert wait_for(lambda: link.state is LinkState.DOWN, 2.0)
        time.sleep(0.3)  # a few failed opens with the port gone
        assert link.snapshot()["open_failures"] >= 2
        assert not link.send_heartbeat()  # dropped while down, counted
        old_path = mcu.slave_path
        mcu.open_port()
        n_before = len(states)
        assert wait_for(lambda: link.state is LinkState.UP and len(states) > n_before + 5, 3.0)
        snap = link.snapshot()
        assert snap["reconnects"] == 1 and snap["disconnects"] == 1 and snap["tx_dropped"] >= 1
        assert snap["corrupt"] == 0
        assert os.path.realpath(mcu.link_path) == mcu.slave_path
        del old_path
    finally:
        link.stop()
    assert link.state is LinkState.DOWN


def test_link_throughput_over_pty(tmp_path: Path) -> None:
    """Frames/s through a real pty + pyserial + decoder (figure printed for the report)."""
    master, slave = os.openpty()
    import tty
    tty.setraw(slave)
    path = os.ttyname(slave)
    got: list[sm.Message] = []
    link = SerialLink(path, on_message=lambda m, t: got.append(m))
    link.start()
    try:
        assert wait_for(lambda: link.state is LinkState.UP, 2.0)
        frames = [sm.encode_state(i % 65536, i, np.arange(10, dtype=np.float32))
                  for i in range(3000)]
        t0 = time.perf_counter()
        os.set_blocking(master, True)
        for i in range(0, len(frames), 50):
            os.write(master, b"".join(frames[i:i + 50]))
        assert wait_for(lambda: len(got) == 3000, 10.0), len(got)
        dt = time.perf_counter() - t0
        print(f"\nserial link throughput: {3000 / dt:.0f} STATE frames/s (10 floats, pty)")
        assert link.snapshot()["corrupt"] == 0
    finally:
        link.stop()
        os.close(master)
        os.close(slave)
