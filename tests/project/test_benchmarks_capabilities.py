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
from benchmarks.capability_config import HETERO_LEFT_OUT, REPO  # noqa: E402
from benchmarks.capability_report import TIERS_BEGIN, TIERS_END, fmt, write_report  # noqa: E402


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
    het = first["hetero_summary"]["reacher@10%"]                  # two draws of the labelled episodes
    assert het["draws"] == [0, 1] and len(het["gap_per_draw"]) == 2 and min(het["labelled_train_episodes"]) >= 1
    files = [json.loads((tmp_path / "jobs" / f"hetero_reacher_expert_f0.1_d{d}.json").read_text())["dataset"] for d in (0, 1)]
    with h5py.File(files[0]) as a, h5py.File(files[1]) as b:  # same rollouts, other episodes labelled
        assert np.array_equal(a["observations"][()], b["observations"][()])
        assert not np.array_equal(a["infos/action_present"][()], b["infos/action_present"][()])
    assert "| reacher@10% | " in md_het(first["markdown"]) and "| MLP-ID -> MLP-BC (all) |" in md_het(first["markdown"])
    hetero = next(r for r in first["results"] if r["kind"] == "hetero")
    assert np.isfinite(hetero["rollouts"]["mlp_id_then_bc"]["score_mean"])     # the MLP pipeline ran beside the MTMs
    assert np.isfinite(het["pipeline_minus_mtm"]) and "MLP-ID -> MLP-BC minus heteromodal MTM" in first["markdown"]
    run_dir = tmp_path / "runs" / "hetero_reacher_expert_f0.1_d0"
    assert (run_dir / "mtm_all" / "self_labels.safetensors").exists()       # self-labelling is the config's default
    assert not (run_dir / "mtm_labelled" / "self_labels.safetensors").exists()
    assert "self-labelled (its own inverse dynamics fill the missing actions) at 0.5 of its steps" in first["markdown"]
    assert "Do-nothing floor on these tasks: reacher 90.2 (success 0%)" in md_het(first["markdown"])
    rendered = tmp_path / "rendered.md"                     # --render: the same report from the saved JSON
    assert capabilities.main(["--render", str(tmp_path / "results.json"), "--results", str(rendered)]) == 0
    assert rendered.read_text() == first["markdown"]
    # a task left out is named, with why
    wider = {**first, "config": {**first["config"], "tasks": ["reacher", "inverted_double_pendulum"]}}
    write_report(wider, tmp_path / "wider.md")
    assert f"inverted_double_pendulum: {HETERO_LEFT_OUT['inverted_double_pendulum']}" in (tmp_path / "wider.md").read_text()
    main = next(r for r in first["results"] if r["kind"] == "main")
    assert set(main["rollouts"]) >= {"mtm_bc", "mtm_rcbc", "mtm_goal", "mlp_bc", "mlp_rcbc", "mlp_gcbc"}
    assert set(main["id_fd"]) == {"mtm", "mlp_id", "mlp_fd"}
    seen = main["id_fd"]["mtm"]["visible_state_error"]
    assert seen > 0 and f"| {seen:.3g} |" in first["markdown"]   # the MTM's visible-state column
    claims = [t[0] for t in first["targets"]]
    assert any("heteromodal" in c for c in claims) and any("ID/FD" in c for c in claims)
    md = first["markdown"]
    # Reacher: success is the headline, and its scores are also given with doing nothing as the floor
    assert "### Reacher: success (the headline) and a score whose floor is doing nothing" in md
    assert "| expert (success) | " in md and "| expert (score) | " in md
    assert main["rollouts"]["mtm_bc"]["score_mean"] is not None and "| spread |" in md
    assert "## Targets" in md and "MTM training masks auto, id, fd, rcbc" in md and "| reacher | expert |" in md

    job = tmp_path / "jobs" / "main_reacher_expert.json"
    stamp = job.stat().st_mtime_ns
    other = "<!-- representations:begin -->\n## Another script's section\n<!-- representations:end -->"
    (tmp_path / "RESULTS.md").write_text(md + "\n" + other + "\n")
    second = _run(tmp_path)                         # same config: the job result is reused
    assert job.stat().st_mtime_ns == stamp
    assert second["markdown"].count(other) == 1      # another script's marked section is kept, once
    again = _run(tmp_path, "--masks", "auto", "--steps", "25", "--only", "reacher:expert")  # another config: rerun
    assert job.stat().st_mtime_ns != stamp
    assert json.loads(job.read_text())["config_digest"] != main["config_digest"]
    assert again["config"]["masks"] == ["auto"] and "MTM training masks auto (" in again["markdown"]
    assert again["config"]["steps"] == 25 and "25 gradient steps" in again["markdown"]
    assert "Generated by `python benchmarks/capabilities.py --config smoke " in again["markdown"]
    assert "--steps 25 --only reacher:expert`" in again["markdown"]
    assert "Not run in this invocation." in md_het(again["markdown"])   # no empty heteromodal table


