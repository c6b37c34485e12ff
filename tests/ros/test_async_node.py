"""The policy node in async chunked mode (in-process node, real Fast DDS, the independent safety
monitor process): commands stream at the control rate from a model thread at its own rate; a
stalled model thread is answered with the fault action within max_chunk_age_s, reported as
stale_chunk, and the stream recovers when the model returns."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from std_msgs.msg import Float64MultiArray  # noqa: E402

from fault_helpers import FaultyBackend, record, tiny_checkpoint  # noqa: E402
from mtm_runtime import safety_contract as contract  # noqa: E402
from ros_harness import DiagnosticsLog, Graph, Parameter, obs  # noqa: E402
from mtm_runtime.ros_nodes.policy_node import EXTERNAL_BACKENDS_ENV, PolicyNode  # noqa: E402
from safety_monitor import MonitorProcess  # noqa: E402

pytestmark = pytest.mark.ros
RATE, MODEL_RATE, STALE, MAX_AGE = 200.0, 50.0, 0.5, 0.1


def test_async_node_streams_and_answers_a_stalled_model(ros_env, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(EXTERNAL_BACKENDS_ENV, "1")
    FaultyBackend.behaviour = {"raise": False, "delay_s": 0.0, "nan": False}
    ckpt = tiny_checkpoint(tmp_path / "ck", states=3, actions=2, horizon=8)
    with Graph() as g:
        node = g.add(PolicyNode("mtm_policy", context=g.context, parameter_overrides=[Parameter(k, value=v) for k, v in {
            "model_path": str(ckpt), "backend": "external:fault_helpers:FaultyBackend", "control_rate_hz": RATE,
            "stale_timeout": STALE, "fault_action": "safe", "safe_action": [0.05, -0.05], "warmup_iters": 2,
            "loop_mode": "async", "chunk": 4, "model_rate_hz": MODEL_RATE, "max_chunk_age_s": MAX_AGE,
            "autostart": True}.items()]))
        diags = DiagnosticsLog(g, "policy loop")
        g.start()
        mon = MonitorProcess(tmp_path / "async.json", low=[-1.0, -1.0], high=[1.0, 1.0], stale_timeout=STALE,
                             max_rate=0.0, max_gap=contract.max_command_gap_s(STALE, RATE), assume_active=False)
        stop = threading.Event()
        try:
            g.wait_for(lambda: node.lifecycle_state == "active" and node.count_subscribers("/commands") >= 1, 15.0,
                       "node active")
            pub = g.publisher(Float64MultiArray, "observation")

            def feed() -> None:  # states at the model's rate: commands come 4x as often
                k = 0
                while not stop.is_set():
                    pub.publish(obs([0.3 * np.sin(0.05 * k), 0.2, -0.1]))
                    k += 1
                    time.sleep(1.0 / MODEL_RATE)

            threading.Thread(target=feed, daemon=True).start()
            g.wait_for(lambda: node.stats.ticks > 100, 10.0, "commands streaming")
            published, plans = node.stats.published, node.loop.async_planner.plans
            time.sleep(1.0)
            streamed = node.stats.published - published
            assert streamed > 2 * (node.loop.async_planner.plans - plans)  # more commands than plans
            FaultyBackend.behaviour = {"raise": False, "nan": False, "delay_s": 0.8}   # the model thread stalls
            t0 = time.monotonic()
            g.wait_for(lambda: node.stats.stale_chunks > 0, 3.0, "stale chunk detected")
            detected = time.monotonic() - t0
            reported = diags.wait(t0, lambda d: "stale_chunk" in d["fault"])
            FaultyBackend.behaviour = {"raise": False, "nan": False, "delay_s": 0.0}
            ticks = node.stats.ticks
            t1 = time.monotonic()
            g.wait_for(lambda: node.stats.ticks > ticks + 20, 5.0, "policy commands again")
            recovered = time.monotonic() - t1
            assert diags.since(t0, lambda d: d.get("loop_mode") == "async" and int(d["plans"]) > 0) is not None
            record("async: model thread stalled", detected_s=detected, reported_s=reported,
                   action="fault action every tick", recovered_s=recovered)
            assert detected <= contract.row("stale_chunk").report_s and reported <= contract.row("stale_chunk").report_s
        finally:
            stop.set()
            verdict = mon.stop()
    assert verdict["unsafe"] == 0, verdict
    assert verdict["commands"] > 300
