"""A virtual microcontroller: a MuJoCo task behind a serial port (a pty pair).

The device end is the pty master, held by this object; the host (the ROS serial bridge, or a
test with pyserial) opens ``slave_path`` (or the stable symlink ``link_path``). Protocol:
``mtm_runtime.serial_protocol`` / ``docs/serial_protocol.md``.

Behaviour (what real firmware must do too)
* Starts in ``SAFE`` (zero actuation) until the first host HEARTBEAT; then ``OK``.
* ``OK``: COMMAND values are clipped to the actuator range and applied (held until the next one).
* Host heartbeat older than ``heartbeat_timeout`` s -> ``SAFE``: actuators zeroed, last command
  forgotten, FAULT ``HEARTBEAT_TIMEOUT`` sent, commands ignored. Next host heartbeat -> ``OK``
  and FAULT ``CLEARED`` (the host must send a new command; the old one is not resumed).
* Sends STATE every control tick (real-time mode, ``rate_hz``) or once per received COMMAND
  (``lockstep``; it re-sends the current state at the heartbeat rate while waiting, so a lost
  frame cannot deadlock the loop), and a device HEARTBEAT at ``heartbeat_hz``.
* Device clock (``timestamp_us``) = simulation time in microseconds.

``close_port()`` / ``open_port()`` make the port vanish and return (new pty, symlink re-pointed),
which is how the host's reconnect logic is tested.

Run: ``python -m mtm_runtime.sim.virtual_mcu --task reacher --rate 100`` prints the pty path.
"""
from __future__ import annotations

import argparse
import enum
import fcntl
import os
import select
import signal
import sys
import threading
import time
import tty
from dataclasses import asdict, dataclass
from typing import Any, Callable

import mujoco
import numpy as np

from mtm_runtime import serial_messages as sm, serial_protocol as sp


class PlantState(enum.IntEnum):
    OK = int(sm.DeviceStatus.OK)
    SAFE = int(sm.DeviceStatus.SAFE)


@dataclass
class McuStats:
    """Device-side counters (read with ``VirtualMCU.snapshot``)."""

    steps: int = 0
    states_sent: int = 0
    heartbeats_sent: int = 0
    faults_sent: int = 0
    tx_dropped: int = 0  # pty buffer full (host not reading) or port closed
    commands_applied: int = 0
    commands_ignored: int = 0  # arrived while SAFE
    commands_rejected: int = 0  # wrong width or non-finite
    host_heartbeats: int = 0
    heartbeat_losses: int = 0
    overruns: int = 0  # real-time ticks that started more than one period late
    ports_opened: int = 0


class _Plant:
    """The MuJoCo task the device drives: model/data, actuator range, state read-out."""

    def __init__(self, task: str, seed: int, state_part: str) -> None:
        self.env, state_fn = make_task_env(task, seed, state_part)
        u = self.env.unwrapped
        self.model, self.data = u.model, u.data
        self._state_fn = state_fn
        self.low = self.model.actuator_ctrlrange[:, 0].astype(np.float64).copy()
        self.high = self.model.actuator_ctrlrange[:, 1].astype(np.float64).copy()
        limited = self.model.actuator_ctrllimited.astype(bool)
        self.low[~limited], self.high[~limited] = -np.inf, np.inf
        self.nu = int(self.model.nu)
        self._qpos0, self._qvel0 = self.data.qpos.copy(), self.data.qvel.copy()

    def state(self) -> np.ndarray:
        return np.asarray(self._state_fn(), dtype=np.float32)

    def step(self, ctrl: np.ndarray, nsub: int) -> bool:
        """Advance ``nsub`` MuJoCo steps with ``ctrl``; False (and a reset) if it diverged."""
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=nsub)
        if np.all(np.isfinite(self.data.qpos)) and np.all(np.isfinite(self.data.qvel)):
            return True
        self.data.qpos[:], self.data.qvel[:] = self._qpos0, self._qvel0
        mujoco.mj_forward(self.model, self.data)
        return False


def make_task_env(task: str, seed: int, state_part: str = "observation"
                  ) -> tuple[Any, Callable[[], np.ndarray]]:
    """The one place that builds the device's environment (task registry ``mtm_runtime.sim.tasks``).

    Returns ``(env, state_fn)``; ``state_fn()`` reads the current observation
    (``state_part="observation"``) or only its ``"states"`` part (goal removed).
    """
    from mtm_runtime.sim.tasks import get_task

    spec = get_task(task)
    env = spec.make_env(seed=seed)
    env.reset(seed=seed)
    u = env.unwrapped

    def state_fn() -> np.ndarray:
        obs = u._get_obs()  # MuJoCo gymnasium envs: observation of the current data
        return obs if state_part == "observation" else spec.split_observation(obs)[state_part]

    return env, state_fn


