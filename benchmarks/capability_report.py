"""The capability benchmark's report: the targets of the brief checked against the job results,
and benchmarks/RESULTS.md written from a run's JSON (``capabilities.py --render`` rewrites it
without running a job)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.capability_config import DISCRIMINATES, HETERO_LEFT_OUT, ID_FD_WITHIN, LOCOMOTION, REPO, adds_goal
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


def hetero_key(r: dict[str, Any]) -> str:
    """A heteromodal row's name: ``task@fraction`` (``hopper@1%``)."""
    return f"{r['task']}@{100 * float(r.get('action_fraction', 0.01)):g}%"


def hetero_summary(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Heteromodal results per task and labelled fraction (``hetero_key``), over the draws of
    labelled episodes: for each model the per-draw scores (mean over evaluation seeds) and their
    mean and std; the per-draw gap heteromodal MTM - MLP-BC; labelled training episodes per draw."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in results if r["kind"] == "hetero"), key=lambda r: r.get("draw", 0)):
        t = out.setdefault(hetero_key(r), {"task": r["task"], "draws": [], "labelled_train_episodes": [],
                                           "labelled_episodes": r["labelled_episodes"],
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


def count_target(claim: str, hits: list[bool], ev: list[str], need: int = 2) -> tuple[str, bool | None, str]:
    """A "on at least ``need`` tasks" target: holds, fails, or (too few cells run) not measured."""
    ok: bool | None = sum(hits) >= need if len(hits) >= need else None
    return claim, ok, ", ".join(ev) or "not run"


def targets(results: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """(claim, holds?, evidence) for each target of the brief and of issue 23."""
    main = {(r["task"], r["tier"]): r for r in results if r["kind"] == "main"}
    het = hetero_summary(results)
    out = []
    r = main.get(("reacher", "expert"))
    if r is None:
        out.append(("reacher expert: MTM BC and RCBC success >= 90%", None, "not run"))
        out.append(("Reacher goal-mode success >= 90%", None, "not run"))
    else:
        bc, rc = r["rollouts"]["mtm_bc"]["success_mean"], r["rollouts"]["mtm_rcbc"]["success_mean"]
        out.append(("reacher expert: MTM BC and RCBC success >= 90%", bc >= 0.9 and rc >= 0.9,
                    f"BC {100 * bc:.0f}%, RCBC {100 * rc:.0f}%"))
        s = r["rollouts"].get("mtm_goal", {}).get("success_mean")
        out.append(("Reacher goal-mode success >= 90%", None if s is None else s >= 0.9,
                    "not run" if s is None else f"{100 * s:.0f}%"))
    rows = [(t, main[(t, "medium-replay")]) for t in LOCOMOTION if (t, "medium-replay") in main]
    out.append(count_target("spread: on medium-replay, MLP-BC <= 70 on >= 2 locomotion tasks",
                            [r["rollouts"]["mlp_bc"]["score_mean"] <= 70 for _, r in rows],
                            [f"{t} {r['rollouts']['mlp_bc']['score_mean']:.1f}" for t, r in rows]))
    out.append(count_target("medium-replay: MTM-RCBC >= MLP-BC + 10 on >= 2 locomotion tasks",
                            [rcbc_gain(r) >= 10 for _, r in rows], [f"{t} {rcbc_gain(r):+.1f}" for t, r in rows]))
    med = [(t, main[(t, "medium")]) for t in LOCOMOTION if (t, "medium") in main]
    gains = [(t, r["rollouts"]["mtm_bc"]["score_mean"] - r["rollouts"]["mlp_bc"]["score_mean"]) for t, r in med]
    out.append(("medium: MTM-BC >= MLP-BC on every locomotion task",
                all(g >= 0 for _, g in gains) if gains else None, ", ".join(f"{t} {g:+.1f}" for t, g in gains) or "not run"))
    loco = {k: t for k, t in het.items() if t["task"] in LOCOMOTION}
    for pct in sorted({k.split("@")[1] for k in het}, key=lambda p: float(p.rstrip("%"))):
        cells = {k: t for k, t in loco.items() if k.endswith("@" + pct)}
        out.append(count_target(f"heteromodal ({pct} labelled): MTM beats MLP-BC (labelled part) and MLP-ID -> MLP-BC "
                                "on >= 2 locomotion tasks",
                                [t["gap"] > 0 and t["pipeline_minus_mtm"] < 0 for t in cells.values()],
                                [f"{t['task']} {t['gap']:+.1f} / {-t['pipeline_minus_mtm']:+.1f}" for t in cells.values()]))
    out.append(parity_target(results))
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


ROLLOUT_METHODS = ("mtm_bc", "mlp_bc", "mtm_rcbc", "mlp_rcbc", "mtm_goal", "mlp_gcbc")


def floor_score(r: dict[str, Any] | None, task: str) -> dict[str, float] | None:
    """A rollout result rescored with the do-nothing policy as its floor (0 = zero action, 100 =
    expert) instead of the random policy: on Reacher the random policy's return is mostly control
    cost, so its usual score puts doing nothing at ~90. Linear in the score, so mean and std map."""
    from mtm_runtime.sim.tasks import get_task

    if not r or r.get("score_mean") is None:
        return None
    ref = get_task(task).reference_returns
    lo, hi, zero = ref["random"], ref["expert"], ref["zero"]
    if not np.isfinite(zero) or hi == zero:
        return None
    k = (hi - lo) / (hi - zero)
    return {"score_mean": (r["score_mean"] * (hi - lo) / 100 + lo - zero) * 100 / (hi - zero), "score_std": r["score_std"] * k}


def has_reference(res: list[dict[str, Any]]) -> bool:
    """Whether the reference MTM ran on any main cell (``benchmarks/reference_mtm.py``)."""
    return any("reference" in r for r in res if r["kind"] == "main")


def parity_target(results: list[dict[str, Any]]) -> tuple[str, bool | None, str]:
    """Our MTM against the reference MTM on the cells where both ran: BC and RCBC scores at least
    90% of the reference's, ID and FD errors at most 110% of them."""
    hold, ev = [], []
    for r in results:
        ref = r.get("reference") if r["kind"] == "main" else None
        if not ref:
            continue
        for mode in ("bc", "rcbc"):
            ours, theirs = r["rollouts"][f"mtm_{mode}"]["score_mean"], ref["rollouts"][f"ref_{mode}"]["score_mean"]
            hold.append(ours >= theirs - 0.1 * abs(theirs))
            ev.append(f"{r['task']}/{r['tier']} {mode.upper()} {ours:.1f} vs {theirs:.1f}")
        for k in ("id", "fd"):
            ours, theirs = r["id_fd"]["mtm"][f"{k}_error"], ref["id_fd"][f"{k}_error"]
            hold.append(ours <= 1.1 * theirs)
            ev.append(f"{r['task']}/{r['tier']} {k.upper()} {ours:.3g} vs {theirs:.3g}")
    return ("parity: our MTM's BC/RCBC within 10% of the reference MTM's (or better), ID/FD errors <= 1.1 x",
            all(hold) if hold else None, (f"{sum(hold)}/{len(hold)} hold: " + "; ".join(ev)) if ev else "reference not run")


def cell_scores(r: dict[str, Any]) -> dict[str, float]:
    """A main job's method -> score used for its spread: the do-nothing-floor score on Reacher, the
    D4RL-normalised score elsewhere."""
    out = {}
    rollouts = {**r["rollouts"], **r.get("reference", {}).get("rollouts", {})}
    for m in ROLLOUT_METHODS + ("ref_bc", "ref_rcbc"):
        ro = rollouts.get(m)
        if not ro or ro.get("score_mean") is None:
            continue
        v = floor_score(ro, r["task"]) if r["task"] == "reacher" else ro
        if v is not None:
            out[m] = v["score_mean"]
    return out


def spread(r: dict[str, Any]) -> str:
    """Best minus worst method of a cell, marked when under ``DISCRIMINATES`` points."""
    v = list(cell_scores(r).values())
    if len(v) < 2:
        return "—"
    d = max(v) - min(v)
    return f"{d:.1f}" + (" (not discriminating)" if d < DISCRIMINATES else "")


def main_job_tables(res: list[dict[str, Any]], tasks: Sequence[str], level: str = "##") -> list[str]:
    """The main jobs' tables (rollout scores with each cell's spread, Reacher's success rates and
    do-nothing-floor scores, the do-nothing floors, held-out ID/FD errors) as markdown lines under
    ``level`` headings."""
    L = [f"{level} BC, RCBC and goal reaching (normalised score)", "",
         "Data: the dataset's own score (its behaviour policy), mean ± std over its episodes. Spread: the best "
         f"minus the worst method of the row; under {DISCRIMINATES:g} points the row cannot tell a good implementation "
         "from a poor one and is marked. Locomotion tiers come from an ARS learning run (training/run_tiers.py): "
         "expert = its best iterate, medium = its first iterate a third of the way from the random policy's return "
         "to the expert's, medium-replay = every rollout it made up to that iterate.", "",
         "| task | tier | data | MTM BC | MLP-BC | MTM RCBC | MLP-RCBC | MTM goal | MLP-GCBC |"
         + (" ref. MTM BC | ref. MTM RCBC |" if has_reference(res) else "") + " spread |",
         "| --- " * (10 + 2 * has_reference(res)) + "|"]
    for r in res:
        if r["kind"] != "main":
            continue
        ro, ref = r["rollouts"], r.get("reference", {}).get("rollouts", {})
        L.append(f"| {r['task']} | {r['tier']} | {fmt(r.get('data_score'))} | {fmt(ro['mtm_bc'])} | "
                 f"{fmt(ro['mlp_bc'])} | {fmt(ro['mtm_rcbc'])} | "
                 f"{fmt(ro['mlp_rcbc'])} | {fmt(ro.get('mtm_goal'))} | {fmt(ro.get('mlp_gcbc'))} | "
                 + (f"{fmt(ref.get('ref_bc'))} | {fmt(ref.get('ref_rcbc'))} | " if has_reference(res) else "")
                 + f"{spread(r)} |")
    reacher = [r for r in res if r["kind"] == "main" and r["task"] == "reacher"]
    if reacher:
        L += ["", f"{level}# Reacher: success (the headline) and a score whose floor is doing nothing", "",
              "Success: fingertip within 2 cm of the target at the end of the episode. Score: 0 = the zero action, "
              "100 = the scripted expert, on the same rollouts as above (the table's score puts doing nothing at ~90).", "",
              "| tier | MTM BC | MLP-BC | MTM RCBC | MLP-RCBC | MTM goal | MLP-GCBC |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in reacher:
            ro = r["rollouts"]
            L.append(f"| {r['tier']} (success) | " + " | ".join(fmt_succ(ro.get(m)) for m in ROLLOUT_METHODS) + " |")
            L.append(f"| {r['tier']} (score) | " + " | ".join(fmt(floor_score(ro.get(m), "reacher")) for m in ROLLOUT_METHODS)
                     + " |")
    L += ["", do_nothing_line(tasks), "",
          f"{level} Inverse and forward dynamics (held-out, normalised error; lower is better)", "",
          "error = mean ||pred - y||² / mean ||y - y_prev||² in normalised units (see training/evaluate.py). "
          "MTM visible s: under the FD mask, the error of the MTM's output at the state it is shown (s_{T-2}), "
          "in FD units: how precisely it reproduces a state it sees.", "",
          "| task | tier | MTM ID | MLP-ID | MTM FD | MLP-FD | MTM visible s |"
          + (" ref. MTM ID | ref. MTM FD |" if has_reference(res) else ""),
          "| --- " * (7 + 2 * has_reference(res)) + "|"]
    # 3 significant digits: IDP errors are ~1e-4, which a fixed 3 decimals would print as 0.000
    for r in res:
        if r["kind"] == "main":
            f, ref = r["id_fd"], r.get("reference", {}).get("id_fd", {})
            L.append(f"| {r['task']} | {r['tier']} | {f['mtm']['id_error']:.3g} | {f['mlp_id']['id_error']:.3g} | "
                     f"{f['mtm']['fd_error']:.3g} | {f['mlp_fd']['fd_error']:.3g} | {fmt_g(f['mtm'].get('visible_state_error'))} |"
                     + (f" {fmt_g(ref.get('id_error'))} | {fmt_g(ref.get('fd_error'))} |" if has_reference(res) else ""))
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
            "scores are D4RL-normalised (100 = the task's expert: scripted, or on locomotion the best iterate of its "
            "ARS learning run; 0 = uniform random), mean ± std over evaluation seeds. "
            f"Wall time of this invocation {report['wall_s'] / 60:.1f} min; sum of the job wall times "
            f"{sum(r.get('wall_s', 0) for r in res) / 60:.1f} min ({report['config']['workers']} jobs in parallel; "
            "jobs cached from an earlier invocation of the same config are reused)."
            + (f" Reference MTM columns: `{repo_relative(report['reference_command'])}` (github facebookresearch/mtm "
               "imported from that snapshot; same files, split, budget and size; benchmarks/reference_mtm.py)."
               if report.get("reference_command") else ""), ""]


def write_report(report: dict[str, Any], path_md: Path) -> None:
    res = report["results"]
    L = ["# Capability benchmark results", "", *run_header(report)]
    if report.get("missing"):
        L += [f"**Not run / missing jobs:** {', '.join(report['missing'])}", ""]
    L += main_job_tables(res, report["config"]["tasks"])
    het = hetero_summary(res)
    L += ["", "## Heteromodal (expert tier, a few action-labelled episodes + state-only rest; BC score)", "",
          "Rows: task@fraction of episodes that keep their actions. ",
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
    left_out = [f"{t}: {HETERO_LEFT_OUT.get(t, 'not in this config')}"
                for t in sorted(set(report["config"]["tasks"]) | set(HETERO_LEFT_OUT))
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
    floors = do_nothing_floors(sorted({t["task"] for t in het.values()}))
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
