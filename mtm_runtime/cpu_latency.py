"""Keep the CPUs out of deep idle states while a control loop runs (Linux PM QoS).

A control loop sleeps most of each period and is woken by its input. On a machine whose idle CPUs
halt (a virtual machine's vCPU, a laptop's deep C-states), every wake-up then starts cold: on
this project's 2-core VMs (cpuidle driver ``haltpoll`` with ``guest_halt_poll_ns=0``) the same
few microseconds of Python cost 3-6x more one period after a sleep than back to back
(``python benchmarks/publish_cost.py --paced 500``; ``docs/realtime.md``).

Linux's CPU latency QoS (``Documentation/power/pm_qos_interface.rst``) is the documented remedy
that real-time tools use: a process opens ``/dev/cpu_dma_latency`` and writes a 32-bit target in
microseconds; while it holds the file open, idle CPUs stay in states that wake within that
target (0: poll, never halt). Closing the file removes the request. The request is system-wide:
every process on the machine wakes faster while it is held, and idle CPUs draw more power.

``CpuLatencyRequest`` is that request as an object; the policy node holds it while active when its
``cpu_wake_latency_us`` parameter is >= 0. Without write access to the device (it is root's by
default) ``hold`` says so and the loop runs as before.
"""
from __future__ import annotations

import os
import struct

DEVICE = "/dev/cpu_dma_latency"
#: ``cpu_wake_latency_us`` below 0 leaves the OS's idle states alone
OFF = -1


class CpuLatencyRequest:
    """One PM QoS CPU latency request; ``status`` says what is in force (for diagnostics)."""

    def __init__(self, device: str = DEVICE) -> None:
        self.device = device
        self._fd: int | None = None
        self.status = "off"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self, target_us: int) -> str | None:
        """Request that idle CPUs wake within ``target_us`` microseconds (``OFF``: release). Returns
        None when in force, else one line saying why not (the request is then not held)."""
        self.release()
        if target_us < 0:
            return None
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            self.status = f"not held: {self.device}: {e.strerror}"
            return (f"cpu_wake_latency_us={target_us} not in force: cannot open {self.device} ({e.strerror}; it "
                    f"needs root or write access); idle CPUs may halt, which adds wake-up time to every step")
        try:
            os.write(fd, struct.pack("i", int(target_us)))  # the kernel's format: one native s32
        except OSError as e:
            os.close(fd)
            self.status = f"not held: write to {self.device}: {e.strerror}"
            return f"cpu_wake_latency_us={target_us} not in force: writing {self.device} failed ({e.strerror})"
        self._fd = fd
        self.status = f"held: {int(target_us)} us"
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.status = "off"
