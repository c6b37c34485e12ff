"""The capability benchmark's plumbing on its seconds-long ``smoke`` config (numbers meaningless):
every job runs, the report and JSON are written, and cached jobs are reused only for the same config."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("mujoco")

from benchmarks import capabilities  # noqa: E402


def _run(out: Path, *extra: str) -> dict:
    md, js = out / "RESULTS.md", out / "results.json"
    assert capabilities.main(["--config", "smoke", "--out", str(out), "--results", str(md), "--json", str(js),
                              *extra]) == 0
    report = json.loads(js.read_text())
    report["markdown"] = md.read_text()
    return report


def md_het(markdown: str) -> str:
    return markdown.split("## Heteromodal")[1].split("## Training throughput")[0]


def test_smoke_config_end_to_end_and_job_cache(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first["missing"] == []
    kinds = sorted((r["kind"], r["task"]) for r in first["results"])
    assert kinds == [("hetero", "reacher"), ("hetero", "reacher"), ("main", "reacher")]
    het = first["hetero_summary"]["reacher"]                      # two draws of the labelled episodes
    assert het["draws"] == [0, 1] and len(het["gap_per_draw"]) == 2 and min(het["labelled_train_episodes"]) >= 1
    files = [json.loads((tmp_path / "jobs" / f"hetero_reacher_expert_d{d}.json").read_text())["dataset"] for d in (0, 1)]
    with h5py.File(files[0]) as a, h5py.File(files[1]) as b:  # same rollouts, other episodes labelled
        assert np.array_equal(a["observations"][()], b["observations"][()])
        assert not np.array_equal(a["infos/action_present"][()], b["infos/action_present"][()])
    assert "| reacher | " in md_het(first["markdown"])
    main = next(r for r in first["results"] if r["kind"] == "main")
    assert set(main["rollouts"]) >= {"mtm_bc", "mtm_rcbc", "mtm_goal", "mlp_bc", "mlp_rcbc", "mlp_gcbc"}
    assert set(main["id_fd"]) == {"mtm", "mlp_id", "mlp_fd"}
    claims = [t[0] for t in first["targets"]]
    assert any("heteromodal" in c for c in claims) and any("ID/FD" in c for c in claims)
    md = first["markdown"]
    assert "## Targets" in md and "MTM training masks auto, id, fd, rcbc" in md and "| reacher | expert |" in md

    job = tmp_path / "jobs" / "main_reacher_expert.json"
    stamp = job.stat().st_mtime_ns
    other = "<!-- representations:begin -->\n## Another script's section\n<!-- representations:end -->"
    (tmp_path / "RESULTS.md").write_text(md + "\n" + other + "\n")
    second = _run(tmp_path)                         # same config: the job result is reused
    assert job.stat().st_mtime_ns == stamp
    assert second["markdown"].count(other) == 1      # another script's marked section is kept, once
    again = _run(tmp_path, "--masks", "auto", "--only", "reacher:expert")  # another config: rerun
    assert job.stat().st_mtime_ns != stamp
    assert json.loads(job.read_text())["config_digest"] != main["config_digest"]
    assert again["config"]["masks"] == ["auto"] and "MTM training masks auto (" in again["markdown"]


def test_schedule_puts_the_two_model_heteromodal_jobs_first_and_keeps_order_within_a_kind() -> None:
    jobs = [("main", "reacher", "expert", 0), ("main", "hopper", "expert", 0), ("hetero", "reacher", "expert", 0),
            ("main", "reacher", "medium-replay", 0), ("hetero", "hopper", "expert", 1)]
    assert capabilities.schedule(jobs) == [jobs[2], jobs[4], jobs[0], jobs[1], jobs[3]]
