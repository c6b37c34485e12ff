"""The capability benchmark's report: the targets of the brief checked against the job results,
and benchmarks/RESULTS.md written from a run's JSON (``capabilities.py --render`` rewrites it
without running a job)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.capability_config import HETERO_LEFT_OUT, ID_FD_WITHIN, REPO, adds_goal
from benchmarks.capability_jobs import torch_threads

def repo_relative(text: str) -> str:
    """``text`` with this checkout's absolute path dropped, so reports read the same from any clone."""
    return text.replace(str(REPO) + "/", "")


def fmt(r: dict[str, Any] | None, key: str = "score") -> str:
    if not r:
        return "—"
    s = f"{r[f'{key}_mean']:.1f} ± {r[f'{key}_std']:.1f}"
    return s


def fmt_g(v: float | None) -> str:
    """3 significant digits, or "—" for a value the job did not record (results older than the field)."""
    return "—" if v is None else f"{v:.3g}"


def fmt_succ(r: dict[str, Any] | None) -> str:
    if not r or r.get("success_mean") is None:
        return "—"
    return f"{100 * r['success_mean']:.0f}% ± {100 * r['success_std']:.0f}"


#: The heteromodal job's policies, in the report's column order; ``mlp_id_then_bc`` is
#: ``train_mlp_pipeline`` (absent from job results older than it: its column then shows "—").
HETERO_MODELS = ("mlp_bc_labelled", "mtm_labelled", "mtm_heteromodal", "mlp_id_then_bc")


