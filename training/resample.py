"""Streams at their own rates -> steps at the control rate, and steps -> episodes: the rule, as plain
functions over sorted time arrays (ns). Used by ``training/rosbag_import.py``.

:func:`resample` (the rule): the clock ticks every ``period_ns``, from half a period after the
first state sample to half a period after the last (so a state stream at the control rate, with
jitter under half a period, gives exactly one sample per tick). At tick ``t`` each stream gives its
latest sample at or before ``t`` (zero-order hold). A *follower* stream (commands, rewards) gives
its latest sample sent before the state stream's next sample after the one the tick uses (at most
one period after it): the command computed from that state, or, from a slower controller or one
that answered too late, the one still in force. A tick where some stream's sample is older than
``max_age_ns`` at the time it is read is *stale*.

:func:`cut_episodes`: an episode is a run of fresh ticks (stale ticks belong to none), also cut
where the rule starts a new one: ``gap:S`` (a gap of more than S seconds in the state stream),
``length:N`` (N ticks each; a shorter rest is kept), ``marker`` (a marker message starts one at
the next tick), ``bag`` (no further cuts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass
class Resampled:
    """``ticks`` [K] (ns); per stream the index of the sample each tick uses (``index[name]`` [K]);
    ``fresh`` [K]: whether every stream's sample was young enough."""

    ticks: np.ndarray
    index: dict[str, np.ndarray]
    fresh: np.ndarray

    def usage(self, name: str, n_samples: int) -> dict[str, int]:
        """Of ``name``'s ``n_samples``: how many fresh ticks used (distinct), held (reused), skipped (never used)."""
        used = self.index[name][self.fresh]
        distinct = len(np.unique(used))
        return {"used": distinct, "held": int(len(used) - distinct), "skipped": int(n_samples - distinct)}


def resample(times: dict[str, np.ndarray], state: str, followers: set[str], period_ns: int,
             max_age_ns: int) -> Resampled:
    """Apply the rule to sorted sample times ``times[name]`` (``state`` is the state stream)."""
    t_state = times[state]
    t0 = int(t_state[0]) + period_ns // 2
    n = int(round((int(t_state[-1]) - int(t_state[0])) / period_ns)) + 1   # the last tick: about half a period after the last state
    ticks = t0 + period_ns * np.arange(n, dtype=np.int64)
    index: dict[str, np.ndarray] = {}
    fresh = np.ones(len(ticks), bool)
    for name in sorted(times, key=lambda n: (n in followers, n != state)):   # the state stream first
        t = times[name]
        at = ticks if name not in followers else _answer_deadline(t_state, index[state], period_ns)
        i = np.searchsorted(t, at, side="right") - 1
        fresh &= (i >= 0) & (at - t[np.maximum(i, 0)] <= max_age_ns)
        index[name] = i
    return Resampled(ticks, index, fresh)


def _answer_deadline(t_state: np.ndarray, i: np.ndarray, period_ns: int) -> np.ndarray:
    """For the state sample ``i`` each tick uses: just before the next state sample (at most one
    period after it): a command sent by then answered this state, or was still in force."""
    i = np.maximum(i, 0)
    nxt = np.where(i + 1 < len(t_state), t_state[np.minimum(i + 1, len(t_state) - 1)], t_state[i] + period_ns)
    return np.minimum(nxt, t_state[i] + period_ns) - 1


def parse_rule(rule: str) -> tuple[str, float]:
    """``bag`` | ``gap:S`` | ``length:N`` | ``marker:TOPIC`` -> (kind, number); ValueError naming the problem."""
    kind, _, arg = rule.partition(":")
    if kind not in ("bag", "gap", "length", "marker") or (kind != "bag") != bool(arg):
        raise ValueError(f"--episodes must be bag, gap:SECONDS, length:STEPS or marker:TOPIC, got {rule!r}")
    if kind in ("gap", "length"):
        try:
            value = float(arg) if kind == "gap" else int(arg)
        except ValueError:
            raise ValueError(f"--episodes {rule!r}: {arg!r} is not a number") from None
        if value <= 0:
            raise ValueError(f"--episodes {rule!r}: must be > 0")
        return kind, float(value)
    return kind, 0.0


def cut_episodes(r: Resampled, kind: str, value: float, state_times: np.ndarray,
                 marker_times: np.ndarray | None = None) -> list[np.ndarray]:
    """Tick indices of each episode (see the module docstring)."""
    ticks, fresh = r.ticks, r.fresh
    if not len(ticks):
        return []
    starts = np.zeros(len(ticks), bool)
    if kind == "gap":
        gaps = state_times[np.flatnonzero(np.diff(state_times) > int(value * 1e9)) + 1]
        at = np.searchsorted(ticks, gaps)
        starts[at[at < len(ticks)]] = True
    elif kind == "marker" and marker_times is not None:
        at = np.searchsorted(ticks, marker_times)
        starts[at[at < len(ticks)]] = True
    starts &= fresh
    starts[0] = fresh[0]
    starts[1:] |= fresh[1:] & ~fresh[:-1]
    out: list[np.ndarray] = []
    bounds = np.flatnonzero(starts)
    for a, b in zip(bounds, [*bounds[1:], len(ticks)]):
        seg = np.arange(a, b)
        if not fresh[seg].all():
            seg = seg[: int(np.argmin(fresh[seg]))]   # up to the first stale tick
        n = int(value) if kind == "length" else len(seg)
        out.extend(seg[k:k + n] for k in range(0, len(seg), max(n, 1)))
    return [p for p in out if len(p)]
