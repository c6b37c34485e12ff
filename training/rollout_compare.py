"""Sim-vs-hardware (or any two rollouts): per-dimension divergence of states and actions.

Both recordings are cut into episodes and paired steps by ``mtm_runtime.training.mcap_import.segment``
(no task needed: ``/observation`` and ``/commands`` as recorded). Episodes are matched by
index (run both with the same seeds), steps by their index within the episode, each pair cut
to the shorter length. Per dimension: RMSE, max |a - b|, Pearson correlation over all matched
steps (NaN when a dimension is constant in either recording). The result carries each file's
recorder loss count (``recorded_loss``: the ``mtm_record`` metadata, None where the file has
none) and the table's header says it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtm_runtime.recording import RESIDUAL_TOPIC, RecordingError, read_messages
from mtm_runtime.recording_loss import loss_note
from mtm_runtime.training.mcap_import import segment


@dataclass
class Divergence:
    """Per-dimension statistics of ``a - b`` for one modality (arrays of length ``width``)."""

    name: str
    rmse: np.ndarray
    max_abs: np.ndarray
    corr: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        return [{"modality": self.name, "dim": i, "rmse": float(r), "max_abs": float(m), "corr": float(c)}
                for i, (r, m, c) in enumerate(zip(self.rmse, self.max_abs, self.corr))]


def _stats(name: str, a: np.ndarray, b: np.ndarray) -> Divergence:
    d = a - b
    rmse = np.sqrt(np.mean(d ** 2, axis=0))
    mx = np.max(np.abs(d), axis=0)
    corr = np.full(a.shape[1], np.nan)
    for i in range(a.shape[1]):
        if np.std(a[:, i]) > 1e-12 and np.std(b[:, i]) > 1e-12:
            corr[i] = float(np.corrcoef(a[:, i], b[:, i])[0, 1])
    return Divergence(name, rmse, mx, corr)


def matched_steps(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    """Matched states/actions of two recordings: {"states": (A, B), "actions": (A, B), "episodes": [...]}."""
    sa, sb = segment(path_a, require_rewards=False), segment(path_b, require_rewards=False)
    if sa.states.shape[1] != sb.states.shape[1] or sa.actions.shape[1] != sb.actions.shape[1]:
        raise ValueError(f"recordings differ in widths: states {sa.states.shape[1]} vs {sb.states.shape[1]}, "
                         f"actions {sa.actions.shape[1]} vs {sb.actions.shape[1]}")
    ia, ib, eps = [], [], []
    for k, ((oa, la, *_), (ob, lb, *_)) in enumerate(zip(sa.episodes, sb.episodes)):
        n = min(la, lb)
        ia.append(np.arange(oa, oa + n))
        ib.append(np.arange(ob, ob + n))
        eps.append({"episode": k, "steps_a": la, "steps_b": lb, "matched": n})
    if not eps:
        raise ValueError("no episodes to match")
    ia_, ib_ = np.concatenate(ia), np.concatenate(ib)
    return {"states": (sa.states[ia_], sb.states[ib_]), "actions": (sa.actions[ia_], sb.actions[ib_]),
            "episodes": eps, "first_episode_steps": int(len(ia[0])),
            "recorded_loss": {"a": sa.report.recorded_loss, "b": sb.report.recorded_loss}}


def compare(path_a: str | Path, path_b: str | Path, png: str | Path | None = None) -> dict[str, Any]:
    """Divergence table (list of rows) + matched episode counts; optional PNG of the first episode."""
    m = matched_steps(path_a, path_b)
    divs = [_stats(name, *m[name]) for name in ("states", "actions")]
    out = {"a": str(path_a), "b": str(path_b), "episodes": m["episodes"],
           "matched_steps": int(len(m["states"][0])), "rows": [r for d in divs for r in d.rows()],
           "recorded_loss": m["recorded_loss"]}
    recorded = {"a": recorded_residual(path_a), "b": recorded_residual(path_b)}
    if any(recorded.values()):
        out["recorded_residual"] = recorded
    if png:
        out["png"] = str(plot(m, divs, Path(png)))
    return out


def recorded_residual(path: str | Path) -> dict[str, Any] | None:
    """What the runtime monitor measured during the run (``/model_residual``: one message per plan,
    the normalised residual per state dimension), or None when the run had no monitor: per
    dimension the RMS, and the per-plan RMS over dimensions (the monitor's score) p50 / p99."""
    rows = [np.asarray(r.msg.data, np.float64) for r in read_messages(path, [RESIDUAL_TOPIC])]
    if not rows:
        return None
    if len({len(r) for r in rows}) != 1:
        raise RecordingError(f"{path}: {RESIDUAL_TOPIC} messages differ in width ({sorted({len(r) for r in rows})})")
    r = np.vstack(rows)
    score = np.sqrt(np.mean(r * r, axis=1))
    return {"plans": int(len(r)), "rms_per_dim": np.sqrt(np.mean(r * r, axis=0)).round(5).tolist(),
            "score_p50": round(float(np.median(score)), 5), "score_p99": round(float(np.percentile(score, 99)), 5)}


def fd_residuals(policy: Any, path: str | Path) -> np.ndarray:
    """Per state dimension, the RMS of the world-model residual over a recording: the model's
    forward-dynamics prediction of each state from the T-1 steps before it (states and the
    recorded actions), minus the recorded state, in units of the data's standard deviation (the
    runtime monitor's residual, ``mtm_runtime.chunking``). Episodes shorter than T are skipped."""
    seg = segment(path, require_rewards=False)
    T = policy.spec.horizon
    std = policy.normaliser.std["states"]
    sq, n = np.zeros(seg.states.shape[1]), 0
    for off, length, *_ in seg.episodes:
        st, ac = seg.states[off:off + length], seg.actions[off:off + length]
        for t in range(T - 1, length):
            r = (policy.predict_next_state(st[t - T + 1:t], ac[t - T + 1:t]) - st[t]) / std
            sq += r * r
            n += 1
    if not n:
        raise ValueError(f"{path}: no episode of at least T = {T} steps for the world-model residual")
    return np.sqrt(sq / n)


def model_gap(policy: Any, path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    """The world-model residual per state dimension in A and in B: where B (the robot, say) leaves
    the model's dynamics more than A (the simulator it was trained on), the ratio says by how much."""
    ra, rb = fd_residuals(policy, path_a), fd_residuals(policy, path_b)
    return {"residual_a": ra.round(5).tolist(), "residual_b": rb.round(5).tolist(),
            "ratio_b_over_a": (rb / np.maximum(ra, 1e-9)).round(3).tolist(), "worst_dim_b": int(np.argmax(rb))}


def format_table(result: dict[str, Any]) -> str:
    loss = result["recorded_loss"]
    lines = [f"A: {result['a']} ({loss_note(loss['a'])})", f"B: {result['b']} ({loss_note(loss['b'])})",
             f"{len(result['episodes'])} episodes matched, {result['matched_steps']} steps",
             f"{'modality':9s} {'dim':>3s} {'rmse':>10s} {'max|a-b|':>10s} {'corr':>7s}"]
    for r in result["rows"]:
        lines.append(f"{r['modality']:9s} {r['dim']:3d} {r['rmse']:10.4g} {r['max_abs']:10.4g} {r['corr']:7.3f}")
    rec = result.get("recorded_residual")
    if rec:
        lines.append(f"world-model residual as the monitor recorded it ({RESIDUAL_TOPIC}, normalised):")
        for side in ("a", "b"):
            r = rec[side]
            lines.append(f"  {side.upper()}: " + ("no monitor in this run" if r is None else
                         f"{r['plans']} plans, score p50 {r['score_p50']:.4g} p99 {r['score_p99']:.4g}, "
                         "RMS per state dim " + " ".join(f"{v:.4g}" for v in r["rms_per_dim"])))
    gap = result.get("model_gap")
    if gap:
        lines.append(f"world-model residual per state dim (RMS, normalised; model {result.get('model', '')}):")
        lines.append(f"{'dim':>3s} {'A':>9s} {'B':>9s} {'B/A':>7s}")
        for i, (a, b, q) in enumerate(zip(gap["residual_a"], gap["residual_b"], gap["ratio_b_over_a"])):
            lines.append(f"{i:3d} {a:9.4g} {b:9.4g} {q:7.3g}")
    return "\n".join(lines)


def plot(m: dict[str, Any], divs: list[Divergence], path: Path) -> Path:
    """First matched episode, every state and action dimension, A solid and B dashed; RMSE in titles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = m["first_episode_steps"]
    dims = [(name, i) for name in ("states", "actions") for i in range(m[name][0].shape[1])]
    cols = 4
    rows = (len(dims) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    rmse = {d.name: d.rmse for d in divs}
    for ax, (name, i) in zip(axes.flat, dims):
        a, b = m[name][0][:n, i], m[name][1][:n, i]
        ax.plot(a, "-", lw=1.2, label="A")
        ax.plot(b, "--", lw=1.2, label="B")
        ax.set_title(f"{name}[{i}]  rmse {rmse[name][i]:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(dims):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("rollout A (solid) vs B (dashed), first episode", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
