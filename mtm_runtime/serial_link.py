"""Host side of the serial link: port ownership, reader thread, reconnect with backoff, counters.

No ROS import: ``ros_nodes/serial_bridge.py`` wraps this and only converts messages and owns
timing (heartbeat timer, diagnostics timer). Protocol: ``mtm_runtime.serial_protocol``.

Threads
* One reader thread owns opening, reading and closing the port. It calls ``on_message(msg,
  rx_time)`` for every accepted frame (``rx_time`` = ``clock()`` seconds when the chunk arrived),
  so the callback must be quick and thread-safe.
* ``send_*`` may be called from any thread; writes are serialised by a lock and never block for
  longer than ``write_timeout`` seconds. While the link is down they are dropped and counted.

Invariants
* Backoff delays grow ``min_s, 2*min_s, ... <= max_s`` and restart at ``min_s`` after a
  successful open.
* Commands that are non-finite or of the wrong width never reach the port
  (``mtm_runtime.safety.ActionLimits`` does the check and the clipping).
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from mtm_runtime import serial_messages as sm, serial_protocol as sp
from mtm_runtime.safety import ActionLimits, UnsafeCommandError

try:  # pyserial is the `hw` extra; importing this module without it is allowed.
    import serial
except ImportError:  # pragma: no cover - exercised only where pyserial is missing
    serial = None  # type: ignore[assignment]


class Backoff:
    """Exponential backoff: ``next()`` returns min_s, min_s*factor, ... capped at max_s."""

    def __init__(self, min_s: float = 0.05, max_s: float = 2.0, factor: float = 2.0) -> None:
        if not 0 < min_s <= max_s or factor < 1:
            raise ValueError(f"backoff needs 0 < min_s <= max_s and factor >= 1, got "
                             f"{min_s}, {max_s}, {factor}")
        self.min_s, self.max_s, self.factor = float(min_s), float(max_s), float(factor)
        self._next = self.min_s

    def next(self) -> float:
        d = self._next
        self._next = min(self.max_s, self._next * self.factor)
        return d

    def reset(self) -> None:
        self._next = self.min_s


class LinkState(enum.Enum):
    DOWN = "down"  # port not open (never opened, vanished, or failed)
    UP = "up"  # port open


@dataclass
class LinkStats:
    """Link-level counters (decoder counters are reported next to these by ``snapshot``)."""

    connects: int = 0
    reconnects: int = 0  # successful opens after the first one
    open_failures: int = 0
    disconnects: int = 0  # port lost while open (read/write error, hang-up)
    tx_frames: int = 0
    tx_errors: int = 0  # write failed or timed out
    tx_dropped: int = 0  # sends attempted while the link was down
    rejected_commands: int = 0  # NaN/Inf or wrong width: never sent
    states: int = 0
    faults: int = 0
    last_fault_code: int = -1  # -1: none received
    last_fault_text: str = ""
    device_status: int = -1  # DeviceStatus from the last device HEARTBEAT; -1 none yet
    last_error: str = ""
    disconnect_reason: str = ""  # why the port was last lost


class SerialLink:
    """Owns one serial port (a path that may vanish and return) and speaks the protocol on it."""

    def __init__(self, port: str, baud: int = 115200, *,
                 on_message: Callable[[sm.Message, float], None] | None = None,
                 command_limits: ActionLimits | None = None, command_width: int = 0,
                 backoff_min: float = 0.05, backoff_max: float = 2.0,
                 read_timeout: float = 0.02, write_timeout: float = 0.05,
                 device_timeout: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if serial is None:
            raise ImportError("SerialLink needs pyserial (pip install 'mtm_runtime[hw]')")
        if command_limits is not None and command_width and command_limits.width != command_width:
            raise ValueError(f"command limits have {command_limits.width} values, "
                             f"command_width is {command_width}")
        self.port_path = port
        self.baud = int(baud)
        self.on_message = on_message
        self.command_width = command_limits.width if command_limits is not None else command_width
        self._limits = command_limits
        self.backoff = Backoff(backoff_min, backoff_max)
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.device_timeout = device_timeout
        self.clock = clock
        self.decoder = sp.FrameDecoder()
        self.stats = LinkStats()
        self._seq = sp.Sequencer()
        self._lock = threading.Lock()  # guards _port for writers, stats and decoder snapshots
        self._port: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = clock()
        self._last_rx: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the reader thread (it opens the port, retrying with backoff)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serial-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the reader thread and close the port. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close("stopped", count=False)

    @property
    def state(self) -> LinkState:
        return LinkState.UP if self._port is not None else LinkState.DOWN

    def device_alive(self) -> bool:
        """A valid frame arrived within ``device_timeout`` seconds."""
        last = self._last_rx
        return last is not None and self.clock() - last <= self.device_timeout

    # ------------------------------------------------------------------ sending
    def send_heartbeat(self) -> bool:
        """Send a host HEARTBEAT (status OK, uptime ms since construction)."""
        up = int((self.clock() - self._t0) * 1000)
        return self._send(lambda seq: sm.encode_heartbeat(seq, sm.DeviceStatus.OK, up))

    def send_command(self, values: np.ndarray | list[float]) -> bool:
        """Validate (finite, width; clip to limits if given) and send a COMMAND.

        Returns False when rejected (counted in ``rejected_commands``) or not sent.
        """
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        try:
            if self._limits is not None:
                v = self._limits.clip(v.astype(np.float32))
            else:
                if self.command_width and v.size != self.command_width:
                    raise UnsafeCommandError(f"command has {v.size} values, expected "
                                             f"{self.command_width}")
                if not np.all(np.isfinite(v)) or np.any(np.abs(v) > np.finfo(np.float32).max):
                    raise UnsafeCommandError("command contains NaN/Inf or overflows float32")
        except UnsafeCommandError as e:
            with self._lock:
                self.stats.rejected_commands += 1
                self.stats.last_error = f"rejected command: {e}"
            return False
        payload = v.astype(np.float32)
        return self._send(lambda seq: sm.encode_command(seq, payload))

    def _send(self, build: Callable[[int], bytes]) -> bool:
        with self._lock:
            port = self._port
            if port is None:
                self.stats.tx_dropped += 1
                return False
            frame = build(self._seq.next())
            try:
                port.write(frame)
            except Exception as e:  # noqa: BLE001 - SerialTimeoutException, OSError, ...
                self.stats.tx_errors += 1
                self.stats.last_error = f"write: {e}"
                return False
            self.stats.tx_frames += 1
            return True

    # ------------------------------------------------------------------ diagnostics
    def snapshot(self) -> dict[str, Any]:
        """Thread-safe copy of all counters plus link/device liveness."""
        with self._lock:
            d: dict[str, Any] = asdict(self.stats)
            d.update(self.decoder.stats.as_dict())
        d["link_up"] = self.state is LinkState.UP
        d["device_alive"] = self.device_alive()
        d["port"] = self.port_path
        return d

    # ------------------------------------------------------------------ reader thread
    def _open(self) -> bool:
        try:
            port = serial.Serial(self.port_path, self.baud, timeout=self.read_timeout,
                                 write_timeout=self.write_timeout)
        except Exception as e:  # noqa: BLE001 - SerialException, OSError (path missing)
            with self._lock:
                self.stats.open_failures += 1
                self.stats.last_error = f"open {self.port_path}: {e}"
            return False
        with self._lock:
            self._port = port
            self.decoder.reset()  # sequence history of the previous connection is void
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
            try:
                port.write(b"\x00")  # ends any partial frame the device holds
            except Exception:  # noqa: BLE001
                pass
        self.backoff.reset()
        return True

    def _close(self, why: str, count: bool = True) -> None:
        with self._lock:
            port, self._port = self._port, None
            if port is not None and count:
                self.stats.disconnects += 1
                self.stats.last_error = self.stats.disconnect_reason = why
        if port is not None:
            try:
                port.close()
            except Exception:  # noqa: BLE001
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._port is None and not self._open():
                self._stop.wait(self.backoff.next())
                continue
            port = self._port
            try:
                data = port.read(max(1, port.in_waiting))
            except Exception as e:  # noqa: BLE001 - hang-up shows as SerialException/OSError
                self._close(f"read: {e}")
                continue
            if not data:
                continue
            now = self.clock()
            with self._lock:
                msgs = self.decoder.feed(data)
                for m in msgs:
                    if isinstance(m, sm.State):
                        self.stats.states += 1
                    elif isinstance(m, sm.Heartbeat):
                        self.stats.device_status = m.status
                    elif isinstance(m, sm.Fault):
                        self.stats.faults += 1
                        self.stats.last_fault_code = m.code
                        self.stats.last_fault_text = m.text
            if msgs:
                self._last_rx = now
            cb = self.on_message
            if cb is not None:
                for m in msgs:
                    try:
                        cb(m, now)
                    except Exception as e:  # noqa: BLE001 - a callback bug must not kill I/O
                        with self._lock:
                            self.stats.last_error = f"on_message: {e!r}"