def test_self_label_and_draws_options_reach_the_heteromodal_model(tmp_path: Path) -> None:
    report = _run(tmp_path, "--self-label", "0", "--draws", "3", "--only", "hetero:reacher")
    assert report["config"]["hetero_self_label"] == 0 and report["config"]["hetero_draws"] == [3]
    assert "self-labelled" not in report["markdown"]
    run_dir = tmp_path / "runs" / "hetero_reacher_expert_f0.1_d3"
    assert (run_dir / "mtm_all" / "model.safetensors").exists()
    assert not (run_dir / "mtm_all" / "self_labels.safetensors").exists()   # --self-label 0: plain heteromodal MTM


def test_report_command_line_names_paths_relative_to_the_checkout() -> None:
    inside = str(REPO / "benchmarks" / "results" / "x.md")
    line = capabilities.command_line(["--config", "cpu", "--results", inside, "--json", "/elsewhere/x.json"])
    assert line == "python benchmarks/capabilities.py --config cpu --results benchmarks/results/x.md --json /elsewhere/x.json"


def test_schedule_puts_the_two_model_heteromodal_jobs_first_and_keeps_order_within_a_kind() -> None:
    jobs = [("main", "reacher", "expert", 0), ("main", "hopper", "expert", 0), ("hetero", "reacher", "expert", 0),
            ("main", "reacher", "medium-replay", 0), ("hetero", "hopper", "expert", 1)]
    assert capabilities.schedule(jobs) == [jobs[2], jobs[4], jobs[0], jobs[1], jobs[3]]


def test_id_fd_probe_runs_the_id_fd_part_and_renders_its_section_in_place(tmp_path: Path) -> None:
    from benchmarks import id_fd_probe

    md, js = tmp_path / "RESULTS.md", tmp_path / "probe.json"
    md.write_text("# Results\n\nabove\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    assert id_fd_probe.main(["--config", "smoke", "--only", "reacher:expert", "--out", str(tmp_path / "w"),
                             "--json", str(js), "--results", str(md)]) == 0
    result = json.loads(js.read_text())
    (job,) = result["results"]
    t = job["id_fd"]
    assert job["ratio_mtm_vs_mlp"]["id"] == pytest.approx(t["mtm"]["id_error"] / t["mlp_id"]["id_error"])
    errors = (t["mtm"]["id_error"], t["mtm"]["fd_error"], t["mlp_id"]["id_error"], t["mlp_fd"]["fd_error"])
    assert all(np.isfinite(e) and e > 0 for e in errors)
    text = md.read_text()
    assert text.startswith("# Results\n\nabove") and "<!-- other:begin -->\nkept\n<!-- other:end -->" in text
    section = text.split(id_fd_probe.BEGIN)[1].split(id_fd_probe.END)[0]
    assert "| reacher | expert |" in section and "of 2." in section and "--only reacher:expert" in section
    # --render rewrites the same section from the saved JSON, in place, once
    assert id_fd_probe.main(["--render", str(js), "--results", str(md)]) == 0
    assert md.read_text() == text and md.read_text().count(id_fd_probe.BEGIN) == 1


def test_hetero_mlp_pipeline_labels_state_only_episodes_and_trains_bc_on_all(tmp_path: Path) -> None:
    from benchmarks import hetero_mlp_pipeline
    from mtm_runtime.training.baselines import load_baseline

    js = tmp_path / "pipe.json"
    assert hetero_mlp_pipeline.main(["--config", "smoke", "--tasks", "reacher", "--draws", "0", "--workers", "1",
                                     "--out", str(tmp_path), "--json", str(js)]) == 0
    (r,) = json.loads(js.read_text())["results"]
    assert np.isfinite(r["mlp_id_then_bc"]["score_mean"])
    meta_id = load_baseline(tmp_path / "runs" / "pipeline_reacher_d0" / "mlp_id")[0]
    meta_bc = load_baseline(tmp_path / "runs" / "pipeline_reacher_d0" / "mlp_bc_all")[0]
    assert meta_id["provenance"]["train_episodes"] == r["labelled_train_episodes"] >= 1
    assert meta_bc["provenance"]["train_episodes"] == r["train_episodes"] > r["labelled_train_episodes"]


