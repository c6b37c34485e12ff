"""ROS-free pieces of the control loop: safety module, latency statistics, message conversions."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from mtm_runtime.latency import LatencyRing, LoopStats, RateMeter
from mtm_runtime.safety import (ActionLimits, FaultAction, RateLimiter, StaleWatchdog, UnsafeCommandError,
                                intersect_limits, state_rejection_reason)


def test_rate_limiter_bounds_each_step() -> None:
    rl = RateLimiter(0.1, 2)
    rl.reset(np.zeros(2))
    outs = [rl.apply(np.array([1.0, -1.0])).copy() for _ in range(15)]
    assert np.all(np.abs(np.diff(np.vstack([np.zeros(2), *outs]), axis=0)) <= 0.1 + 1e-7)
    np.testing.assert_allclose(outs[-1], [1.0, -1.0])
    assert not RateLimiter.from_parameter(0.0, 2).enabled
    with pytest.raises(UnsafeCommandError):
        rl.apply(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError):
        RateLimiter(-1.0, 2)


def test_rate_limiter_matches_a_clip_per_dimension_and_off_passes_through() -> None:
    """Each output is np.clip(input, previous - max_delta, previous + max_delta) per dimension (a
    dimension given as 0 through from_parameter is off); a limiter that is off returns its input."""
    rng = np.random.default_rng(3)
    rl, off = RateLimiter.from_parameter([0.0, 0.1], 2), RateLimiter.from_parameter(0.0, 2)
    assert rl.enabled and not off.enabled
    prev = None
    for x in rng.uniform(-1, 1, (50, 2)):
        out = rl.apply(x).copy()
        expected = x if prev is None else np.clip(x, prev - [np.inf, 0.1], prev + [np.inf, 0.1])
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        np.testing.assert_allclose(off.apply(x), x, rtol=1e-6)
        prev = out.astype(np.float64)


def test_state_checks_name_what_is_wrong() -> None:
    from mtm_runtime.safety import state_rejection_reason

    assert state_rejection_reason(np.array([1.0, 2.0]), 2) is None
    assert state_rejection_reason(np.array([1, 2]), 2) is None
    assert "index [1]" in state_rejection_reason(np.array([1.0, np.nan]), 2)
    assert "too large" in state_rejection_reason(np.array([1.7e308, 1.7e308]), 2)
    assert "real numbers" in state_rejection_reason(np.array([1 + 1j, 2]), 2)
    assert "shape" in state_rejection_reason(np.zeros(3), 2)


def test_watchdog_monotonic_and_gap() -> None:
    t = [0.0]
    wd = StaleWatchdog(0.5, clock=lambda: t[0])
    assert not wd.stale() and math.isinf(wd.age())
    wd.arm()
    t[0] = 0.6
    assert wd.stale()
    assert wd.feed() == pytest.approx(0.6) and not wd.stale()


def test_fault_action_always_inside_limits() -> None:
    lim = ActionLimits(np.array([0.2, -1.0]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(FaultAction("zeros", lim).action(), [0.2, 0.0])
    np.testing.assert_allclose(FaultAction("hold", lim).action(np.array([0.5, 5.0])), [0.5, 1.0])
    np.testing.assert_allclose(FaultAction("hold", lim).action(None), [0.2, 0.0])
    np.testing.assert_allclose(FaultAction("safe", lim, [0.3, 0.3]).action(), [0.3, 0.3])
    with pytest.raises(ValueError, match="outside"):
        FaultAction("safe", lim, [0.0, 0.0])
    with pytest.raises(ValueError):
        FaultAction("explode", lim)


def test_state_validation_and_limit_narrowing() -> None:
    assert state_rejection_reason(np.zeros(3), 3) is None
    assert "shape" in state_rejection_reason(np.zeros(2), 3)
    assert "NaN/Inf" in state_rejection_reason(np.array([0.0, np.inf, 0.0]), 3)
    lim = intersect_limits(ActionLimits.symmetric(1.0, 2), [-0.5], [2.0, 0.3])
    np.testing.assert_allclose(lim.low, [-0.5, -0.5]) and np.testing.assert_allclose(lim.high, [1.0, 0.3])
    with pytest.raises(ValueError, match="empty"):
        intersect_limits(ActionLimits.symmetric(1.0, 2), [0.5, 0.5], [0.0, 0.0])


def test_latency_ring_percentiles_without_allocation() -> None:
    ring = LatencyRing(100)
    for i in range(1, 201):  # only the newest 100 (101..200 ms) stay
        ring.add(i * 1e-3)
    s = ring.summary()
    assert s.count == 100 and s.p50 == pytest.approx(0.150) and s.p99 == pytest.approx(0.199) and s.max == pytest.approx(0.2)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(1000):
        ring.add(0.001)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename") if "latency" in str(d.traceback))
    assert grown < 200  # a few int objects, not one allocation per sample (1000 samples)
    rm = RateMeter(16, clock=lambda: 1.0)
    for k in range(10):
        rm.tick(k * 0.01)
    assert rm.rate_hz(now=0.09) == pytest.approx(100.0)
    assert set(LoopStats().counters()) >= {"overruns", "stale_ticks", "rejected_inputs"}


def test_conversions_roundtrip() -> None:
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import JointState

    from mtm_runtime.ros_nodes import conversions as conv

    js = JointState(name=["a", "b"], position=[1.0, 2.0], velocity=[3.0, 4.0])
    np.testing.assert_allclose(conv.joint_state_to_array(js, ["b", "a"]), [2.0, 1.0, 4.0, 3.0])
    with pytest.raises(conv.ConversionError, match="lacks"):
        conv.joint_state_to_array(js, ["c"])
    msg = conv.array_to_multiarray(np.array([0.5, -0.5]), "cmd")
    np.testing.assert_allclose(conv.multiarray_to_array(msg), [0.5, -0.5])
    assert conv.stamp_to_ns(conv.ns_to_stamp(12_000_000_345)) == 12_000_000_345
    cmd = conv.array_to_joint_state(np.array([0.1, 0.2]), ["a", "b"], conv.ns_to_stamp(7), "effort")
    assert list(cmd.effort) == [0.1, 0.2] and cmd.header.stamp.nanosec == 7
    st = conv.diagnostic_status("x", 1, "warn", {"p99_ms": 0.123456789, "n": 3})
    assert conv.diagnostic_values(st) == {"p99_ms": "0.123457", "n": "3"} and st.level == b"\x01"


@pytest.mark.parametrize("command_type, field", [("joint_state", "effort"), ("joint_trajectory", "velocity"),
                                                 ("float64_multiarray", "effort")])
def test_the_command_writer_refills_one_message(command_type: str, field: str) -> None:
    """CommandWriter's reused message carries each step's values and stamp, equal to a freshly built one."""
    from mtm_runtime.ros_nodes import conversions as conv
    def fresh(v: list[float], ns: int):
        a, stamp = np.array(v), conv.ns_to_stamp(ns)
        if command_type == "joint_state":
            return conv.array_to_joint_state(a, ["a", "b"], stamp, field)
        if command_type == "joint_trajectory":
            return conv.array_to_joint_trajectory(a, ["a", "b"], stamp, field, 0.002)
        return conv.array_to_multiarray(a)

    writer = conv.CommandWriter(command_type, ["a", "b"], field, 0.002, 2)
    first = writer.message(np.array([0.5, -0.25], np.float32), 1_500_000_007)
    assert first == fresh([0.5, -0.25], 1_500_000_007)
    second = writer.message(np.array([-0.3, 0.4]), 2_000_000_001)
    assert second is first and second == fresh([-0.3, 0.4], 2_000_000_001)
    with pytest.raises(conv.ConversionError, match="shape"):
        writer.message(np.zeros(3), 0)
