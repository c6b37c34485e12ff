"""The data pipeline of training: episodes -> normaliser -> normalised windows, drawn
deterministically per (seed, rank, step). Used by the training script (``train.py``), the
baselines, the evaluation harness's held-out windows and the demo's quick fallback, so none of
them imports the training script.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mtm_runtime import masks as M
from mtm_runtime.normalise import Normaliser
from mtm_runtime.spec import ACTIONS, RETURNS, TrajectorySpec
from mtm_runtime.training.loaders import Episode, WindowSampler

#: Default peak learning rate per preset (small models tolerate, and need, a larger one).
PRESET_LR = {"embedded": 1e-3, "paper": 2e-4}


def fit_normaliser(spec: TrajectorySpec, episodes: Sequence[Episode], rtg_scale: float = 0.0) -> Normaliser:
    """Z-score states/actions/goals on ``episodes`` (missing actions ignored); returns scale-only
    with scale ``rtg_scale`` or, if 0, ``max_e |rtg_0(e)|`` (largest episode return magnitude)."""
    data = {}
    for name in spec.names:
        rows = [ep[name] for ep in episodes if ep.present.get(name, True)]
        if rows:
            data[name] = np.concatenate(rows)
    norm = Normaliser.fit(spec, data)
    if RETURNS in spec:
        scale = rtg_scale if rtg_scale > 0 else max(float(np.max(np.abs(ep[RETURNS]))) for ep in episodes)
        norm.std[RETURNS] = np.full(1, max(scale, norm.std_floor), np.float32)
        norm = Normaliser(spec, norm.mean, norm.std, norm.std_floor)  # rebuild the packed arrays
    return norm


class NormalisedSampler:
    """Windows drawn exactly as ``WindowSampler`` draws them (same indices for the same rng),
    gathered vectorised from one pre-normalised flat array; absent tokens are 0 in x and present.

    Layout: every episode is preceded by T-1 absent rows, so the window (e, start) is the T
    consecutive rows from ``first[e] + start`` (``first[e]``: the row of the episode's first
    step; a negative start reaches into the absent rows, as the runtime buffer after a reset).
    ``start_windows``, ``labelled_share``: see ``WindowSampler``.
    """

    def __init__(self, episodes: Sequence[Episode], spec: TrajectorySpec, norm: Normaliser,
                 start_windows: bool = False, labelled_share: float = 0.0) -> None:
        self.windows = WindowSampler(episodes, spec, seed=0, start_windows=start_windows,
                                     labelled_share=labelled_share)
        self.spec, self.norm, T = spec, norm, spec.horizon
        expand = np.repeat(np.arange(spec.num_modalities), spec.widths)  # packed column -> modality
        xs, ps, first = [], [], []
        row = 0
        for x, av in zip(self.windows.packed, self.windows.avail):
            first.append(row)
            xs += [np.zeros((T - 1, spec.packed_width), np.float32), norm.normalise_packed(x) * av[expand]]
            ps += [np.zeros((T - 1, spec.num_modalities), np.float32), np.broadcast_to(av, (len(x), len(av)))]
            row += T - 1 + len(x)
        self.flat_x, self.flat_p = np.concatenate(xs), np.concatenate(ps).astype(np.float32)
        self.first = np.asarray(first) + (T - 1)
        ai = spec.index(ACTIONS) if ACTIONS in spec else None
        #: episodes that came without actions (self-labelling fills them; this list stays)
        self.action_free = [e for e, av in enumerate(self.windows.avail) if ai is not None and av[ai] == 0]

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``x [B, T, D]`` normalised, ``present [B, T, M]``, drawn with ``rng``."""
        self.windows.rng = rng
        eps, starts = self.windows.sample_index(batch_size)
        rows = (self.first[eps] + starts)[:, None] + np.arange(self.spec.horizon)
        return self.flat_x[rows], self.flat_p[rows]

    def action_free_rows(self) -> np.ndarray:
        """Flat rows of the steps of every episode that came without actions."""
        return np.concatenate([self.first[e] + np.arange(self.windows.lengths[e]) for e in self.action_free]
                              or [np.zeros(0, np.int64)])

    def set_actions(self, rows: np.ndarray, actions: np.ndarray) -> None:
        """Self-labelling's write: ``actions`` [len(rows), action width] (normalised) become present
        at the flat ``rows`` (those of ``action_free_rows``); every episode then counts as
        labelled, so ``labelled_share`` no longer singles out the originally labelled ones
        (batches become uniform over all episodes)."""
        ai = self.spec.index(ACTIONS)
        self.flat_x[rows, self.spec.slice(ACTIONS)] = actions
        self.flat_p[rows, ai] = 1.0
        for e in self.action_free:
            self.windows.avail[e][ai] = 1.0
        self.windows.set_labelled_share(self.windows.labelled_share)

    def fill_actions(self, predict: Any) -> int:
        """Self-labelling: give every step of an action-free episode the inverse-dynamics estimate
        ``predict(x [B, T, D], mask [B, T, M]) -> [B, T, D]`` (normalised; ID mask: the window's
        states visible, its actions hidden) and mark it present (``set_actions``), so training
        from then on uses it as target and as input. a_t is read from the window starting at t-1
        (clipped to the episode), which shows s_{t-1}, s_t and s_{t+1} where they exist. Every
        window is predicted before any estimate is written. Returns the number of steps filled."""
        spec, T = self.spec, self.spec.horizon
        cols = spec.slice(ACTIONS)
        estimates = []
        for e in self.action_free:
            L = int(self.windows.lengths[e])
            t = np.arange(L)
            start = np.clip(t - 1, min(L - T, 0), max(L - T, 0))
            rows = (self.first[e] + start)[:, None] + np.arange(T)
            y = predict(self.flat_x[rows], M.id_mask(spec)[None] * self.flat_p[rows])
            estimates.append(y[t, t - start, cols])
        rows = self.action_free_rows()
        self.set_actions(rows, np.concatenate(estimates) if estimates else np.zeros((0, spec.width(ACTIONS)), np.float32))
        return len(rows)


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator of one (seed, rank, step): windows, masks."""
    return np.random.default_rng([seed, rank, step])
