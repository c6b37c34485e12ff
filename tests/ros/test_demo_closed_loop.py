"""The demo's closed-loop step, shortened: one realtime Reacher episode, policy node and MuJoCo
bridge in their own processes (shared launch description), recorded; a failing node makes the
demo exit 1 naming it. And the closed-loop benchmark's --quick JSON schema (timings not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def _demo(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "demo", "--skip-toy", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_closed_loop_step(ros_env, tmp_path: Path) -> None:
    from ros_harness import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    r = _demo(["--model", str(ckpt), "--episodes", "2", "--record", "--out", str(tmp_path / "demo")])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "achieved rate" in r.stdout and "p99" in r.stdout and "normalised score" in r.stdout
    assert "episode 0: return" in r.stdout
    assert "mean of 2 episodes" in r.stdout  # every episode the bridge ended, whatever DDS delivered
    assert "success rate" in r.stdout  # Reacher: the informative number next to the normalised score
    assert (tmp_path / "demo" / "closed_loop.mcap").stat().st_size > 1000


def test_episodes_come_from_the_bridges_results_file(tmp_path: Path) -> None:
    """An episode whose /episode_stats the monitor missed (volatile, sent before it matched) still
    counts: the bridge's results file has every episode; arrival times stay where known."""
    import math

    from mtm_runtime.ros_nodes.closed_loop import LoopResult, episodes_from_results

    rows = [{"episode": k, "seed": k, "return": -4.0 + k, "normalised_score": 90.0 + k, "steps": 50,
             "success": 1.0} for k in range(3)]
    path = tmp_path / "bridge_episodes.json"
    path.write_text(json.dumps({"task": "reacher", "mode": "realtime", "lockstep_resends": 0, "episodes": rows}))
    live = [{**rows[k], "received_s": 10.0 + k} for k in (1, 2)]  # episode 0 never arrived
    eps = episodes_from_results(path, live)
    assert [e["episode"] for e in eps] == [0, 1, 2] and math.isnan(eps[0]["received_s"])
    res = LoopResult(3.0, eps, {}, {})
    assert res.mean_score() == 91.0 and res.step_rate_hz() == 50.0  # 50 steps between the two arrivals
    assert episodes_from_results(tmp_path / "missing.json", []) == []
    assert episodes_from_results(tmp_path / "missing.json", live) == live  # said on stderr


def test_demo_fails_clearly_when_the_policy_cannot_configure(ros_env, tmp_path: Path) -> None:
    r = _demo(["--model", str(tmp_path / "no_such_model"), "--episodes", "1", "--out", str(tmp_path / "demo")])
    assert r.returncode == 1, r.stdout[-2000:]
    assert "closed loop failed" in r.stderr and "mtm_policy" in r.stderr and "configure failed" in r.stderr


def test_closed_loop_benchmark_quick_json_schema(ros_env, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "benchmarks/closed_loop.py", "--quick", "--duration", "1", "--rates", "500",
                        "--json", str(out), "--work-dir", str(tmp_path / "work")], cwd=REPO, capture_output=True,
                       text=True, timeout=150)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["policy"]["backend"] in ("onnxruntime", "torch") and res["policy"]["backend_choice"]
    s = res["settings"]["500hz"]
    assert set(s["echo_baseline"]) == {"single", "events"}
    for part in (s["echo_baseline"]["single"], s["echo_baseline"]["events"], s["policy_loop"]):
        for key in ("tick_rate_hz", "deadline_misses", "miss_fraction", "latency_ms", "cpu_cores_used"):
            assert key in part, key
        assert set(part["latency_ms"]) == {"p50", "p99", "p99.9", "max"}
    pol = s["policy_loop"]
    assert pol["achieved_rate_hz"] > 0 and pol["replies"] > 0
    assert {"latency_p50_added_ms", "latency_p99_ratio"} <= set(s["policy_over_echo"])
    assert set(s["targets"]) == {"achieved_rate_hz", "miss_fraction", "latency_p99_ms", "beyond_act_p50_ms"}
    beyond = s["targets"]["beyond_act_p50_ms"]["measured"]   # from the node's own per-step record
    assert 0 < beyond < float(pol["policy_node_diagnostics"]["e2e_p50_ms"]), pol["policy_node_diagnostics"]


def test_faults_after_the_bridge_finished_are_told_apart_from_faults_during_the_run() -> None:
    from mtm_runtime.ros_nodes.closed_loop import LoopResult

    res = LoopResult(1.0, [], {"faults": "3", "stale_ticks": "2"}, {}, policy_diagnostics_at_bridge_end={"faults": "1"})
    assert res.faults_after_bridge_end() == 2                  # 1 during the episodes, 2 after the bridge stopped
    assert LoopResult(1.0, [], {"faults": "3"}, {}).faults_after_bridge_end() == 0   # no snapshot: claim nothing


def test_publish_cost_benchmark_times_each_message_with_matched_subscribers(ros_env) -> None:
    r = subprocess.run([sys.executable, "benchmarks/publish_cost.py", "--calls", "50"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert set(res["rows"]) == {f"{m}_{n}_subscribers" for m in ("joint_state", "float64_array") for n in (0, 1, 2)}
    for row in res["rows"].values():
        assert row["n"] == 50 and 0 < row["p50_us"] <= row["p99_us"]
    assert res["ros_domain_id"] == ros_env["ROS_DOMAIN_ID"]