def test_tiers_option_runs_the_named_tiers_as_a_section_and_refuses_unknown_ones(tmp_path: Path) -> None:
    md, js = tmp_path / "RESULTS.md", tmp_path / "tiers.json"
    md.write_text("# main report\n\nkept as it is\n")
    assert capabilities.main(["--config", "smoke", "--out", str(tmp_path / "w"), "--tiers", "medium",
                              "--section", "--results", str(md), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["config"]["tiers"] == ["medium"]
    assert [(r["task"], r["tier"]) for r in report["results"]] == [("reacher", "medium")]
    assert 0 < report["results"][0]["data_score"]["score_mean"] < 150    # the behaviour data's own score
    assert report["missing"] == []                                       # --section: main jobs only
    text = md.read_text()
    assert text.startswith("# main report\n\nkept as it is\n") and text.count(TIERS_BEGIN) == 1
    section = text.split(TIERS_BEGIN)[1].split(TIERS_END)[0]
    assert f"| reacher | medium | {fmt(report['results'][0]['data_score'])} |" in section
    assert "MTM-RCBC minus MLP-BC" in section and "ID/FD errors" in section
    # rendering the saved run again replaces the section in place
    assert capabilities.main(["--render", str(js), "--section", "--results", str(md)]) == 0
    assert md.read_text() == text
    # a whole-report render keeps the section as a foreign one
    write_report(json.loads(js.read_text()), md)
    assert md.read_text().count(TIERS_BEGIN) == 1
    with pytest.raises(SystemExit) as e:
        capabilities.main(["--config", "smoke", "--tiers", "medium,bogus", "--results", "", "--json", ""])
    assert e.value.code == 2


def test_floor_score_maps_doing_nothing_to_zero_and_the_expert_to_100_and_marks_flat_rows() -> None:
    """The Reacher rescoring is exact at its two anchors, and a row whose methods lie within
    DISCRIMINATES points is marked as not discriminating."""
    from benchmarks.capability_report import floor_score, spread
    from mtm_runtime.sim.tasks import get_task

    ref = get_task("reacher").reference_returns
    as_score = lambda R: 100 * (R - ref["random"]) / (ref["expert"] - ref["random"])  # noqa: E731
    zero = floor_score({"score_mean": as_score(ref["zero"]), "score_std": 1.0}, "reacher")
    expert = floor_score({"score_mean": as_score(ref["expert"]), "score_std": 1.0}, "reacher")
    assert zero is not None and expert is not None
    assert abs(zero["score_mean"]) < 1e-9 and abs(expert["score_mean"] - 100) < 1e-9
    assert expert["score_std"] > 1.0                     # the zero floor sits above random: a wider scale
    row = {"task": "hopper", "rollouts": {m: {"score_mean": v, "score_std": 0.0} for m, v in
                                          (("mtm_bc", 50.0), ("mlp_bc", 52.0), ("mtm_rcbc", 53.9), ("mlp_rcbc", 51.0))}}
    assert spread(row) == "3.9 (not discriminating)"
    row["rollouts"]["mlp_bc"]["score_mean"] = 40.0
    assert spread(row) == "13.9"


def test_reference_columns_and_parity_target_render_from_a_merged_cell(tmp_path: Path, capsys) -> None:
    """A main cell with a reference result (as ``benchmarks/reference_mtm.py`` merges it) gains the
    reference MTM columns and the parity target; a wrong snapshot path is one line and exit 2."""
    from benchmarks import reference_mtm
    from benchmarks.capability_report import main_job_tables, parity_target

    roll = lambda v: {"score_mean": v, "score_std": 1.0, "success_mean": None}  # noqa: E731
    cell = {"kind": "main", "task": "hopper", "tier": "medium-replay", "data_score": {"score_mean": 20.0, "score_std": 5.0},
            "rollouts": {"mtm_bc": roll(40.0), "mlp_bc": roll(30.0), "mtm_rcbc": roll(60.0), "mlp_rcbc": roll(50.0)},
            "id_fd": {"mtm": {"id_error": 0.2, "fd_error": 0.3}, "mlp_id": {"id_error": 0.1}, "mlp_fd": {"fd_error": 0.1}},
            "reference": {"rollouts": {"ref_bc": roll(42.0), "ref_rcbc": roll(70.0)},
                          "id_fd": {"id_error": 0.25, "fd_error": 0.25}}}
    md = "\n".join(main_job_tables([cell], ["hopper"]))
    assert "ref. MTM BC | ref. MTM RCBC |" in md and "| 42.0 ± 1.0 | 70.0 ± 1.0 |" in md
    assert "ref. MTM ID | ref. MTM FD |" in md and "| 0.25 | 0.25 |" in md
    claim, ok, ev = parity_target([cell])
    assert ok is False and "2/4 hold" in ev and "RCBC 60.0 vs 70.0" in ev   # RCBC 60 < 0.9 x 70; FD 0.3 > 1.1 x 0.25
    assert reference_mtm.main(["--reference", str(tmp_path), "--json", "", "--results", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a facebookresearch/mtm snapshot" in err


def test_reference_job_trains_and_scores_the_real_reference_from_a_snapshot(tmp_path: Path) -> None:
    """The optional reference job end to end on the smoke config, with the real reference code
    (github facebookresearch/mtm) from the snapshot that ``MTM_REFERENCE`` names."""
    import os

    from benchmarks import reference_mtm

    root = os.environ.get("MTM_REFERENCE", "")
    if not root:
        pytest.skip("MTM_REFERENCE is not set: no facebookresearch/mtm snapshot to import (the reference job is optional)")
    assert reference_mtm.main(["--reference", root, "--config", "smoke", "--out", str(tmp_path), "--json", "",
                               "--results", "", "--workers", "1"]) == 0
    cell = json.loads((tmp_path / "reference" / "reacher_expert.json").read_text())
    assert set(cell["rollouts"]) == {"ref_bc", "ref_rcbc"} and np.isfinite(cell["rollouts"]["ref_bc"]["score_mean"])
    assert cell["id_fd"]["id_error"] > 0 and cell["train"]["steps"] == 20


def _rcbc_cut_share(swap: bool) -> float:
    """Share of AUTO_MASK samples whose last visible step shows the state and the return but hides
    the action (the RCBC query), drawn in a fresh process (the probe replaces training functions)."""
    import subprocess
    import sys

    code = ("import numpy as np; from mtm_runtime import masks as M; from mtm_runtime.spec import TrajectorySpec\n"
            + ("from benchmarks.parity_probe import swap_ingredient; swap_ingredient('reference_auto_mask')\n" if swap else "")
            + "s = TrajectorySpec.create(4, states=3, actions=2, returns=1)\n"
              "m = M.sample_training_masks(s, 20000, np.random.default_rng(0))\n"
              "last = 3 - np.argmax((m.max(axis=2) > 0)[:, ::-1], axis=1)\n"
              "row = m[np.arange(len(m)), last]\n"
              "print(((row[:, s.index('states')] > 0) & (row[:, s.index('returns')] > 0) & (row[:, s.index('actions')] == 0)).mean())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


def test_parity_probe_swaps_the_named_ingredient_and_scores_the_cell(tmp_path: Path) -> None:
    """benchmarks/parity_probe.py on the smoke config. The reference AUTO_MASK variant draws the
    reference's cut order (states, returns, actions; weights 0.2/0.1/0.7): about half its samples
    end in the RCBC query, against a few percent of ours (order states, actions, returns)."""
    import subprocess
    import sys

    ours, reference = _rcbc_cut_share(False), _rcbc_cut_share(True)
    assert ours < 0.1 and reference > 0.35, (ours, reference)
    js = tmp_path / "probe.json"
    run = subprocess.run([sys.executable, "benchmarks/parity_probe.py", "reacher", "expert", "reference_auto_mask",
                          "--config", "smoke", "--out", str(tmp_path / "w"), "--json", str(js)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(js.read_text())
    assert res["swapped"]["modality_order"] == ["states", "returns", "(goals)", "actions"]
    assert np.isfinite(res["bc"]) and np.isfinite(res["rcbc"])
