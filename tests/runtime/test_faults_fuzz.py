"""Property-based fuzzing (hypothesis) of the serial frame decoder and the message conversions,
plus a quick run of ``benchmarks/fuzz.py`` (the 10^5-case run is the benchmark)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtm_runtime import serial_framing as sf, serial_messages as sm, serial_protocol as sp
from mtm_runtime.safety import state_rejection_reason

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(st.binary(max_size=2500), max_size=6))
def test_decoder_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    dec = sp.FrameDecoder()
    for c in chunks:
        for m in dec.feed(c):
            assert isinstance(m, (sm.State, sm.Command, sm.Heartbeat, sm.Fault))
        assert dec.buffered <= sf.MAX_ENCODED


@FAST
@given(st.integers(0, 65535), st.lists(st.floats(width=32, allow_nan=True), max_size=40),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=4), st.integers(1, 50))
def test_mutated_frames_are_dropped_or_exact(seq: int, values: list[float], flips: list[tuple[int, int]],
                                             chunk: int) -> None:
    wire = bytearray(sm.encode_state(seq, 123, np.asarray(values, np.float32)))
    for pos, bit in flips:
        p = pos % (len(wire) - 1)  # keep the delimiter
        wire[p] ^= 1 << bit
    dec = sp.FrameDecoder()
    out = [m for i in range(0, len(wire), chunk) for m in dec.feed(bytes(wire[i:i + chunk]))]
    assert len(out) <= 1
    if not flips and out:
        assert out[0].seq == seq
        np.testing.assert_array_equal(out[0].values, np.asarray(values, np.float32))


def test_decoder_sequence_rules() -> None:
    dec = sp.FrameDecoder()
    f = lambda s: sm.encode_heartbeat(s)  # noqa: E731
    assert len(dec.feed(f(10) + f(10) + f(7) + f(11))) == 2
    assert dec.stats.duplicate == 1 and dec.stats.out_of_order == 1


ros = pytest.importorskip  # alias for readability below


@FAST
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12), st.integers(0, 4), st.integers(1, 6))
def test_multiarray_conversion_gate(values: list[float], offset: int, width: int) -> None:
    pytest.importorskip("rclpy")
    from std_msgs.msg import Float64MultiArray

    from mtm_runtime.ros_nodes import conversions as conv

    msg = Float64MultiArray(data=values)
    msg.layout.data_offset = offset
    a = conv.multiarray_to_array(msg)
    assert a.dtype == np.float64 and a.ndim == 1
    if state_rejection_reason(a, width) is None:
        assert a.size == width and np.all(np.isfinite(a))


@FAST
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4, unique=True),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
       st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=3, unique=True),
       st.lists(st.sampled_from(["position", "velocity", "effort", "bogus"]), max_size=3))
def test_joint_state_conversion_raises_only_conversion_error(names, pos, vel, want, fields) -> None:
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import JointState

    from mtm_runtime.ros_nodes import conversions as conv

    js = JointState(name=names, position=pos, velocity=vel)
    try:
        a = conv.joint_state_to_array(js, want, fields)
    except conv.ConversionError:
        return
    assert a.dtype == np.float64 and a.ndim == 1
    if state_rejection_reason(a, len(want or names) * len(fields)) is None:
        assert np.all(np.isfinite(a))


def test_fuzz_benchmark_quick() -> None:
    pytest.importorskip("rclpy")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import fuzz

    assert fuzz.main(["--cases", "1500"]) == 0
