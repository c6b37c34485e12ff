"""The resampling rule (training/resample.py) on synthetic time stamps: one state per tick under
jitter, the command that followed each state, slow controllers held, stale ticks, episode cuts."""
from __future__ import annotations

import numpy as np
import pytest

from mtm_runtime.training.resample import cut_episodes, parse_rule, resample

P = 20_000_000   # 50 Hz


def test_jittered_states_and_their_commands_pair_one_to_one() -> None:
    rng = np.random.default_rng(0)
    n = 500
    states = np.arange(n) * P + rng.integers(-4_000_000, 4_000_000, n)      # +-4 ms jitter
    commands = states + rng.integers(500_000, 6_000_000, n)                 # answered 0.5-6 ms later
    r = resample({"s": np.sort(states), "a": np.sort(commands)}, "s", {"a"}, P, int(1.25 * P))
    assert r.fresh.all() and len(r.ticks) == n
    np.testing.assert_array_equal(r.index["s"], np.arange(n))               # one state per tick
    np.testing.assert_array_equal(r.index["a"], np.arange(n))               # the command that followed it
    assert r.usage("s", n) == {"used": n, "held": 0, "skipped": 0}


def test_slow_controller_is_held_and_counted_and_stale_ticks_cut() -> None:
    states = np.arange(100) * P
    slow = np.arange(0, 100 * P, 5 * P) + 1_000_000                          # 10 Hz commands
    r = resample({"s": states, "a": slow}, "s", {"a"}, P, int(1.25 * P))
    assert not r.fresh.all()                                                 # too old for the default age
    r = resample({"s": states, "a": slow}, "s", {"a"}, P, 6 * P)
    assert r.fresh.all() and r.usage("a", len(slow))["held"] == 100 - len(slow)
    gap = np.concatenate([np.arange(50) * P, 60 * P + np.arange(50) * P])   # 0.2 s without states
    r = resample({"s": gap}, "s", set(), P, int(1.25 * P))
    eps = cut_episodes(r, "bag", 0.0, gap)
    assert [len(e) for e in eps] == [50, 50] and int((~r.fresh).sum()) == len(r.ticks) - 100


def test_rules() -> None:
    states = np.arange(100) * P
    r = resample({"s": states}, "s", set(), P, int(1.25 * P))
    assert [len(e) for e in cut_episodes(r, "length", 30, states)] == [30, 30, 30, 10]
    marks = np.array([40 * P + 5_000_000])
    assert [len(e) for e in cut_episodes(r, "marker", 0.0, states, marks)] == [40, 60]   # the marker starts the episode at the next tick
    assert parse_rule("gap:0.5") == ("gap", 0.5) and parse_rule("bag") == ("bag", 0.0)
    for bad in ("gap", "length:x", "length:0", "cut:3"):
        with pytest.raises(ValueError, match="--episodes"):
            parse_rule(bad)