def hetero_summary(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Heteromodal results per task, over the draws of labelled episodes: for each model the
    per-draw scores (mean over evaluation seeds) and their mean and std; the per-draw gap
    heteromodal MTM - MLP-BC; labelled training episodes per draw."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in results if r["kind"] == "hetero"), key=lambda r: r.get("draw", 0)):
        t = out.setdefault(r["task"], {"draws": [], "labelled_train_episodes": [], "labelled_episodes": r["labelled_episodes"],
                                       "episodes": r["episodes"], **{m: {"per_draw": [], "success": []} for m in HETERO_MODELS}})
        t["draws"].append(r.get("draw", 0))
        t["labelled_train_episodes"].append(r.get("labelled_train_episodes", r["labelled_episodes"]))
        for m in HETERO_MODELS:
            ro = r["rollouts"].get(m, {})
            t[m]["per_draw"].append(ro.get("score_mean", float("nan")))
            t[m]["success"].append(ro.get("success_mean"))
    for t in out.values():
        for m in HETERO_MODELS:
            t[m]["mean"], t[m]["std"] = float(np.mean(t[m]["per_draw"])), float(np.std(t[m]["per_draw"]))
        t["gap_per_draw"] = [h - b for h, b in zip(t["mtm_heteromodal"]["per_draw"], t["mlp_bc_labelled"]["per_draw"])]
        t["gap"] = t["mtm_heteromodal"]["mean"] - t["mlp_bc_labelled"]["mean"]
        t["pipeline_minus_mtm"] = t["mlp_id_then_bc"]["mean"] - t["mtm_heteromodal"]["mean"]
    return out


def targets(results: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """(claim, holds?, evidence) for each target of the brief."""
    main = {(r["task"], r["tier"]): r for r in results if r["kind"] == "main"}
    het = hetero_summary(results)
    out = []
    for task in ("reacher", "inverted_double_pendulum"):
        r = main.get((task, "expert"))
        if r is None:
            out.append((f"{task} expert: MTM BC and RCBC >= 90", None, "not run"))
            continue
        bc, rc = r["rollouts"]["mtm_bc"]["score_mean"], r["rollouts"]["mtm_rcbc"]["score_mean"]
        out.append((f"{task} expert: MTM BC and RCBC >= 90", bc >= 90 and rc >= 90, f"BC {bc:.1f}, RCBC {rc:.1f}"))
    r = main.get(("reacher", "expert"))
    if r is not None and "mtm_goal" in r["rollouts"]:
        s = r["rollouts"]["mtm_goal"]["success_mean"]
        out.append(("Reacher goal-mode success >= 90%", s >= 0.9, f"{100 * s:.0f}%"))
    else:
        out.append(("Reacher goal-mode success >= 90%", None, "not run"))
    n = sum(t["gap"] >= 15 for t in het.values())
    ev = ", ".join(f"{task} {t['gap']:+.1f} (draws {', '.join(f'{g:+.1f}' for g in t['gap_per_draw'])})"
                   for task, t in het.items())
    out.append(("heteromodal MTM beats MLP-BC (labelled part) by >= 15 on >= 2 tasks (mean over draws)",
                n >= 2 if len(het) >= 2 else (None if n < 2 else True), ev or "not run"))
    wins = [f"{task} {rcbc_gain(r):+.1f}" for (task, tier), r in main.items() if tier == "medium-replay"]
    n = sum(float(w.split()[-1]) >= 20 for w in wins)
    out.append(("medium-replay: MTM-RCBC beats MLP-BC by >= 20 on >= 2 tasks", n >= 2 if len(wins) >= 2 else (None if n < 2 else True),
                ", ".join(wins) or "not run"))
    out.append(id_fd_target(results))
    return out


def rcbc_gain(r: dict[str, Any]) -> float:
    """MTM-RCBC minus MLP-BC on a main job (the suboptimal-data comparison), normalised points."""
    return r["rollouts"]["mtm_rcbc"]["score_mean"] - r["rollouts"]["mlp_bc"]["score_mean"]


def id_fd_target(results: list[dict[str, Any]]) -> tuple[str, bool | None, str]:
    """(claim, holds?, evidence) of the ID/FD target over the main jobs of ``results``."""
    within, ev = [], []
    for r in results:
        if r["kind"] != "main":
            continue
        f = r["id_fd"]
        for k in ("id", "fd"):
            m, b = f["mtm"][f"{k}_error"], f[f"mlp_{k}"][f"{k}_error"]
            within.append(m <= ID_FD_WITHIN * b)
            ratio = f" ({m / b:.1f}x)" if b > 0 else ""
            ev.append(f"{r['task']}/{r['tier']} {k.upper()} {m:.3g} vs {b:.3g}{ratio}")
    return ("ID/FD errors within 10% of the MLPs (MTM <= 1.1 x MLP)", all(within) if within else None,
            f"{sum(within)}/{len(within)} hold: " + "; ".join(ev))


def verdict(ok: bool | None) -> str:
    """A target's "holds" cell: yes, no, or not measured (None)."""
    return "yes" if ok else ("no" if ok is False else "not measured")


def main_job_tables(res: list[dict[str, Any]], tasks: Sequence[str], level: str = "##") -> list[str]:
    """The main jobs' two tables, rollout scores (with the Reacher success line and the
    do-nothing floors) and held-out ID/FD errors, as markdown lines under ``level`` headings."""
    L = [f"{level} BC, RCBC and goal reaching (normalised score)", "",
          "Data: the dataset's own score (its behaviour policy), mean ± std over its episodes.", "",
          "| task | tier | data | MTM BC | MLP-BC | MTM RCBC | MLP-RCBC | MTM goal | MLP-GCBC | MTM goal success | MLP-GCBC success |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res:
        if r["kind"] != "main":
            continue
        ro = r["rollouts"]
        L.append(f"| {r['task']} | {r['tier']} | {fmt(r.get('data_score'))} | {fmt(ro['mtm_bc'])} | "
                 f"{fmt(ro['mlp_bc'])} | {fmt(ro['mtm_rcbc'])} | "
                 f"{fmt(ro['mlp_rcbc'])} | {fmt(ro.get('mtm_goal'))} | {fmt(ro.get('mlp_gcbc'))} | "
                 f"{fmt_succ(ro.get('mtm_goal'))} | {fmt_succ(ro.get('mlp_gcbc'))} |")
    L += ["", "Reacher success (fingertip within 2 cm at the end) in BC mode: " + ", ".join(
        f"{r['tier']} MTM {fmt_succ(r['rollouts']['mtm_bc'])} / MLP {fmt_succ(r['rollouts']['mlp_bc'])}"
        for r in res if r["kind"] == "main" and r["task"] == "reacher"), "",
          do_nothing_line(tasks), "",
          f"{level} Inverse and forward dynamics (held-out, normalised error; lower is better)", "",
          "error = mean ||pred - y||² / mean ||y - y_prev||² in normalised units (see training/evaluate.py). "
          "MTM visible s: under the FD mask, the error of the MTM's output at the state it is shown (s_{T-2}), "
          "in FD units: how precisely it reproduces a state it sees.", "",
          "| task | tier | MTM ID | MLP-ID | MTM FD | MLP-FD | MTM visible s |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    # 3 significant digits: IDP errors are ~1e-4, which a fixed 3 decimals would print as 0.000
    for r in res:
        if r["kind"] == "main":
            f = r["id_fd"]
            L.append(f"| {r['task']} | {r['tier']} | {f['mtm']['id_error']:.3g} | {f['mlp_id']['id_error']:.3g} | "
                     f"{f['mtm']['fd_error']:.3g} | {f['mlp_fd']['fd_error']:.3g} | {fmt_g(f['mtm'].get('visible_state_error'))} |")
    return L


def do_nothing_floors(tasks: Sequence[str]) -> dict[str, str]:
    """Per task, the normalised score of the zero action on the reference seeds
    (``sim/reference_returns.json``), with its success rate where the task has one."""
    from mtm_runtime.sim.tasks import get_task, load_reference_returns

    table = load_reference_returns()
    out = {}
    for name in tasks:
        ref = table.get(name, {})
        if "zero" in ref:
            succ = f" (success {ref['zero_success_rate']:.0%})" if "zero_success_rate" in ref else ""
            out[name] = f"{get_task(name).normalised_score(ref['zero']):.1f}{succ}"
    return out


def do_nothing_line(tasks: Sequence[str]) -> str:
    """The do-nothing floors as one sentence for the report."""
    parts = [f"{name} {floor}" for name, floor in do_nothing_floors(tasks).items()]
    if not parts:
        return ""
    return ("Do-nothing floor (zero action on the reference seeds, normalised): " + ", ".join(parts)
            + ". The random policy's Reacher return is mostly control cost, so there a score near 100 "
              "says little; the success rate is the informative number.")


def run_header(report: dict[str, Any]) -> list[str]:
    """Who generated the report, on what, and the config in one sentence (markdown lines)."""
    res = report["results"]
    command = repo_relative(report.get("command") or "") or f"python benchmarks/capabilities.py --config {report['config_name']}"
    return [f"Generated by `{command}` on "
            f"{report['created']} — do not edit by hand. Machine: {report['machine'].get('cpu')} "
            f"({report['machine'].get('cores')} cores), torch {report['machine'].get('torch')}.", "",
            f"Config: preset `{report['config']['preset']}`, {report['config']['steps']} gradient steps at batch "
            f"{report['config']['batch_size']} for every model (MTM and MLPs), one training run per model (seed 0); "
            f"MTM training masks {', '.join(report['config']['masks'])} (one drawn per sample"
            + ("; plus goal on goal tasks" if adds_goal(tuple(report["config"]["masks"])) else "")
            + "; see MTM_MASKS in benchmarks/capability_config.py for why not AUTO_MASK alone); "
            + (f"heteromodal MTM self-labelled (its own inverse dynamics fill the missing actions) at "
               f"{report['config']['hetero_self_label']:g} of its steps; " if report["config"].get("hetero_self_label") else "")
            + f"evaluation: {len(report['config']['seeds'])} seeds x {report['config']['eval_episodes']} episodes; "
            "scores are D4RL-normalised (100 = scripted expert, 0 = uniform random), mean ± std over evaluation seeds. "
            f"Wall time of this invocation {report['wall_s'] / 60:.1f} min; sum of the job wall times "
            f"{sum(r.get('wall_s', 0) for r in res) / 60:.1f} min ({report['config']['workers']} jobs in parallel; "
            "jobs cached from an earlier invocation of the same config are reused).", ""]


def write_report(report: dict[str, Any], path_md: Path) -> None:
    res = report["results"]
    L = ["# Capability benchmark results", "", *run_header(report)]
    if report.get("missing"):
        L += [f"**Not run / missing jobs:** {', '.join(report['missing'])}", ""]
    L += main_job_tables(res, report["config"]["tasks"])
    het = hetero_summary(res)
    L += ["", "## Heteromodal (expert tier, a few action-labelled episodes + state-only rest; BC score)", "",
          "Each draw labels other episodes of the same rollouts (label seeds "
          f"{', '.join(str(d) for d in report['config'].get('hetero_draws', (0,)))}). Scores: mean ± std over the "
          "draws of each draw's mean over evaluation seeds; the per-draw scores follow in brackets. Labelled "
          "episodes: in the training split, per draw (every model trains on exactly these) / in the file / "
          "all episodes. The heteromodal MTM also trains on the state-only rest"
          + (", and labels it with its own inverse dynamics part way (see Config above)"
             if report["config"].get("hetero_self_label") else "")
          + ". MLP-ID -> MLP-BC: the same use of the state-only rest without MTM (an MLP-ID trained on the labelled "
          "episodes labels the rest, an MLP-BC trains on all; `train_mlp_pipeline`): the baseline the "
          "heteromodal MTM has to beat to be worth it, beyond the brief's MLP-BC on the labelled part.", ""]
    left_out = [f"{t}: {HETERO_LEFT_OUT.get(t, 'not in this config')}" for t in report["config"]["tasks"]
                if t not in report["config"].get("hetero_tasks", report["config"]["tasks"])]
    if left_out:
        L += ["Left out of this config's heteromodal experiment: " + "; ".join(left_out) + ".", ""]
    L += ["| task | labelled episodes | MLP-BC (labelled) | MTM (labelled) | MTM heteromodal (all) | gap het. - MLP per draw "
          "| MLP-ID -> MLP-BC (all) |",
          "| --- | --- | --- | --- | --- | --- | --- |"] if het else ["Not run in this invocation."]

    def per_draw(m: dict[str, Any]) -> str:
        if not np.isfinite(m["mean"]):
            return "—"
        return f"{m['mean']:.1f} ± {m['std']:.1f} ({', '.join(f'{v:.1f}' for v in m['per_draw'])})"

    for task, t in het.items():
        L.append(f"| {task} | {', '.join(map(str, t['labelled_train_episodes']))} / {t['labelled_episodes']} / "
                 f"{t['episodes']} | {per_draw(t['mlp_bc_labelled'])} | {per_draw(t['mtm_labelled'])} | "
                 f"{per_draw(t['mtm_heteromodal'])} | {', '.join(f'{g:+.1f}' for g in t['gap_per_draw'])} | "
                 f"{per_draw(t['mlp_id_then_bc'])} |")
    vs = [f"{task} {t['pipeline_minus_mtm']:+.1f}" for task, t in het.items() if np.isfinite(t["pipeline_minus_mtm"])]
    if vs:
        L += ["", "MLP-ID -> MLP-BC minus heteromodal MTM (mean over draws; positive: the two MLPs use the "
                  "state-only episodes better): " + ", ".join(vs)]
    succ = [f"{task}: MLP / MTM lab. / MTM het. / MLP-ID -> MLP-BC " + " / ".join(
        f"{100 * float(np.mean(t[m]['success'])):.0f}%" for m in HETERO_MODELS)
        for task, t in het.items() if all(v is not None for m in HETERO_MODELS for v in t[m]["success"])]
    if succ:
        L += ["", "Success rate in the heteromodal runs (mean over draws): " + "; ".join(succ)]
    floors = do_nothing_floors(list(het))
    if floors:
        L += ["", "Do-nothing floor on these tasks: " + ", ".join(f"{t} {f}" for t, f in floors.items())
              + ". A score near or under it means the policy does little better than standing still, "
                "whatever the gap says; on Reacher read the success rates."]
    tp = report["throughput"]
    L += ["", "## Training throughput (this CPU, batch 256, one process)", "",
          f"paper preset {tp['paper']:.0f} samples/s (reference design figure ~320 samples/s on these machines); "
          f"embedded preset {tp['embedded']:.0f} samples/s (torch {tp.get('torch_threads', torch_threads())} threads; load average "
          f"{report['load_average_at_end'][0]:.1f} when measured: the machine is shared).", "", "## Targets", "",
          "| target | holds | evidence |", "| --- | --- | --- |"]
    for claim, ok, ev in report["targets"]:
        L.append(f"| {claim} | {verdict(ok)} | {ev} |")
    path_md.write_text("\n".join(L) + "\n" + foreign_sections(path_md))


def foreign_sections(path_md: Path) -> str:
    """The sections other scripts keep in the same file between ``<!-- NAME:begin -->`` and
    ``<!-- NAME:end -->`` markers (``benchmarks/representations.py``), to be carried over verbatim."""
    import re

    text = path_md.read_text() if path_md.exists() else ""
    found = re.finditer(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", text, flags=re.DOTALL)
    return "".join("\n" + m.group(0) + "\n" for m in found)


#: Markers of the section that a run of other dataset tiers keeps in RESULTS.md (``--section``).
TIERS_BEGIN, TIERS_END = "<!-- other_tiers:begin -->", "<!-- other_tiers:end -->"


def tier_section(report: dict[str, Any]) -> list[str]:
    """A run of other dataset tiers (``capabilities.py --tiers ... --section``) as RESULTS.md
    lines between ``TIERS_BEGIN`` and ``TIERS_END``: its header, the main-job tables, MTM-RCBC
    minus MLP-BC per cell (the suboptimal-data comparison) and the ID/FD target on its cells."""
    res = report["results"]
    L = [f"## Other dataset tiers: {', '.join(report['config']['tiers'])} (main jobs only)", "", *run_header(report),
         *main_job_tables(res, report["config"]["tasks"], level="###"), ""]
    gaps = [f"{r['task']}/{r['tier']} {rcbc_gain(r):+.1f}" for r in res if r["kind"] == "main"]
    claim, ok, ev = id_fd_target(res)
    return L + ["MTM-RCBC minus MLP-BC (the suboptimal-data comparison of the medium-replay target, on these tiers): "
                + ", ".join(gaps), "", f"{claim}: {verdict(ok)}; {ev}"]
