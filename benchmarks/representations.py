"""MTM as a representation: offline TD3+BC on raw states vs frozen vs fine-tuned MTM features.

    nice -n 15 python -m benchmarks.representations --config cpu            # ~35 min, 2 busy shared cores
    python -m benchmarks.representations --config gpu --device cuda         # the larger setting

    # what produced benchmarks/RESULTS.md here: one process per task (and per variant group),
    # each writing representations_<task><tag>.json, then one merging report
    nice -n 15 python -m benchmarks.representations --config cpu --tasks reacher --partial   # (and idp)
    nice -n 15 python -m benchmarks.representations --config cpu-long --variants raw,frozen \
        --tasks reacher --partial --out benchmarks/results/long                            # (and idp)
    nice -n 15 python -m benchmarks.representations --config cpu-long --variants finetune --tag=-finetune \
        --tasks reacher --partial --out benchmarks/results/long                            # (and idp)
    python -m benchmarks.representations --report --out benchmarks/results/long --no-markdown
    python -m benchmarks.representations --report --extra benchmarks/results/long

For each task (default reacher, inverted_double_pendulum):
 1. a ``medium`` dataset from the scripted expert (``mtm_runtime.training.datasets.collect``), kept in ``--work``;
 2. an MTM pretrained on it with the project's trainer (``mtm_runtime.training.train.run``, ``embedded``
    preset, AUTO_MASK, ``pretrain_steps``);
 3. offline TD3+BC (``mtm_runtime.training.offline_rl``) with the task's *relabelled* reward
    (``DEFAULT_RELABEL``) on three observation variants x ``seeds``:
    ``raw`` (env observation), ``frozen`` (MTM states-token feature at T-1, precomputed),
    ``finetune`` (same feature, encoder trained by the critic loss);
 4. learning curves (seed mean +- std) of the D4RL-normalised score of the env's own reward and
    of the relabelled return, vs gradient steps: ``representations.png`` + ``representations.json``;
 5. a summary table written between ``<!-- representations:begin -->`` and
    ``<!-- representations:end -->`` in ``benchmarks/RESULTS.md`` (the rest of that file belongs
    to another script).

Summary numbers per (task, variant), from the seed-mean curve:
 * ``final``: the value at the last evaluation (mean +- std over seeds);
 * ``steps_to_80``: the first evaluated step at which the curve has covered 80 % of the way from
   its step-0 value (untrained actor) to ``final`` (so tasks whose untrained actor already scores
   high, like Reacher under the D4RL normalisation, are not trivially "at 80 %" at step 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- representations:begin -->", "<!-- representations:end -->"
#: hand-written reading of the numbers (kept next to them; included in the section if present)
NOTE = ROOT / "benchmarks" / "results" / "representations_note.md"
VARIANTS = ("raw", "frozen", "finetune")

#: name -> settings. cpu: fits tens of minutes (niced) on the 2-core dev VM; gpu: closer to the
#: paper's TD3+BC setting (batch 256, 256 hidden units, many more steps and evaluations).
CONFIGS: dict[str, dict[str, Any]] = {
    "cpu": {"episodes": {"reacher": 200, "inverted_double_pendulum": 60}, "pretrain_steps": 2000,
            "pretrain_batch": 128, "steps": 1000, "eval_every": 200, "eval_episodes": 5, "batch_size": 128,
            "hidden": 256, "seeds": 3},
    # 5x the steps of "cpu"; fine-tuning costs ~4x a raw step on CPU, so run it in its own process
    "cpu-long": {"episodes": {"reacher": 200, "inverted_double_pendulum": 60}, "pretrain_steps": 2000,
                 "pretrain_batch": 128, "steps": 5000, "eval_every": 500, "eval_episodes": 5, "batch_size": 128,
                 "hidden": 256, "seeds": 3},
    "gpu": {"episodes": {"reacher": 1000, "inverted_double_pendulum": 300}, "pretrain_steps": 20000,
            "pretrain_batch": 256,
            "steps": 100000, "eval_every": 5000, "eval_episodes": 10, "batch_size": 256, "hidden": 256,
            "seeds": 5},
}


def ensure_dataset(work: Path, task: str, episodes: int) -> Path:
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.datasets import collect, write_hdf5

    path = work / f"{task}_medium_{episodes}.hdf5"
    if not path.exists():
        t = get_task(task)
        write_hdf5(path, collect(t, "medium", episodes, seed=0), t, "medium", 0)
    return path


def ensure_mtm(work: Path, task: str, data: Path, steps: int, batch: int, device: str) -> Path:
    """Pretrain (once) with mtm_runtime.training.train; returns the checkpoint directory."""
    from mtm_runtime.training.pipeline import PRESET_LR
    from mtm_runtime.training.train import run
    from mtm_runtime.training.train_args import Args

    out = work / f"mtm_{task}_{steps}x{batch}"
    if not (out / "mtm.json").exists():
        run(Args(data=str(data), out=str(out), preset="embedded", steps=steps, batch_size=batch,
                 lr=PRESET_LR["embedded"], val_every=0, ckpt_every=0, progress=False, plot=False,
                 threads=1, seed=0, device=device))
    return out


def summarise(curves: list[list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Seed-mean curve of ``key``, final (mean/std), steps to 80 % of the step-0 -> final gain."""
    steps = [r["step"] for r in curves[0]]
    vals = np.array([[r[key] for r in c] for c in curves])  # [seeds, evals]
    mean, std = vals.mean(axis=0), vals.std(axis=0)
    start, final = float(mean[0]), float(mean[-1])
    target = start + 0.8 * (final - start)
    if final > start:
        hit = next(s for s, v in zip(steps, mean) if v >= target)
    else:
        hit = None  # no improvement over the untrained actor
    return {"steps": steps, "mean": mean.tolist(), "std": std.tolist(), "start": start, "final": final,
            "mean_over_evals": float(mean[1:].mean()) if len(mean) > 1 else final,  # excludes step 0
            "final_std": float(vals[:, -1].std()), "steps_to_80": hit}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        for i, (key, label) in enumerate((("score", "D4RL-normalised score (env reward)"),
                                           ("new_return", "return under the relabelled reward"))):
            ax = axes[i, j]
            for v in VARIANTS:
                if v not in result["tasks"][task]:
                    continue
                s = result["tasks"][task][v][key]
                m, sd = np.array(s["mean"]), np.array(s["std"])
                ax.plot(s["steps"], m, label=v)
                ax.fill_between(s["steps"], m - sd, m + sd, alpha=0.2)
            ax.set_title(f"{task}: {label}", fontsize=9)
            ax.set_xlabel("TD3+BC gradient steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"raw vs MTM features ({result['config_name']}, {result['seeds']} seeds, mean +- std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _first_reach(curve: dict[str, Any], level: float) -> int | None:
    return next((st for st, m in zip(curve["steps"], curve["mean"]) if m >= level), None)


def comparisons(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (task, metric, feature variant): the first evaluated step at which the variant's
    seed-mean curve reaches raw's final value, against the step at which raw itself first does."""
    out = []
    for task, vs in result["tasks"].items():
        if "raw" not in vs:
            continue
        for key in ("score", "new_return"):
            r = vs["raw"][key]
            raw_at = _first_reach(r, r["final"])
            for v in ("frozen", "finetune"):
                if v in vs:
                    f = vs[v][key]
                    at = _first_reach(f, r["final"])
                    out.append({"task": task, "metric": key, "variant": v, "final": f["final"], "raw_final": r["final"],
                                "steps_to_raw_final": at, "raw_steps_to_raw_final": raw_at,
                                "faster": at is not None and raw_at is not None and at < raw_at})
    return out


def verdict(result: dict[str, Any]) -> list[str]:
    """Plain statements, one per comparison."""
    lines = []
    for c in comparisons(result):
        frac = (f" = {c['steps_to_raw_final'] / c['raw_steps_to_raw_final']:.2f} of raw's steps"
                if c["steps_to_raw_final"] is not None and c["raw_steps_to_raw_final"] else "")
        lines.append(f"{c['task']} / {c['metric']}: {c['variant']} final {c['final']:.1f} vs raw {c['raw_final']:.1f}; "
                     f"reaches raw's final value at step {c['steps_to_raw_final'] if c['steps_to_raw_final'] is not None else 'never'}"
                     f" (raw: step {c['raw_steps_to_raw_final']}){frac}")
    return lines


def overall(result: dict[str, Any]) -> str:
    """One sentence per metric: which feature variants reached raw's final value in fewer steps."""
    parts = []
    for key, name in (("score", "D4RL score"), ("new_return", "relabelled return")):
        cs = [c for c in comparisons(result) if c["metric"] == key]
        yes = [f"{c['task']}/{c['variant']}" for c in cs if c["faster"]]
        no = [f"{c['task']}/{c['variant']}" for c in cs if not c["faster"]]
        if not no:
            parts.append(f"{name}: holds for every feature variant")
        elif not yes:
            parts.append(f"{name}: does not hold ({', '.join(no)} did not reach raw's final value in fewer evaluated steps than raw)")
        else:
            parts.append(f"{name}: holds for {', '.join(yes)}; not for {', '.join(no)}")
    return "; ".join(parts) + "."


def table(result: dict[str, Any]) -> list[str]:
    rows = ["| task | variant | final score (D4RL, env reward) | steps to 80 % | score averaged over evaluations | "
            "final relabelled return | steps to 80 % | relabelled return averaged over evaluations |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, vs in result["tasks"].items():
        for v in VARIANTS:
            if v not in vs:
                continue
            s, n = vs[v]["score"], vs[v]["new_return"]
            rows.append(f"| {task} | {v} | {s['final']:.1f} +- {s['final_std']:.1f} | {s['steps_to_80']} | "
                        f"{s.get('mean_over_evals', float('nan')):.1f} | {n['final']:.2f} +- {n['final_std']:.2f} | "
                        f"{n['steps_to_80']} | {n.get('mean_over_evals', float('nan')):.1f} |")
    return rows


def write_markdown(result: dict[str, Any], path: Path | None = None,
                   extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
    """Replace (or append) the section between BEGIN and END; the rest of the file is kept.
    ``extra``: (relative dir, result) of further runs whose tables follow the main one."""
    from benchmarks.common import replace_section

    path = path or RESULTS_MD
    c = result["config"]
    rows = table(result)
    for rel, ex in extra:
        ec = ex["config"]
        rows += ["", f"Longer run, {ex['config_name']} config (`{ex['command']}`, {ex['wall_min']:.0f} min): TD3+BC "
                 f"{ec['steps']} steps, evaluation every {ec['eval_every']} steps, {ex['seeds']} seeds, same datasets "
                 f"and MTMs. Overall: {ex.get('overall', '?')} Curves and data in `{rel}/`.", "", *table(ex)]
    body = ["## Representations (MTM features for offline TD3+BC)", "",
            f"`{result['command']}` ({result['config_name']} config, {result['wall_min']:.0f} min on "
            f"{result['machine'].get('cpu', '?')}, torch threads 1). Datasets: scripted-expert `medium` tier "
            f"({', '.join(f'{k} {v} episodes' for k, v in c['episodes'].items())}); MTM: `embedded` preset "
            f"pretrained {c['pretrain_steps']} steps x batch {c['pretrain_batch']} with `mtm_runtime.training.train`; "
            f"TD3+BC {c['steps']} steps, batch "
            f"{c['batch_size']}, {c['hidden']} hidden units, {result['seeds']} seeds, evaluation every "
            f"{c['eval_every']} steps on {c['eval_episodes']} episodes. Rewards relabelled: "
            + "; ".join(f"{t}: {vs['relabel']}" for t, vs in result["tasks"].items()) + ".",
            "", "Steps to 80 %: first evaluated step where the seed-mean curve covers 80 % of the way "
            "from the untrained actor (step 0) to its final value. Verdict: first evaluated step where a "
            "feature variant's seed-mean curve reaches raw's final value, against the step where raw "
            "itself first does (5-episode evaluations: noisy).", "", *rows, "",
            "Verdict (\"features reach raw-state performance in a fraction of the steps\"):", "",
            *[f"- {line}" for line in result["verdict"]], "", f"- Overall: {result['overall']}", "",
            *([NOTE.read_text().strip(), ""] if NOTE.exists() else []),
            "Curves: `benchmarks/results/representations.png`, data: `benchmarks/results/representations.json`."]
    replace_section(path, BEGIN, END, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.representations", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--tasks", default="reacher,inverted_double_pendulum")
    p.add_argument("--seeds", type=int, default=0, help="0 = the config's")
    p.add_argument("--steps", type=int, default=0, help="TD3+BC steps; 0 = the config's")
    p.add_argument("--pretrain-steps", type=int, default=0, help="MTM pretraining steps; 0 = the config's")
    p.add_argument("--eval-every", type=int, default=0, help="0 = the config's")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="/tmp/mtm_representations", help="datasets and pretrained MTMs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-markdown", action="store_true", help="do not touch benchmarks/RESULTS.md")
    p.add_argument("--partial", action="store_true",
                   help="only write representations_<task>.json (run tasks in separate processes, then --report)")
    p.add_argument("--tag", default="", help="suffix of the partial JSON file name (e.g. -finetune)")
    p.add_argument("--report", action="store_true", help="merge the partial JSON files in --out and report")
    p.add_argument("--extra", action="append", default=[],
                   help="with --report: another run's --out whose table is appended to the section")
    args = p.parse_args(argv)
    if args.report:
        return report(Path(args.out), not args.no_markdown, extra=args.extra)

    import torch

    from benchmarks.common import machine
    from mtm_runtime.training.offline_data import DEFAULT_RELABEL, RELABELS
    from mtm_runtime.training.offline_rl import Config, train

    torch.set_num_threads(1)
    cfg = dict(CONFIGS[args.config])
    for key in ("steps", "pretrain_steps", "eval_every"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    seeds = args.seeds or cfg["seeds"]
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"command": "python -m benchmarks.representations " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "config_name": args.config, "config": cfg, "seeds": seeds, "machine": machine(),
                              "tasks": {}}
    for task in args.tasks.split(","):
        data = ensure_dataset(work, task, cfg["episodes"][task])
        ck = ensure_mtm(work, task, data, cfg["pretrain_steps"], cfg["pretrain_batch"], args.device)
        entry: dict[str, Any] = {"relabel": RELABELS[DEFAULT_RELABEL[task]].description, "dataset": str(data),
                                 "checkpoint": str(ck)}
        for v in args.variants.split(","):
            curves, runs = [], []
            for seed in range(seeds):
                c = Config(data=str(data), representation=v, checkpoint=str(ck), steps=cfg["steps"],
                           batch_size=cfg["batch_size"], hidden=cfg["hidden"], eval_every=cfg["eval_every"],
                           eval_episodes=cfg["eval_episodes"], seed=seed, device=args.device)
                res = train(c, log=lambda s: print(s, flush=True))
                curves.append(res["curve"])
                runs.append({"seed": seed, "train_s": res["train_s"], "curve": res["curve"]})
            entry[v] = {"score": summarise(curves, "score"), "new_return": summarise(curves, "new_return"),
                        "runs": runs, "config": dataclasses.asdict(c)}
            print(json.dumps({"task": task, "variant": v,
                              "score_final": entry[v]["score"]["final"], "score_steps_to_80": entry[v]["score"]["steps_to_80"],
                              "new_return_final": entry[v]["new_return"]["final"],
                              "new_return_steps_to_80": entry[v]["new_return"]["steps_to_80"]}), flush=True)
            result["tasks"][task] = entry
            result["wall_min"] = (time.perf_counter() - t0) / 60
            (out / f"representations_{task}{args.tag}.json").write_text(json.dumps(result_for(result, task), indent=1) + "\n")
    if args.partial:
        return 0
    return report(out, not args.no_markdown, result)


def result_for(result: dict[str, Any], task: str) -> dict[str, Any]:
    return {**result, "tasks": {task: result["tasks"][task]}}


def report(out: Path, markdown: bool, result: dict[str, Any] | None = None, extra: Sequence[str] = ()) -> int:
    """Merge ``representations_<task>.json`` partials (or ``result``), plot, verdict, markdown."""
    parts = [json.loads(f.read_text()) for f in sorted(out.glob("representations_*.json"))]
    if result is None:
        if not parts:
            raise SystemExit(f"no representations_*.json in {out}")
        result = dict(parts[0])
        result["tasks"] = {}
        for part in parts:  # variants of one task may come from several processes (--tag)
            for t, v in part["tasks"].items():
                result["tasks"].setdefault(t, {}).update(v)
        result["wall_min"] = max(p["wall_min"] for p in parts)  # tasks ran in parallel processes
        result["command"] = " ; ".join(sorted({p["command"] for p in parts}))
    for vs in result["tasks"].values():  # recompute summaries from the stored per-seed curves
        for v in VARIANTS:
            if v in vs:
                curves = [r["curve"] for r in vs[v]["runs"]]
                vs[v]["score"], vs[v]["new_return"] = summarise(curves, "score"), summarise(curves, "new_return")
    result["verdict"], result["overall"] = verdict(result), overall(result)
    (out / "representations.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "representations.png")
    if markdown:
        ex = []
        for d in extra:
            f = Path(d) / "representations.json"
            if f.exists():
                rel = os.path.relpath(Path(d).resolve(), ROOT)
                ex.append((rel, json.loads(f.read_text())))
        write_markdown(result, extra=ex)
    print(json.dumps({"overall": result["overall"], "verdict": result["verdict"], "wall_min": result["wall_min"]}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