class VirtualMCU:
    """MuJoCo plant + protocol endpoint on a pty; ``start()`` runs it on a thread."""

    def __init__(self, task: str = "reacher", rate_hz: float = 100.0, *, lockstep: bool = False,
                 heartbeat_hz: float = 10.0, heartbeat_timeout: float = 0.25,
                 link_path: str | None = None, seed: int = 0,
                 state_part: str = "observation") -> None:
        if rate_hz <= 0 or heartbeat_hz <= 0 or heartbeat_timeout <= 0:
            raise ValueError("rate_hz, heartbeat_hz and heartbeat_timeout must be > 0")
        self.plant = _Plant(task, seed, state_part)
        self.rate_hz, self.lockstep = float(rate_hz), bool(lockstep)
        self.period = 1.0 / self.rate_hz
        self.nsub = max(1, round(self.period / float(self.plant.model.opt.timestep)))
        self.heartbeat_period = 1.0 / heartbeat_hz
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.link_path = link_path
        self.state_width = int(self.plant.state().size)
        self.command_width = self.plant.nu
        self.stats = McuStats()
        self.status = PlantState.SAFE
        self.ctrl = np.zeros(self.plant.nu)
        self.last_fault: tuple[int, str] | None = None
        self._decoder = sp.FrameDecoder()
        self._seq = sp.Sequencer()
        self._lock = threading.RLock()
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path: str | None = None
        self._last_host_hb: float | None = None
        self._lost = False  # SAFE because of a heartbeat timeout (vs. never connected)
        self._pending_steps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.open_port()

    # ------------------------------------------------------------------ port
    def open_port(self) -> str:
        """Create a fresh pty pair; re-point ``link_path`` at it. Returns the slave path."""
        with self._lock:
            if self._master is not None:
                return self.slave_path  # type: ignore[return-value]
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing: a byte pipe
            fl = fcntl.fcntl(master, fcntl.F_GETFL)
            fcntl.fcntl(master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
            # The slave stays open here so the master never sees EIO while no host is attached.
            self._master, self._slave = master, slave
            self.slave_path = os.ttyname(slave)
            self._decoder.reset()
            self.stats.ports_opened += 1
            if self.link_path:
                tmp = f"{self.link_path}.tmp{os.getpid()}"
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                os.symlink(self.slave_path, tmp)
                os.replace(tmp, self.link_path)
            return self.slave_path

    def close_port(self) -> None:
        """Close the pty pair (the host sees a hang-up) and remove the symlink."""
        with self._lock:
            if self.link_path and os.path.lexists(self.link_path):
                os.unlink(self.link_path)
            for fd in (self._master, self._slave):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._master = self._slave = None

    @property
    def port(self) -> str | None:
        """What a host should open: the stable link if configured, else the pty slave."""
        return self.link_path or self.slave_path

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "VirtualMCU":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="virtual-mcu", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop and close the port. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        self.close_port()
        self.plant.env.close()

    def __enter__(self) -> "VirtualMCU":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> dict[str, Any]:
        """Thread-safe copy: counters, status, applied ctrl, joint positions, last fault."""
        with self._lock:
            d = asdict(self.stats)
            d.update(status=self.status.name, ctrl=self.ctrl.copy(),
                     qpos=self.plant.data.qpos.copy(), sim_time=float(self.plant.data.time),
                     last_fault=self.last_fault, rx=self._decoder.stats.as_dict())
        return d

    # ------------------------------------------------------------------ I/O
    def _write(self, frame: bytes) -> bool:
        if self._master is None:
            self.stats.tx_dropped += 1
            return False
        try:
            n = os.write(self._master, frame)
        except (BlockingIOError, OSError):
            self.stats.tx_dropped += 1
            return False
        if n != len(frame):  # torn frame: the host drops it (COBS/CRC) and resyncs at 0x00
            self.stats.tx_dropped += 1
            return False
        return True

    def _send_state(self) -> None:
        ts = int(round(self.plant.data.time * 1e6))
        if self._write(sm.encode_state(self._seq.next(), ts, self.plant.state())):
            self.stats.states_sent += 1

    def _send_heartbeat(self, now: float) -> None:
        up = int(now * 1000)
        if self._write(sm.encode_heartbeat(self._seq.next(), int(self.status), up)):
            self.stats.heartbeats_sent += 1

    def _send_fault(self, code: int, text: str) -> None:
        self.last_fault = (int(code), text)
        if self._write(sm.encode_fault(self._seq.next(), code, text)):
            self.stats.faults_sent += 1

    def _poll_rx(self, now: float) -> None:
        if self._master is None:
            return
        while True:
            try:
                data = os.read(self._master, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            for msg in self._decoder.feed(data):
                self._handle(msg, now)

    def _handle(self, msg: sm.Message, now: float) -> None:
        if isinstance(msg, sm.Heartbeat):
            self.stats.host_heartbeats += 1
            self._last_host_hb = now
            if self.status is PlantState.SAFE:
                self.status = PlantState.OK
                if self._lost:
                    self._lost = False
                    self._send_fault(sm.FaultCode.CLEARED, "host heartbeat restored")
        elif isinstance(msg, sm.Command):
            if self.status is not PlantState.OK:
                self.stats.commands_ignored += 1
                return
            v = msg.values.astype(np.float64)
            if v.size != self.command_width:
                self.stats.commands_rejected += 1
                self._send_fault(sm.FaultCode.COMMAND_WIDTH,
                                 f"command has {v.size} values, expected {self.command_width}")
                return
            if not np.all(np.isfinite(v)):
                self.stats.commands_rejected += 1
                self._send_fault(sm.FaultCode.COMMAND_NONFINITE, "command has NaN/Inf")
                return
            self.ctrl = np.clip(v, self.plant.low, self.plant.high)
            self.stats.commands_applied += 1
            self._pending_steps += 1

    def _check_heartbeat(self, now: float) -> None:
        if self.status is not PlantState.OK:
            return
        if self._last_host_hb is None or now - self._last_host_hb > self.heartbeat_timeout:
            self.status = PlantState.SAFE
            self.ctrl = np.zeros(self.plant.nu)
            self._pending_steps = 0
            self._lost = True
            self.stats.heartbeat_losses += 1
            # A host that comes back may be a restarted process whose seq starts at 0.
            self._decoder.reset()
            self._send_fault(sm.FaultCode.HEARTBEAT_TIMEOUT,
                             f"no host heartbeat for {self.heartbeat_timeout * 1000:.0f} ms: "
                             "actuators zeroed")

    def _step(self) -> None:
        ok = self.plant.step(self.ctrl if self.status is PlantState.OK else 0.0 * self.ctrl,
                             self.nsub)
        self.stats.steps += 1
        if not ok:
            self._send_fault(sm.FaultCode.PHYSICS, "simulation diverged: state reset")

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        clock = time.monotonic
        next_tick = clock()
        last_hb = last_state = -1e9
        while not self._stop.is_set():
            now = clock()
            if self.lockstep:
                timeout = max(0.0, min(self.heartbeat_period - (now - last_hb), 0.005))
            else:
                timeout = max(0.0, next_tick - now)
            master = self._master
            if master is not None and timeout > 0:
                try:
                    select.select([master], [], [], timeout)
                except (OSError, ValueError):  # closed under us by close_port
                    time.sleep(timeout)
            elif timeout > 0:
                time.sleep(timeout)
            with self._lock:
                now = clock()
                self._poll_rx(now)
                self._check_heartbeat(now)
                if self.lockstep:
                    if self._pending_steps > 0:
                        self._pending_steps -= 1
                        self._step()
                        self._send_state()
                        last_state = now
                    elif now - last_state >= self.heartbeat_period:
                        self._send_state()
                        last_state = now
                elif now >= next_tick:
                    self._step()
                    self._send_state()
                    next_tick += self.period
                    if now - next_tick > self.period:  # fell behind: count it, do not burst
                        self.stats.overruns += 1
                        next_tick = now + self.period
                if now - last_hb >= self.heartbeat_period:
                    self._send_heartbeat(now)
                    last_hb = now


def main(argv: list[str] | None = None) -> int:
    """CLI: run a virtual MCU until Ctrl-C; prints the pty path (and link path) first."""
    p = argparse.ArgumentParser(prog="python -m mtm_runtime.sim.virtual_mcu", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="reacher")
    p.add_argument("--rate", type=float, default=100.0, help="control rate, Hz (real-time mode)")
    p.add_argument("--lockstep", action="store_true", help="one physics step per COMMAND")
    p.add_argument("--heartbeat-hz", type=float, default=10.0)
    p.add_argument("--heartbeat-timeout", type=float, default=0.25, help="seconds")
    p.add_argument("--link", default=None, help="stable symlink to the current pty slave")
    p.add_argument("--state", default="observation", choices=["observation", "states"],
                   help="what STATE carries: the full observation or its goal-free 'states' part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    a = p.parse_args(argv)
    mcu = VirtualMCU(a.task, a.rate, lockstep=a.lockstep, heartbeat_hz=a.heartbeat_hz,
                     heartbeat_timeout=a.heartbeat_timeout, link_path=a.link, seed=a.seed,
                     state_part=a.state)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    mcu.start()
    print(f"pty: {mcu.slave_path}", flush=True)
    if a.link:
        print(f"link: {a.link}", flush=True)
    print(f"state width {mcu.state_width}, command width {mcu.command_width}, "
          f"{'lockstep' if a.lockstep else f'{a.rate:g} Hz'}", flush=True)
    done.wait(a.duration or None)
    mcu.stop()
    print(f"stats: {asdict(mcu.stats)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
