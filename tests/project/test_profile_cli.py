"""``mtm profile``: JSON schema, table, PNG; the library's paced loop counts misses."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtm_runtime.profiling import SCHEMA, latency_stats_ms, parse_backend_entry, profile_policy
from tests.export_fixtures import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STATS = {"p50", "p90", "p99", "p99_9", "max", "mean"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("prof") / "ck")


def test_profile_cli_json_schema_and_png(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    from mtm_runtime.cli import main

    rc = main(["profile", str(ckpt), "--compare", "torch,onnxruntime", "--mode", "rcbc", "--rate", "500",
               "--steps", "40", "--warmup", "3", "--json", str(out), "--png", str(png)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "torch" in stdout and "onnxruntime" in stdout
    rep = json.loads(out.read_text())
    assert rep["schema"] == SCHEMA and rep["mode"] == "rcbc" and rep["rate_hz"] == 500 and rep["steps"] == 40
    for key in ("cpu", "cores", "python", "torch", "onnxruntime"):
        assert key in rep["machine"]
    assert [x["label"] for x in rep["results"]] == ["torch", "onnxruntime"]
    for res in rep["results"]:
        assert set(res["act_ms"]) == STATS and set(res["backend_ms"]) == STATS and set(res["jitter_ms"]) == STATS
        assert res["act_ms"]["p50"] >= res["backend_ms"]["p50"] > 0
        assert isinstance(res["deadline_misses"], int) and 0 <= res["miss_rate"] <= 1
        assert res["cpu_utilisation"] > 0 and res["rss_mb"] > 0 and "ratio_p50" in res
        assert res["describe"]["backend"] == res["backend"]
    assert rep["results"][0]["ratio_p50"] == 1.0
    assert png.stat().st_size > 1000


def test_profile_cli_missing_model(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "profile", str(tmp_path / "none")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)  # the real entry point, once
    assert r.returncode == 2 and "no such checkpoint" in r.stderr


def test_paced_loop_counts_misses(ckpt: Path) -> None:
    from mtm_runtime.policy import Policy

    pol = Policy.load(ckpt, backend="torch")
    res = profile_policy(pol, steps=30, rate_hz=1e5, warmup=2)  # 10 us period: every step misses
    assert res["deadline_misses"] >= 25
    res = profile_policy(pol, steps=20, rate_hz=None, warmup=2)
    assert res["deadline_misses"] is None and res["jitter_ms"] is None


def test_helpers() -> None:
    s = latency_stats_ms(np.array([0.001, 0.002, 0.003]))
    assert s["max"] == pytest.approx(3.0) and s["p50"] == pytest.approx(2.0)
    assert parse_backend_entry("onnxruntime+quantize=int8+intra_op_threads=2") == (
        "onnxruntime", {"quantize": "int8", "intra_op_threads": 2})


def test_profile_cli_chunk_and_monitor(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--chunk 2 --monitor``: plan latency without and with the monitor's forward-dynamics row."""
    from mtm_runtime.cli import main

    out = tmp_path / "p.json"
    rc = main(["profile", str(ckpt), "--chunk", "2", "--monitor", "--steps", "30", "--warmup", "3", "--json", str(out)])
    assert rc == 0 and "(monitor)" in capsys.readouterr().out
    rows = json.loads(out.read_text())["planner"]
    assert [(r["chunk"], r["batch"], r["monitor"]) for r in rows] == [(2, 1, False), (2, 2, True)]
    assert all(r["plan_ms"]["p99"] >= r["plan_ms"]["p50"] > 0 for r in rows)
    assert main(["profile", "preset:embedded", "--monitor", "--steps", "5", "--warmup", "1"]) == 2
