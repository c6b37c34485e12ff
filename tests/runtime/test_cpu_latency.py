"""The PM QoS CPU latency request (mtm_runtime/cpu_latency.py): against the real device where this
process may write it, and its failure path."""
from __future__ import annotations

import os
import struct

import pytest

from mtm_runtime.cpu_latency import DEVICE, OFF, CpuLatencyRequest


def _effective_target() -> int:
    """The kernel's effective CPU latency target: reading the device gives it (an s32)."""
    with open(DEVICE, "rb") as f:
        return struct.unpack("i", f.read(4))[0]


def test_the_request_is_in_force_while_held_and_gone_after() -> None:
    if not os.access(DEVICE, os.R_OK | os.W_OK):
        pytest.skip(f"{DEVICE} is not readable and writable by this user (root's by default): "
                    "the real request cannot be made here")
    before = _effective_target()
    req = CpuLatencyRequest()
    assert req.hold(0) is None and req.held and req.status == "held: 0 us"
    try:
        assert _effective_target() == 0
        assert req.hold(7) is None and req.status == "held: 7 us"  # a new target replaces the old request
        assert _effective_target() == min(7, before)
    finally:
        req.release()
    assert not req.held and req.status == "off"
    assert _effective_target() == before


def test_off_holds_nothing_and_a_missing_device_says_why(tmp_path) -> None:
    req = CpuLatencyRequest(str(tmp_path / "missing"))
    assert req.hold(OFF) is None and not req.held and req.status == "off"
    problem = req.hold(0)
    assert problem is not None and "missing" in problem and "cpu_wake_latency_us=0" in problem
    assert not req.held and req.status.startswith("not held: ")
