"""Every mask in the project, as pure functions returning float32 numpy arrays.

Layout: ``[T, M]`` for one window or ``[B, T, M]`` for a batch (per-sample masks), columns in
the spec's modality order. **1 = visible** (the model reads it), **0 = hidden** (the model
predicts it). Masks combine by AND (``combine``), so "history shorter than T" and "modality
missing from the data" apply to any mode.

The runtime keeps the newest step at the right end of the window (``t = T-1``, "now"), so the
inference masks below predict the action (or state) at ``T-1``.

Diagrams: rows are modalities, columns time steps t = 0..T-1 (T = 4), ``#`` visible, ``.``
hidden.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from mtm_runtime.spec import ACTIONS, GOALS, RETURNS, STATES, TrajectorySpec

#: Inference modes a Policy can run. ``goal`` needs a ``goals`` modality (see ``goal_mask``).
INFERENCE_MODES = ("bc", "rcbc", "goal", "id", "fd")


class MaskError(ValueError):
    """A mask is malformed (shape, values) or hides every token of a window."""


def _empty(spec: TrajectorySpec) -> np.ndarray:
    return np.zeros((spec.horizon, spec.num_modalities), dtype=np.float32)


def full_mask(spec: TrajectorySpec) -> np.ndarray:
    """Everything visible (reconstruction / availability placeholder)."""
    return np.ones((spec.horizon, spec.num_modalities), dtype=np.float32)


# ---- inference masks ------------------------------------------------------------------------
def bc_mask(spec: TrajectorySpec) -> np.ndarray:
    """Behaviour cloning: states visible, past actions visible, the current action hidden::

        states  # # # #
        actions # # # .   <- predict a[T-1]
        returns . . . .
    """
    m = _empty(spec)
    m[:, spec.index(STATES)] = 1.0
    if ACTIONS in spec:
        m[:-1, spec.index(ACTIONS)] = 1.0
    return m


def rcbc_mask(spec: TrajectorySpec) -> np.ndarray:
    """Return-conditioned BC: BC plus returns-to-go visible at every step::

        states  # # # #
        actions # # # .   <- predict a[T-1]
        returns # # # #   <- target return-to-go
    """
    if RETURNS not in spec:
        raise MaskError("rcbc needs a 'returns' modality in the spec")
    m = bc_mask(spec)
    m[:, spec.index(RETURNS)] = 1.0
    return m


def goal_mask(spec: TrajectorySpec) -> np.ndarray:
    """Goal reaching: BC plus the goal visible at every step::

        states  # # # #
        actions # # # .   <- predict a[T-1]
        goals   # # # #   <- desired goal

    With no ``goals`` modality, the goal is the *state* at ``T-1``: the present is ``T-2`` and
    its action is predicted (first states + goal state visible, as in the paper)::

        states  # # # #   <- s[T-1] is the goal
        actions # # . .   <- predict a[T-2]
    """
    if GOALS in spec:
        m = bc_mask(spec)
        m[:, spec.index(GOALS)] = 1.0
        return m
    if spec.horizon < 2:
        raise MaskError("goal mode without a 'goals' modality needs horizon >= 2")
    m = _empty(spec)
    m[:, spec.index(STATES)] = 1.0
    if ACTIONS in spec:
        m[:-2, spec.index(ACTIONS)] = 1.0
    return m


def id_mask(spec: TrajectorySpec) -> np.ndarray:
    """Inverse dynamics: all states visible, every action hidden::

        states  # # # #
        actions . . . .   <- predict a[t] from s[t], s[t+1]
    """
    m = _empty(spec)
    m[:, spec.index(STATES)] = 1.0
    return m


def fd_mask(spec: TrajectorySpec, prefix: int | None = None) -> np.ndarray:
    """Forward dynamics: states and actions of the first ``prefix`` steps visible (default
    T-1), the states after them hidden::

        states  # # # .   <- predict s[T-1]
        actions # # # .
    """
    p = spec.horizon - 1 if prefix is None else int(prefix)
    if not 1 <= p <= spec.horizon - 1:
        raise MaskError(f"fd prefix must be in [1, {spec.horizon - 1}], got {p}")
    m = _empty(spec)
    m[:p, spec.index(STATES)] = 1.0
    if ACTIONS in spec:
        m[:p, spec.index(ACTIONS)] = 1.0
    return m


def chunk_mask(spec: TrajectorySpec, k: int, committed: int = 0, base: str = "bc") -> np.ndarray:
    """Action chunk of ``k`` steps: the present is ``p = T-k``; states up to ``p`` and actions
    before ``p`` visible, the future hidden, so one pass predicts ``a[p] .. a[T-1]``. With
    ``committed = d`` the actions ``a[p] .. a[p+d-1]``, already streamed while the model was
    thinking, are shown too (real-time chunking by inpainting): the new chunk continues them.
    T = 8, k = 4 (p = 4)::

        committed = 0                     committed = 1
        states  # # # # # . . .           states  # # # # # . . .
        actions # # # # . . . .           actions # # # # # . . .
                        ^ predict a[4..7]                   ^ predict a[5..7]

    ``base``: ``bc``; ``rcbc`` (returns-to-go visible up to ``p``) or ``goal`` (a ``goals``
    modality, visible at every step). ``k = 1, committed = 0`` is ``bc_mask``.
    """
    T = spec.horizon
    if not 1 <= int(k) <= T:
        raise MaskError(f"chunk length must be in [1, {T}] (the horizon), got {k}")
    if not 0 <= int(committed) < int(k):
        raise MaskError(f"committed actions must be in [0, {int(k) - 1}] for a chunk of {k}, got {committed}")
    if ACTIONS not in spec:
        raise MaskError("a chunk mask needs an 'actions' modality")
    p = T - int(k)
    m = _empty(spec)
    m[:p + 1, spec.index(STATES)] = 1.0
    m[:p + int(committed), spec.index(ACTIONS)] = 1.0
    if base == "rcbc":
        if RETURNS not in spec:
            raise MaskError("rcbc needs a 'returns' modality in the spec")
        m[:p + 1, spec.index(RETURNS)] = 1.0
    elif base == "goal":
        if GOALS not in spec:
            raise MaskError("chunked goal mode needs a 'goals' modality in the spec")
        m[:, spec.index(GOALS)] = 1.0
    elif base != "bc":
        raise MaskError(f"chunk base mode must be bc, rcbc or goal, got {base!r}")
    return m


def mode_mask(spec: TrajectorySpec, mode: str) -> np.ndarray:
    """The inference mask of a named mode (one of INFERENCE_MODES)."""
    builders = {"bc": bc_mask, "rcbc": rcbc_mask, "goal": goal_mask, "id": id_mask, "fd": fd_mask}
    if mode not in builders:
        raise MaskError(f"unknown mask mode {mode!r}; choose from {', '.join(INFERENCE_MODES)}")
    return builders[mode](spec)


def available_modes(spec: TrajectorySpec) -> tuple[str, ...]:
    """Modes whose masks are defined for this spec (rcbc needs returns, goal needs goals)."""
    modes = ["bc"]
    if RETURNS in spec:
        modes.append("rcbc")
    if GOALS in spec:
        modes.append("goal")
    if ACTIONS in spec:
        modes += ["id"]
        if spec.horizon >= 2:
            modes.append("fd")
    return tuple(modes)


# ---- forced masks (AND them onto any mask) ----------------------------------------------------
def history_mask(spec: TrajectorySpec, k: int) -> np.ndarray:
    """Only the newest ``k`` steps exist (episode start); older positions hidden::

        k = 2:  all modalities  . . # #
    """
    if not 0 <= k <= spec.horizon:
        raise MaskError(f"history length must be in [0, {spec.horizon}], got {k}")
    m = _empty(spec)
    if k:
        m[spec.horizon - k:, :] = 1.0
    return m


def missing_mask(spec: TrajectorySpec, missing: Iterable[str]) -> np.ndarray:
    """Modalities absent from the data are hidden everywhere::

        missing = {actions}:  states  # # # #
                              actions . . . .
    """
    m = full_mask(spec)
    for name in missing:
        m[:, spec.index(name)] = 0.0
    return m


def combine(*masks: np.ndarray) -> np.ndarray:
    """AND of masks (broadcasting ``[T, M]`` against ``[B, T, M]``)."""
    if not masks:
        raise MaskError("combine needs at least one mask")
    out = np.asarray(masks[0], dtype=np.float32)
    for m in masks[1:]:
        out = np.minimum(out, np.asarray(m, dtype=np.float32))
    return out.astype(np.float32, copy=False)


# ---- training masks ---------------------------------------------------------------------------
def random_mask(spec: TrajectorySpec, rng: np.random.Generator, keep_ratio: float) -> np.ndarray:
    """Each token visible independently with probability ``keep_ratio`` (at least one kept)::

        states  # . # .
        actions . # . .
    """
    if not 0.0 <= keep_ratio <= 1.0:
        raise MaskError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
    m = (rng.random((spec.horizon, spec.num_modalities)) < keep_ratio).astype(np.float32)
    _ensure_one_visible(m, rng)
    return m


def auto_mask(spec: TrajectorySpec, rng: np.random.Generator,
              keep_ratios: Sequence[float] = (0.15, 0.35, 0.55, 0.75, 0.85, 0.95),
              modality_order: Sequence[str] | None = None,
              modality_weights: Sequence[float] | None = None) -> np.ndarray:
    """Random autoregressive mask (the paper's AUTO_MASK).

    1. draw a keep ratio from ``keep_ratios`` and a random mask with it;
    2. draw a cut: a time ``t*`` uniform in [0, T) and a modality ``k*`` from
       ``modality_order`` (weights ``modality_weights``);
    3. hide the future: every token after ``t*``, and at ``t*`` the modality ``k*`` and those
       after it in ``modality_order``.

    So some samples look like BC (cut at an action), some like FD (cut at a state), some like
    RCBC. Example, cut at (t* = 2, actions), order states, actions, returns::

        states  # . # .
        actions . # . .
        returns # . . .
    """
    return sample_training_masks(spec, 1, rng, ("auto",), keep_ratios, modality_order, modality_weights)[0]


TRAINING_MASKS = ("auto", "random", "chunk", "bc", "rcbc", "goal", "id", "fd")


def _chunk_training_masks(spec: TrajectorySpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` chunk masks (``chunk_mask``) with chunk length ``k`` uniform in [1, T-1] (all of
    [1, T] when T = 1), a committed prefix uniform in [0, k-1], returns-to-go visible up to the
    present in half of them, goals always visible: what the chunk and async modes run."""
    T = spec.horizon
    k = rng.integers(1, max(T - 1, 1) + 1, size=n)
    d = (rng.random(n) * k).astype(np.int64)  # uniform in [0, k-1]
    p = (T - k)[:, None]
    t = np.arange(T)[None, :]
    out = np.zeros((n, T, spec.num_modalities), np.float32)
    out[:, :, spec.index(STATES)] = t <= p
    if ACTIONS in spec:
        out[:, :, spec.index(ACTIONS)] = t < p + d[:, None]
    if RETURNS in spec:
        out[:, :, spec.index(RETURNS)] = (t <= p) & (rng.random(n) < 0.5)[:, None]
    if GOALS in spec:
        out[:, :, spec.index(GOALS)] = 1.0
    return out


def sample_training_masks(spec: TrajectorySpec, batch: int, rng: np.random.Generator,
                          kinds: Sequence[str] = ("auto",),
                          keep_ratios: Sequence[float] = (0.15, 0.35, 0.55, 0.75, 0.85, 0.95),
                          modality_order: Sequence[str] | None = None,
                          modality_weights: Sequence[float] | None = None) -> np.ndarray:
    """``[B, T, M]``: one independently drawn mask per sample; each sample's kind drawn from
    ``kinds`` (``auto``, ``random``, ``chunk`` (``_chunk_training_masks``) or an inference mode
    available for the spec).

    Vectorised over the batch (same distributions as ``auto_mask`` / ``random_mask``), so mask
    sampling costs microseconds, not a Python loop per sample.
    """
    for k in kinds:
        if k not in TRAINING_MASKS:
            raise MaskError(f"unknown training mask {k!r}; choose from {', '.join(TRAINING_MASKS)}")
    T, Mm = spec.horizon, spec.num_modalities
    order = list(spec.names if modality_order is None else modality_order)
    if sorted(order) != sorted(spec.names):
        raise MaskError(f"modality_order must list every modality once: {list(spec.names)}")
    p = None
    if modality_weights is not None:
        w = np.asarray(modality_weights, dtype=np.float64)
        if w.shape != (len(order),) or np.any(w < 0) or w.sum() <= 0:
            raise MaskError("modality_weights must be non-negative, one per modality in the order")
        p = w / w.sum()
    kind_of = rng.integers(0, len(kinds), size=batch)
    ratios = rng.choice(np.asarray(keep_ratios, dtype=np.float64), size=batch)
    out = (rng.random((batch, T, Mm)) < ratios[:, None, None]).astype(np.float32)
    # AUTO_MASK cut: hide t > t*, and at t* the modalities from position k* on in the order
    pos = np.empty(Mm, np.int64)
    for i, name in enumerate(order):
        pos[spec.index(name)] = i
    t_cut = rng.integers(0, T, size=batch)
    k_cut = rng.choice(len(order), size=batch, p=p)
    t = np.arange(T)[None, :, None]
    hide = (t > t_cut[:, None, None]) | ((t == t_cut[:, None, None]) & (pos[None, None, :] >= k_cut[:, None, None]))
    is_auto = np.array([kinds[k] == "auto" for k in kind_of])
    out[is_auto] *= ~hide[is_auto]
    for ki, kind in enumerate(kinds):
        if kind in INFERENCE_MODES:
            out[kind_of == ki] = mode_mask(spec, kind)
        elif kind == "chunk":
            rows = kind_of == ki
            out[rows] = _chunk_training_masks(spec, int(rows.sum()), rng)
    blind_auto = is_auto & (out.reshape(batch, -1).sum(axis=1) == 0)
    out[blind_auto, 0, spec.index(order[0])] = 1.0  # a cut before everything: keep the first token
    blind = np.flatnonzero(out.reshape(batch, -1).sum(axis=1) == 0)
    if len(blind):
        out[blind, rng.integers(0, T, size=len(blind)), rng.integers(0, Mm, size=len(blind))] = 1.0
    return out


def _ensure_one_visible(m: np.ndarray, rng: np.random.Generator) -> None:
    if not m.any():
        m[int(rng.integers(0, m.shape[0])), int(rng.integers(0, m.shape[1]))] = 1.0


# ---- validation -------------------------------------------------------------------------------
def validate_mask(spec: TrajectorySpec, mask: np.ndarray, where: str = "mask") -> np.ndarray:
    """Check shape ``[T, M]`` or ``[B, T, M]``, values in {0, 1}, and at least one visible token
    per window (an all-hidden window would give the encoder nothing to attend to)."""
    m = np.asarray(mask)
    tail = (spec.horizon, spec.num_modalities)
    if m.ndim not in (2, 3) or m.shape[-2:] != tail:
        raise MaskError(f"{where} has shape {m.shape}, expected [..., {tail[0]}, {tail[1]}]")
    if not np.all((m == 0) | (m == 1)):
        raise MaskError(f"{where} must contain only 0 and 1")
    visible = m.reshape(-1, tail[0] * tail[1]).sum(axis=1)
    if np.any(visible == 0):
        raise MaskError(f"{where}: window {int(np.argmin(visible))} has no visible token")
    return m.astype(np.float32, copy=False)


def render(spec: TrajectorySpec, mask: np.ndarray) -> str:
    """ASCII diagram of a ``[T, M]`` mask (``#`` visible, ``.`` hidden), as in the docstrings."""
    w = max(len(n) for n in spec.names)
    rows = []
    for i, n in enumerate(spec.names):
        rows.append(f"{n:<{w}} " + " ".join("#" if v else "." for v in mask[:, i]))
    return "\n".join(rows)


def apply_availability(mask: np.ndarray, present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AND a mask with data availability ``present`` ([B, T, M], 0 where the data lacks the token)
    and, where that leaves a window with nothing visible, reveal one random present token so the
    encoder always has a key (DESIGN.md core idea 4: missing data is a mask)."""
    out = combine(mask, present).copy()
    flat = out.reshape(out.shape[0], -1)
    pres = np.asarray(present, dtype=np.float32).reshape(out.shape[0], -1)
    for b in np.flatnonzero(flat.sum(axis=1) == 0):
        choices = np.flatnonzero(pres[b])
        if len(choices) == 0:
            raise MaskError(f"window {b} has no present token at all")
        flat[b, int(rng.choice(choices))] = 1.0
    return out
